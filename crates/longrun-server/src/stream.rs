//! A run's byte stream (spec §27): `GET|HEAD /{object}/{id}/stream`, live until the run ends,
//! resumable with `Range: bytes=N-`.
//!
//! The bytes are kept in the run ([`Buffer`]) as chunks: a write of [`SEAL_BYTES`] or more is
//! kept as it was handed over (no copy); smaller writes are kept apart until they add up to
//! that much (or [`SEAL_PIECES`] of them), then copied once into one chunk. A read is a slice
//! of one chunk (or one pending piece), never a copy made for one reader, so a reader that
//! stalls holds handles to bytes the run keeps anyway, like an SSE follower (`follow.rs`).
//! Readers wait on a `watch` of the visible length. The whole buffer is bounded by
//! `max_stream_bytes`: a write past it is refused and stops the run (`error`).

use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use longrun_proto::header as h;
use longrun_proto::{ProblemKind, RunId};
use tokio::sync::watch;

use crate::Server;
use crate::auth::{Caller, Scope};
use crate::http::{ApiError, lookup, status_headers};
use crate::run::Run;

/// A write at least this large is kept as its own chunk; smaller ones are gathered into
/// chunks of about this size.
pub(crate) const SEAL_BYTES: usize = 64 * 1024;
/// Small writes gathered at most before they are sealed into one chunk, so a producer of
/// tiny writes costs one chunk per this many of them, not one each.
pub(crate) const SEAL_PIECES: usize = 1024;

/// The content type of a stream whose object names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Why a write to a run's stream was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The object declares no stream (`ObjectOptions::stream`).
    NoStream,
    /// The write would take the stream past `max_stream_bytes`: nothing of it was kept, and
    /// the run is stopped (it ends `error`).
    Full { limit: u64 },
    /// The run is stopping (canceled, over a limit) or ended: nothing more is kept.
    Stopped,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamError::NoStream => f.write_str("the object declares no byte stream"),
            StreamError::Full { limit } => {
                write!(f, "the run's stream reached its limit of {limit} bytes")
            }
            StreamError::Stopped => f.write_str("the run is stopping; its stream takes no more"),
        }
    }
}

impl std::error::Error for StreamError {}

/// A run's byte stream.
pub(crate) struct Buffer {
    pub content_type: HeaderValue,
    pub limit: u64,
    chunks: Mutex<Chunks>,
    /// The visible length, bumped on every publish; `closed` is read under the lock.
    visible: watch::Sender<u64>,
}

#[derive(Default)]
struct Chunks {
    /// Sealed chunks, contiguous from offset 0: `(first offset, bytes)`.
    sealed: Vec<(u64, Bytes)>,
    /// Small writes not sealed yet, from offset `pending_at`.
    pending: Vec<Bytes>,
    pending_at: u64,
    pending_bytes: usize,
    /// Every byte written.
    len: u64,
    /// How many of them readers may see (all in memory; the committed ones with a durable
    /// store).
    visible: u64,
    /// No byte follows: the run ended (set with its terminal event).
    closed: bool,
    /// How many bytes the durable store has taken (`take_unjournaled`).
    journaled: u64,
    /// Readers may see the end: closed, every byte visible, and the run's terminal event
    /// visible (with a durable store: committed).
    ended: bool,
}

/// What a read at an offset found.
pub(crate) struct Read {
    pub bytes: Bytes,
    /// The stream is closed and `bytes` reaches its end (or nothing is past the offset).
    pub finished: bool,
}

