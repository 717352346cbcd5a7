//! Placeholder; replaced by the WHATWG decoder layer.
/// One dispatched SSE message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseMessage {
    pub event: String,
    pub data: String,
    pub id: String,
}
