//! What both JavaScript bindings (napi and wasm-bindgen) hand across their boundary, in one
//! place: everything crosses as JSON text, decoded once on the JS side (`js/src/core.js`), so
//! the two builds cannot drift apart. Included by `#[path]` from each binding crate.

use std::time::Duration;

use longrun::{
    CancelOutcome, ClientBuilder, ClientOptions, Error, EventStream, FollowOptions, Progress,
    RawEvent, Run, RunStatus,
};
use serde::Serialize;
use serde_json::{Value, json};

/// A JS duration in milliseconds (a number, possibly fractional).
pub fn millis(ms: f64) -> Result<Duration, Error> {
    Duration::try_from_secs_f64(ms / 1000.0)
        .map_err(|_| invalid(format!("{ms} is not a duration in milliseconds")))
}

/// An optional JS duration in milliseconds (`timeoutMs`).
pub fn timeout(ms: Option<f64>) -> Result<Option<Duration>, Error> {
    ms.map(millis).transpose()
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

/// A follow's options from JS: `since` a JS number (the core's cursor rule), `transport` a name.
pub fn follow_options(since: Option<f64>, transport: Option<&str>) -> Result<FollowOptions, Error> {
    Ok(FollowOptions {
        since: since.map(longrun::cursor_from_f64).transpose()?,
        transport: transport.map(str::parse).transpose()?,
    })
}

/// A value JS sent as JSON text (`JSON.stringify`); `what` names it in the error ("the
/// arguments").
pub fn json_value(text: &str, what: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| invalid(format!("{what} are not JSON: {e}")))
}

/// The submit arguments: JSON text of an object; none is `{}`.
pub fn args(args: Option<&str>) -> Result<Value, Error> {
    args.map_or_else(|| Ok(json!({})), |text| json_value(text, "the arguments"))
}

/// Submit options from JS: the JSON of the options object, read by the core's
/// `SubmitOptions` (whose camelCase spellings, `deadlineMs`, `waitMs`, `hookEvents`, are the
/// JS ones); none is the defaults.
pub fn submit_options(options: Option<&str>) -> Result<longrun::SubmitOptions, Error> {
    longrun::SubmitOptions::from_json(options.unwrap_or(""))
}

/// `verifyWebhook`: `headers` the JSON of a headers object (Node's `IncomingMessage.headers`)
/// or of `[name, value]` pairs (a fetch `Headers`' entries), `tolerance_ms` none for the
/// core's default.
pub fn verify_webhook(
    secret: &str,
    headers: &str,
    body: &[u8],
    tolerance_ms: Option<f64>,
) -> Result<(), Error> {
    let headers = json_value(headers, "the webhook headers")?;
    let tolerance = timeout(tolerance_ms)?;
    longrun::webhook::verify_json(secret, &headers, body, tolerance)
}

pub fn run_json(run: &Run) -> String {
    run_value(run).to_string()
}

fn run_value(run: &Run) -> Value {
    json!({"object": run.object(), "id": run.id().to_string(), "url": run.url().as_str()})
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

/// A batch of events as one JSON text, one boundary crossing and one `JSON.parse` per batch,
/// laid out for V8's parser rather than as an array of event objects (which parsed at half the
/// speed, `cargo xtask bench js`):
///
/// ```text
/// {"spans":[[first_id,count,"state"],...],"values":[value,...],"progress":[p|null,...]}
/// ```
///
/// `spans` cover the values in order: `count` events with consecutive ids from `first_id`, all
/// in `state` (a run's events mostly are, so a batch usually has one or two spans). The values
/// go in as the JSON text they came as (no intermediate `Value`): this is the hot path.
/// `progress` is there only when asked for: each event's progress (spec §17) or null.
/// A batch without events is the end of the follow.
/// `js/src/core.js` (`expand`) turns it back into events, and nothing else.
pub fn batch_json(events: &[RawEvent], progress: bool) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(
        64 + events
            .iter()
            .map(|e| e.value.get().len() + 1)
            .sum::<usize>(),
    );
    out.push_str(r#"{"spans":["#);
    let mut rest = events;
    while let Some(first) = rest.first() {
        let count = rest
            .iter()
            .enumerate()
            .take_while(|(i, ev)| ev.state == first.state && ev.id == first.id + *i as u64)
            .count();
        if rest.len() != events.len() {
            out.push(',');
        }
        write!(
            out,
            r#"[{},{},"{}"]"#,
            first.id,
            count,
            first.state.as_str()
        )
        .expect("writing to a String");
        rest = &rest[count..];
    }
    out.push_str(r#"],"values":["#);
    for (i, ev) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(ev.value.get());
    }
    out.push(']');
    if progress {
        let progress: Vec<_> = events
            .iter()
            .map(|ev| ev.progress().map(ProgressOut::from))
            .collect();
        out.push_str(r#","progress":"#);
        out.push_str(&serde_json::to_string(&progress).expect("progress serializes"));
    }
    out.push('}');
    out
}

/// A batch read from `follow`, as JS gets it. A follow that ended or failed is dropped now, so
/// its connection closes at once, not when the JS object is collected.
pub fn hand_over<E>(
    follow: &mut Option<EventStream>,
    batch: Result<Vec<RawEvent>, E>,
    progress: bool,
) -> Result<String, E> {
    if !matches!(&batch, Ok(events) if !events.is_empty()) {
        *follow = None;
    }
    batch.map(|events| batch_json(&events, progress))
}

/// A page of `GET /_runs` as the JS side reads it: `{"runs": [{"run", "state", "created",
/// "ended", "tenant"}], "nextPageToken"}`, each `run` as [`run_json`] has it.
pub fn run_page_json(page: &longrun::RunPage) -> String {
    let runs: Vec<Value> = page
        .runs
        .iter()
        .map(|r| {
            json!({
                "run": run_value(&r.run),
                "state": r.state.as_str(),
                "created": r.created,
                "ended": r.ended,
                "tenant": r.tenant,
            })
        })
        .collect();
    json!({"runs": runs, "nextPageToken": page.next_page_token}).to_string()
}

/// An object of the catalogue as the JS side reads it: `{"name", "kind", "description",
/// "argsSchema", "stream"}`.
pub fn object_value(o: &longrun::ObjectInfo) -> Value {
    json!({
        "name": o.name,
        "kind": o.kind,
        "description": o.description,
        "argsSchema": o.args_schema,
        "stream": o.stream,
    })
}

/// A publication as the JS side reads it: `{"topic", "offset", "data"}`.
pub fn publication_json(p: &longrun::Publication) -> String {
    serde_json::json!({"topic": p.topic, "offset": p.offset, "data": p.data}).to_string()
}

/// A subscription's ack: `{"offset", "recovered"}`.
pub fn subscribed_json(s: longrun::Subscribed) -> String {
    serde_json::json!({"offset": s.offset, "recovered": s.recovered}).to_string()
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

/// The core's error kinds (`ErrorKind::ALL`) as a JSON array of names: what the JS test checks
/// the table of `js/src/errors.js` against.
pub fn error_kinds_json() -> String {
    let names: Vec<_> = longrun::ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    serde_json::to_string(&names).expect("names serialize")
}

pub const ABORTED: &str = r#"{"kind":"Aborted","message":"the operation was aborted"}"#;
