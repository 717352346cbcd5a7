//! What both JavaScript bindings (napi and wasm-bindgen) hand across their boundary, in one
//! place: everything crosses as JSON text, decoded once on the JS side (`js/src/core.js`), so
//! the two builds cannot drift apart. Included by `#[path]` from each binding crate.

use std::time::Duration;

use longrun::{
    CancelOutcome, ClientBuilder, ClientOptions, Error, Progress, RawEvent, Run, RunStatus,
    Transport,
};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// A JS duration in milliseconds (a number, possibly fractional).
pub fn millis(ms: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| invalid(format!("{ms} is not a duration in milliseconds")))
}

fn invalid(message: String) -> Error {
    Error::InvalidArgument {
        message,
        status: None,
        problem: None,
    }
}

/// A client for `url` with the options JSON of the JS constructor (the core's `ClientOptions`,
/// whose camelCase spellings are the JS ones).
pub fn client(url: &str, options: &str) -> Result<longrun::Client, Error> {
    let builder =
        ClientBuilder::new(url).user_agent(concat!("longrun-js/", env!("CARGO_PKG_VERSION")));
    ClientOptions::from_json(options)?.apply(builder)?.build()
}

pub fn transport(name: Option<&str>) -> Result<Option<Transport>, Error> {
    name.map(str::parse).transpose()
}

/// The submit arguments: JSON text of an object; none is `{}`.
pub fn args(args: Option<&str>) -> Result<Value, Error> {
    match args {
        None => Ok(json!({})),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| invalid(format!("the arguments are not JSON: {e}"))),
    }
}

pub fn run_json(run: &Run) -> String {
    json!({"object": run.object(), "id": run.id().to_string(), "url": run.url().as_str()})
        .to_string()
}

pub fn status_json(s: &RunStatus) -> String {
    json!({"state": s.state.as_str(), "lastEventId": s.last_event_id}).to_string()
}

pub fn cancel_json(o: &CancelOutcome) -> String {
    match o {
        CancelOutcome::Accepted => json!({"outcome": "accepted"}),
        CancelOutcome::AlreadyEnded(state) => json!({"outcome": "ended", "state": state.as_str()}),
    }
    .to_string()
}

/// One event as JS sees it: `progress` added when its value follows the progress convention.
#[derive(Serialize)]
struct EventOut<'a> {
    id: u64,
    state: &'static str,
    /// Written out verbatim: the value is never parsed on this side of the boundary.
    value: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<ProgressOut>,
}

#[derive(Serialize)]
struct ProgressOut {
    fraction: Option<f64>,
    message: Option<String>,
}

impl From<Progress> for ProgressOut {
    fn from(p: Progress) -> Self {
        ProgressOut {
            fraction: p.fraction,
            message: p.message,
        }
    }
}

pub fn progress_json(p: Progress) -> String {
    serde_json::to_string(&ProgressOut::from(p)).expect("progress serializes")
}

/// A batch of events as one JSON array: one boundary crossing and one `JSON.parse` per batch.
/// The values go in as the JSON text they came as (no intermediate `Value`): this is the hot
/// path. With `progress`, each event whose value follows the progress convention carries it.
pub fn batch_json(events: &[RawEvent], progress: bool) -> String {
    let out: Vec<EventOut<'_>> = events
        .iter()
        .map(|ev| EventOut {
            id: ev.id,
            state: ev.state.as_str(),
            value: &ev.value,
            progress: progress
                .then(|| Progress::from_raw(&ev.value).map(ProgressOut::from))
                .flatten(),
        })
        .collect();
    let mut buf = Vec::with_capacity(events.len() * 96);
    serde_json::to_writer(&mut buf, &out).expect("events serialize");
    String::from_utf8(buf).expect("serde_json writes UTF-8")
}

/// An error as JSON: `kind` is `ErrorKind::as_str` (or `Aborted`), the key of the one table
/// of error classes in `js/src/errors.js`.
pub fn error_json(e: &Error) -> String {
    json!({
        "kind": e.kind().as_str(),
        "message": e.to_string(),
        "status": e.status(),
        "value": e.value(),
        "problem": e.problem().and_then(|p| serde_json::to_value(p).ok()),
    })
    .to_string()
}

pub const ABORTED: &str = r#"{"kind":"Aborted","message":"the operation was aborted"}"#;
