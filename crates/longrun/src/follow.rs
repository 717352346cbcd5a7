//! Following a run: one logical stream of events over as many HTTP connections as it takes.
//!
//! The cursor (the id of the last event handed out) is the whole resume state. Every
//! connection asks for events after it; anything at or below it is a duplicate and skipped;
//! anything beyond the next id is a gap, which longrun/1 forbids, so it is a protocol error.
//! Hence exactly once, in order, whatever the network does.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt, ready};
use longrun_proto::header as h;
use longrun_proto::sse::{Decoder, SseItemRef, to_raw_event};
use longrun_proto::{Event, RawEvent, State};
use serde_json::Value;

use crate::client::{Chunk, Inner, Response, Transport, error_from};
use crate::{Error, Result, Run, rt};

/// Options of one follow.
#[derive(Debug, Clone, Default)]
pub struct FollowOptions {
    /// The id of the last event already seen; the follow starts after it. `None`: from event 0.
    pub since: Option<u64>,
    /// Override the client's transport for this follow.
    pub transport: Option<Transport>,
}

/// The one cursor rule of every binding whose language hands it a cursor as a number: a
/// cursor is the id of an event, a non-negative integer, and anything else is
/// `InvalidArgument` (never "no cursor", which would replay from event 0, nor a rounding to
/// another event). This is for JavaScript numbers: an integer from 0 to 2^53 − 1, above
/// which a float no longer holds every integer (so the id it names is not the one meant).
pub fn cursor_from_f64(since: f64) -> Result<u64> {
    const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;
    if since.fract() == 0.0 && (0.0..=MAX_SAFE_INTEGER).contains(&since) {
        Ok(since as u64)
    } else {
        Err(not_a_cursor(since))
    }
}

/// The same rule for an integer of any size, as decimal text (a Python `int`): digits only,
/// fitting in `u64`.
pub fn cursor_from_decimal(since: &str) -> Result<u64> {
    match since.bytes().all(|b| b.is_ascii_digit()) {
        true => since.parse().map_err(|_| not_a_cursor(since)),
        false => Err(not_a_cursor(since)),
    }
}

fn not_a_cursor(since: impl std::fmt::Display) -> Error {
    Error::invalid(format!(
        "{since} is not a cursor: give the id of the last event seen (an integer from 0), \
         or none to start from event 0"
    ))
}

/// What the follow loop yields: the events one chunk (SSE) or one answer (long poll) brought,
/// never empty. Batching here, not per event, is what keeps a drain cheap: one wake-up of the
/// stream per network read, not per event.
#[cfg(not(target_arch = "wasm32"))]
type Batches = Pin<Box<dyn Stream<Item = Result<Vec<RawEvent>>> + Send>>;
#[cfg(target_arch = "wasm32")]
type Batches = Pin<Box<dyn Stream<Item = Result<Vec<RawEvent>>>>>;

/// The events of a run, in order, each once, ending after the terminal event. An `Err` item
/// is final: the stream ends after it.
///
/// As a [`Stream`] it yields [`Event`]s with parsed values. [`EventStream::next_raw_batch`]
/// hands over [`RawEvent`]s instead, whose values are still JSON text: for callers with a JSON
/// reader of their own (the SDKs, or `serde` into a type of yours).
pub struct EventStream {
    batches: Batches,
    /// Events already read, not yet handed out: at most one network read's worth beyond what
    /// the last `next_raw_batch` asked for.
    ready: VecDeque<RawEvent>,
    /// An error met while reading ahead; reported once `ready` is handed out.
    failed: Option<Error>,
}

impl Stream for EventStream {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(raw) = this.ready.pop_front() {
                return Poll::Ready(Some(parse(&raw)));
            }
            if let Some(e) = this.failed.take() {
                return Poll::Ready(Some(Err(e)));
            }
            match ready!(this.batches.as_mut().poll_next(cx)) {
                Some(Ok(batch)) => this.ready.extend(batch),
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => return Poll::Ready(None),
            }
        }
    }
}

