//! What both JavaScript bindings (napi and wasm-bindgen) hand across their boundary, in one
//! place: everything crosses as JSON text, decoded once on the JS side (`js/src/core.js`), so
//! the two builds cannot drift apart. Included by `#[path]` from each binding crate.

use std::time::Duration;

use longrun::{
    CancelOutcome, ClientBuilder, Error, Event, Progress, Reconnect, Run, RunStatus, Transport,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// The client options as the JS `Client` constructor takes them (camelCase, all optional).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Options {
    token: Option<String>,
    timeout_ms: Option<f64>,
    headers: Option<Map<String, Value>>,
    transport: Option<String>,
    poll_wait_ms: Option<f64>,
    idle_timeout_ms: Option<f64>,
    sse_fallback_after_ms: Option<f64>,
    reconnect: Option<ReconnectOptions>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
struct ReconnectOptions {
    max_attempts: Option<u32>,
    initial_delay_ms: Option<f64>,
    max_delay_ms: Option<f64>,
}

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

/// A client for `url` with the options JSON of the JS constructor.
pub fn client(url: &str, options: &str) -> Result<longrun::Client, Error> {
    let o: Options = if options.is_empty() {
        Options::default()
    } else {
        serde_json::from_str(options).map_err(|e| invalid(format!("client options: {e}")))?
    };
    let mut b =
        ClientBuilder::new(url).user_agent(concat!("longrun-js/", env!("CARGO_PKG_VERSION")));
    if let Some(t) = o.token {
        b = b.token(t);
    }
    if let Some(ms) = o.timeout_ms {
        b = b.timeout(millis(ms)?);
    }
    for (name, value) in o.headers.unwrap_or_default() {
        let value = match value {
            Value::String(s) => s,
            other => other.to_string(),
        };
        b = b.header(name, value);
    }
    if let Some(t) = transport(o.transport.as_deref())? {
        b = b.transport(t);
    }
    if let Some(ms) = o.poll_wait_ms {
        b = b.poll_wait(millis(ms)?);
    }
    if let Some(ms) = o.idle_timeout_ms {
        b = b.idle_timeout(millis(ms)?);
    }
    if let Some(ms) = o.sse_fallback_after_ms {
        b = b.sse_fallback_after(millis(ms)?);
    }
    if let Some(r) = o.reconnect {
        let d = Reconnect::default();
        b = b.reconnect(Reconnect {
            max_attempts: r.max_attempts.unwrap_or(d.max_attempts),
            initial_delay: r
                .initial_delay_ms
                .map(millis)
                .transpose()?
                .unwrap_or(d.initial_delay),
            max_delay: r
                .max_delay_ms
                .map(millis)
                .transpose()?
                .unwrap_or(d.max_delay),
        });
    }
    b.build()
}

pub fn transport(name: Option<&str>) -> Result<Option<Transport>, Error> {
    match name {
        None => Ok(None),
        Some("sse") => Ok(Some(Transport::Sse)),
        Some("poll") => Ok(Some(Transport::Poll)),
        Some(other) => Err(invalid(format!(
            "transport {other:?}: use \"sse\" or \"poll\""
        ))),
    }
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
    value: &'a Value,
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
/// Written straight from the events (no intermediate `Value`): this is the hot path. With
/// `progress`, each event whose value follows the progress convention carries it.
pub fn batch_json(events: &[Event], progress: bool) -> String {
    let out: Vec<EventOut<'_>> = events
        .iter()
        .map(|ev| EventOut {
            id: ev.id,
            state: ev.state.as_str(),
            value: &ev.value,
            progress: progress
                .then(|| Progress::from_value(&ev.value).map(ProgressOut::from))
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
