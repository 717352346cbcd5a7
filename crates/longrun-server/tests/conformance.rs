//! Runs the conformance scenarios of `spec/conformance/` — the JSON every SDK also runs through
//! its client — against the reference server at the HTTP level: each client op becomes the
//! requests `spec/conformance/README.md` describes, and `http` steps are sent as written.
//!
//! The files are validated against `spec/conformance/schema.json` with `jsonschema`, then
//! checked for what a schema cannot say (unique descriptions, runs saved before use, dense
//! expected events). The scenarios run concurrently against one demo server; they are
//! independent by construction. They run a second time with their `http` steps skipped, as SDK
//! runners run them, which catches a client step that silently relied on an `http` step. A
//! failing scenario is named by file, description and step index, and `KNOWN_FAILURES` works
//! like protobuf's conformance failure lists.

mod common;
mod scenarios;

use longrun_server::StoreConfig;
use scenarios::*;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use longrun_proto::sse::{self, SseItem};
use longrun_proto::{Event, ProblemKind, RunId, State};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use serde_json::{Map, Value};

/// Scenarios the reference server is known to fail, by description. A listed scenario that
/// passes fails the run, and so does a description that matches no scenario: when a fix lands,
/// its entry must go.
const KNOWN_FAILURES: &[&str] = &[];

/// Known failures on Postgres only, on top of `KNOWN_FAILURES`: not bugs but what a shared
/// store does differently. A progress callback for a run this replica does not hold is handed
/// on to the other replicas and answered 202 (spec §25.7), not 404 `run-not-found` (§25.5,
/// which the scenario checks, as the server with its default store answers).
const KNOWN_FAILURES_POSTGRES: &[&str] =
    &["nodes: a progress callback for a run the node does not hold is 404 run-not-found"];

/// The longest any step may take. No step of a passing scenario comes near it, even on a
/// loaded machine; it turns a hang (a client step waiting on a run nothing ends) into a failure.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each long poll of a `follow` may be held (a runner's choice).
const POLL_WAIT_SECS: u32 = 5;
/// How often an SSE follow reconnects after a stream ended early before giving up.
const MAX_RECONNECTS: usize = 3;

// ---------------------------------------------------------------------------------------------
// Loading: schema validation, then the checks a schema cannot make.

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()))
}

/// Every scenario file (by file name), valid by the schema and by `lint`; panics with every
/// problem found.
fn load() -> Vec<(String, ScenarioFile)> {
    let schema = read_json(&spec_dir().join("schema.json"));
    if let Err(err) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("spec/conformance/schema.json is not a valid draft 2020-12 schema: {err}");
    }
    let validator = jsonschema::draft202012::new(&schema)
        .unwrap_or_else(|err| panic!("spec/conformance/schema.json does not compile: {err}"));
    scenarios::load(
        |name, value| {
            validator
                .iter_errors(value)
                .map(|e| format!("{name}: at {}: {e}", e.instance_path()))
                .collect()
        },
        lint,
    )
}

/// What a runner checks beyond the schema (README.md, "Runners", 1).
fn lint(scenario: &Scenario) -> Vec<String> {
    let mut problems = Vec::new();
    let mut saved: BTreeSet<&str> = BTreeSet::new();
    for (i, step) in scenario.steps.iter().enumerate() {
        let mut report = |msg: String| problems.push(format!("steps[{i}] ({}): {msg}", step.op()));
        if let Some(run) = step.run_ref() {
            let name = match run {
                RunRef::Saved(name) | RunRef::Like { like: name, .. } => Some(name),
                RunRef::Literal { .. } => None,
            };
            if let Some(name) = name.filter(|n| !saved.contains(n.as_str())) {
                report(format!("the run {name:?} is not saved by an earlier step"));
            }
        }
        let own = step.save();
        if let Step::Http {
            request, expect, ..
        } = step
        {
            let mut strings: Vec<&str> = vec![&request.path];
            strings.extend(
                request
                    .headers
                    .values()
                    .flat_map(|v| v.values().iter().map(String::as_str)),
            );
            for h in expect.headers.values().flatten() {
                if let HeaderExpect::Exact(s) = h {
                    strings.push(s);
                }
            }
            let mut json_strings = Vec::new();
            if let Some(json) = &request.json {
                collect_strings(json, &mut json_strings);
            }
            if let Some(json) = &expect.json {
                collect_strings(json, &mut json_strings);
            }
            for v in expect.json_includes.iter().flat_map(|m| m.values()) {
                collect_strings(v, &mut json_strings);
            }
            strings.extend(json_strings);
            for s in strings {
                for name in placeholders(s) {
                    if !saved.contains(name) && own != Some(name) {
                        report(format!(
                            "the placeholder in {s:?} names {name:?}, which no earlier step saved"
                        ));
                    }
                }
            }
            if let Some(slug) = &expect.problem {
                check_slug_status(slug, Some(expect.status), &mut report);
            }
        }
        if let Some(error) = step.error() {
            if let Some(slug) = &error.problem {
                check_slug_status(slug, error.status, &mut report);
            }
            if let Some(status) = error.status {
                if Kind::of_status(status) != error.kind {
                    report(format!(
                        "status {status} is {:?}, not {:?}",
                        Kind::of_status(status),
                        error.kind
                    ));
                }
            }
        }
        if let Step::Follow {
            since,
            until,
            expect,
            ..
        } = step
        {
            let first = since.map_or(0, |c| c + 1);
            if let (Some(since), Some(until)) = (since, until) {
                if until <= since {
                    report(format!("until ({until}) must be after since ({since})"));
                }
            }
            match expect {
                FollowExpect::Events { events } => {
                    check_dense(events, first, &mut report);
                    match (until, events.last()) {
                        (Some(until), Some(last)) if last.id != *until => {
                            report(format!(
                                "the events must end with the event {until} (until)"
                            ));
                        }
                        (Some(_), None) => report("until needs at least one expected event".into()),
                        (None, Some(last)) if !last.state.is_terminal() => {
                            report("the events must end with a terminal event".into());
                        }
                        _ => {}
                    }
                    let terminals = events.iter().filter(|e| e.state.is_terminal()).count();
                    if terminals > 1
                        || (terminals == 1 && !events.last().unwrap().state.is_terminal())
                    {
                        report("a terminal event can only be the last".into());
                    }
                }
                FollowExpect::Tail { count, tail } => {
                    check_dense(
                        tail,
                        first + (*count as u64).saturating_sub(tail.len() as u64),
                        &mut report,
                    );
                    if *count < tail.len() {
                        report("count is smaller than the tail".into());
                    }
                    if !tail.last().is_some_and(|e| e.state.is_terminal()) {
                        report("the tail must end with a terminal event".into());
                    }
                }
                FollowExpect::Error { .. } => {}
            }
        }
        if let Some(name) = own {
            if !saved.insert(name) {
                report(format!("the name {name:?} is saved twice"));
            }
        }
    }
    problems
}

