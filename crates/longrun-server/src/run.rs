//! One run: its append-only event log, shared by every follower, and its cancellation.
//!
//! The log keeps each event pre-encoded twice (an SSE frame and a JSON object) so that a
//! thousand followers of one run cost a thousand cursors, not a thousand copies of the
//! history: a follower locks the log just long enough to clone a few `Bytes` handles.
//!
//! SSE frames are sealed into shared segments of about [`SEGMENT_BYTES`] (the log's own
//! copy, made once): an SSE read is a slice of a sealed segment, or the single next frame of
//! the unsealed tail, and never a copy made for one follower. So a follower whose connection
//! stalls holds handles to bytes the log holds anyway, however far behind it is.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use longrun_proto::{CancelReason, Event, RunId, State, sse};
use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::store::Journal;

/// Why a run is being stopped before its handler finished on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Cancel(CancelReason),
    /// The handler emitted more events than the server allows per run.
    Overflow,
    /// The handler wrote more to its byte stream than `max_stream_bytes` (spec §27.4).
    StreamFull(u64),
}

pub(crate) struct Run {
    pub id: RunId,
    pub object: String,
    /// The tenant that submitted it (with an auth file); other tenants do not see it.
    pub tenant: Option<Arc<str>>,
    /// When it was created, to the microsecond: its place in `GET /_runs` (newest first).
    /// The registry makes it strictly increasing, so a new run never sorts behind one listed.
    pub created: SystemTime,
    /// When its terminal event was appended (for a run read back, when the store says).
    pub ended: OnceLock<SystemTime>,
    /// `longrun_events_appended_total` of its server, for a run executed here.
    pub appended_total: Option<prometheus_client::metrics::counter::Counter>,
    log: Mutex<Log>,
    /// Bumped (to the log length) on every append; followers wait on their own receiver,
    /// which remembers what they have seen, so no wake-up is ever lost and no queue grows.
    appended: watch::Sender<usize>,
    /// Fired once a stop is requested; handlers observe it through `RunContext`.
    pub cancel: CancellationToken,
    /// A latch: set by the first follower and never cleared (it means "was ever followed",
    /// not "is followed now"), for handlers that wait for one.
    ever_followed: AtomicBool,
    first_follower: Notify,
    /// Followers now (SSE streams and held long polls), against `max_followers_per_run`.
    followers: AtomicUsize,
    max_events: u64,
    /// The durable store's writer, if any: appends become visible once it committed them.
    journal: Option<Arc<Journal>>,
    /// Set while the journal has been told about events it has not taken yet, so a busy run
    /// sends it one notice per commit, not one per event.
    journal_pending: AtomicBool,
    /// For a run another replica executes (a mirror of its rows in a shared store): how long
    /// it is kept once it ended.
    mirror: Option<std::time::Duration>,
    /// The run's byte stream, when its object declares one (spec §27).
    stream: Option<crate::stream::Buffer>,
    /// Where the run's start is announced (the `_runs` feeds, spec §28.5), when this process
    /// announces them; on Postgres the journal does, in the commit of the event.
    pub(crate) feed: Option<Arc<crate::topics::Topics>>,
}

/// About how many bytes of SSE frames one sealed segment holds, so one SSE write carries up
/// to this much to a follower that is behind.
pub(crate) const SEGMENT_BYTES: usize = 64 * 1024;

struct Entry {
    /// The SSE frame: its own allocation while unsealed, then a slice of its segment.
    sse: Bytes,
    json: Bytes,
    state: State,
}

/// Frames of events `first..end`, contiguous.
struct Segment {
    first: u64,
    bytes: Bytes,
}

struct Log {
    entries: Vec<Entry>,
    segments: Vec<Segment>,
    /// The id of the first event not in a segment yet, and its frames' total size.
    unsealed: u64,
    unsealed_bytes: usize,
    /// The state of the newest event appended (visible or not).
    state: State,
    /// Set by the first stop request; decides the terminal event when the handler ends.
    stop: Option<Stop>,
    /// How many events followers may read: all of them in memory, the committed ones with a
    /// durable store (never an event a crash could take back).
    visible: usize,
    /// How many events the journal has taken.
    journaled: usize,
}

