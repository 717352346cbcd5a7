//! The SSE decoder clients read with: bytes in, messages and reconnection times out, following
//! the WHATWG HTML rules for interpreting an event stream (section 9.2.6) and checked against
//! the language-neutral vectors in `spec/sse/` (`tests/sse_vectors.rs`).
//!
//! This is a small state machine of our own rather than a layer over `eventsource-stream`
//! 0.2.3, because that crate could not be made to pass the vectors with thin layers. Its
//! defects, each pinned by `eventsource_stream_known_failures` in `tests/sse_vectors.rs` so the
//! list cannot go stale:
//!
//! - **`retry:` without data is lost.** A retry only rides on a dispatched `Event`, and an
//!   event whose data buffer is empty is never dispatched, so the value is dropped — and with
//!   it a retry sent before a blank line (as longrun streams did before the retry became a
//!   line of the first event's block) or on a stream with no event yet (a quiet run behind
//!   keep-alives). Several retries in one event collapse into the last, and a retry in an event
//!   that never ends is lost. Vectors:
//!   "retry alone, without data, is reported", "every retry is reported when its line is
//!   processed, before the message it sits in", "retry of zero, with leading zeros, and with no
//!   space after the colon", "retry on a complete line counts even if its event never ends; on
//!   a line without a line end it does not", and two in `longrun.json`. No post-filter
//!   can recover a value the library has discarded, and a pre-filter that found `retry` lines
//!   would already be a line parser — this one.
//! - **`retry: +1` is accepted**, because it parses with `u64::from_str`, which allows a
//!   leading `+`; WHATWG wants ASCII digits only. Vector: "retry with anything but ASCII digits
//!   is ignored".
//! - **A stream ending in CR loses its last event.** The parser waits for one more byte to
//!   tell CR from CRLF, and at end of stream that byte never comes. Vectors: "CR line endings,
//!   the last event ended by the final byte of the stream", "a lone CR in the last chunk is
//!   the blank line that dispatches". (Mid-stream the same wait delays every CR-terminated
//!   event until the next byte arrives.)
//! - **A leading BOM panics** (`&string[1..]` slices inside the 3-byte U+FEFF). Vectors: "a
//!   leading BOM is stripped", "a leading BOM split byte by byte across chunks is stripped",
//!   "a second leading BOM is not stripped and becomes part of the field name".
//! - **Invalid UTF-8 stalls the stream, then fails it**, instead of decoding to U+FFFD: bytes
//!   from the first invalid one on pile up undecoded until end of stream, which then yields a
//!   `Utf8` error. Vectors: "invalid UTF-8 becomes one U+FFFD per maximal subpart: …", "a
//!   truncated sequence at a chunk end, ended by a line end in the next chunk, becomes one
//!   U+FFFD", "an invalid byte in a field name makes the field unknown", "a truncated BOM at
//!   the start is not stripped but decoded as U+FFFD, spoiling the first field name".
//!
//! The decoder is sans-I/O: [`Decoder::feed`] takes whatever bytes the transport delivered and
//! returns what they completed, so the blocking client can drive it directly and [`decode`]
//! wraps it for an async byte stream (reqwest's `bytes_stream()`). Nothing is ever emitted at
//! end of stream: WHATWG discards an unterminated line and an undispatched event, so there is
//! no `finish` to forget to call.

use futures::future::{self, Either};
use futures::{Stream, StreamExt, stream};

/// One dispatched SSE message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseMessage {
    /// The `event` field, or `"message"` when the event had none (or an empty one).
    pub event: String,
    /// The `data` lines joined by `"\n"`.
    pub data: String,
    /// The last event ID at dispatch time. It persists across messages until the server sends
    /// another `id`, so a message without an `id` line carries the previous one.
    pub id: String,
}

impl SseMessage {
    /// The message as [`Decoder::feed_with`] lends it.
    pub fn view(&self) -> SseMessageRef<'_> {
        SseMessageRef {
            event: &self.event,
            data: &self.data,
            id: &self.id,
        }
    }
}

/// A dispatched message as [`Decoder::feed_with`] lends it: the same fields as
/// [`SseMessage`], borrowed from the decoder, so a reader that keeps only part of a message
/// (a client keeps the data as an event value) copies nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseMessageRef<'a> {
    pub event: &'a str,
    pub data: &'a str,
    pub id: &'a str,
}

impl SseMessageRef<'_> {
    pub fn to_message(&self) -> SseMessage {
        SseMessage {
            event: self.event.to_owned(),
            data: self.data.to_owned(),
            id: self.id.to_owned(),
        }
    }
}

/// What the decoder reports, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Message(SseMessage),
    /// A valid `retry` field: the server's reconnection time in milliseconds. Reported when its
    /// line ends, not at dispatch, because WHATWG applies it then and it may sit in an event
    /// that is never dispatched (a quiet longrun stream sends `retry: 1000\n` and no event yet).
    Retry(u64),
}

/// [`SseItem`] as [`Decoder::feed_with`] lends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseItemRef<'a> {
    Message(SseMessageRef<'a>),
    Retry(u64),
}

