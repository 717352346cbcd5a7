use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Every problem a longrun/1 server reports. The `type` member of a problem is
/// `urn:longrun:problem:<slug>`, stable across versions, so clients map problems by type and
/// never by parsing `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// 400: the body is not JSON.
    InvalidJson,
    /// 400: the body is JSON but not an object.
    ArgsNotObject,
    /// 400: the cursor is not a non-negative integer.
    InvalidCursor,
    /// 400: `wait` is not a non-negative number of seconds.
    InvalidWait,
    /// 400: the `Idempotency-Key` header is empty, too long or not visible ASCII.
    InvalidIdempotencyKey,
    /// 400: the `Longrun-Deadline` header is not a deadline the server takes (spec §4.4).
    InvalidDeadline,
    /// 401: the server needs a token (`Authorization: Bearer`) and got none it knows.
    Unauthorized,
    /// 403: the caller's token does not allow this.
    Forbidden,
    /// 404: no route has this path.
    NotFound,
    /// 404: no object of this name.
    UnknownObject,
    /// 404: no run of this id under this object.
    RunNotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: cancel on a run that already ended in success or error.
    RunEnded,
    /// 410: the run existed but its retention has passed.
    RunGone,
    /// 404: the run has no byte stream (spec §27).
    NoStream,
    /// 416: a `Range` starts at or past the end of a stream that ended (spec §27.2).
    RangeNotSatisfiable,
    /// 413: the body is larger than the server's limit.
    BodyTooLarge,
    /// 415: the body is not `application/json`.
    UnsupportedMediaType,
    /// 422: the object rejected the arguments.
    InvalidArguments,
    /// 422: the idempotency key was used before for another object or other arguments.
    IdempotencyKeyReused,
    /// 429: the tenant's rate or follower limit (spec §22.1) is reached.
    RateLimited,
    /// 503: the server holds as many active runs as it may.
    TooManyRuns,
    /// 503: the server is shutting down.
    ShuttingDown,
    /// 503: the run, or the server, has as many followers as it may.
    TooManyFollowers,
    /// 503: the server could not write the run to its durable store.
    StoreUnavailable,
    /// 422: a worker node registration is not valid (spec §25).
    InvalidNode,
    /// 422: a worker node did not answer its health check at registration.
    NodeUnreachable,
    /// 404: no worker node of this id.
    NodeNotFound,
    /// 409: a node service topic is a local object, or served by another exclusion group.
    TopicTaken,
    /// 404: the node has no service or slot of this topic (and path).
    SubscriptionNotFound,
    /// 422: a composition (spec §25.10) is not valid: an unknown kind, an empty list, a bad
    /// topic, too deep or too many steps.
    InvalidComposition,
    /// 400: `Longrun-Hook` is not a hook URL, or `Longrun-Hook-Events` not a value the
    /// server knows (spec §26.1).
    InvalidHook,
    /// 422: the hook guard refused the hook URL (spec §26.6), or the server sends no hooks.
    HookRefused,
    /// 400: a topic is not a dotted name (or a pattern where one topic is needed), or a
    /// client publishes to a reserved `_` topic (spec §28.5).
    InvalidTopic,
    /// 400: a WebSocket packet is not JSON, lacks its `uid` or `m`, or names a path that
    /// cannot be a request (spec §28.2).
    InvalidPacket,
    /// 409: a WebSocket packet reuses the `uid` of a request still in flight (spec §28.2).
    UidInUse,
    /// 429: one WebSocket holds as many requests or subscriptions as it may (spec §28.6).
    TooManyInFlight,
    /// 406: the answer is a byte stream, which a WebSocket packet cannot carry: read it
    /// over HTTP (spec §28.3).
    NotRepresentable,
    /// 503: a publication to a new topic while the server holds as many topics as it may.
    TooManyTopics,
    /// 426: `GET /_ws` without a WebSocket upgrade (spec §28).
    UpgradeRequired,
    /// 400: a query parameter is not a value the route takes (`GET /_runs`, spec §13.4).
    InvalidQuery,
    /// 400: a `page_token` this server did not make, or made for another listing (§13.4).
    InvalidPageToken,
}

