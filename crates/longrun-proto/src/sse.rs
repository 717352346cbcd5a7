//! Server-Sent Events as longrun/1 uses them: the encoder the server writes with, and the
//! decoder clients read with (`decode`, checked against the vectors in `spec/sse/`).
//!
//! A longrun event is one SSE message: `id: N`, `event: <state>`, `data: <value as one-line
//! JSON>`, blank line. JSON never contains a raw newline, so `data` is always one line.

use bytes::Bytes;

use serde_json::value::RawValue;

use crate::{Event, RawEvent, State};

mod decode;
pub use decode::*;

/// The comment line sent while a stream is idle, so proxies and clients see the connection
/// alive. No blank line follows it: a block without `data` must never end with one, because
/// parsers simpler than WHATWG's (the seed's Go client) return an event at every blank line
/// and then fail on its empty data (spec §7.1).
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n";

/// The reconnection hint sent first on every stream: one line, which shares the block of the
/// first event (no blank line after it, for the same reason as [`KEEP_ALIVE`]).
pub fn retry_line(retry_ms: u64) -> Bytes {
    Bytes::from(format!("retry: {retry_ms}\n"))
}

/// Encode one event as an SSE message.
pub fn encode_event(event: &Event) -> Bytes {
    let data = serde_json::to_string(&event.value).expect("a serde_json::Value always serializes");
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        event.id, event.state, data
    ))
}

/// Turn a decoded SSE message back into a longrun event. `None` when the message is not one
/// (no numeric id, an unknown event name, or data that is not JSON).
pub fn to_event(msg: &SseMessage) -> Option<Event> {
    to_raw_event(&msg.view())?.to_event().ok()
}

/// [`to_event`] keeping the value as JSON text: the data is checked to be JSON and copied
/// once, never parsed into a `Value`.
pub fn to_raw_event(msg: &SseMessageRef<'_>) -> Option<RawEvent> {
    let id = crate::header::parse_cursor(msg.id)?;
    let state = State::parse(msg.event)?;
    let value = serde_json::from_str::<&RawValue>(msg.data).ok()?;
    Some(RawEvent {
        id,
        state,
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_are_exact() {
        let ev = Event {
            id: 3,
            state: State::Running,
            value: json!({"message": "line\nbreak", "progress": 0.5}),
        };
        assert_eq!(
            &encode_event(&ev)[..],
            b"id: 3\nevent: running\ndata: {\"message\":\"line\\nbreak\",\"progress\":0.5}\n\n"
        );
        assert_eq!(&retry_line(1000)[..], b"retry: 1000\n");
        assert_eq!(KEEP_ALIVE, b": keep-alive\n");
    }
}