/// A raw event's value parsed for a Rust caller.
fn parse(raw: &RawEvent) -> Result<Event> {
    raw.to_event().map_err(|e| {
        Error::Protocol(format!(
            "event {} has a value serde_json cannot hold: {e}",
            raw.id
        ))
    })
}

impl EventStream {
    fn new(batches: Batches) -> Self {
        EventStream {
            batches,
            ready: VecDeque::new(),
            failed: None,
        }
    }

    /// A stream that only reports `error`.
    pub(crate) fn failed(error: Error) -> Self {
        EventStream::new(Box::pin(futures::stream::once(async move { Err(error) })))
    }

    /// Wait for the next event, then take every further event that is already available, up
    /// to `max` in all (`max` 0 counts as 1). Empty only at the end of the stream. The values
    /// stay JSON text. Bindings use this to cross their language boundary once per batch
    /// rather than once per event, and to parse values with their own language's reader.
    ///
    /// Cancel-safe: dropping the future loses no event.
    pub async fn next_raw_batch(&mut self, max: usize) -> Result<Vec<RawEvent>> {
        let max = max.max(1);
        while self.ready.is_empty() {
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            match self.batches.next().await {
                None => return Ok(Vec::new()),
                // Taken over, not copied: the usual batch goes out as the Vec it came in.
                Some(batch) => self.ready = VecDeque::from(batch?),
            }
        }
        // Take what else is already here, without waiting.
        while self.ready.len() < max && self.failed.is_none() {
            match self.batches.next().now_or_never() {
                Some(Some(Ok(batch))) => self.ready.extend(batch),
                // An error is final: hand over the events first, report it on the next call.
                Some(Some(Err(e))) => self.failed = Some(e),
                Some(None) | None => break,
            }
        }
        if self.ready.len() <= max {
            // In place when the deque has not wrapped, as a deque made from a Vec has not.
            return Ok(Vec::from(std::mem::take(&mut self.ready)));
        }
        Ok(self.ready.drain(..max).collect())
    }

    /// The same stream, read ahead by a task on the current tokio runtime: while the caller
    /// handles one batch, the next is fetched and decoded on a runtime worker. For callers that
    /// block a thread per call (the blocking client, the C ABI), where nothing else would read
    /// the connection between calls. At most two batches of up to 1024 events are held ahead;
    /// dropping the stream stops the task and closes the connection. Outside a tokio runtime
    /// the stream is returned as it is.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_ahead(mut self) -> EventStream {
        const AHEAD: usize = 1024;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let task = runtime.spawn(async move {
            loop {
                let batch = self.next_raw_batch(AHEAD).await;
                let last = !matches!(&batch, Ok(events) if !events.is_empty());
                if tx.send(batch).await.is_err() || last {
                    return;
                }
            }
        });
        let reader = AbortOnDrop(task.abort_handle());
        let batches = futures::stream::unfold((rx, reader), |(mut rx, reader)| async move {
            match rx.recv().await? {
                Ok(events) if events.is_empty() => None,
                item => Some((item, (rx, reader))),
            }
        });
        // Fused: the stream is asked again after its end (`next_raw_batch` looks ahead).
        EventStream::new(Box::pin(batches.fuse()))
    }

    /// [`EventStream::next_raw_batch`] with parsed values.
    pub async fn next_batch(&mut self, max: usize) -> Result<Vec<Event>> {
        self.next_raw_batch(max).await?.iter().map(parse).collect()
    }
}

/// Stops a read-ahead task when its stream is dropped.
#[cfg(not(target_arch = "wasm32"))]
struct AbortOnDrop(tokio::task::AbortHandle);

#[cfg(not(target_arch = "wasm32"))]
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the next connection starts: the id of the last event handed out.
struct Cursor {
    last: Option<u64>,
}

impl Cursor {
    fn next_id(&self) -> u64 {
        self.last.map_or(0, |c| c + 1)
    }

