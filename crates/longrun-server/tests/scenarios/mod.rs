//! The conformance scenario format (`spec/conformance/schema.json`) as Rust types, shared by
//! the two Rust runners: the server's HTTP-level one (`tests/conformance.rs` beside this) and
//! the client's SDK runner (`crates/longrun/tests/conformance.rs`, by `#[path]`). serde reads
//! strictly: the server's runner validates the files against the schema first, and a member
//! these types do not know is an error in either runner. Not every runner reads every part.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use longrun_proto::{Event, State};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

pub fn spec_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spec/conformance")
}

/// Every scenario file of `spec/conformance` (by file name, sorted), checked, or a panic listing
/// every problem found: `validate` sees each file's JSON first (the server's runner checks it
/// against the schema), then the file must read as these types, descriptions must be unique
/// across files (every SDK's report names scenarios by them), and `lint` sees each scenario
/// (what only that runner can check).
pub fn load(
    validate: impl Fn(&str, &Value) -> Vec<String>,
    lint: impl Fn(&Scenario) -> Vec<String>,
) -> Vec<(String, ScenarioFile)> {
    let dir = spec_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter(|p| p.file_name().is_some_and(|n| n != "schema.json"))
        .collect();
    paths.sort();

    let mut problems = Vec::new();
    let mut files = Vec::new();
    for path in &paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let value = match std::fs::read_to_string(path)
            .map_err(|err| err.to_string())
            .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|err| err.to_string()))
        {
            Ok(value) => value,
            Err(err) => {
                problems.push(format!("{name}: not readable as JSON: {err}"));
                continue;
            }
        };
        let invalid = validate(&name, &value);
        if !invalid.is_empty() {
            problems.extend(invalid);
            continue;
        }
        match serde_json::from_value::<ScenarioFile>(value) {
            Ok(file) => files.push((name, file)),
            Err(err) => problems.push(format!("{name}: not readable as scenarios: {err}")),
        }
    }

    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, file) in &files {
        for (i, scenario) in file.scenarios.iter().enumerate() {
            if let Some(first) = seen.insert(&scenario.description, name) {
                problems.push(format!(
                    "{name}: scenarios[{i}]: the description {:?} is also used in {first}; \
                     descriptions name scenarios in every SDK's report, so make it unique",
                    scenario.description
                ));
            }
            for problem in lint(scenario) {
                problems.push(format!("{name}: {:?}: {problem}", scenario.description));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) in the conformance scenarios:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        !files.is_empty(),
        "no scenario files in {} — a passing run would prove nothing",
        dir.display()
    );
    files
}