fn check_slug_status(slug: &str, status: Option<u16>, report: &mut impl FnMut(String)) {
    match ProblemKind::from_type_uri(&format!("{}{slug}", longrun_proto::Problem::TYPE_PREFIX)) {
        None => report(format!("{slug:?} is not a problem type of longrun-proto")),
        Some(kind) if status.is_some_and(|s| s != kind.status()) => {
            report(format!(
                "the problem {slug:?} has status {}, not {}",
                kind.status(),
                status.unwrap()
            ));
        }
        Some(_) => {}
    }
}

fn check_dense(events: &[Event], first: u64, report: &mut impl FnMut(String)) {
    for (i, event) in events.iter().enumerate() {
        if event.id != first + i as u64 {
            report(format!(
                "expected event ids must be dense from {first}; found id {} at index {i}",
                event.id
            ));
            return;
        }
    }
}

fn collect_strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(members) => members.values().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Templates (README.md, "Templates").

/// A placeholder: the server's own port, or a field of something a step saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder<'a> {
    /// `{server.port}`.
    ServerPort,
    /// `{name}` (field `None`: the saved Location) or `{name.field}`.
    Saved(&'a str, Option<&'a str>),
}

/// `{server.port}`, the one placeholder that is not a saved name.
const SERVER_PORT: &str = "{server.port}";

/// A placeholder at the start of `s` (just after its `{`), and the length up to and including
/// the `}`.
fn placeholder(s: &str) -> Option<(Placeholder<'_>, usize)> {
    let end = s.find('}')?;
    let inner = &s[..end];
    if inner == &SERVER_PORT[1..SERVER_PORT.len() - 1] {
        return Some((Placeholder::ServerPort, end + 1));
    }
    let (name, field) = match inner.split_once('.') {
        Some((name, field)) => (name, Some(field)),
        None => (inner, None),
    };
    let name_ok = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let field_ok = field.is_none_or(|f| ["id", "id_upper", "id_simple", "object"].contains(&f));
    (name_ok && field_ok).then_some((Placeholder::Saved(name, field), end + 1))
}

/// The saved names the placeholders of `s` refer to.
fn placeholders(s: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find('{') {
        rest = &rest[start + 1..];
        if let Some((found, len)) = placeholder(rest) {
            if let Placeholder::Saved(name, _) = found {
                names.push(name);
            }
            rest = &rest[len..];
        }
    }
    names
}

/// What placeholders stand for in one scenario: the server's port and what its steps saved.
struct Vars {
    port: u16,
    saved: HashMap<String, Saved>,
}

