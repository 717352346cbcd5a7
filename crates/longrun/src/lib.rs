//! The longrun/1 client: submit long-running calls over HTTP, follow their events (SSE or
//! long polling) with automatic resume, cancel them, check them, wait for their result.
//!
//! Every SDK of the project (Python, JavaScript, Go) wraps this crate, so every client-side
//! decision lives here: how a follow resumes, what a timeout means, what each failure is
//! called ([`ErrorKind`]).
//!
//! ```no_run
//! # async fn example() -> longrun::Result<()> {
//! use futures::StreamExt;
//! let client = longrun::Client::new("http://127.0.0.1:8080")?;
//! let run = client.submit("count", serde_json::json!({"n": 3})).await?;
//! let mut events = client.follow(&run);
//! while let Some(event) = events.next().await {
//!     let event = event?;
//!     println!("{} {} {}", event.id, event.state, event.value);
//! }
//! let value = client.wait(&run, None).await?; // the success value, or a typed error
//! # Ok(()) }
//! ```
//!
//! A server with tenants (spec §22.1) needs a token: [`ClientBuilder::token`] sends
//! `Authorization: Bearer …` with every request (and is never shown by `Debug` or an error);
//! without one, or with one it does not know, calls fail with [`ErrorKind::Unauthorized`], and
//! with one that lacks the scope with [`ErrorKind::Forbidden`]. An idempotency key
//! ([`SubmitOptions`]) makes a submit safe to repeat: the server answers the same key with the
//! same run, so the client sends a keyed submit again when its connection fails before the
//! reply (and never sends a submit without a key twice).
//!
//! ```no_run
//! # async fn example() -> longrun::Result<()> {
//! use longrun::{Client, SubmitOptions};
//! let client = Client::builder("https://longrun.example").token("lrt_…").build()?;
//! let options = SubmitOptions {
//!     idempotency_key: Some("order-17".into()),
//!     ..Default::default()
//! };
//! let run = client.submit_with("echo", serde_json::json!({"a": 1}), options).await?;
//! # Ok(()) }
//! ```

#[cfg(not(target_arch = "wasm32"))]
pub mod blocking;
mod client;
mod error;
mod follow;
mod interrupt;
mod objects;
mod pubsub;
mod rt;
mod run;
mod runs;
mod stream;
pub mod webhook;
mod ws;

pub use client::{
    CancelOutcome, Client, ClientBuilder, ClientOptions, HookEvents, Reconnect, RunStatus,
    SubmitOptions, Transport,
};
pub use error::{Error, ErrorKind, Result};
pub use follow::{EventStream, FollowOptions, cursor_from_decimal, cursor_from_f64};
pub use interrupt::Interrupt;
pub use longrun_proto::{Event, Progress, RawEvent, RunId, State};
pub use objects::ObjectInfo;
pub use pubsub::{Publication, Subscribed, Subscription};
pub use run::Run;
pub use runs::{ListRuns, ListedRun, RunPage};
pub use stream::ByteStream;
#[cfg(not(target_arch = "wasm32"))]
pub use stream::StreamReader;