/// What a read of the log found after a cursor.
pub(crate) struct Batch {
    pub bytes: Bytes,
    pub count: usize,
    /// The id after the last event in `bytes`.
    pub next: u64,
    /// `bytes` ends with the terminal event, or the run ended and nothing is after the cursor.
    pub finished: bool,
    /// The run's state and newest event id in the same instant as the read, so that headers
    /// describing the run never claim more than the body holds.
    pub state: State,
    pub last: u64,
}

/// Outcome of a cancel request.
pub(crate) enum CancelOutcome {
    /// The run is (now) being canceled; the state as of now.
    Accepted(State),
    /// The run already ended in success or error.
    Ended(State),
}

impl Run {
    /// A new run holding event 0. With a journal, event 0 is journaled by the caller (the
    /// submit waits for it) and counts as visible: nobody knows the run's id before then.
    pub fn new(id: RunId, object: String, max_events: u64, journal: Option<Arc<Journal>>) -> Self {
        let run = Self::empty(id, object, max_events, journal);
        let mut log = run.lock();
        log.push(&Event::queued());
        log.visible = 1;
        log.journaled = 1;
        drop(log);
        run.appended.send_replace(1);
        run
    }

    /// A run read back from a durable store: every event visible and journaled.
    pub fn restored(id: RunId, object: String, events: &[Event], json: Vec<Bytes>) -> Self {
        let run = Self::empty(id, object, events.len() as u64 + 1, None);
        run.fill(events, json);
        run
    }

    /// A run another replica executes, as the shared store holds it so far: it grows by
    /// [`Run::mirror_append`] and is never executed here.
    pub fn mirror(
        id: RunId,
        object: String,
        retention: std::time::Duration,
        json: &[String],
    ) -> Self {
        let mut run = Self::empty(id, object, u64::MAX, None);
        run.mirror = Some(retention);
        run.mirror_append(0, json.iter().map(String::as_str));
        run
    }

    /// Whether this is a mirror, and then how long it is kept once it ended.
    pub fn mirror_retention(&self) -> Option<std::time::Duration> {
        self.mirror
    }