impl Vars {
    fn expand(&self, s: &str) -> Result<String, String> {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(start) = rest.find('{') {
            out.push_str(&rest[..start]);
            rest = &rest[start + 1..];
            let Some((found, len)) = placeholder(rest) else {
                out.push('{');
                continue;
            };
            rest = &rest[len..];
            let (name, field) = match found {
                Placeholder::ServerPort => {
                    out.push_str(&self.port.to_string());
                    continue;
                }
                Placeholder::Saved(name, field) => (name, field),
            };
            let saved = self
                .saved
                .get(name)
                .ok_or_else(|| format!("the placeholder {{{name}}} names nothing saved"))?;
            out.push_str(&match field {
                None => saved.location.clone(),
                Some("id") => saved.id.clone(),
                Some("id_upper") => saved.id.to_uppercase(),
                Some("id_simple") => saved.id.replace('-', ""),
                Some(_) => saved.object.clone().ok_or_else(|| {
                    format!("{{{name}.object}}: {name:?} is not a run, it has no object")
                })?,
            });
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Strings templated; a string that is exactly `{server.port}` is the port as a number.
    fn expand_json(&self, value: &Value) -> Result<Value, String> {
        Ok(match value {
            Value::String(s) if s == SERVER_PORT => Value::from(self.port),
            Value::String(s) => Value::String(self.expand(s)?),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.expand_json(v))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.expand_json(v)?)))
                    .collect::<Result<_, String>>()?,
            ),
            other => other.clone(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing values (README.md, "Comparing values").

fn event_eq(a: &Event, b: &Event) -> bool {
    a.id == b.id && a.state == b.state && json_eq(&a.value, &b.value)
}

fn show_events(events: &[Event]) -> String {
    let shown: Vec<String> = events
        .iter()
        .map(|e| serde_json::to_string(e).expect("events serialize"))
        .collect();
    format!("[{}]", shown.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Running scenarios.

/// What a step saved (README.md, "Saved runs and run references"): a run (it has an object,
/// and its Location is `/{object}/{id}`), or another resource a 201 created, such as a node.
#[derive(Debug, Clone)]
struct Saved {
    object: Option<String>,
    id: String,
    location: String,
}

struct Runner {
    client: reqwest::Client,
    /// For `http` steps: one connection per exchange. The server may close a connection after
    /// a reply to a large body it did not read (413, 415), without `Connection: close`; that
    /// connection must not go back to the pool the client ops share.
    raw: reqwest::Client,
    base: String,
    vars: Vars,
}

/// A reply read to its end, for checks and messages.
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    async fn read(what: &str, res: reqwest::Response) -> Result<Reply, String> {
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res
            .bytes()
            .await
            .map_err(|e| format!("{what}: reading the body: {}", chain(&e)))?;
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        if text.chars().count() > 400 {
            format!(
                "{}… ({} bytes)",
                text.chars().take(400).collect::<String>(),
                self.body.len()
            )
        } else {
            text.into_owned()
        }
    }

    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("the body is not JSON ({e}): {:?}", self.text()))
    }

    fn describe(&self) -> String {
        format!("{} {}", self.status, self.text())
    }
}

/// The result of following a run: its events, or the HTTP error reply that stopped it.
/// Replies that break the protocol are failures of the step (`Err` of the outer `Result`).
type Followed = Result<Vec<Event>, Reply>;

/// How a run ended, for `wait`.
enum WaitOutcome {
    Ended(Event),
    Http(Reply),
    Timeout,
}

impl Runner {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn resolve(&self, run: &RunRef) -> Result<String, String> {
        let saved = |name: &str| match self.vars.saved.get(name) {
            Some(saved) if saved.object.is_some() => Ok(saved),
            Some(saved) => Err(format!(
                "{name:?} is not a run but {}: client steps act on runs",
                saved.location
            )),
            None => Err(format!("no run is saved as {name:?}")),
        };
        Ok(match run {
            RunRef::Saved(name) => saved(name)?.location.clone(),
            RunRef::Literal { object, id } => format!("/{object}/{id}"),
            RunRef::Like { like, object } => format!("/{object}/{}", saved(like)?.id),
        })
    }

    fn save(&mut self, name: &str, saved: Saved) {
        self.vars.saved.insert(name.to_owned(), saved);
    }

    /// What an `http` step's `save` saves: a 201 or 303 with a `Location` and a JSON `id`; a
    /// run when the body also has its `object` (then the Location is the run's path).
    fn saved_by(reply: &Reply) -> Result<Saved, String> {
        if !matches!(reply.status, 201 | 303) {
            return Err(format!(
                "cannot save: only a 201 or 303 reply is saved, got {}",
                reply.describe()
            ));
        }
        let body = reply.json().map_err(|e| format!("cannot save: {e}"))?;
        let location = reply.header("location");
        let (Some(id), Some(location)) = (body["id"].as_str(), location) else {
            return Err(format!(
                "cannot save: the reply has no Location or no JSON id: {}",
                reply.describe()
            ));
        };
        let object = body.get("object").and_then(Value::as_str);
        if let Some(object) = object {
            if location != format!("/{object}/{id}") {
                return Err(format!(
                    "cannot save the run: Location is {location:?}, not /{object}/{id}"
                ));
            }
        }
        Ok(Saved {
            object: object.map(str::to_owned),
            id: id.to_owned(),
            location: location.to_owned(),
        })
    }

    async fn step(&mut self, step: &Step) -> Result<(), String> {
        match step {
            Step::Submit {
                object,
                args,
                save,
                expect,
                ..
            } => {
                self.submit(object, args.as_ref(), save.as_deref(), expect)
                    .await
            }
            Step::Follow {
                run,
                transport,
                since,
                until,
                expect,
                ..
            } => {
                let path = self.resolve(run)?;
                let followed = match transport {
                    StepTransport::Sse => self.follow_sse(&path, *since, *until).await?,
                    StepTransport::Poll => self.follow_poll(&path, *since, *until).await?,
                };
                check_followed(followed, expect)
            }
            Step::Exists { run, expect, .. } => {
                let path = self.resolve(run)?;
                self.exists(&path, expect).await
            }
            Step::Cancel { run, expect, .. } => {
                let path = self.resolve(run)?;
                self.cancel(&path, expect).await
            }
            Step::Wait {
                run,
                timeout_ms,
                expect,
                ..
            } => {
                let path = self.resolve(run)?;
                let outcome = self.wait(&path, *timeout_ms).await?;
                check_wait(outcome, expect)
            }
            Step::Http {
                request,
                save,
                expect,
                ..
            } => self.http(request, save.as_deref(), expect).await,
        }
    }

    async fn submit(
        &mut self,
        object: &str,
        args: Option<&Map<String, Value>>,
        save: Option<&str>,
        expect: &SubmitExpect,
    ) -> Result<(), String> {
        let mut req = self.client.post(self.url(&format!("/{object}")));
        if let Some(args) = args {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(serde_json::to_vec(args).expect("arguments serialize"));
        }
        let res = req
            .send()
            .await
            .map_err(|e| format!("POST /{object}: {}", chain(&e)))?;
        let reply = Reply::read("submit", res).await?;
        let state = match expect {
            SubmitExpect::Error { error } => return check_error(error, &reply, true),
            SubmitExpect::Submitted { state } => state,
        };
        if reply.status != 201 {
            return Err(format!("expected 201, got {}", reply.describe()));
        }
        let (id, got_state) = check_run_reply(&reply, object)?;
        if got_state != *state {
            return Err(format!(
                "the submit reply's state is {got_state}, expected {state}"
            ));
        }
        let location = reply.header("location").unwrap_or_default();
        if location != format!("/{object}/{id}") {
            return Err(format!(
                "Location is {location:?}, expected the run path /{object}/{id}"
            ));
        }
        if let Some(name) = save {
            self.save(
                name,
                Saved {
                    object: Some(object.to_owned()),
                    location: format!("/{object}/{id}"),
                    id,
                },
            );
        }
        Ok(())
    }