    /// Take `ev` into `batch` if it is the next event; skip it if it is a duplicate. `Ok(true)`
    /// once the terminal event is taken: nothing after it may be.
    fn take(&mut self, ev: RawEvent, batch: &mut Vec<RawEvent>) -> Result<bool> {
        let expected = self.next_id();
        if ev.id < expected {
            return Ok(false);
        }
        if ev.id > expected {
            return Err(Error::Protocol(format!(
                "events must be dense: expected id {expected}, got {}",
                ev.id
            )));
        }
        self.last = Some(ev.id);
        let done = ev.state.is_terminal();
        batch.push(ev);
        Ok(done)
    }
}

/// One SSE connection's answer.
enum SseOpen {
    Stream(Response),
    /// 204: nothing after the cursor, and the run has ended.
    Ended,
    /// A 200 that is not an event stream: something in between does not do SSE.
    NotSse,
}

async fn open_sse(inner: &Inner, run: &Run, cursor: &Cursor, ws: bool) -> Result<SseOpen> {
    let mut req = inner
        .http
        .get(inner.wire(run.url()))
        .header(reqwest::header::ACCEPT, h::EVENT_STREAM);
    if let Some(last) = cursor.last {
        req = req.header(h::LAST_EVENT_ID, last.to_string());
    }
    // Headers must come within the fallback time too: a proxy that buffers may hold them.
    let limit = inner.timeout().min(inner.sse_fallback_after());
    let res = match inner
        .send_over(req, limit, "opening the event stream", ws)
        .await
    {
        Err(Error::Timeout { .. }) => return Ok(SseOpen::NotSse),
        other => other?,
    };
    match res.status().as_u16() {
        200 => {
            let is_sse = res
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.trim_start().starts_with(h::EVENT_STREAM));
            Ok(if is_sse {
                SseOpen::Stream(res)
            } else {
                SseOpen::NotSse
            })
        }
        204 => Ok(SseOpen::Ended),
        _ => Err(error_from(res, run.url().as_str()).await),
    }
}

/// One long poll: the events after the cursor, and whether the run has ended (`Longrun-State`).
async fn poll_once(
    inner: &Inner,
    run: &Run,
    cursor: &Cursor,
    ws: bool,
) -> Result<(Vec<RawEvent>, bool)> {
    let wait = inner.poll_wait();
    let mut req = inner
        .http
        .get(inner.wire(run.url()))
        .header(reqwest::header::ACCEPT, h::JSON)
        .query(&[(h::WAIT_QUERY, format!("{}", wait.as_secs_f64()))]);
    if let Some(last) = cursor.last {
        req = req.header(h::LAST_EVENT_ID, last.to_string());
    }
    // A poll that gets no (complete) answer in time is a connection problem like any other:
    // retried from the cursor, never the end of the follow.
    let stalled = |limit: Duration| Error::Transport {
        message: format!("a long poll got no complete answer within {limit:?}"),
    };
    let limit = wait + inner.timeout();
    let res = match inner.send_over(req, limit, "long polling", ws).await {
        Err(Error::Timeout { .. }) => return Err(stalled(limit)),
        other => other?,
    };
    if res.status().as_u16() != 200 {
        return Err(error_from(res, run.url().as_str()).await);
    }
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok());
    // Nothing more will come when the run has ended and its newest event is at or before the
    // cursor; both headers are taken in one instant by the server.
    let ended = header(h::LONGRUN_STATE)
        .and_then(State::parse)
        .is_some_and(State::is_terminal)
        && header(h::LONGRUN_LAST_EVENT_ID)
            .and_then(h::parse_cursor)
            .is_none_or(|last| cursor.last.is_some_and(|c| last <= c));
    let body = match rt::timeout(inner.timeout(), res.bytes()).await {
        Some(body) => body?,
        None => return Err(stalled(inner.timeout())),
    };
    let events = serde_json::from_slice(&body)
        .map_err(|e| Error::Protocol(format!("a long-poll answer is not an event list: {e}")))?;
    Ok((events, ended))
}

/// The delay before reconnect attempt `failures` (1-based): exponential from `base`, capped,
/// with jitter so a crowd of followers does not come back in one wave.
pub(crate) fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let d = exp.min(max);
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}