    /// Append the events the shared store holds from id `first` on (each event's JSON as
    /// stored); those already here are skipped, so overlapping reads are harmless. Stops at
    /// anything that is not the next event.
    pub fn mirror_append<'a>(&self, first: u64, json: impl Iterator<Item = &'a str>) {
        let mut log = self.lock();
        for (i, text) in json.enumerate() {
            let id = first + i as u64;
            let len = log.entries.len() as u64;
            if id < len {
                continue;
            }
            if log.state.is_terminal() {
                break;
            }
            match serde_json::from_str::<Event>(text) {
                Ok(event) if event.id == len && id == len => {
                    log.push_encoded(&event, Bytes::copy_from_slice(text.as_bytes()));
                }
                _ => break,
            }
        }
        log.visible = log.entries.len();
        log.journaled = log.entries.len();
        let visible = log.visible;
        drop(log);
        if visible > 0 {
            self.appended.send_replace(visible);
        }
    }

    /// Give the run a byte stream of this content type, of at most `limit` bytes.
    pub fn with_stream(mut self, content_type: &str, limit: u64) -> Self {
        self.stream = Some(crate::stream::Buffer::new(content_type, limit));
        self
    }

    pub fn stream(&self) -> Option<&crate::stream::Buffer> {
        self.stream.as_ref()
    }

    /// Append bytes to the run's stream from the handler (spec §27.3). Past the limit nothing
    /// of `data` is kept and the run is stopped: it ends `error`.
    pub fn write_stream(self: &Arc<Self>, data: Bytes) -> Result<(), crate::stream::StreamError> {
        use crate::stream::StreamError;
        let Some(stream) = &self.stream else {
            return Err(StreamError::NoStream);
        };
        let mut log = self.lock();
        if log.state.is_terminal() || log.stop.is_some() {
            return Err(StreamError::Stopped);
        }
        // Under the log's lock, so no byte is appended after the terminal event.
        let written = stream.append(data);
        if let Err(StreamError::Full { limit }) = written {
            log.stop = Some(Stop::StreamFull(limit));
            drop(log);
            self.cancel.cancel();
            return written;
        }
        drop(log);
        if written.is_ok() {
            match &self.journal {
                None => stream.publish(u64::MAX, false),
                // Visible once committed, as events are (the journal takes both).
                Some(journal) => {
                    if !self.journal_pending.swap(true, Ordering::SeqCst) {
                        journal.dirty(self.clone());
                    }
                }
            }
        }
        written
    }

    fn count_appended(&self) {
        if let Some(total) = &self.appended_total {
            total.inc();
        }
    }

    /// How many events the log holds.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    fn fill(&self, events: &[Event], json: Vec<Bytes>) {
        let mut log = self.lock();
        for (event, json) in events.iter().zip(json) {
            log.push_encoded(event, json);
        }
        log.visible = events.len();
        log.journaled = events.len();
        drop(log);
        self.appended.send_replace(events.len());
    }

    fn empty(id: RunId, object: String, max_events: u64, journal: Option<Arc<Journal>>) -> Self {
        Run {
            id,
            object,
            tenant: None,
            created: SystemTime::now(),
            ended: OnceLock::new(),
            appended_total: None,
            log: Mutex::new(Log {
                entries: Vec::new(),
                segments: Vec::new(),
                unsealed: 0,
                unsealed_bytes: 0,
                state: State::Queued,
                stop: None,
                visible: 0,
                journaled: 0,
            }),
            appended: watch::Sender::new(0),
            cancel: CancellationToken::new(),
            ever_followed: AtomicBool::new(false),
            first_follower: Notify::new(),
            followers: AtomicUsize::new(0),
            max_events: max_events.max(2),
            journal,
            journal_pending: AtomicBool::new(false),
            mirror: None,
            stream: None,
            feed: None,
        }
    }

    /// After an append: in memory it is visible at once; with a journal, once committed.
    fn appended(self: &Arc<Self>, len: usize) {
        match &self.journal {
            None => self.publish(len),
            Some(journal) => {
                if !self.journal_pending.swap(true, Ordering::SeqCst) {
                    journal.dirty(self.clone());
                }
            }
        }
    }

    /// Make the first `upto` events visible and wake the followers.
    pub fn publish(&self, upto: usize) {
        let mut log = self.lock();
        log.visible = log.visible.max(upto.min(log.entries.len()));
        let visible = log.visible;
        let ended = log.visible_status().0.is_terminal();
        drop(log);
        // The stream's bytes the journal took are committed too (they go with the events).
        if let Some(stream) = &self.stream {
            stream.publish(stream.journaled(), ended);
        }
        self.appended.send_replace(visible);
    }

    /// For the journal: the events it has not taken yet (from which id), and whether they
    /// end with the terminal event.
    pub fn take_unjournaled(&self) -> (usize, Vec<Bytes>, bool) {
        let mut log = self.lock();
        // Cleared under the lock that appends take: an append after this sends a new notice.
        self.journal_pending.store(false, Ordering::SeqCst);
        let first = log.journaled;
        let events: Vec<Bytes> = log.entries[first..]
            .iter()
            .map(|e| e.json.clone())
            .collect();
        log.journaled = log.entries.len();
        let terminal = log.entries.last().is_some_and(|e| e.state.is_terminal());
        let terminal = terminal && !events.is_empty();
        (first, events, terminal)
    }

    /// A commit failed: what was taken since the last visible event is taken again.
    pub fn unjournal(&self) {
        if let Some(stream) = &self.stream {
            stream.unjournal();
        }
        let mut log = self.lock();
        log.journaled = log.visible;
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A poisoned lock means a panic while appending, which only happens on allocation
        // failure; the log itself is still consistent (push is the last step), so go on.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.appended.subscribe()
    }

    /// The state of the newest event appended, committed or not (the run feeds announce an
    /// end as it happens; followers read it once committed).
    pub fn latest_state(&self) -> State {
        self.lock().state
    }

    /// State and id of the newest event.
    pub fn status(&self) -> (State, u64) {
        self.lock().visible_status()
    }

    /// Append a `running` event from the handler. Returns false when it was dropped: the run
    /// is stopping (cancel requested, or it hit the event limit) or already ended.
    pub fn emit(self: &Arc<Self>, value: Value) -> bool {
        let mut log = self.lock();
        if log.state.is_terminal() || log.stop.is_some() {
            return false;
        }
        // Keep one slot for the terminal event.
        if log.entries.len() as u64 >= self.max_events - 1 {
            log.stop = Some(Stop::Overflow);
            drop(log);
            self.cancel.cancel();
            return false;
        }
        let id = log.entries.len() as u64;
        log.push(&Event {
            id,
            state: State::Running,
            value,
        });
        let len = log.entries.len();
        drop(log);
        self.count_appended();
        self.appended(len);
        // The first event after `queued` is the run's start.
        if let (1, Some(feed)) = (id, &self.feed) {
            let run = self.id.to_string();
            feed.run_feed(self.tenant.as_ref(), &self.object, &run, State::Running);
        }
        true
    }

    /// Whether the events `first..first + count` hold the run's start (a `running` event 1),
    /// which the run feeds announce.
    pub fn started_in(&self, first: usize, count: usize) -> bool {
        (first..first + count).contains(&1)
            && self
                .lock()
                .entries
                .get(1)
                .is_some_and(|e| e.state == State::Running)
    }

    /// Append the terminal event once the handler is done (or dropped). A stop request wins
    /// over the handler's own result, so a 202 to DELETE always ends in `canceled`.
    /// Does nothing if the run already ended.
    pub fn finish(self: &Arc<Self>, result: Result<Value, Value>) {
        let mut log = self.lock();
        if log.state.is_terminal() {
            return;
        }
        let (state, value) = match (log.stop, result) {
            (Some(Stop::Cancel(reason)), _) => (State::Canceled, reason.to_value()),
            (Some(Stop::Overflow), _) => (
                State::Error,
                serde_json::json!({
                    "message": format!("run exceeded the limit of {} events", self.max_events)
                }),
            ),
            (Some(Stop::StreamFull(limit)), _) => (
                State::Error,
                serde_json::json!({
                    "message": format!("run exceeded the limit of {limit} stream bytes"),
                    "limit": limit,
                }),
            ),
            (None, Ok(v)) => (State::Success, v),
            (None, Err(e)) => (State::Error, e),
        };
        let id = log.entries.len() as u64;
        log.push(&Event { id, state, value });
        let _ = self.ended.set(SystemTime::now());
        self.count_appended();
        if let Some(stream) = &self.stream {
            stream.close();
        }
        let len = log.entries.len();
        drop(log);
        if let (Some(stream), None) = (&self.stream, &self.journal) {
            stream.publish(u64::MAX, true);
        }
        self.appended(len);
        // Nobody needs the token any more; firing it lets helpers of the handler stop.
        self.cancel.cancel();
    }

    /// Ask the run to stop. The first reason wins; a run already canceled answers `Accepted`
    /// again so DELETE is idempotent.
    pub fn request_cancel(&self, reason: CancelReason) -> CancelOutcome {
        let mut log = self.lock();
        match log.state {
            State::Success | State::Error => return CancelOutcome::Ended(log.state),
            State::Canceled => return CancelOutcome::Accepted(log.state),
            State::Queued | State::Running => {}
        }
        if log.stop.is_none() {
            log.stop = Some(Stop::Cancel(reason));
        }
        let state = log.state;
        drop(log);
        self.cancel.cancel();
        CancelOutcome::Accepted(state)
    }

    /// Events from id `next` on as SSE frames, without a copy: the rest of the sealed segment
    /// `next` is in (up to [`SEGMENT_BYTES`]), or the one next frame of the unsealed tail.
    pub fn read_sse(&self, next: u64) -> Batch {
        let log = self.lock();
        let total = log.visible as u64;
        let (state, last) = log.visible_status();
        let (bytes, end) = if next >= total {
            (Bytes::new(), next)
        } else if next < log.unsealed {
            // The segment holding `next`: the last one starting at or before it, up to its
            // end or the last visible event.
            let k = log.segments.partition_point(|s| s.first <= next) - 1;
            let seg = &log.segments[k];
            let end = log
                .segments
                .get(k + 1)
                .map_or(log.unsealed, |s| s.first)
                .min(total);
            let offset = |e: &Entry| e.sse.as_ptr() as usize - seg.bytes.as_ptr() as usize;
            let from = offset(&log.entries[next as usize]);
            let last_entry = &log.entries[end as usize - 1];
            let to = offset(last_entry) + last_entry.sse.len();
            (seg.bytes.slice(from..to), end)
        } else {
            (log.entries[next as usize].sse.clone(), next + 1)
        };
        Batch {
            bytes,
            count: (end - next.min(end)) as usize,
            next: end.max(next),
            finished: state.is_terminal() && end >= total,
            state,
            last,
        }
    }

    /// Events from id `next` on as a JSON array, at most `max_events` of them. A long-poll
    /// reply is a copy: it is one answer, bounded by its event count.
    pub fn read_json(&self, next: u64, max_events: usize) -> Batch {
        let log = self.lock();
        let total = log.visible as u64;
        let start = next.min(total) as usize;
        let mut end = start;
        let mut size = 0;
        while end < log.visible && end - start < max_events {
            size += log.entries[end].json.len() + 1;
            end += 1;
        }
        let (state, last) = log.visible_status();
        let mut buf = BytesMut::with_capacity(size + 2);
        buf.extend_from_slice(b"[");
        for (i, e) in log.entries[start..end].iter().enumerate() {
            if i > 0 {
                buf.extend_from_slice(b",");
            }
            buf.extend_from_slice(&e.json);
        }
        drop(log);
        buf.extend_from_slice(b"]");
        Batch {
            bytes: buf.freeze(),
            count: end - start,
            next: end as u64,
            finished: state.is_terminal() && end as u64 == total,
            state,
            last,
        }
    }

    /// A follower attached (for handlers that wait for one, like the demo `ephemeral`).
    pub fn mark_followed(&self) {
        if !self.ever_followed.swap(true, Ordering::SeqCst) {
            self.first_follower.notify_waiters();
        }
    }

    /// Count one more follower, unless the run has `max` already.
    pub fn add_follower(&self, max: usize) -> bool {
        crate::conn::take(&self.followers, max)
    }

    pub fn remove_follower(&self) {
        self.followers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Returns once the run has had a follower (at once if it ever had one).
    pub async fn followed(&self) {
        let notified = self.first_follower.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.ever_followed.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

impl Log {
    /// The state and id of the newest visible event.
    fn visible_status(&self) -> (State, u64) {
        let last = self.visible.max(1) - 1;
        (self.entries[last].state, last as u64)
    }

    fn push(&mut self, event: &Event) {
        let json = serde_json::to_vec(event).expect("a serde_json::Value always serializes");
        self.push_encoded(event, Bytes::from(json));
    }

    /// Append `event`, whose JSON is `json` (as served before a restart, byte for byte).
    fn push_encoded(&mut self, event: &Event, json: Bytes) {
        let sse = sse::encode_event(event);
        self.unsealed_bytes += sse.len();
        self.entries.push(Entry {
            sse,
            json,
            state: event.state,
        });
        self.state = event.state;
        // Nothing follows a terminal event, so the tail is sealed then, whatever its size.
        if self.unsealed_bytes >= SEGMENT_BYTES || event.state.is_terminal() {
            self.seal();
        }
    }

    /// Copy the unsealed frames into one segment and point their entries into it.
    fn seal(&mut self) {
        let first = self.unsealed as usize;
        let mut buf = BytesMut::with_capacity(self.unsealed_bytes);
        for entry in &self.entries[first..] {
            buf.extend_from_slice(&entry.sse);
        }
        let bytes = buf.freeze();
        let mut at = 0;
        for entry in &mut self.entries[first..] {
            let len = entry.sse.len();
            entry.sse = bytes.slice(at..at + len);
            at += len;
        }
        self.segments.push(Segment {
            first: first as u64,
            bytes,
        });
        self.unsealed = self.entries.len() as u64;
        self.unsealed_bytes = 0;
    }
}