    async fn follow_sse(
        &self,
        path: &str,
        since: Option<u64>,
        until: Option<u64>,
    ) -> Result<Followed, String> {
        let mut cursor = since;
        let mut events = Vec::new();
        for _ in 0..=MAX_RECONNECTS {
            let mut req = self
                .client
                .get(self.url(path))
                .header("accept", "text/event-stream");
            if let Some(c) = cursor {
                req = req.header("last-event-id", c.to_string());
            }
            let res = req
                .send()
                .await
                .map_err(|e| format!("GET {path} (SSE): {}", chain(&e)))?;
            match res.status().as_u16() {
                204 => return Ok(Ok(events)),
                200 => {}
                _ => return Ok(Err(Reply::read("follow", res).await?)),
            }
            let content_type = res
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            if content_type != Some("text/event-stream") {
                return Err(format!("an SSE reply has Content-Type {content_type:?}"));
            }
            let mut items = std::pin::pin!(sse::decode(res.bytes_stream()));
            let mut first = true;
            while let Some(item) = items.next().await {
                let item = item.map_err(|e| format!("reading the event stream: {}", chain(&e)))?;
                let msg = match item {
                    SseItem::Retry(_) => {
                        first = false;
                        continue;
                    }
                    SseItem::Message(_) if first => {
                        return Err("the event stream does not start with a retry hint".into());
                    }
                    SseItem::Message(msg) => msg,
                };
                let event = sse::to_event(&msg)
                    .ok_or_else(|| format!("the SSE message {msg:?} is not a longrun event"))?;
                let expected = cursor.map_or(0, |c| c + 1);
                if event.id != expected {
                    return Err(format!(
                        "event {} arrived where event {expected} was due",
                        event.id
                    ));
                }
                cursor = Some(event.id);
                let stop = event.state.is_terminal() || until == Some(event.id);
                events.push(event);
                if stop {
                    return Ok(Ok(events));
                }
            }
        }
        Err(format!(
            "the event stream ended {} times before the terminal event; got {}",
            MAX_RECONNECTS + 1,
            show_events(&events)
        ))
    }

    async fn follow_poll(
        &self,
        path: &str,
        since: Option<u64>,
        until: Option<u64>,
    ) -> Result<Followed, String> {
        let mut cursor = since;
        let mut events = Vec::new();
        loop {
            let query = match cursor {
                Some(c) => format!("?last_event_id={c}&wait={POLL_WAIT_SECS}"),
                None => format!("?wait={POLL_WAIT_SECS}"),
            };
            let res = self
                .client
                .get(self.url(&format!("{path}{query}")))
                .header("accept", "application/json")
                .send()
                .await
                .map_err(|e| format!("GET {path}{query}: {}", chain(&e)))?;
            let reply = Reply::read("follow", res).await?;
            if reply.status != 200 {
                return Ok(Err(reply));
            }
            if reply.header("content-type") != Some("application/json") {
                return Err(format!(
                    "a long-poll reply has Content-Type {:?}",
                    reply.header("content-type")
                ));
            }
            let state = reply.header("longrun-state").and_then(State::parse);
            let last = reply
                .header("longrun-last-event-id")
                .and_then(longrun_proto::header::parse_cursor);
            let (Some(state), Some(last)) = (state, last) else {
                return Err(
                    "a long-poll reply lacks Longrun-State or Longrun-Last-Event-Id".into(),
                );
            };
            let batch: Vec<Event> = serde_json::from_slice(&reply.body).map_err(|e| {
                format!(
                    "a long-poll reply is not an array of events ({e}): {}",
                    reply.text()
                )
            })?;
            if batch.is_empty() {
                if state.is_terminal() && cursor.is_some_and(|c| last <= c) {
                    return Ok(Ok(events));
                }
                continue;
            }
            let count = batch.len();
            for (i, event) in batch.into_iter().enumerate() {
                let expected = cursor.map_or(0, |c| c + 1);
                if event.id != expected {
                    return Err(format!(
                        "event {} arrived where event {expected} was due",
                        event.id
                    ));
                }
                cursor = Some(event.id);
                let terminal = event.state.is_terminal();
                let stop = terminal || until == Some(event.id);
                events.push(event);
                if terminal && i + 1 != count {
                    return Err("a long-poll reply has events after the terminal event".into());
                }
                if stop {
                    return Ok(Ok(events));
                }
            }
        }
    }

    async fn exists(&self, path: &str, expect: &ExistsExpect) -> Result<(), String> {
        let res = self
            .client
            .head(self.url(path))
            .send()
            .await
            .map_err(|e| format!("HEAD {path}: {}", chain(&e)))?;
        let reply = Reply::read("exists", res).await?;
        if !reply.body.is_empty() {
            return Err("a reply to HEAD has a body".into());
        }
        match (reply.status, expect) {
            (_, ExistsExpect::Error { error }) => check_error(error, &reply, false),
            (404, ExistsExpect::Exists { exists: false, .. }) => {
                expect_header(&reply, "content-type", "application/problem+json")
            }
            (
                200,
                ExistsExpect::Exists {
                    exists: true,
                    state,
                    last_event_id,
                },
            ) => {
                let got_state = reply.header("longrun-state").and_then(State::parse);
                let got_last = reply
                    .header("longrun-last-event-id")
                    .and_then(longrun_proto::header::parse_cursor);
                if got_state.is_none() || got_last.is_none() {
                    return Err("HEAD 200 lacks Longrun-State or Longrun-Last-Event-Id".into());
                }
                if state.is_some() && got_state != *state {
                    return Err(format!("the run is {got_state:?}, expected {state:?}"));
                }
                if last_event_id.is_some() && got_last != *last_event_id {
                    return Err(format!(
                        "the last event id is {got_last:?}, expected {last_event_id:?}"
                    ));
                }
                Ok(())
            }
            (status, ExistsExpect::Exists { exists, .. }) => {
                Err(format!("expected exists: {exists}, got status {status}"))
            }
        }
    }