impl Buffer {
    pub fn new(content_type: &str, limit: u64) -> Self {
        Buffer {
            content_type: HeaderValue::from_str(content_type)
                .unwrap_or_else(|_| HeaderValue::from_static(DEFAULT_CONTENT_TYPE)),
            limit,
            chunks: Mutex::new(Chunks::default()),
            visible: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Chunks> {
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append `data` unless it takes the stream past the limit (then `Err` with nothing kept).
    /// The caller (`Run::write_stream`) has checked that the run takes writes.
    pub fn append(&self, data: Bytes) -> Result<(), StreamError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut c = self.lock();
        if c.closed {
            return Err(StreamError::Stopped);
        }
        if c.len + data.len() as u64 > self.limit {
            return Err(StreamError::Full { limit: self.limit });
        }
        c.len += data.len() as u64;
        if data.len() >= SEAL_BYTES {
            c.seal();
            let at = c.len - data.len() as u64;
            c.sealed.push((at, data));
            c.pending_at = c.len;
        } else {
            c.pending_bytes += data.len();
            c.pending.push(data);
            if c.pending_bytes >= SEAL_BYTES || c.pending.len() >= SEAL_PIECES {
                c.seal();
            }
        }
        Ok(())
    }

    /// No byte follows (the run ended).
    pub fn close(&self) {
        let mut c = self.lock();
        c.seal();
        c.closed = true;
    }

    /// Make the first `upto` bytes visible (all: `u64::MAX`) and wake the readers; `end`:
    /// the run's terminal event is visible, so a closed stream whose bytes are all visible
    /// has ended for its readers.
    pub fn publish(&self, upto: u64, end: bool) {
        let mut c = self.lock();
        c.visible = c.visible.max(upto.min(c.len));
        if end && c.closed && c.visible == c.len {
            c.ended = true;
        }
        let visible = c.visible;
        drop(c);
        self.visible.send_replace(visible);
    }

    /// For the journal: the bytes it has not taken yet (from which offset), as one piece.
    pub fn take_unjournaled(&self) -> Option<(u64, Bytes)> {
        let mut c = self.lock();
        let from = c.journaled;
        if from >= c.len {
            return None;
        }
        let mut pieces = Vec::new();
        let mut at = from;
        while at < c.len {
            let piece = c.piece(at, c.len);
            at += piece.len() as u64;
            pieces.push(piece);
        }
        c.journaled = c.len;
        drop(c);
        let bytes = match pieces.len() {
            1 => pieces.pop().expect("one piece"),
            _ => {
                let mut buf = BytesMut::with_capacity((at - from) as usize);
                for piece in pieces {
                    buf.extend_from_slice(&piece);
                }
                buf.freeze()
            }
        };
        Some((from, bytes))
    }

    /// How many bytes the journal has taken (visible once its commit is done).
    pub fn journaled(&self) -> u64 {
        self.lock().journaled
    }

    /// A commit failed: what was taken since the visible length is taken again.
    pub fn unjournal(&self) {
        let mut c = self.lock();
        c.journaled = c.visible;
    }

    /// A stream read back from a durable store, or copied from a shared one: `chunk` holds
    /// the bytes from `offset` on; bytes already here are skipped, a gap ends the copy.
    /// Returns whether anything was added.
    pub fn restore(&self, offset: u64, chunk: Bytes) -> bool {
        let mut c = self.lock();
        if offset > c.len || offset + chunk.len() as u64 <= c.len {
            return false;
        }
        let chunk = chunk.slice((c.len - offset) as usize..);
        c.seal();
        let at = c.len;
        c.len += chunk.len() as u64;
        c.sealed.push((at, chunk));
        c.pending_at = c.len;
        c.journaled = c.len;
        true
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.visible.subscribe()
    }

    /// The visible length, and whether it is final.
    pub fn length(&self) -> (u64, bool) {
        let c = self.lock();
        (c.visible, c.ended)
    }

    /// The bytes from `offset` on that one read hands out: the rest of the chunk (or pending
    /// piece) holding `offset`, up to the visible length.
    pub fn read(&self, offset: u64) -> Read {
        let c = self.lock();
        let finished = c.ended;
        if offset >= c.visible {
            return Read {
                bytes: Bytes::new(),
                finished,
            };
        }
        let bytes = c.piece(offset, c.visible);
        let end = offset + bytes.len() as u64;
        Read {
            bytes,
            finished: finished && end == c.visible,
        }
    }
}

impl Chunks {
    /// The bytes from `offset` (below `end`) to the end of the chunk or pending piece
    /// holding it, or to `end`: a slice, no copy.
    fn piece(&self, offset: u64, end: u64) -> Bytes {
        let (start, chunk) = if offset >= self.pending_at {
            let mut at = self.pending_at;
            let piece = self
                .pending
                .iter()
                .find(|p| {
                    let hit = offset < at + p.len() as u64;
                    if !hit {
                        at += p.len() as u64;
                    }
                    hit
                })
                .expect("the pending pieces cover pending_at..len");
            (at, piece)
        } else {
            let k = self.sealed.partition_point(|(first, _)| *first <= offset) - 1;
            let (first, bytes) = &self.sealed[k];
            (*first, bytes)
        };
        let from = (offset - start) as usize;
        let to = ((end - start) as usize).min(chunk.len());
        chunk.slice(from..to)
    }

    /// Copy the pending pieces into one chunk.
    fn seal(&mut self) {
        match self.pending.len() {
            0 => {}
            1 => {
                let piece = self.pending.pop().expect("one piece");
                self.sealed.push((self.pending_at, piece));
            }
            _ => {
                let mut buf = BytesMut::with_capacity(self.pending_bytes);
                for piece in self.pending.drain(..) {
                    buf.extend_from_slice(&piece);
                }
                self.sealed.push((self.pending_at, buf.freeze()));
            }
        }
        self.pending_at = self.len;
        self.pending_bytes = 0;
    }
}

/// A run's stream as a `tokio::io::AsyncWrite`: every `poll_write` copies its buffer into one
/// chunk and appends it, so wrap it in a `BufWriter` when the writes are small.
pub struct StreamWriter {
    pub(crate) ctx: crate::RunContext,
}

impl tokio::io::AsyncWrite for StreamWriter {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::{Error, ErrorKind};
        std::task::Poll::Ready(match self.ctx.write(Bytes::copy_from_slice(buf)) {
            Ok(()) => Ok(buf.len()),
            Err(e @ StreamError::Full { .. }) => Err(Error::new(ErrorKind::StorageFull, e)),
            Err(e) => Err(Error::new(ErrorKind::BrokenPipe, e)),
        })
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// `Range: bytes=N-`: the first offset asked for. Any other form (a suffix, an end, several
/// ranges, another unit, bad syntax) is ignored, as RFC 9110 §14.2 allows: the answer is then
/// the whole stream.
fn range_start(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let spec = value.strip_prefix("bytes=")?.trim();
    let first = spec.strip_suffix('-')?;
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    first.parse().ok()
}

/// `GET` and `HEAD /{object}/{id}/stream`.
pub(crate) async fn stream(
    caller: Caller,
    State(server): State<Server>,
    Path((object, id)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read, &object)?;
    let run = lookup(&server, &caller, &object, &id).await?;
    let Some(buffer) = run.stream() else {
        return Err(ApiError::new(
            ProblemKind::NoStream,
            format!("run {} of object {object:?} has no byte stream", run.id),
        ));
    };
    if method == Method::HEAD {
        let (len, finished) = buffer.length();
        // The headers a GET would have: a live stream's length is not known yet (an empty
        // body of unknown size, so no `Content-Length: 0` is added).
        let body = if finished {
            Body::empty()
        } else {
            Body::from_stream(futures::stream::empty::<Result<Bytes, Infallible>>())
        };
        let mut res = Response::new(body);
        let hs = res.headers_mut();
        if finished {
            hs.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
        common_headers(&run, buffer, len, hs);
        return Ok(res);
    }
    let start = range_start(&headers);
    let offset = start.unwrap_or(0);
    // A reader is a follower of the run (§6.1): it holds a slot from here, also while a
    // range waits for its first byte, until its body is done.
    let tenant = caller.admit_follower()?;
    let slot = crate::follow::follower_slot(&server, &run)?.with_tenant(tenant);
    // A range from a byte not written yet waits for that byte, or for the end, so that the
    // answer is a 206 holding it or a 416 (§27.2).
    if start.is_some() {
        let mut visible = buffer.subscribe();
        let _ = visible
            .wait_for(|_| {
                let (len, finished) = buffer.length();
                len > offset || finished
            })
            .await;
    }
    let (len, finished) = buffer.length();
    if start.is_some() && finished && offset >= len {
        let mut res = ApiError::new(
            ProblemKind::RangeNotSatisfiable,
            format!("the stream holds {len} bytes; the range starts at {offset}"),
        )
        .header(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{len}")).expect("digits are header-safe"),
        )
        .into_response();
        let hs = res.headers_mut();
        hs.insert(h::LONGRUN_STREAM_LENGTH, HeaderValue::from(len));
        status_headers(&run, hs);
        return Ok(res);
    }
    let body = Body::from_stream(reader(run.clone(), offset, slot));
    let mut res = Response::new(body);
    let hs = res.headers_mut();
    if start.is_some() {
        *res.status_mut() = StatusCode::PARTIAL_CONTENT;
        let hs = res.headers_mut();
        let range = if finished {
            format!("bytes {offset}-{}/{len}", len - 1)
        } else {
            format!("bytes {offset}-/*")
        };
        hs.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&range).expect("digits are header-safe"),
        );
        if finished {
            hs.insert(header::CONTENT_LENGTH, HeaderValue::from(len - offset));
        }
    } else if finished {
        hs.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    let hs = res.headers_mut();
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    hs.insert("x-accel-buffering", HeaderValue::from_static("no"));
    common_headers(&run, buffer, len, hs);
    Ok(res)
}

/// The path of a run's stream, when it has one (`stream_url` of a submit reply).
pub(crate) fn url(run: &Run) -> Option<String> {
    run.stream()?;
    Some(path(&run.object, &run.id))
}

/// The path of the stream of run `id` of `object`.
pub(crate) fn path(object: &str, id: &RunId) -> String {
    format!("{}/stream", longrun_proto::run_path(object, id))
}

/// Fill the stream of a run read back from a durable store (ended) with its chunks.
pub(crate) fn restore_ended(run: &Run, chunks: Vec<Bytes>) {
    let Some(buffer) = run.stream() else { return };
    let mut offset = 0;
    for chunk in chunks {
        let len = chunk.len() as u64;
        buffer.restore(offset, chunk);
        offset += len;
    }
    buffer.close();
    buffer.publish(u64::MAX, true);
}

/// The content type of a run's stream, as a store keeps it; `None` without a stream.
pub(crate) fn content_type(run: &Run) -> Option<String> {
    let ct = run.stream()?.content_type.to_str().ok()?;
    Some(ct.to_owned())
}

/// `Longrun-Stream-Url` on `HEAD` of a run that has a stream.
pub(crate) fn url_header(run: &Run, hs: &mut HeaderMap) {
    if let Some(url) = url(run) {
        if let Ok(value) = HeaderValue::from_str(&url) {
            hs.insert(h::LONGRUN_STREAM_URL, value);
        }
    }
}

fn common_headers(run: &Run, buffer: &Buffer, len: u64, hs: &mut HeaderMap) {
    hs.insert(header::CONTENT_TYPE, buffer.content_type.clone());
    hs.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hs.insert(h::LONGRUN_STREAM_LENGTH, HeaderValue::from(len));
    status_headers(run, hs);
}

struct Reader {
    run: Arc<Run>,
    visible: watch::Receiver<u64>,
    offset: u64,
    done: bool,
    _slot: crate::conn::FollowerSlot,
}

/// The body: slices of the run's chunks from `offset` on, as they become visible, until the
/// stream is closed and read to its end.
fn reader(
    run: Arc<Run>,
    offset: u64,
    slot: crate::conn::FollowerSlot,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
    let visible = run.stream().expect("checked by the route").subscribe();
    let reader = Reader {
        run,
        visible,
        offset,
        done: false,
        _slot: slot,
    };
    futures::stream::unfold(reader, |mut r| async move {
        if r.done {
            return None;
        }
        loop {
            // Subscribed before the first read: a write between a read and the wait shows
            // up as a change, so no byte is missed.
            let read = r.run.stream().expect("checked by the route").read(r.offset);
            if !read.bytes.is_empty() {
                r.offset += read.bytes.len() as u64;
                r.done = read.finished;
                return Some((Ok(read.bytes), r));
            }
            if read.finished {
                return None;
            }
            if r.visible.changed().await.is_err() {
                return None;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concat(buffer: &Buffer, mut offset: u64) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let read = buffer.read(offset);
            out.extend_from_slice(&read.bytes);
            offset += read.bytes.len() as u64;
            if read.bytes.is_empty() {
                return out;
            }
        }
    }

    #[test]
    fn reads_cover_every_byte_once_from_any_offset() {
        let buffer = Buffer::new(DEFAULT_CONTENT_TYPE, 1 << 30);
        let mut all = Vec::new();
        // Small writes (gathered), one big write (kept whole), more small ones.
        for i in 0..3000u32 {
            let piece: Vec<u8> = (0..(i % 97)).map(|j| (i + j) as u8).collect();
            all.extend_from_slice(&piece);
            buffer.append(Bytes::from(piece)).unwrap();
            if i == 1500 {
                let big = vec![7u8; SEAL_BYTES + 3];
                all.extend_from_slice(&big);
                buffer.append(Bytes::from(big)).unwrap();
            }
        }
        buffer.publish(u64::MAX, false);
        for offset in [
            0,
            1,
            96,
            4095,
            70_000,
            all.len() as u64 - 1,
            all.len() as u64,
        ] {
            assert_eq!(concat(&buffer, offset), all[offset as usize..], "{offset}");
        }
        assert!(!buffer.read(0).finished);
        buffer.close();
        assert!(
            !buffer.read(all.len() as u64).finished,
            "ends with the run's end"
        );
        buffer.publish(u64::MAX, true);
        assert_eq!(concat(&buffer, 0), all);
        assert!(buffer.read(all.len() as u64).finished);
        assert_eq!(buffer.length(), (all.len() as u64, true));
    }

    #[test]
    fn only_visible_bytes_are_read_and_the_limit_refuses_whole_writes() {
        let buffer = Buffer::new(DEFAULT_CONTENT_TYPE, 10);
        buffer.append(Bytes::from_static(b"abcdef")).unwrap();
        buffer.publish(4, false);
        assert_eq!(concat(&buffer, 0), b"abcd");
        assert_eq!(
            buffer.append(Bytes::from_static(b"ghijk")),
            Err(StreamError::Full { limit: 10 })
        );
        buffer.append(Bytes::from_static(b"ghij")).unwrap();
        buffer.publish(u64::MAX, false);
        assert_eq!(concat(&buffer, 0), b"abcdefghij");
    }

    #[test]
    fn the_journal_takes_each_byte_once_and_a_failed_commit_again() {
        let buffer = Buffer::new(DEFAULT_CONTENT_TYPE, 1 << 20);
        assert_eq!(buffer.take_unjournaled(), None);
        buffer.append(Bytes::from_static(b"ab")).unwrap();
        buffer.append(Bytes::from_static(b"cd")).unwrap();
        assert_eq!(
            buffer.take_unjournaled(),
            Some((0, Bytes::from_static(b"abcd")))
        );
        buffer.append(Bytes::from_static(b"e")).unwrap();
        assert_eq!(
            buffer.take_unjournaled(),
            Some((4, Bytes::from_static(b"e")))
        );
        buffer.unjournal();
        assert_eq!(
            buffer.take_unjournaled(),
            Some((0, Bytes::from_static(b"abcde")))
        );
        buffer.publish(buffer.journaled(), false);
        assert_eq!(buffer.length(), (5, false));
        // A copy from a store: overlapping chunks are skipped, a gap is refused.
        let copy = Buffer::new(DEFAULT_CONTENT_TYPE, 1 << 20);
        assert!(copy.restore(0, Bytes::from_static(b"abc")));
        assert!(copy.restore(1, Bytes::from_static(b"bcde")));
        assert!(!copy.restore(7, Bytes::from_static(b"x")));
        assert!(!copy.restore(0, Bytes::from_static(b"ab")));
        copy.publish(u64::MAX, false);
        assert_eq!(concat(&copy, 0), b"abcde");
    }

    #[test]
    fn range_headers() {
        let with = |v: &str| {
            let mut hs = HeaderMap::new();
            hs.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
            range_start(&hs)
        };
        assert_eq!(with("bytes=0-"), Some(0));
        assert_eq!(with("bytes=123-"), Some(123));
        assert_eq!(with("bytes=1-2"), None);
        assert_eq!(with("bytes=-5"), None);
        assert_eq!(with("bytes=1-,5-"), None);
        assert_eq!(with("items=1-"), None);
        assert_eq!(with("bytes=+1-"), None);
        assert_eq!(range_start(&HeaderMap::new()), None);
    }
}
