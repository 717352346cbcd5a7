//! Header names and media types of longrun/1.

/// The SSE resume cursor (WHATWG spelling; header names are case-insensitive on the wire).
pub const LAST_EVENT_ID: &str = "last-event-id";
/// The run's current state, on `HEAD` and `GET` replies.
pub const LONGRUN_STATE: &str = "longrun-state";
/// A submit's idempotency key (spec §4.3): the same key gets the first reply again.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// On a reply to a submit that repeated an idempotency key: `true`.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// The longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// An idempotency key is 1 to [`MAX_IDEMPOTENCY_KEY`] visible ASCII characters (`!` to `~`):
/// the rule the server enforces (400) and the client checks before sending.
pub fn is_valid_idempotency_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY && key.iter().all(u8::is_ascii_graphic)
}
/// A submit's deadline (spec §4.4): seconds from now, or an RFC 3339 time.
pub const LONGRUN_DEADLINE: &str = "longrun-deadline";
/// Where a run's outcome is pushed, and which events (spec §26.1).
pub const LONGRUN_HOOK: &str = "longrun-hook";
pub const LONGRUN_HOOK_EVENTS: &str = "longrun-hook-events";
/// RFC 7240 preferences; longrun honours `wait=N` on a submit (spec §4.5).
pub const PREFER: &str = "prefer";
pub const PREFERENCE_APPLIED: &str = "preference-applied";
/// The longest `Prefer: wait` a submit holds, in seconds.
pub const MAX_PREFER_WAIT: u64 = 60;

/// The `wait` preference of `Prefer` header values (RFC 7240: comma-separated preferences,
/// each `token[=value]` with `;` parameters; names are case-insensitive, a value may be
/// quoted). The first `wait` counts; one whose value is not a number of seconds is ignored,
/// as the RFC says for preferences a server does not understand. Capped at
/// [`MAX_PREFER_WAIT`].
pub fn prefer_wait<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<u64> {
    values
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|pref| {
            let pref = pref.split(';').next().unwrap_or("");
            let (name, value) = pref.split_once('=')?;
            if !name.trim().eq_ignore_ascii_case("wait") {
                return None;
            }
            let value = value.trim().trim_matches('"');
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Some(None);
            }
            Some(Some(value.parse::<u64>().unwrap_or(u64::MAX)))
        })
        .next()
        .flatten()
        .map(|wait| wait.min(MAX_PREFER_WAIT))
}

/// The id of the run's newest event, on `HEAD` and `GET` replies.
pub const LONGRUN_LAST_EVENT_ID: &str = "longrun-last-event-id";

/// The path of a run's byte stream, on `HEAD` of a run that has one (spec §27).
pub const LONGRUN_STREAM_URL: &str = "longrun-stream-url";

/// How many bytes a run's stream holds now, on `GET` and `HEAD` of the stream (spec §27.2).
pub const LONGRUN_STREAM_LENGTH: &str = "longrun-stream-length";

/// Query parameter names accepted for the cursor; the first is canonical, the second is
/// what the seed implementation used.
pub const CURSOR_QUERY: [&str; 2] = ["last_event_id", "last-event-id"];
/// Query parameter: how long a long poll may be held, in seconds.
pub const WAIT_QUERY: &str = "wait";

pub const JSON: &str = "application/json";
pub const PROBLEM_JSON: &str = "application/problem+json";
pub const EVENT_STREAM: &str = "text/event-stream";

/// Does an `Accept` header value list `text/event-stream`? Media ranges are split on commas
/// and their parameters (including `q`) are ignored, as the protocol says.
pub fn accepts_event_stream(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let media = range.split(';').next().unwrap_or("").trim();
        media.eq_ignore_ascii_case(EVENT_STREAM)
    })
}

/// Is a `Content-Type` value acceptable for a submit body? `application/json` with any
/// parameters (e.g. `charset=utf-8`); the caller treats a missing header as acceptable.
pub fn is_json_content_type(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case(JSON)
}

/// Parse a cursor as the protocol defines it: ASCII digits only, fitting in a `u64`.
pub fn parse_cursor(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_lists_event_stream_with_parameters_and_case() {
        assert!(accepts_event_stream("text/event-stream"));
        assert!(accepts_event_stream(
            "application/json, Text/Event-Stream;q=0.5"
        ));
        assert!(!accepts_event_stream("application/json"));
        assert!(!accepts_event_stream("text/event-streams"));
        assert!(!accepts_event_stream("*/*"));
    }

    #[test]
    fn json_content_type_allows_parameters_only() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=UTF-8"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/jsonx"));
    }

    #[test]
    fn cursors_are_plain_decimal_u64() {
        assert_eq!(parse_cursor("0"), Some(0));
        assert_eq!(parse_cursor("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "-1", "+1", " 1", "1.0", "abc", "18446744073709551616"] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
    }
}

#[cfg(test)]
mod prefer_tests {
    use super::prefer_wait;

    #[test]
    fn the_wait_preference_is_read_as_rfc_7240_says() {
        assert_eq!(prefer_wait(["wait=10"]), Some(10));
        assert_eq!(prefer_wait(["respond-async, Wait = 5"]), Some(5));
        assert_eq!(
            prefer_wait(["handling=lenient; x=1", "wait=\"7\";foo"]),
            Some(7)
        );
        assert_eq!(prefer_wait(["wait=600"]), Some(60));
        assert_eq!(prefer_wait(["wait=99999999999999999999999"]), Some(60));
        assert_eq!(prefer_wait(["wait=soon"]), None);
        assert_eq!(prefer_wait(["wait=-1"]), None);
        assert_eq!(prefer_wait(["waiting=3", "respond-async"]), None);
        assert_eq!(prefer_wait(["wait=0"]), Some(0));
        assert_eq!(prefer_wait(Vec::<&str>::new()), None);
    }
}