/// Incremental WHATWG event-stream parser: feed it chunks as they arrive, cut anywhere.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    /// The start of a UTF-8 sequence the last chunk cut off (at most 3 bytes), completed by
    /// the next chunk — or found invalid by it.
    partial_char: Vec<u8>,
    /// Whether any text has been decoded yet: only the very first character may be a BOM to
    /// strip, even when its bytes arrive in separate chunks.
    started: bool,
    /// The previous chunk ended in CR. A LF at the start of the next chunk is the rest of that
    /// CRLF and must not count as a second (blank) line, which would dispatch early.
    after_cr: bool,
    /// The current line, which has not seen its line end yet (a chunk cut it).
    line: String,
    data: String,
    event_type: String,
    last_event_id: String,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decode one chunk and return the items it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseItem> {
        let mut items = Vec::new();
        self.feed_with(chunk, |item| {
            items.push(match item {
                SseItemRef::Message(msg) => SseItem::Message(msg.to_message()),
                SseItemRef::Retry(ms) => SseItem::Retry(ms),
            })
        });
        items
    }

    /// Decode one chunk, handing each item it completes to `on_item`, in order. Nothing is
    /// allocated per message once the decoder's buffers have grown to the stream's sizes: the
    /// hot path of every client.
    pub fn feed_with(&mut self, chunk: &[u8], mut on_item: impl FnMut(SseItemRef<'_>)) {
        // Only a chunk that finishes a cut character is copied; the usual chunk is decoded in
        // place.
        let joined;
        let mut bytes = chunk;
        if !self.partial_char.is_empty() {
            let mut buf = std::mem::take(&mut self.partial_char);
            buf.extend_from_slice(chunk);
            joined = buf;
            bytes = &joined;
        }
        loop {
            match std::str::from_utf8(bytes) {
                Ok(text) => {
                    self.push_text(text, &mut on_item);
                    break;
                }
                Err(err) => {
                    let (valid, rest) = bytes.split_at(err.valid_up_to());
                    let valid = std::str::from_utf8(valid).expect("valid_up_to marks UTF-8");
                    self.push_text(valid, &mut on_item);
                    match err.error_len() {
                        // One U+FFFD per maximal invalid subpart, as the WHATWG Encoding
                        // standard's UTF-8 decoder does (and so every SDK's vectors agree).
                        Some(len) => {
                            self.push_text("\u{FFFD}", &mut on_item);
                            bytes = &rest[len..];
                        }
                        // A sequence cut by the chunk end: wait for the rest. Left over at end
                        // of stream it could only sit in an unterminated line, which is
                        // discarded anyway.
                        None => {
                            self.partial_char = rest.to_vec();
                            break;
                        }
                    }
                }
            }
        }
    }

    fn push_text(&mut self, mut text: &str, on_item: &mut impl FnMut(SseItemRef<'_>)) {
        if text.is_empty() {
            return;
        }
        if !self.started {
            self.started = true;
            text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
        }
        if std::mem::take(&mut self.after_cr) {
            text = text.strip_prefix('\n').unwrap_or(text);
        }
        // CR and LF are ASCII, so their byte positions are char boundaries.
        while let Some(end) = memchr::memchr2(b'\r', b'\n', text.as_bytes()) {
            if self.line.is_empty() {
                // The whole line is in this chunk: read it in place.
                self.process_line(&text[..end], on_item);
            } else {
                self.line.push_str(&text[..end]);
                let line = std::mem::take(&mut self.line);
                self.process_line(&line, on_item);
                // Hand the allocation back so long streams do not reallocate per line.
                self.line = line;
                self.line.clear();
            }

            let was_cr = text.as_bytes()[end] == b'\r';
            text = &text[end + 1..];
            if was_cr {
                // A CR ends its line at once — waiting to see whether LF follows would hold a
                // CR-terminated event back until the next byte, or forever at end of stream.
                if text.is_empty() {
                    self.after_cr = true;
                } else {
                    text = text.strip_prefix('\n').unwrap_or(text);
                }
            }
        }
        self.line.push_str(text);
    }

    fn process_line(&mut self, line: &str, on_item: &mut impl FnMut(SseItemRef<'_>)) {
        if line.is_empty() {
            self.dispatch(on_item);
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some(("", _comment)) => return,
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                self.data.push_str(value);
                self.data.push('\n');
            }
            // An id with NUL could not be sent back in a Last-Event-ID header, so WHATWG
            // ignores it.
            "id" if !value.contains('\0') => value.clone_into(&mut self.last_event_id),
            // Not `parse::<u64>()` alone: it accepts a leading '+'. All digits can only fail to
            // parse by overflow; saturate, since the server asked for "a very long time".
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                on_item(SseItemRef::Retry(value.parse().unwrap_or(u64::MAX)));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_item: &mut impl FnMut(SseItemRef<'_>)) {
        if !self.data.is_empty() {
            let event = if self.event_type.is_empty() {
                "message"
            } else {
                &self.event_type
            };
            on_item(SseItemRef::Message(SseMessageRef {
                event,
                // Every data line appended a LF; the last one is a terminator, not content.
                data: &self.data[..self.data.len() - 1],
                id: &self.last_event_id,
            }));
        }
        // Cleared, not replaced: the buffers keep their capacity for the next message.
        self.data.clear();
        self.event_type.clear();
    }
}

/// Decode a byte stream (such as reqwest's `bytes_stream()`) into SSE items. Transport errors
/// pass through unchanged, in place, and decoding carries on if the stream does.
pub fn decode<S, B, E>(stream: S) -> impl Stream<Item = Result<SseItem, E>> + Send
where
    S: Stream<Item = Result<B, E>> + Send,
    B: AsRef<[u8]>,
    // An error is held for one poll between the source and the caller.
    E: Send,
{
    let mut decoder = Decoder::new();
    stream.flat_map(move |chunk| match chunk {
        Ok(bytes) => Either::Left(stream::iter(
            decoder.feed(bytes.as_ref()).into_iter().map(Ok),
        )),
        Err(err) => Either::Right(stream::once(future::ready(Err(err)))),
    })
}