    async fn cancel(&self, path: &str, expect: &CancelExpect) -> Result<(), String> {
        let res = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .map_err(|e| format!("DELETE {path}: {}", chain(&e)))?;
        let reply = Reply::read("cancel", res).await?;
        let (outcome, state) = match expect {
            CancelExpect::Error { error } => return check_error(error, &reply, true),
            CancelExpect::Outcome { outcome, state } => (*outcome, *state),
        };
        match (reply.status, outcome) {
            (202, Outcome::Accepted) => {
                let object = path.split('/').nth(1).unwrap_or_default();
                let (id, got_state) = check_run_reply(&reply, object)?;
                if !path.ends_with(&id) {
                    return Err(format!("the cancel reply is about run {id}, not {path}"));
                }
                match state {
                    Some(state) if state != got_state => Err(format!(
                        "the cancel reply's state is {got_state}, expected {state}"
                    )),
                    _ => Ok(()),
                }
            }
            (409, Outcome::Ended) => {
                check_problem(&reply, Some("run-ended"))?;
                let got = reply.json()?;
                let expected = state.map(State::as_str);
                if got["state"].as_str() != expected {
                    return Err(format!(
                        "the run-ended problem has state {}, expected {expected:?}",
                        got["state"]
                    ));
                }
                Ok(())
            }
            _ => Err(format!(
                "expected the outcome {outcome:?}, got {}",
                reply.describe()
            )),
        }
    }

    async fn wait(&self, path: &str, timeout_ms: Option<u64>) -> Result<WaitOutcome, String> {
        let follow = self.follow_sse(path, None, None);
        let followed = match timeout_ms {
            Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), follow).await {
                Ok(followed) => followed?,
                Err(_) => return Ok(WaitOutcome::Timeout),
            },
            None => follow.await?,
        };
        match followed {
            Err(reply) => Ok(WaitOutcome::Http(reply)),
            Ok(events) => events
                .into_iter()
                .last()
                .filter(|e| e.state.is_terminal())
                .map(WaitOutcome::Ended)
                .ok_or_else(|| "the run's events have no terminal event".into()),
        }
    }

    async fn http(
        &mut self,
        request: &HttpRequest,
        save: Option<&str>,
        expect: &HttpExpect,
    ) -> Result<(), String> {
        let path = self.vars.expand(&request.path)?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|e| format!("method {:?}: {e}", request.method))?;
        let mut req = self.raw.request(method, self.url(&path));
        for (name, values) in &request.headers {
            for value in values.values() {
                req = req.header(name.as_str(), self.vars.expand(value)?);
            }
        }
        let body: Option<Vec<u8>> = if let Some(text) = &request.body {
            Some(text.clone().into_bytes())
        } else if let Some(json) = &request.json {
            Some(serde_json::to_vec(&self.vars.expand_json(json)?).expect("JSON serializes"))
        } else if let Some(bytes) = &request.body_bytes {
            Some(bytes.clone())
        } else {
            request.body_repeat.as_ref().map(|r| {
                let mut body = r.prefix.clone().into_bytes();
                body.extend(r.text.repeat(r.times).into_bytes());
                body.extend(r.suffix.as_bytes());
                body
            })
        };
        if let Some(body) = body {
            req = if request.chunked {
                let chunk = futures::stream::once(async move { Ok::<_, std::io::Error>(body) });
                req.body(reqwest::Body::wrap_stream(chunk))
            } else {
                req.body(body)
            };
        }
        let what = format!("{} {path}", request.method);
        let res = req
            .send()
            .await
            .map_err(|e| format!("{what}: {}", chain(&e)))?;
        let reply = Reply::read(&what, res).await?;

        if let Some(name) = save {
            let saved = Self::saved_by(&reply).map_err(|e| format!("{what}: {e}"))?;
            self.save(name, saved);
        }

        if reply.status != expect.status {
            return Err(format!(
                "{what}: expected status {}, got {}",
                expect.status,
                reply.describe()
            ));
        }
        for (name, spec) in &expect.headers {
            let values: Vec<&str> = reply
                .headers
                .get_all(name.as_str())
                .iter()
                .map(|v| v.to_str().unwrap_or("\u{fffd}"))
                .collect();
            match spec {
                None if values.is_empty() => {}
                None => return Err(format!("{what}: expected no {name} header, got {values:?}")),
                Some(HeaderExpect::Exact(expected)) => {
                    let expected = self.vars.expand(expected)?;
                    if values.len() != 1 || values[0] != expected {
                        return Err(format!(
                            "{what}: expected {name}: {expected:?}, got {values:?}"
                        ));
                    }
                }
                Some(HeaderExpect::List { list }) => {
                    let got: BTreeSet<&str> = values
                        .iter()
                        .flat_map(|v| v.split(','))
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .collect();
                    let expected: BTreeSet<&str> = list.iter().map(String::as_str).collect();
                    if got != expected {
                        return Err(format!(
                            "{what}: expected {name} listing {expected:?}, got {values:?}"
                        ));
                    }
                }
            }
        }
        if let Some(slug) = &expect.problem {
            check_problem(&reply, Some(slug)).map_err(|e| format!("{what}: {e}"))?;
        }
        if let Some(expected) = &expect.json {
            let expected = self.vars.expand_json(expected)?;
            let got = reply.json()?;
            if !json_eq(&expected, &got) {
                return Err(format!("{what}: expected the body {expected}, got {got}"));
            }
        }
        if let Some(members) = &expect.json_includes {
            let got = reply.json()?;
            for (key, expected) in members {
                let expected = self.vars.expand_json(expected)?;
                if !got.get(key).is_some_and(|v| json_eq(&expected, v)) {
                    return Err(format!(
                        "{what}: expected the member {key:?}: {expected} in {got}"
                    ));
                }
            }
        }
        if let Some(length) = expect.json_length {
            let got = reply.json()?;
            let got_len = got.as_array().map(Vec::len);
            if got_len != Some(length) {
                return Err(format!(
                    "{what}: expected an array of {length} elements, got {got_len:?} elements"
                ));
            }
        }
        if let Some(body) = &expect.body {
            if reply.body != body.as_bytes() {
                return Err(format!(
                    "{what}: expected the body {body:?}, got {:?}",
                    reply.text()
                ));
            }
        }
        Ok(())
    }
}