impl ProblemKind {
    pub const ALL: [ProblemKind; 42] = [
        ProblemKind::RateLimited,
        ProblemKind::InvalidIdempotencyKey,
        ProblemKind::InvalidDeadline,
        ProblemKind::IdempotencyKeyReused,
        ProblemKind::InvalidJson,
        ProblemKind::ArgsNotObject,
        ProblemKind::InvalidCursor,
        ProblemKind::InvalidWait,
        ProblemKind::Unauthorized,
        ProblemKind::Forbidden,
        ProblemKind::NotFound,
        ProblemKind::UnknownObject,
        ProblemKind::RunNotFound,
        ProblemKind::MethodNotAllowed,
        ProblemKind::RunEnded,
        ProblemKind::RunGone,
        ProblemKind::NoStream,
        ProblemKind::RangeNotSatisfiable,
        ProblemKind::BodyTooLarge,
        ProblemKind::UnsupportedMediaType,
        ProblemKind::InvalidArguments,
        ProblemKind::TooManyRuns,
        ProblemKind::ShuttingDown,
        ProblemKind::TooManyFollowers,
        ProblemKind::StoreUnavailable,
        ProblemKind::InvalidNode,
        ProblemKind::NodeUnreachable,
        ProblemKind::NodeNotFound,
        ProblemKind::TopicTaken,
        ProblemKind::SubscriptionNotFound,
        ProblemKind::InvalidComposition,
        ProblemKind::InvalidHook,
        ProblemKind::HookRefused,
        ProblemKind::InvalidTopic,
        ProblemKind::InvalidPacket,
        ProblemKind::UidInUse,
        ProblemKind::TooManyInFlight,
        ProblemKind::NotRepresentable,
        ProblemKind::TooManyTopics,
        ProblemKind::UpgradeRequired,
        ProblemKind::InvalidQuery,
        ProblemKind::InvalidPageToken,
    ];

    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::InvalidJson => "invalid-json",
            ProblemKind::ArgsNotObject => "args-not-object",
            ProblemKind::InvalidCursor => "invalid-cursor",
            ProblemKind::InvalidWait => "invalid-wait",
            ProblemKind::InvalidIdempotencyKey => "invalid-idempotency-key",
            ProblemKind::InvalidDeadline => "invalid-deadline",
            ProblemKind::IdempotencyKeyReused => "idempotency-key-reused",
            ProblemKind::RateLimited => "rate-limited",
            ProblemKind::Unauthorized => "unauthorized",
            ProblemKind::Forbidden => "forbidden",
            ProblemKind::NotFound => "not-found",
            ProblemKind::UnknownObject => "unknown-object",
            ProblemKind::RunNotFound => "run-not-found",
            ProblemKind::MethodNotAllowed => "method-not-allowed",
            ProblemKind::RunEnded => "run-ended",
            ProblemKind::RunGone => "run-gone",
            ProblemKind::NoStream => "no-stream",
            ProblemKind::RangeNotSatisfiable => "range-not-satisfiable",
            ProblemKind::BodyTooLarge => "body-too-large",
            ProblemKind::UnsupportedMediaType => "unsupported-media-type",
            ProblemKind::InvalidArguments => "invalid-arguments",
            ProblemKind::TooManyRuns => "too-many-runs",
            ProblemKind::ShuttingDown => "shutting-down",
            ProblemKind::TooManyFollowers => "too-many-followers",
            ProblemKind::StoreUnavailable => "store-unavailable",
            ProblemKind::InvalidNode => "invalid-node",
            ProblemKind::NodeUnreachable => "node-unreachable",
            ProblemKind::NodeNotFound => "node-not-found",
            ProblemKind::TopicTaken => "topic-taken",
            ProblemKind::SubscriptionNotFound => "subscription-not-found",
            ProblemKind::InvalidComposition => "invalid-composition",
            ProblemKind::InvalidHook => "invalid-hook",
            ProblemKind::HookRefused => "hook-refused",
            ProblemKind::InvalidTopic => "invalid-topic",
            ProblemKind::InvalidPacket => "invalid-packet",
            ProblemKind::UidInUse => "uid-in-use",
            ProblemKind::TooManyInFlight => "too-many-in-flight",
            ProblemKind::NotRepresentable => "not-representable",
            ProblemKind::TooManyTopics => "too-many-topics",
            ProblemKind::UpgradeRequired => "upgrade-required",
            ProblemKind::InvalidQuery => "invalid-query",
            ProblemKind::InvalidPageToken => "invalid-page-token",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ProblemKind::InvalidJson
            | ProblemKind::ArgsNotObject
            | ProblemKind::InvalidCursor
            | ProblemKind::InvalidWait
            | ProblemKind::InvalidIdempotencyKey
            | ProblemKind::InvalidDeadline => 400,
            ProblemKind::Unauthorized => 401,
            ProblemKind::Forbidden => 403,
            ProblemKind::RateLimited => 429,
            ProblemKind::NotFound
            | ProblemKind::UnknownObject
            | ProblemKind::RunNotFound
            | ProblemKind::NodeNotFound
            | ProblemKind::SubscriptionNotFound => 404,
            ProblemKind::MethodNotAllowed => 405,
            ProblemKind::RunEnded | ProblemKind::TopicTaken => 409,
            ProblemKind::RunGone => 410,
            ProblemKind::NoStream => 404,
            ProblemKind::RangeNotSatisfiable => 416,
            ProblemKind::BodyTooLarge => 413,
            ProblemKind::UnsupportedMediaType => 415,
            ProblemKind::InvalidArguments
            | ProblemKind::IdempotencyKeyReused
            | ProblemKind::InvalidNode
            | ProblemKind::NodeUnreachable
            | ProblemKind::InvalidComposition => 422,
            ProblemKind::TooManyRuns
            | ProblemKind::ShuttingDown
            | ProblemKind::TooManyFollowers
            | ProblemKind::StoreUnavailable => 503,
            ProblemKind::InvalidHook => 400,
            ProblemKind::HookRefused => 422,
            ProblemKind::InvalidTopic => 400,
            ProblemKind::InvalidPacket => 400,
            ProblemKind::UidInUse => 409,
            ProblemKind::TooManyInFlight => 429,
            ProblemKind::NotRepresentable => 406,
            ProblemKind::TooManyTopics => 503,
            ProblemKind::UpgradeRequired => 426,
            ProblemKind::InvalidQuery | ProblemKind::InvalidPageToken => 400,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::InvalidJson => "The request body is not valid JSON",
            ProblemKind::ArgsNotObject => "The arguments must be a JSON object",
            ProblemKind::InvalidCursor => "The cursor is not a non-negative integer",
            ProblemKind::InvalidWait => "The wait parameter is not a non-negative number",
            ProblemKind::InvalidIdempotencyKey => "The idempotency key is not valid",
            ProblemKind::InvalidDeadline => "The deadline is not valid",
            ProblemKind::IdempotencyKeyReused => "The idempotency key was used for another request",
            ProblemKind::RateLimited => "The tenant's limit is reached",
            ProblemKind::Unauthorized => "A token is needed",
            ProblemKind::Forbidden => "The token does not allow this",
            ProblemKind::NotFound => "No such route",
            ProblemKind::UnknownObject => "No such object",
            ProblemKind::RunNotFound => "No such run",
            ProblemKind::MethodNotAllowed => "Method not allowed",
            ProblemKind::RunEnded => "The run has already ended",
            ProblemKind::RunGone => "The run is gone",
            ProblemKind::NoStream => "The run has no byte stream",
            ProblemKind::RangeNotSatisfiable => "The range is past the end of the stream",
            ProblemKind::BodyTooLarge => "The request body is too large",
            ProblemKind::UnsupportedMediaType => "The request body must be application/json",
            ProblemKind::InvalidArguments => "The object rejected the arguments",
            ProblemKind::TooManyRuns => "The server holds too many active runs",
            ProblemKind::ShuttingDown => "The server is shutting down",
            ProblemKind::TooManyFollowers => "The run or the server has too many followers",
            ProblemKind::StoreUnavailable => "The server could not store the run",
            ProblemKind::InvalidNode => "The node registration is not valid",
            ProblemKind::NodeUnreachable => "The node did not answer its health check",
            ProblemKind::NodeNotFound => "No such node",
            ProblemKind::TopicTaken => "The topic is taken",
            ProblemKind::SubscriptionNotFound => "No such subscription",
            ProblemKind::InvalidComposition => "The composition is not valid",
            ProblemKind::InvalidHook => "The hook is not valid",
            ProblemKind::HookRefused => "The hook is refused",
            ProblemKind::InvalidTopic => "The topic is not a valid topic name",
            ProblemKind::InvalidPacket => "The WebSocket packet is not valid",
            ProblemKind::UidInUse => "The packet's uid is in flight",
            ProblemKind::TooManyInFlight => "The connection has too many requests or subscriptions",
            ProblemKind::NotRepresentable => "The answer cannot be sent as a packet",
            ProblemKind::TooManyTopics => "The server holds too many topics",
            ProblemKind::UpgradeRequired => "This is a WebSocket: upgrade to it",
            ProblemKind::InvalidQuery => "A query parameter is not valid",
            ProblemKind::InvalidPageToken => "The page token is not valid",
        }
    }

    pub fn type_uri(self) -> String {
        format!("{}{}", Problem::TYPE_PREFIX, self.slug())
    }

    pub fn from_type_uri(uri: &str) -> Option<ProblemKind> {
        let slug = uri.strip_prefix(Problem::TYPE_PREFIX)?;
        ProblemKind::ALL.into_iter().find(|k| k.slug() == slug)
    }
}

