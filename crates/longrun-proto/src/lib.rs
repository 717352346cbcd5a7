//! Wire types of the longrun/1 protocol (see `spec/PROTOCOL.md`).
//!
//! Everything a client or a server must agree on lives here and nowhere else: run ids,
//! object names, states, events, the submit reply, problem details, header names, the
//! progress convention and SSE framing. The crate does no I/O and pulls in no runtime, so
//! the same types compile for servers, native clients and `wasm32-unknown-unknown`.

mod event;
pub use event::run_path;
pub mod header;
mod object;
mod problem;
mod progress;
mod run_id;
pub mod sse;
pub mod webhook;

pub use event::{CancelReason, Event, RawEvent, RunRef, State};
pub use object::{ObjectName, ObjectNameError};
pub use problem::{Problem, ProblemKind};
pub use progress::Progress;
pub use run_id::{RunId, RunIdError};

/// The protocol this crate speaks, as reported by `GET /_health`.
pub const PROTOCOL: &str = "longrun/1";