/// An error with its sources: reqwest's own message ("error sending request") hides the cause.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Check a 201/202 body `{"id", "object", "state", "url"}`; returns the id and state.
fn check_run_reply(reply: &Reply, object: &str) -> Result<(String, State), String> {
    expect_header(reply, "content-type", "application/json")?;
    let body = reply.json()?;
    let id = body["id"].as_str().unwrap_or_default().to_owned();
    let lowercase = RunId::parse(&id).is_ok_and(|parsed| parsed.to_string() == id);
    if !lowercase {
        return Err(format!(
            "the reply's id {id:?} is not a lowercase hyphenated UUID: {body}"
        ));
    }
    if body["object"] != object {
        return Err(format!(
            "the reply's object is {}, expected {object:?}",
            body["object"]
        ));
    }
    if body["url"] != format!("/{object}/{id}") {
        return Err(format!(
            "the reply's url is {}, expected /{object}/{id}",
            body["url"]
        ));
    }
    let state = body["state"]
        .as_str()
        .and_then(State::parse)
        .ok_or_else(|| format!("the reply's state is not a state: {body}"))?;
    Ok((id, state))
}

fn expect_header(reply: &Reply, name: &str, expected: &str) -> Result<(), String> {
    match reply.header(name) {
        Some(v) if v == expected => Ok(()),
        got => Err(format!(
            "expected {name}: {expected}, got {got:?} ({})",
            reply.describe()
        )),
    }
}

/// Every error reply is an RFC 9457 problem; `slug`, when given, is its type.
fn check_problem(reply: &Reply, slug: Option<&str>) -> Result<(), String> {
    expect_header(reply, "content-type", "application/problem+json")?;
    let body = reply.json()?;
    let type_uri = body["type"].as_str().unwrap_or_default();
    if let Some(slug) = slug {
        let expected = format!("{}{slug}", longrun_proto::Problem::TYPE_PREFIX);
        if type_uri != expected {
            return Err(format!("expected the problem {expected}, got {body}"));
        }
    } else if !type_uri.starts_with(longrun_proto::Problem::TYPE_PREFIX) {
        return Err(format!("the problem type is not a longrun one: {body}"));
    }
    if body["status"] != reply.status {
        return Err(format!(
            "the problem's status is not the reply's ({}): {body}",
            reply.status
        ));
    }
    for member in ["title", "detail"] {
        if body[member].as_str().is_none_or(str::is_empty) {
            return Err(format!("the problem has no {member}: {body}"));
        }
    }
    Ok(())
}

/// Check an HTTP error reply against an error expectation (README.md, "Errors").
fn check_error(expect: &ErrorExpect, reply: &Reply, has_body: bool) -> Result<(), String> {
    let kind = Kind::of_status(reply.status);
    if reply.status < 400 || kind != expect.kind {
        return Err(format!(
            "expected the error {:?}, got {}",
            expect.kind,
            reply.describe()
        ));
    }
    if let Some(status) = expect.status {
        if status != reply.status {
            return Err(format!(
                "expected status {status}, got {}",
                reply.describe()
            ));
        }
    }
    if has_body {
        check_problem(reply, expect.problem.as_deref())
    } else {
        expect_header(reply, "content-type", "application/problem+json")
    }
}

fn check_followed(followed: Followed, expect: &FollowExpect) -> Result<(), String> {
    match (followed, expect) {
        (Err(reply), FollowExpect::Error { error }) => check_error(error, &reply, true),
        (Err(reply), _) => Err(format!("expected events, got {}", reply.describe())),
        (Ok(events), FollowExpect::Error { error }) => Err(format!(
            "expected the error {:?}, got the events {}",
            error.kind,
            show_events(&events)
        )),
        (Ok(events), FollowExpect::Events { events: expected }) => {
            let same = events.len() == expected.len()
                && events.iter().zip(expected).all(|(a, b)| event_eq(a, b));
            if same {
                Ok(())
            } else {
                Err(format!(
                    "expected {}\n      got {}",
                    show_events(expected),
                    show_events(&events)
                ))
            }
        }
        (Ok(events), FollowExpect::Tail { count, tail }) => {
            let got_tail = &events[events.len().saturating_sub(tail.len())..];
            let same = got_tail.len() == tail.len()
                && got_tail.iter().zip(tail).all(|(a, b)| event_eq(a, b));
            if events.len() == *count && same {
                Ok(())
            } else {
                Err(format!(
                    "expected {count} events ending {}\n      got {} events ending {}",
                    show_events(tail),
                    events.len(),
                    show_events(got_tail)
                ))
            }
        }
    }
}