/// An RFC 9457 problem details object, as served with `application/problem+json`.
/// Extension members (e.g. `state` on a 409) are kept in `extensions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(rename = "type", default = "about_blank")]
    pub type_uri: String,
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(flatten)]
    pub extensions: Map<String, Value>,
}

fn about_blank() -> String {
    "about:blank".to_owned()
}

impl Problem {
    pub const TYPE_PREFIX: &'static str = "urn:longrun:problem:";

    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Problem {
            type_uri: kind.type_uri(),
            title: kind.title().to_owned(),
            status: kind.status(),
            detail: Some(detail.into()),
            extensions: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.to_owned(), value.into());
        self
    }

    /// The kind, when the type is one this version knows.
    pub fn kind(&self) -> Option<ProblemKind> {
        ProblemKind::from_type_uri(&self.type_uri)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for k in ProblemKind::ALL {
            assert!(seen.insert(k.slug()));
            assert_eq!(ProblemKind::from_type_uri(&k.type_uri()), Some(k));
            assert!((400..600).contains(&k.status()));
        }
    }

    #[test]
    fn problem_json_has_rfc9457_members_and_extensions() {
        let p = Problem::new(ProblemKind::RunEnded, "run x ended").with("state", "success");
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "urn:longrun:problem:run-ended");
        assert_eq!(v["status"], 409);
        assert_eq!(v["state"], "success");
        let back: Problem = serde_json::from_value(v).unwrap();
        assert_eq!(back.kind(), Some(ProblemKind::RunEnded));
    }
}
