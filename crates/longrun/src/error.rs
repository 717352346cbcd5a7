//! One error type for every client call. Each binding maps [`ErrorKind`] to its own error
//! classes by one table, so the names here are part of the public contract of every SDK.

use std::fmt;
use std::time::Duration;

use longrun_proto::Problem;
use serde_json::Value;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as a stable name every SDK maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object or run does not exist (404).
    NotFound,
    /// The run existed but its retention has passed (410).
    Gone,
    /// The run ended `canceled` (from `wait`).
    Canceled,
    /// The run ended `error` (from `wait`).
    RunFailed,
    /// A client-side time limit passed (the run itself goes on).
    Timeout,
    /// The server answered something longrun/1 does not allow.
    Protocol,
    /// The network failed and retrying did not help (or was not allowed).
    Transport,
    /// The request was refused as invalid (400, 413, 415, 422), or a bad argument was given to
    /// the client itself (base URL, run URL).
    InvalidArgument,
    /// The server failed or refused for its own reasons (5xx, e.g. shutting down), or said
    /// "not now" (429, a tenant's limit): retrying later may succeed.
    Server,
    /// The server needs a token and got none it knows (401): give the client one.
    Unauthorized,
    /// The token does not allow this (403): it lacks the scope for this verb or object.
    Forbidden,
    /// A response hook's delivery failed verification (`webhook::verify`): a header is
    /// missing, its timestamp is out of the tolerance, or no signature matches under this
    /// secret. Answer the delivery with a 4xx and do not act on it.
    WebhookRejected,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 12] = [
        ErrorKind::NotFound,
        ErrorKind::Gone,
        ErrorKind::Canceled,
        ErrorKind::RunFailed,
        ErrorKind::Timeout,
        ErrorKind::Protocol,
        ErrorKind::Transport,
        ErrorKind::InvalidArgument,
        ErrorKind::Server,
        ErrorKind::Unauthorized,
        ErrorKind::Forbidden,
        ErrorKind::WebhookRejected,
    ];

    /// The name bindings and the conformance scenarios use.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "NotFound",
            ErrorKind::Gone => "Gone",
            ErrorKind::Canceled => "Canceled",
            ErrorKind::RunFailed => "RunFailed",
            ErrorKind::Timeout => "Timeout",
            ErrorKind::Protocol => "Protocol",
            ErrorKind::Transport => "Transport",
            ErrorKind::InvalidArgument => "InvalidArgument",
            ErrorKind::Server => "Server",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::WebhookRejected => "WebhookRejected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{what} not found (404){}", detail(problem))]
    NotFound {
        what: String,
        problem: Option<Box<Problem>>,
    },
    #[error("run {url} is gone (410): it ended and the server no longer keeps it")]
    Gone {
        url: String,
        problem: Option<Box<Problem>>,
    },
    #[error("run was canceled: {value}")]
    Canceled { value: Value },
    #[error("run failed: {}", run_message(value))]
    RunFailed { value: Value },
    #[error("timed out after {after:?} while {what}; the run goes on (cancel it to stop it)")]
    Timeout { after: Duration, what: String },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection failed: {message}")]
    Transport { message: String },
    #[error("invalid argument: {message}{}", detail(problem))]
    InvalidArgument {
        message: String,
        status: Option<u16>,
        problem: Option<Box<Problem>>,
    },
    #[error("server error {status}{}", detail(problem))]
    Server {
        status: u16,
        problem: Option<Box<Problem>>,
    },
    /// (The message never shows the token.)
    #[error(
        "unauthorized (401): the server needs a token it knows{}",
        detail(problem)
    )]
    Unauthorized { problem: Option<Box<Problem>> },
    #[error("forbidden (403): the token does not allow this{}", detail(problem))]
    Forbidden { problem: Option<Box<Problem>> },
    /// (A bad secret is `InvalidArgument`: it is the receiver's own mistake.)
    #[error("webhook rejected: {0}")]
    WebhookRejected(crate::webhook::VerifyError),
}