fn check_wait(outcome: WaitOutcome, expect: &WaitExpect) -> Result<(), String> {
    let (kind, value) = match &outcome {
        WaitOutcome::Ended(event) => match event.state {
            State::Success => {
                return match expect {
                    WaitExpect::Value { value } if json_eq(value, &event.value) => Ok(()),
                    WaitExpect::Value { value } => {
                        Err(format!("expected the value {value}, got {}", event.value))
                    }
                    WaitExpect::Error { error } => Err(format!(
                        "expected the error {:?}, got success with {}",
                        error.kind, event.value
                    )),
                };
            }
            State::Error => (Kind::RunFailed, Some(&event.value)),
            State::Canceled => (Kind::Canceled, Some(&event.value)),
            State::Queued | State::Running => unreachable!("wait only ends on a terminal event"),
        },
        WaitOutcome::Timeout => (Kind::Timeout, None),
        WaitOutcome::Http(reply) => {
            return match expect {
                WaitExpect::Error { error } => check_error(error, reply, true),
                WaitExpect::Value { .. } => {
                    Err(format!("expected a value, got {}", reply.describe()))
                }
            };
        }
    };
    let error = match expect {
        WaitExpect::Error { error } => error,
        WaitExpect::Value { value } => {
            return Err(format!(
                "expected the value {value}, got {kind:?} {}",
                value_text(value_of(&outcome))
            ));
        }
    };
    if error.kind != kind {
        return Err(format!(
            "expected {:?}, got {kind:?} {}",
            error.kind,
            value_text(value)
        ));
    }
    match (&error.value, value) {
        (Some(expected), Some(got)) if !json_eq(expected, got) => {
            Err(format!("expected {kind:?} with {expected}, got {got}"))
        }
        _ => Ok(()),
    }
}

fn value_of(outcome: &WaitOutcome) -> Option<&Value> {
    match outcome {
        WaitOutcome::Ended(event) => Some(&event.value),
        _ => None,
    }
}

fn value_text(value: Option<&Value>) -> String {
    value.map_or_else(String::new, |v| format!("with {v}"))
}

/// How a scenario is run: as this runner does, every step on the wire; or as an SDK runner
/// does, skipping `http` steps and the steps that need a run only a skipped step saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Wire,
    Sdk,
}

/// A scenario that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    Passed,
    /// Every step was skipped (`Mode::Sdk` only).
    Skipped,
}

async fn run_scenario(
    clients: &Clients,
    (base, port): (String, u16),
    scenario: &Scenario,
    mode: Mode,
) -> Result<Ran, String> {
    let mut runner = Runner {
        client: clients.pooled.clone(),
        raw: clients.raw.clone(),
        base,
        vars: Vars {
            port,
            saved: HashMap::new(),
        },
    };
    let mut unavailable: BTreeSet<&str> = BTreeSet::new();
    let mut ran = 0;
    for (i, step) in scenario.steps.iter().enumerate() {
        if mode == Mode::Sdk && skipped_by_sdks(step, &unavailable) {
            unavailable.extend(step.save());
            continue;
        }
        ran += 1;
        let result = match tokio::time::timeout(STEP_TIMEOUT, runner.step(step)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no outcome within {} s", STEP_TIMEOUT.as_secs())),
        };
        if let Err(msg) = result {
            // Leave no `sleep` and no node behind on a shared server: DELETE cancels a run and
            // unregisters a node.
            for saved in runner.vars.saved.values() {
                let _ = runner
                    .client
                    .delete(runner.url(&saved.location))
                    .send()
                    .await;
            }
            return Err(format!("steps[{i}] ({}): {msg}", step.op()));
        }
    }
    Ok(if ran == 0 { Ran::Skipped } else { Ran::Passed })
}

/// README.md, "http": SDK runners skip `http` steps, and every step whose run only a skipped
/// step saved.
fn skipped_by_sdks(step: &Step, unavailable: &BTreeSet<&str>) -> bool {
    let needs_unavailable = step.run_ref().is_some_and(|run| match run {
        RunRef::Saved(name) | RunRef::Like { like: name, .. } => {
            unavailable.contains(name.as_str())
        }
        RunRef::Literal { .. } => false,
    });
    matches!(step, Step::Http { .. }) || needs_unavailable
}

/// The HTTP clients scenarios share: pooled for client ops, one connection per exchange for
/// `http` steps (see `Runner::raw`). Redirects are never followed.
struct Clients {
    pooled: reqwest::Client,
    raw: reqwest::Client,
}

