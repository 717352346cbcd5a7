//! The API for registering objects: an async handler receives the run's arguments and a
//! [`RunContext`] (progress emitter + cancellation), and returns the run's result.
//!
//! ```no_run
//! use longrun_server::{RunContext, RunError, Server};
//! use serde_json::{json, Value};
//!
//! let server = Server::builder()
//!     .object("resize", |args: Value, ctx: RunContext| async move {
//!         for i in 1..=10 {
//!             if ctx.is_cancelled() {
//!                 break; // the server appends `canceled` for us
//!             }
//!             ctx.progress(i as f64 / 10.0, format!("step {i}"));
//!         }
//!         Ok::<_, RunError>(json!({"done": args}))
//!     })
//!     .build()
//!     .expect("unique object names");
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use longrun_proto::{Progress, RunId};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::run::Run;

/// What a handler gets besides its arguments: a way to report events and to learn that the
/// run should stop.
#[derive(Clone)]
pub struct RunContext {
    pub(crate) run: Arc<Run>,
}

impl RunContext {
    pub fn id(&self) -> RunId {
        self.run.id
    }

    pub fn object(&self) -> &str {
        &self.run.object
    }

    /// Append a `running` event. Returns false when the event was dropped because the run is
    /// stopping (canceled, or over the event limit): a handler may use that to stop early.
    pub fn emit(&self, value: impl Into<Value>) -> bool {
        self.run.emit(value.into())
    }

    /// Append a `running` event following the progress convention.
    pub fn progress(&self, fraction: f64, message: impl AsRef<str>) -> bool {
        self.emit(Progress::to_value(Some(fraction), Some(message.as_ref())))
    }

    /// True once the run was asked to stop (DELETE, deadline, shutdown or event limit).
    pub fn is_cancelled(&self) -> bool {
        self.run.cancel.is_cancelled()
    }

    /// Completes when the run is asked to stop. The handler then has the server's grace
    /// period to return before it is dropped.
    pub async fn cancelled(&self) {
        self.run.cancel.cancelled().await
    }

    /// The token itself, to hand to code that takes a `CancellationToken`.
    pub fn cancel_token(&self) -> CancellationToken {
        self.run.cancel.clone()
    }

    /// Append bytes to the run's byte stream (spec §27.3), visible to its readers at once (with
    /// a durable store: once committed). `Err(Full)`: the write would pass `max_stream_bytes`;
    /// nothing of it was kept and the run is stopped (it ends `error`). `Err(NoStream)`: the
    /// object declares no stream (`ObjectOptions::stream`). `Err(Stopped)`: the run is stopping.
    pub fn write(&self, data: impl Into<bytes::Bytes>) -> Result<(), crate::stream::StreamError> {
        self.run.write_stream(data.into())
    }

    /// Whether the run has a byte stream, and how many bytes it holds.
    pub fn stream_len(&self) -> Option<u64> {
        self.run.stream().map(|s| s.length().0)
    }

    /// The stream as an `AsyncWrite` (each write is one [`RunContext::write`]), for code that
    /// writes to a writer (`tokio::io::copy`, encoders). A refused write is an I/O error of
    /// kind `StorageFull` (the limit) or `BrokenPipe` (stopping, or no stream).
    pub fn writer(&self) -> crate::stream::StreamWriter {
        crate::stream::StreamWriter { ctx: self.clone() }
    }

    /// Completes once at least one client follows this run.
    pub async fn followed(&self) {
        self.run.followed().await
    }
}

/// A run's failure: becomes the value of its `error` event, `{"message": …, …details}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunError {
    pub message: String,
    pub details: Map<String, Value>,
}

impl RunError {
    pub fn new(message: impl Into<String>) -> Self {
        RunError {
            message: message.into(),
            details: Map::new(),
        }
    }

    /// Add a member to the error value (e.g. an exit code).
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn to_value(&self) -> Value {
        let mut obj = self.details.clone();
        obj.insert("message".into(), self.message.clone().into());
        Value::Object(obj)
    }
}

/// Any error converts, so a handler can use `?`; its `Display` becomes the message.
impl<E: std::error::Error> From<E> for RunError {
    fn from(e: E) -> Self {
        RunError::new(e.to_string())
    }
}

pub type HandlerResult = Result<Value, RunError>;

/// An object's behaviour. Closures `Fn(Value, RunContext) -> impl Future<Output = Result<Value,
/// RunError>>` implement it; implement it by hand to validate arguments at submit time.
pub trait Handler: Send + Sync + 'static {
    /// Check the arguments before the run is created; an `Err` is answered with 422 and its
    /// text as the problem's detail. `args` is always a JSON object.
    fn validate(&self, _args: &Map<String, Value>) -> Result<(), String> {
        Ok(())
    }

    /// Start the run. The returned future runs on the server's runtime.
    fn start(&self, args: Value, ctx: RunContext) -> BoxFuture<'static, HandlerResult>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Value, RunContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn start(&self, args: Value, ctx: RunContext) -> BoxFuture<'static, HandlerResult> {
        Box::pin(self(args, ctx))
    }
}

/// Per-object settings.
#[derive(Debug, Clone, Default)]
pub struct ObjectOptions {
    /// A run still going after this long is canceled with reason `deadline`.
    pub timeout: Option<Duration>,
    /// Keep this object's terminal runs for this long instead of the server's retention
    /// (never longer).
    pub retention: Option<Duration>,
    /// The run has a byte stream of this content type (`application/octet-stream` if empty),
    /// at `/{object}/{id}/stream` (spec §27); its handler writes through `RunContext::write`.
    pub stream: Option<String>,
    /// What the object does, for people: `GET /_objects` lists it (spec §13.6).
    pub description: Option<String>,
    /// The arguments the object takes, as a JSON Schema (draft 2020-12 unless it says
    /// otherwise): listed by `GET /_objects`, put in `/_openapi.json`, and checked at every
    /// submit before the run is created (422 `invalid-arguments` naming the failing path).
    /// `None`: any JSON object (what a handler that declares nothing has always taken).
    /// A schema that is not valid JSON Schema makes [`build`](crate::ServerBuilder::build)
    /// fail.
    pub args_schema: Option<Value>,
}

impl ObjectOptions {
    /// The same options, described.
    pub fn describe(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The same options, with `T`'s JSON Schema as the arguments' schema: derive
    /// `schemars::JsonSchema` (re-exported as `longrun_server::schemars`) beside
    /// `serde::Deserialize` on the arguments type, so that what is checked at submit is what
    /// the handler parses (`#[serde(deny_unknown_fields)]` becomes `additionalProperties:
    /// false`; add `#[schemars(range(max = …))]` for the limits the handler checks).
    pub fn args<T: schemars::JsonSchema>(mut self) -> Self {
        self.args_schema = Some(schema_of::<T>());
        self
    }
}

/// `T`'s schema, with nested types inline where they can be (a recursive type keeps its
/// `$defs`), and without the Rust type's name as its title.
pub(crate) fn schema_of<T: schemars::JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(map) = schema.as_object_mut() {
        map.remove("title");
    }
    schema
}

#[derive(Clone)]
pub(crate) struct Object {
    pub handler: Arc<dyn Handler>,
    pub options: ObjectOptions,
    /// What `GET /_objects` says of it, and its compiled arguments' schema.
    pub entry: Arc<crate::catalogue::Entry>,
}