fn detail(problem: &Option<Box<Problem>>) -> String {
    match problem.as_ref().and_then(|p| p.detail.as_deref()) {
        Some(d) => format!(": {d}"),
        None => String::new(),
    }
}

fn run_message(value: &Value) -> String {
    value
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| value.to_string(), str::to_owned)
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Gone { .. } => ErrorKind::Gone,
            Error::Canceled { .. } => ErrorKind::Canceled,
            Error::RunFailed { .. } => ErrorKind::RunFailed,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Protocol(_) => ErrorKind::Protocol,
            Error::Transport { .. } => ErrorKind::Transport,
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Server { .. } => ErrorKind::Server,
            Error::Unauthorized { .. } => ErrorKind::Unauthorized,
            Error::Forbidden { .. } => ErrorKind::Forbidden,
            Error::WebhookRejected(_) => ErrorKind::WebhookRejected,
        }
    }

    /// The server's problem details, when the error came from an HTTP answer.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::NotFound { problem, .. }
            | Error::Gone { problem, .. }
            | Error::InvalidArgument { problem, .. }
            | Error::Server { problem, .. }
            | Error::Unauthorized { problem }
            | Error::Forbidden { problem } => problem.as_deref(),
            _ => None,
        }
    }

    /// The HTTP status behind the error, if any.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::NotFound { .. } => Some(404),
            Error::Gone { .. } => Some(410),
            Error::InvalidArgument { status, .. } => *status,
            Error::Server { status, .. } => Some(*status),
            Error::Unauthorized { .. } => Some(401),
            Error::Forbidden { .. } => Some(403),
            _ => None,
        }
    }

    /// The terminal event's value, for `RunFailed` and `Canceled`.
    pub fn value(&self) -> Option<&Value> {
        match self {
            Error::RunFailed { value } | Error::Canceled { value } => Some(value),
            _ => None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            message: message.into(),
            status: None,
            problem: None,
        }
    }

    pub(crate) fn transport(e: &reqwest::Error) -> Self {
        // reqwest's Display hides the cause ("error sending request"); the chain says why.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Error::Transport { message }
    }

    /// Map an HTTP error answer to an error. `what` names the thing asked for.
    pub(crate) fn from_status(status: u16, problem: Option<Problem>, what: &str) -> Self {
        let problem = problem.map(Box::new);
        match status {
            404 => Error::NotFound {
                what: what.to_owned(),
                problem,
            },
            410 => Error::Gone {
                url: what.to_owned(),
                problem,
            },
            401 => Error::Unauthorized { problem },
            403 => Error::Forbidden { problem },
            // A tenant's rate or follower limit: like a 503, it passes; a follow retries it.
            429 | 500..=599 => Error::Server { status, problem },
            400..=499 => Error::InvalidArgument {
                message: problem.as_ref().map_or_else(
                    || format!("the server refused the request ({status})"),
                    |p| p.title.clone(),
                ),
                status: Some(status),
                problem,
            },
            _ => Error::Protocol(format!("unexpected status {status} for {what}")),
        }
    }

    /// Errors a follow may retry (by reconnecting from its cursor).
    pub(crate) fn is_retryable(&self) -> bool {
        matches!(self, Error::Transport { .. } | Error::Server { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        let kind = |status| Error::from_status(status, None, "/x/y").kind();
        assert_eq!(kind(401), ErrorKind::Unauthorized);
        assert_eq!(kind(403), ErrorKind::Forbidden);
        assert_eq!(kind(404), ErrorKind::NotFound);
        assert_eq!(kind(410), ErrorKind::Gone);
        assert_eq!(kind(422), ErrorKind::InvalidArgument);
        assert_eq!(kind(429), ErrorKind::Server);
        assert!(Error::from_status(429, None, "/x/y").is_retryable());
        assert_eq!(kind(503), ErrorKind::Server);
        assert_eq!(kind(302), ErrorKind::Protocol);
    }
}