/// Run every scenario concurrently against a fresh demo server.
async fn run_all(
    files: &[(String, ScenarioFile)],
    mode: Mode,
    store: StoreConfig,
) -> Vec<(&str, &Scenario, Result<Ran, String>)> {
    let server =
        common::TestServer::start(longrun_server::Server::builder().store(store).demo()).await;
    let builder = || reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    let clients = Clients {
        pooled: builder().build().expect("an HTTP client"),
        raw: builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("an HTTP client"),
    };
    let (clients, base, port) = (&clients, &server.base, server.addr.port());
    let runs = files.iter().flat_map(|(file, f)| {
        f.scenarios.iter().map(move |scenario| {
            let base = base.clone();
            async move {
                let result = run_scenario(clients, (base, port), scenario, mode).await;
                (file.as_str(), scenario, result)
            }
        })
    });
    let results = futures::future::join_all(runs).await;
    server.stop().await.expect("the server stops cleanly");
    results
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn scenario_files_are_valid() {
    let files = load();
    for (name, file) in &files {
        println!(
            "{name}: {} ({} scenarios)",
            file.description,
            file.scenarios.len()
        );
    }
    let scenarios: usize = files.iter().map(|(_, f)| f.scenarios.len()).sum();
    println!("{scenarios} scenarios in {} files are valid", files.len());
}

#[test]
fn templates_and_value_comparison() {
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let vars = Vars {
        port: 8123,
        saved: HashMap::from([
            (
                "r".to_owned(),
                Saved {
                    object: Some("echo".into()),
                    id: id.into(),
                    location: format!("/echo/{id}"),
                },
            ),
            (
                "n".to_owned(),
                Saved {
                    object: None,
                    id: id.into(),
                    location: format!("/_nodes/{id}"),
                },
            ),
        ]),
    };
    assert_eq!(
        vars.expand("{r}?x={r.object}&{r.id_upper}/{r.id_simple} {} {\"a\":1} {r.nope} {")
            .unwrap(),
        "/echo/0f8fad5b-d9cb-469f-a165-70867728950e?x=echo&0F8FAD5B-D9CB-469F-A165-70867728950E/\
         0f8fad5bd9cb469fa16570867728950e {} {\"a\":1} {r.nope} {"
    );
    assert!(vars.expand("{other}").is_err());
    assert_eq!(
        vars.expand("{n}/services {n.id} :{server.port}").unwrap(),
        format!("/_nodes/{id}/services {id} :8123")
    );
    assert!(vars.expand("{n.object}").is_err(), "a node has no object");
    assert_eq!(
        vars.expand_json(&serde_json::json!({"port": "{server.port}", "at": ["x:{server.port}"]}))
            .unwrap(),
        serde_json::json!({"port": 8123, "at": ["x:8123"]})
    );
    assert_eq!(
        placeholders("{a}{b.id}{}{c.x}{server.port}{server}"),
        ["a", "b", "server"]
    );
    let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    assert!(json_eq(
        &parse("[1, 1.0, {\"a\": 1e0}]"),
        &parse("[1.0, 1, {\"a\": 1}]")
    ));
    assert!(json_eq(
        &parse("{\"a\":1,\"b\":2}"),
        &parse("{\"b\":2,\"a\":1}")
    ));
    assert!(!json_eq(&parse("[1, 2]"), &parse("[2, 1]")));
    assert!(!json_eq(&parse("1"), &parse("\"1\"")));
    assert!(!json_eq(&parse("{\"a\":null}"), &parse("{}")));
    assert!(json_eq(
        &parse("9007199254740991"),
        &parse("9007199254740991.0")
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_pass_against_the_reference_server() {
    scenarios_pass_on(StoreConfig::Memory, &[]).await;
}

/// The same files, unchanged, against a server that keeps its runs in a SQLite file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_pass_against_the_reference_server_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    scenarios_pass_on(
        StoreConfig::Sqlite {
            path: dir.path().join("longrun.db"),
            full_sync: false,
        },
        &[],
    )
    .await;
}

/// The same files, unchanged, against a server that keeps its runs in Postgres.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_pass_against_the_reference_server_on_postgres() {
    let Some(url) = common::postgres::database("conformance on postgres").await else {
        return;
    };
    scenarios_pass_on(
        StoreConfig::parse(&url).expect("a Postgres URL"),
        KNOWN_FAILURES_POSTGRES,
    )
    .await;
}

/// `also_known`: the store's own known failures, beside `KNOWN_FAILURES`.
async fn scenarios_pass_on(store: StoreConfig, also_known: &[&'static str]) {
    let files = load();
    let results = run_all(&files, Mode::Wire, store).await;

    let known: BTreeSet<&str> = KNOWN_FAILURES.iter().chain(also_known).copied().collect();
    let all: BTreeSet<&str> = results
        .iter()
        .map(|(_, s, _)| s.description.as_str())
        .collect();
    let mut problems = Vec::new();
    for stale in known.difference(&all) {
        problems.push(format!(
            "KNOWN_FAILURES lists {stale:?}, which is no scenario: remove it"
        ));
    }
    let (mut passed, mut known_failed) = (0, 0);
    for (file, scenario, result) in &results {
        let listed = known.contains(scenario.description.as_str());
        match (result, listed) {
            (Ok(_), false) => passed += 1,
            (Err(_), true) => known_failed += 1,
            (Ok(_), true) => problems.push(format!(
                "{file}: {:?} passes but is in KNOWN_FAILURES: remove it from the list",
                scenario.description
            )),
            (Err(msg), false) => {
                problems.push(format!("{file}: {:?}: {msg}", scenario.description))
            }
        }
    }
    println!(
        "conformance: {} scenarios in {} files: {passed} passed, {known_failed} known failures, {} problems",
        results.len(),
        files.len(),
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} conformance problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The scenarios as an SDK runner sees them, with `http` steps skipped: a client step that
/// only worked because an `http` step ran before it (say, a follow that ends because an
/// `http` DELETE canceled the run) fails or times out here, before any SDK trips over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_pass_without_their_http_steps() {
    let files = load();
    let results = run_all(&files, Mode::Sdk, StoreConfig::Memory).await;
    let known: BTreeSet<&str> = KNOWN_FAILURES.iter().copied().collect();
    let (mut passed, mut skipped) = (0, 0);
    let mut problems = Vec::new();
    for (file, scenario, result) in &results {
        match result {
            Ok(Ran::Passed) => passed += 1,
            Ok(Ran::Skipped) => skipped += 1,
            Err(_) if known.contains(scenario.description.as_str()) => {}
            Err(msg) => problems.push(format!(
                "{file}: {:?} (http steps skipped): {msg}",
                scenario.description
            )),
        }
    }
    println!(
        "conformance without http steps: {} scenarios: {passed} passed, {skipped} skipped (http only), {} problems",
        results.len(),
        problems.len()
    );
    assert!(
        problems.is_empty(),
        "{} scenario(s) depend on their http steps:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