pub(crate) fn follow(inner: Arc<Inner>, run: Run, options: FollowOptions) -> EventStream {
    let stream = async_stream::stream! {
        let mut cursor = Cursor { last: options.since };
        let mut transport = options.transport.unwrap_or(inner.config.transport);
        // Over the client's WebSocket when the client or this follow says so.
        let ws = transport == Transport::WebSocket || inner.config.transport == Transport::WebSocket;
        let mut retry = inner.reconnect().initial_delay;
        let mut failures = 0u32;
        'follow: loop {
            // One connection; `failure` says why it ended without the terminal event.
            let failure: Error = match transport {
                Transport::Sse | Transport::WebSocket => match open_sse(&inner, &run, &cursor, ws).await {
                    Ok(SseOpen::Ended) => return,
                    Ok(SseOpen::NotSse) => {
                        transport = Transport::Poll;
                        continue;
                    }
                    Err(e) if !e.is_retryable() => {
                        yield Err(e);
                        return;
                    }
                    Err(e) => e,
                    Ok(SseOpen::Stream(res)) => {
                        let mut chunks = res.chunks();
                        let mut decoder = Decoder::new();
                        let mut heard = false;
                        'conn: loop {
                            // Before anything arrives, silence means a buffering proxy.
                            let limit = if heard { inner.idle_timeout() } else { inner.sse_fallback_after() };
                            let chunk = match rt::timeout(limit, chunks.next()).await {
                                None if !heard => {
                                    // Not a failure of the server: resume by long polling.
                                    transport = Transport::Poll;
                                    continue 'follow;
                                }
                                None => break 'conn Error::Transport { message: format!("nothing arrived for {limit:?}") },
                                Some(None) => break 'conn Error::Transport { message: "the event stream ended before the run did".into() },
                                Some(Some(Err(e))) => break 'conn e,
                                Some(Some(Ok(chunk))) => chunk,
                            };
                            heard = true;
                            // What this chunk completed; a bad message ends the follow after
                            // the events before it are handed out.
                            let mut batch = Vec::new();
                            let mut outcome = Ok(false);
                            match chunk {
                                Chunk::Sse(chunk) => decoder.feed_with(&chunk, |item| match item {
                                    SseItemRef::Retry(ms) => retry = Duration::from_millis(ms),
                                    SseItemRef::Message(msg) if matches!(outcome, Ok(false)) => {
                                        outcome = match to_raw_event(&msg) {
                                            Some(ev) => cursor.take(ev, &mut batch),
                                            None => Err(Error::Protocol(format!("not a longrun event: {msg:?}"))),
                                        };
                                    }
                                    // After the terminal event or an error nothing more counts.
                                    SseItemRef::Message(_) => {}
                                }),
                                // A stream packet's events, as the server wrote them.
                                Chunk::Events(events) => {
                                    for ev in events {
                                        outcome = cursor.take(ev, &mut batch);
                                        if !matches!(outcome, Ok(false)) {
                                            break;
                                        }
                                    }
                                }
                            }
                            if !batch.is_empty() {
                                failures = 0;
                                yield Ok(batch);
                            }
                            match outcome {
                                Ok(false) => {}
                                Ok(true) => return,
                                Err(e) => {
                                    yield Err(e);
                                    return;
                                }
                            }
                        }
                    }
                },
                Transport::Poll => match poll_once(&inner, &run, &cursor, ws).await {
                    Err(e) if !e.is_retryable() => {
                        yield Err(e);
                        return;
                    }
                    Err(e) => e,
                    // `[]` from an ended run: the cursor is at or past its terminal event.
                    Ok((events, true)) if events.is_empty() => return,
                    Ok((events, _)) => {
                        let mut batch = Vec::with_capacity(events.len());
                        let mut outcome = Ok(false);
                        for ev in events {
                            outcome = cursor.take(ev, &mut batch);
                            if !matches!(outcome, Ok(false)) {
                                break;
                            }
                        }
                        if !batch.is_empty() {
                            failures = 0;
                            yield Ok(batch);
                        }
                        match outcome {
                            // The server held the poll; ask again at once.
                            Ok(false) => continue,
                            Ok(true) => return,
                            Err(e) => {
                                yield Err(e);
                                return;
                            }
                        }
                    }
                },
            };
            failures += 1;
            let policy = inner.reconnect();
            if failures > policy.max_attempts {
                yield Err(failure);
                return;
            }
            rt::sleep(backoff(retry, policy.max_delay, failures)).await;
        }
    };
    EventStream::new(Box::pin(stream))
}