/// JSON equality with numbers compared by value (`1` and `1.0` are equal), as scenario files
/// mean it.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            if let (Some(x), Some(y)) = (x.as_i64(), y.as_i64()) {
                x == y
            } else if let (Some(x), Some(y)) = (x.as_u64(), y.as_u64()) {
                x == y
            } else {
                x.as_f64() == y.as_f64()
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub description: String,
    #[serde(default, rename = "comment")]
    pub _comment: Option<String>,
    pub scenarios: Vec<Scenario>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub description: String,
    #[serde(default, rename = "comment")]
    pub _comment: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Step {
    Submit {
        object: String,
        args: Option<Map<String, Value>>,
        save: Option<String>,
        expect: SubmitExpect,
        #[serde(default, rename = "comment")]
        _comment: Option<String>,
    },
    Follow {
        run: RunRef,
        transport: StepTransport,
        since: Option<u64>,
        until: Option<u64>,
        expect: FollowExpect,
        #[serde(default, rename = "comment")]
        _comment: Option<String>,
    },
    Exists {
        run: RunRef,
        expect: ExistsExpect,
        #[serde(default, rename = "comment")]
        _comment: Option<String>,
    },
    Cancel {
        run: RunRef,
        expect: CancelExpect,
        #[serde(default, rename = "comment")]
        _comment: Option<String>,
    },
    Wait {
        run: RunRef,
        timeout_ms: Option<u64>,
        expect: WaitExpect,
        #[serde(default, rename = "comment")]
        _comment: Option<String>,
    },
    Http {
        // Boxed: an http step is several times the size of the others.
        request: Box<HttpRequest>,
        save: Option<String>,
        expect: Box<HttpExpect>,
        #[serde(default, rename = "comment")]
        _comment: Option<String>,
    },
}

impl Step {
    pub fn op(&self) -> &'static str {
        match self {
            Step::Submit { .. } => "submit",
            Step::Follow { .. } => "follow",
            Step::Exists { .. } => "exists",
            Step::Cancel { .. } => "cancel",
            Step::Wait { .. } => "wait",
            Step::Http { .. } => "http",
        }
    }

    pub fn run_ref(&self) -> Option<&RunRef> {
        match self {
            Step::Follow { run, .. }
            | Step::Exists { run, .. }
            | Step::Cancel { run, .. }
            | Step::Wait { run, .. } => Some(run),
            Step::Submit { .. } | Step::Http { .. } => None,
        }
    }

    pub fn save(&self) -> Option<&str> {
        match self {
            Step::Submit { save, .. } | Step::Http { save, .. } => save.as_deref(),
            _ => None,
        }
    }

    /// The error the step expects, if it expects one.
    pub fn error(&self) -> Option<&ErrorExpect> {
        match self {
            Step::Submit {
                expect: SubmitExpect::Error { error },
                ..
            }
            | Step::Follow {
                expect: FollowExpect::Error { error },
                ..
            }
            | Step::Exists {
                expect: ExistsExpect::Error { error },
                ..
            }
            | Step::Cancel {
                expect: CancelExpect::Error { error },
                ..
            }
            | Step::Wait {
                expect: WaitExpect::Error { error },
                ..
            } => Some(error),
            _ => None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RunRef {
    Saved(String),
    Literal { object: String, id: String },
    Like { like: String, object: String },
}

impl RunRef {
    /// The saved run this reference depends on, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            RunRef::Saved(name) | RunRef::Like { like: name, .. } => Some(name),
            RunRef::Literal { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepTransport {
    Sse,
    Poll,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SubmitExpect {
    Error { error: ErrorExpect },
    Submitted { state: State },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FollowExpect {
    Error { error: ErrorExpect },
    Events { events: Vec<Event> },
    Tail { count: usize, tail: Vec<Event> },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ExistsExpect {
    Error {
        error: ErrorExpect,
    },
    Exists {
        exists: bool,
        state: Option<State>,
        last_event_id: Option<u64>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CancelExpect {
    Error {
        error: ErrorExpect,
    },
    Outcome {
        outcome: Outcome,
        state: Option<State>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Accepted,
    Ended,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum WaitExpect {
    Error { error: ErrorExpect },
    Value { value: Value },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorExpect {
    pub kind: Kind,
    pub status: Option<u16>,
    pub problem: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub value: Option<Value>,
}

/// The client's error kinds (README.md, "Errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Kind {
    NotFound,
    Gone,
    Canceled,
    RunFailed,
    Timeout,
    Protocol,
    Transport,
    InvalidArgument,
    Server,
    Unauthorized,
    Forbidden,
    WebhookRejected,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::NotFound,
        Kind::Gone,
        Kind::Canceled,
        Kind::RunFailed,
        Kind::Timeout,
        Kind::Protocol,
        Kind::Transport,
        Kind::InvalidArgument,
        Kind::Server,
        Kind::Unauthorized,
        Kind::Forbidden,
        Kind::WebhookRejected,
    ];

    /// The name scenario files use, which is the client's `ErrorKind::as_str`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::NotFound => "NotFound",
            Kind::Gone => "Gone",
            Kind::Canceled => "Canceled",
            Kind::RunFailed => "RunFailed",
            Kind::Timeout => "Timeout",
            Kind::Protocol => "Protocol",
            Kind::Transport => "Transport",
            Kind::InvalidArgument => "InvalidArgument",
            Kind::Server => "Server",
            Kind::Unauthorized => "Unauthorized",
            Kind::Forbidden => "Forbidden",
            Kind::WebhookRejected => "WebhookRejected",
        }
    }

    /// The kind a client reports for an HTTP error status: the one table every SDK shares.
    pub fn of_status(status: u16) -> Kind {
        match status {
            404 => Kind::NotFound,
            410 => Kind::Gone,
            401 => Kind::Unauthorized,
            403 => Kind::Forbidden,
            429 => Kind::Server,
            400..=499 => Kind::InvalidArgument,
            500..=599 => Kind::Server,
            _ => Kind::Protocol,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, OneOrMany>,
    pub body: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub json: Option<Value>,
    pub body_bytes: Option<Vec<u8>>,
    pub body_repeat: Option<Repeat>,
    #[serde(default)]
    pub chunked: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> &[String] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(vs) => vs,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repeat {
    #[serde(default)]
    pub prefix: String,
    pub text: String,
    pub times: usize,
    #[serde(default)]
    pub suffix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpExpect {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, Option<HeaderExpect>>,
    pub problem: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub json: Option<Value>,
    pub json_includes: Option<Map<String, Value>>,
    pub json_length: Option<usize>,
    pub body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum HeaderExpect {
    Exact(String),
    List { list: Vec<String> },
}

/// A member that may be JSON `null`: present (even as null) is `Some`, absent is `None`.
pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}