/// Drain a follow and return its terminal event. Only that event's value is parsed: a wait on
/// a run with a long log reads the log, but does not build a `Value` of every event in it.
pub(crate) async fn last_event(
    mut events: EventStream,
    mut on_event: impl FnMut(&RawEvent),
) -> Result<Event> {
    const BATCH: usize = 1024;
    let mut last = None;
    loop {
        let batch = events.next_raw_batch(BATCH).await?;
        if batch.is_empty() {
            break;
        }
        batch.iter().for_each(&mut on_event);
        last = batch.into_iter().next_back();
    }
    let last = last
        .filter(|ev| ev.state.is_terminal())
        .ok_or_else(|| Error::Protocol("the follow ended without a terminal event".into()))?;
    last.to_event()
        .map_err(|e| Error::Protocol(format!("event {}: value: {e}", last.id)))
}

/// A terminal event as the result of a wait.
pub(crate) fn outcome(ev: Event) -> Result<Value> {
    match ev.state {
        State::Success => Ok(ev.value),
        State::Error => Err(Error::RunFailed { value: ev.value }),
        State::Canceled => Err(Error::Canceled { value: ev.value }),
        State::Queued | State::Running => Err(Error::Protocol("not a terminal event".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64, state: State) -> RawEvent {
        RawEvent {
            id,
            state,
            value: serde_json::value::to_raw_value(&Value::Null).unwrap(),
        }
    }

    #[test]
    fn the_cursor_skips_duplicates_and_refuses_gaps() {
        let mut batch = Vec::new();
        let mut c = Cursor { last: None };
        assert!(!c.take(ev(0, State::Queued), &mut batch).unwrap());
        assert!(!c.take(ev(0, State::Queued), &mut batch).unwrap());
        assert!(!c.take(ev(1, State::Running), &mut batch).unwrap());
        assert!(c.take(ev(3, State::Running), &mut batch).is_err());
        assert_eq!(batch.iter().map(|e| e.id).collect::<Vec<_>>(), [0, 1]);
        let mut batch = Vec::new();
        let mut c = Cursor { last: Some(5) };
        assert!(!c.take(ev(5, State::Running), &mut batch).unwrap());
        assert!(c.take(ev(6, State::Success), &mut batch).unwrap());
        assert_eq!(batch.iter().map(|e| e.id).collect::<Vec<_>>(), [6]);
    }

    #[test]
    fn a_cursor_is_a_non_negative_integer_or_invalid() {
        for ok in [0.0, -0.0, 1.0, 9_007_199_254_740_991.0] {
            assert_eq!(cursor_from_f64(ok).unwrap(), ok as u64, "{ok}");
        }
        for bad in [
            -1.0,
            0.5,
            f64::NAN,
            f64::INFINITY,
            -f64::INFINITY,
            2f64.powi(53),
        ] {
            let e = cursor_from_f64(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad}");
        }
        assert_eq!(cursor_from_decimal("0").unwrap(), 0);
        assert_eq!(
            cursor_from_decimal("18446744073709551615").unwrap(),
            u64::MAX
        );
        for bad in ["-1", "+1", "", "1.0", "18446744073709551616", "True", " 1"] {
            let e = cursor_from_decimal(bad).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for failures in 1..40 {
            let d = backoff(base, max, failures);
            let full = base.saturating_mul(1 << (failures - 1).min(16)).min(max);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
        }
    }
}
