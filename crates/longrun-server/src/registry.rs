//! The run registry: which runs exist, which ended and when they are dropped, which were
//! dropped (tombstones, for 410), and the task that drives each run's handler.
//!
//! Memory is bounded by construction: active runs by `max_active_runs`, ended runs by
//! `max_retained` and `retention`, tombstones by `max_tombstones` and `tombstone_ttl`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use longrun_proto::{CancelReason, RunId};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::Config;
use crate::auth::Caller;
use crate::handler::{Object, RunContext};
use crate::run::CancelOutcome;
use crate::run::Run;
use crate::store::{CreateAck, IdemKey, Journal, KeyRecord, Loaded, Owner, Restored};
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::sync::watch;

/// How long shutdown waits for the store to commit what is pending and close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Every run's driver task, so shutdown can wait for all of them.
    tasks: TaskTracker,
    /// The durable store's writer, when runs are kept on disk too.
    journal: Option<Arc<Journal>>,
    /// The run feeds, set once the server is built.
    feed: std::sync::OnceLock<Arc<crate::topics::Topics>>,
    metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<RunId, Arc<Run>>,
    /// The runs executed or read back here (not mirrors), newest last: `GET /_runs` walks it
    /// backwards from a page token's position.
    by_created: BTreeSet<(SystemTime, RunId)>,
    /// The creation time given last: the next run's is later, even if the clock went back.
    last_created: Option<SystemTime>,
    active: usize,
    /// Ended runs by the time they are due to be dropped (`seq` breaks ties in end order).
    ended: BTreeSet<(Instant, u64, RunId)>,
    seq: u64,
    /// Each dropped run's object and tenant.
    tombstones: HashMap<RunId, (String, Owner)>,
    /// Tombstones in creation order, for both expiry and the count limit.
    tombstone_order: VecDeque<(Instant, RunId)>,
    /// Mirrors of runs another replica executes that had not ended when last looked at.
    mirrors_open: HashSet<RunId>,
    /// Idempotency keys: what each was first sent with and the run it made.
    keys: HashMap<IdemKey, KeyEntry>,
    /// Stored keys by when they are forgotten (with the entry's generation, so an entry
    /// removed and claimed again is not forgotten by its old place here).
    key_order: VecDeque<(Instant, u64, IdemKey)>,
    key_generation: u64,
    shutting_down: bool,
}

struct KeyEntry {
    fingerprint: String,
    object: String,
    run: Option<RunId>,
    generation: u64,
    state: watch::Sender<KeyState>,
}

/// Where the first submit of a key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyState {
    /// Its run is being created and stored.
    Pending,
    /// Its run is stored: the key answers with it.
    Stored,
    /// It was refused: the key is free again.
    Failed,
}

/// What an idempotency key means for a submit.
pub(crate) enum Claim {
    /// The key is new (now claimed): create the run.
    New,
    /// The key made this run already.
    Replay { run: RunId, object: String },
    /// The first submit with this key is still being stored: wait, then claim again.
    Wait(watch::Receiver<KeyState>),
    /// The key was sent before with another object or other arguments.
    Reused,
}

pub(crate) enum Lookup {
    Found(Arc<Run>),
    NotFound,
    Gone,
}

pub(crate) enum SubmitError {
    TooManyRuns,
    ShuttingDown,
}

/// What a submit asks for besides its object: the arguments, the idempotency key with the
/// request's fingerprint, the caller's deadline (spec §4.4).
pub(crate) struct Submission {
    pub args: Value,
    pub key: Option<(IdemKey, String)>,
    pub deadline: Option<Duration>,
}

/// A run just created; with a durable store, `durable` answers once its event 0 is committed
/// (a submit answers 201 only then).
pub(crate) struct Submitted {
    pub run: Arc<Run>,
    pub durable: Option<oneshot::Receiver<CreateAck>>,
}

/// What a sweep dropped, for the journal.
#[derive(Default)]
struct Swept {
    dropped: Vec<(RunId, String, Owner)>,
    forgotten: Vec<RunId>,
    /// The dropped runs themselves, freed once the registry's lock is let go: freeing a run
    /// (its log, its wake-ups) is the longest part of a sweep, and nobody needs to wait on it.
    released: Vec<Arc<Run>>,
}

impl Registry {
    pub fn new(journal: Option<Arc<Journal>>, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            tasks: TaskTracker::new(),
            journal,
            feed: std::sync::OnceLock::new(),
            metrics,
        }
    }

    /// How many runs this server executes that have not ended.
    pub fn active(&self) -> usize {
        self.lock().active
    }

    /// Where runs created, started and ended are announced (the `_runs` feeds, spec §28.5).
    pub fn set_feed(&self, topics: Arc<crate::topics::Topics>) {
        let _ = self.feed.set(topics);
    }

    fn announce(&self, run: &Run, state: longrun_proto::State) {
        // On Postgres the journal publishes them, with the commit of the run's event.
        if let Some(feed) = self.feed.get().filter(|f| !f.feeds_in_store()) {
            feed.run_feed(run.tenant.as_ref(), &run.object, &run.id.to_string(), state);
        }
    }

    /// Serve again what a durable store held: ended runs (each due to go when its retention
    /// after its end passes) and tombstones.
    pub fn restore(&self, config: &Config, restored: Restored) {
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut inner = self.lock();
        let left = |since: SystemTime, keep: Duration| {
            keep.saturating_sub(wall.duration_since(since).unwrap_or_default())
        };
        for r in restored.runs {
            let due = now + left(r.ended, r.retention);
            let mut run = Run::restored(r.id, r.object, &r.events, r.json);
            run.tenant = r.tenant;
            run.created = r.created;
            let _ = run.ended.set(r.ended);
            inner.by_created.insert((run.created, run.id));
            inner.last_created = inner.last_created.max(Some(run.created));
            if let Some((ct, chunks)) = r.stream {
                run = run.with_stream(&ct, config.max_stream_bytes);
                crate::stream::restore_ended(&run, chunks);
            }
            let run = Arc::new(run);
            let seq = inner.seq;
            inner.seq += 1;
            inner.ended.insert((due, seq, run.id));
            inner.runs.insert(run.id, run);
        }
        for t in restored.tombstones {
            let due = now + left(t.dropped, config.tombstone_ttl);
            inner.tombstones.insert(t.id, (t.object, t.tenant));
            inner.tombstone_order.push_back((due, t.id));
        }
        for (key, record) in restored.keys {
            let due = now + left(record.created, config.idempotency_ttl);
            inner.remember_key(key, record, due);
        }
        let swept = inner.sweep(config, now);
        drop(inner);
        self.journal_swept(swept);
    }

    /// The durable store, if any.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// The shared store, when the runs are shared with other replicas.
    pub fn shared(&self) -> Option<&crate::store::postgres::Handle> {
        self.journal.as_deref().and_then(Journal::shared)
    }

    /// Claim an idempotency key for a submit of `object` whose request hashes to
    /// `fingerprint`, or learn what it already means.
    pub fn claim(&self, key: &IdemKey, fingerprint: &str, object: &str) -> Claim {
        let mut inner = self.lock();
        if let Some(entry) = inner.keys.get(key) {
            if entry.fingerprint != fingerprint || entry.object != object {
                return Claim::Reused;
            }
            return match (*entry.state.borrow(), entry.run) {
                (KeyState::Stored, Some(run)) => Claim::Replay {
                    run,
                    object: entry.object.clone(),
                },
                _ => Claim::Wait(entry.state.subscribe()),
            };
        }
        inner.key_generation += 1;
        let generation = inner.key_generation;
        inner.keys.insert(
            key.clone(),
            KeyEntry {
                fingerprint: fingerprint.to_owned(),
                object: object.to_owned(),
                run: None,
                generation,
                state: watch::Sender::new(KeyState::Pending),
            },
        );
        Claim::New
    }

    /// The claimed key's run is stored (`ok`), or was refused (the key is free again).
    pub fn settle(&self, config: &Config, key: &IdemKey, ok: bool) {
        let mut inner = self.lock();
        if ok {
            let generation = match inner.keys.get(key) {
                Some(entry) => {
                    entry.state.send_replace(KeyState::Stored);
                    entry.generation
                }
                None => return,
            };
            let due = Instant::now() + config.idempotency_ttl;
            inner.key_order.push_back((due, generation, key.clone()));
        } else if let Some(entry) = inner.keys.remove(key) {
            entry.state.send_replace(KeyState::Failed);
        }
    }

    fn journal_swept(&self, swept: Swept) {
        if let Some(journal) = &self.journal {
            journal.dropped(swept.dropped, swept.forgotten);
        }
    }

    /// Wait until everything journaled so far is on disk, then close the store (shutdown
    /// calls it last, so the file is free for another server once it returns).
    pub async fn close(&self) {
        if let Some(journal) = &self.journal {
            // A store that cannot be reached (a database that is down) does not hold the
            // process: what it has not committed was never acknowledged nor shown.
            if tokio::time::timeout(CLOSE_WAIT, journal.close())
                .await
                .is_err()
            {
                tracing::error!(
                    "the store did not close within {CLOSE_WAIT:?}; events it had not committed \
                     (never shown to anyone) are lost"
                );
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Find a run: in this process, or, with a shared store, in the database (then it is
    /// served from here on as a mirror, fed from the store).
    pub async fn find(
        &self,
        config: &Config,
        caller: &Caller,
        object: &str,
        id: &str,
    ) -> Result<Lookup, String> {
        let Ok(id) = RunId::parse(id) else {
            return Ok(Lookup::NotFound);
        };
        let found = self.lookup(config, caller, object, id);
        let Some(pg) = self.shared() else {
            return Ok(found);
        };
        if !matches!(found, Lookup::NotFound) {
            return Ok(found);
        }
        match pg.load(id).await? {
            None => Ok(Lookup::NotFound),
            Some(Loaded::Gone(o, tenant)) => Ok(if o == object && caller.sees(tenant.as_deref()) {
                Lookup::Gone
            } else {
                Lookup::NotFound
            }),
            Some(Loaded::Run {
                seq,
                object: o,
                tenant,
                retention,
                events,
                stream,
            }) => {
                if o != object || !caller.sees(tenant.as_deref()) {
                    return Ok(Lookup::NotFound);
                }
                let mut mirror = Run::mirror(id, o, retention, &events);
                mirror.tenant = tenant;
                if let Some(ct) = stream {
                    // Filled from the store's chunks by `watch` below, as its events are.
                    mirror = mirror.with_stream(&ct, u64::MAX);
                }
                let mirror = Arc::new(mirror);
                if mirror.len() == 0 {
                    return Ok(Lookup::NotFound);
                }
                let (run, fresh) = {
                    let mut inner = self.lock();
                    match inner.runs.get(&id) {
                        Some(existing) => (existing.clone(), false),
                        None => {
                            inner.runs.insert(id, mirror.clone());
                            inner.mirrors_open.insert(id);
                            (mirror, true)
                        }
                    }
                };
                if fresh {
                    pg.watch(&run, seq).await;
                }
                self.sweep(config);
                Ok(Lookup::Found(run))
            }
        }
    }

    /// Ask a run to stop: here, or through the shared store when another replica executes it.
    pub async fn cancel(
        &self,
        run: &Arc<Run>,
        reason: CancelReason,
    ) -> Result<CancelOutcome, String> {
        let Some(pg) = self.shared() else {
            return Ok(run.request_cancel(reason));
        };
        if run.mirror_retention().is_none() {
            return Ok(run.request_cancel(reason));
        }
        if pg.cancel(run.id, reason).await? {
            let state = run.status().0;
            // Its end may be committed already (the stop raced it): the run's own state is
            // what the answer says then, as for a local run.
            return Ok(
                if state.is_terminal() && state != longrun_proto::State::Canceled {
                    CancelOutcome::Ended(state)
                } else {
                    CancelOutcome::Accepted(state)
                },
            );
        }
        // It ended: the mirror may not have its terminal event yet.
        pg.refresh(run).await;
        let state = run.status().0;
        Ok(match state {
            longrun_proto::State::Canceled => CancelOutcome::Accepted(state),
            s if s.is_terminal() => CancelOutcome::Ended(s),
            // Gone from the database in between: nothing is left to stop.
            s => CancelOutcome::Accepted(s),
        })
    }

    fn lookup(&self, config: &Config, caller: &Caller, object: &str, id: RunId) -> Lookup {
        let mut inner = self.lock();
        let swept = inner.sweep(config, Instant::now());
        let found = if let Some(run) = inner.runs.get(&id) {
            if run.object == object && caller.sees(run.tenant.as_deref()) {
                Lookup::Found(run.clone())
            } else {
                Lookup::NotFound
            }
        } else {
            match inner.tombstones.get(&id) {
                Some((o, tenant)) if o == object && caller.sees(tenant.as_deref()) => Lookup::Gone,
                _ => Lookup::NotFound,
            }
        };
        drop(inner);
        self.journal_swept(swept);
        found
    }

    /// The runs held here that `caller` sees and `filter` takes, newest first, from after
    /// `after` (a page token's position) on; `limit + 1` at most, so the caller knows whether
    /// another page follows. Tombstones are not runs: dropped runs are not listed.
    pub fn list(
        &self,
        config: &Config,
        caller: &Caller,
        filter: &crate::runs::Filter,
        after: Option<(SystemTime, RunId)>,
        limit: usize,
    ) -> Vec<crate::runs::Listed> {
        let mut inner = self.lock();
        // Runs past their retention are tombstones, which are not listed.
        let swept = inner.sweep(config, Instant::now());
        let older = match after {
            Some(position) => inner.by_created.range(..position),
            None => inner.by_created.range(..),
        };
        let listed = older
            .rev()
            .filter_map(|(_, id)| inner.runs.get(id))
            .filter(|run| caller.sees(run.tenant.as_deref()))
            .filter_map(|run| filter.admit(run))
            .take(limit + 1)
            .collect();
        drop(inner);
        self.journal_swept(swept);
        listed
    }

    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// Create a run and start its handler.
    pub fn submit(
        self: &Arc<Self>,
        config: &Arc<Config>,
        name: &str,
        object: &Object,
        tenant: Option<&str>,
        submission: Submission,
    ) -> Result<Submitted, SubmitError> {
        let Submission {
            args,
            key,
            deadline,
        } = submission;
        let (run, swept) = {
            let mut inner = self.lock();
            if inner.shutting_down {
                return Err(SubmitError::ShuttingDown);
            }
            let swept = inner.sweep(config, Instant::now());
            if inner.active >= config.max_active_runs {
                drop(inner);
                self.journal_swept(swept);
                return Err(SubmitError::TooManyRuns);
            }
            let mut run = Run::new(
                RunId::from_uuid(uuid::Uuid::new_v4()),
                name.to_owned(),
                config.max_events_per_run,
                self.journal.clone(),
            );
            run.tenant = tenant.map(Arc::from);
            run.created = inner.next_created();
            run.appended_total = Some(self.metrics.events_appended.clone());
            run.feed = self.feed.get().filter(|f| !f.feeds_in_store()).cloned();
            if let Some(ct) = &object.options.stream {
                let ct = Some(ct.as_str()).filter(|c| !c.is_empty());
                let ct = ct.unwrap_or(crate::stream::DEFAULT_CONTENT_TYPE);
                run = run.with_stream(ct, config.max_stream_bytes);
            }
            let run = Arc::new(run);
            if let Some(entry) = key.as_ref().and_then(|(k, _)| inner.keys.get_mut(k)) {
                entry.run = Some(run.id);
            }
            inner.runs.insert(run.id, run.clone());
            inner.by_created.insert((run.created, run.id));
            inner.active += 1;
            (run, swept)
        };
        self.journal_swept(swept);
        self.metrics.submitted(name);
        // Event 0, which `Run::new` appended before the run had its counter.
        self.metrics.events_appended.inc();
        self.announce(&run, longrun_proto::State::Queued);
        let retention = object
            .options
            .retention
            .map_or(config.retention, |r| r.min(config.retention));
        // Journaled before the handler starts, so the writer takes event 0 before any other.
        let durable = self.journal.as_ref().map(|journal| {
            let event0 = Bytes::from(
                serde_json::to_vec(&longrun_proto::Event::queued()).expect("events serialize"),
            );
            journal.create(&run, retention, event0, key)
        });
        // Every line the run's driver and handler log carries the run (one span per run).
        let span = tracing::info_span!("run", object = %run.object, run = %run.id);
        let mut driver = Box::pin(tracing::Instrument::instrument(
            drive(
                self.clone(),
                config.clone(),
                run.clone(),
                object.handler.start(args, RunContext { run: run.clone() }),
                // The caller's deadline and the object's timeout: whichever comes first.
                match (object.options.timeout, deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                },
                retention,
            ),
            span,
        ));
        // A handler that finishes at its first poll (echo, a cached answer) ends here, with no
        // task and no hand-over to another worker. One that does not goes on in its own task,
        // whose first poll registers every wake-up again (the no-op waker's are dropped).
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if driver.as_mut().poll(&mut cx).is_pending() {
            self.tasks.spawn(driver);
        }
        Ok(Submitted { run, durable })
    }

    /// Stop accepting runs, cancel every active one with reason `shutdown`, and wait until
    /// all of them have ended (each within the grace period).
    pub async fn shutdown(&self) {
        let active: Vec<Arc<Run>> = {
            let mut inner = self.lock();
            inner.shutting_down = true;
            // Mirrors are executed (and stopped) by their own replica.
            inner
                .runs
                .values()
                .filter(|run| run.mirror_retention().is_none())
                .cloned()
                .collect()
        };
        for run in active {
            run.request_cancel(CancelReason::Shutdown);
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Record a run's end: the terminal event is appended under the registry lock, so that
    /// anyone who saw the terminal event and then asks the registry sees the run as ended
    /// (and, with retention 0, already gone).
    fn end(
        &self,
        config: &Config,
        run: &Arc<Run>,
        result: Result<Value, Value>,
        retention: Duration,
    ) {
        let mut inner = self.lock();
        run.finish(result);
        inner.active -= 1;
        // Under the lock, so the feed says `ended` after `queued` for every run.
        self.announce(run, run.latest_state());
        self.metrics.ended(&run.object, run.latest_state());
        let now = Instant::now();
        let seq = inner.seq;
        inner.seq += 1;
        inner.ended.insert((now + retention, seq, run.id));
        let swept = inner.sweep(config, now);
        drop(inner);
        self.journal_swept(swept);
    }

    /// Drop what is due now; called on every registry access and by the janitor, which also
    /// schedules the mirrors that ended since.
    pub fn sweep(&self, config: &Config) {
        let mut inner = self.lock();
        let now = Instant::now();
        if !inner.mirrors_open.is_empty() {
            let ended: Vec<(RunId, Duration)> = inner
                .mirrors_open
                .iter()
                .filter_map(|id| {
                    let run = inner.runs.get(id)?;
                    run.status()
                        .0
                        .is_terminal()
                        .then(|| (*id, run.mirror_retention().unwrap_or_default()))
                })
                .collect();
            for (id, retention) in ended {
                inner.mirrors_open.remove(&id);
                let seq = inner.seq;
                inner.seq += 1;
                inner.ended.insert((now + retention, seq, id));
            }
            let runs = &inner.runs;
            let gone: Vec<RunId> = inner
                .mirrors_open
                .iter()
                .filter(|id| !runs.contains_key(id))
                .copied()
                .collect();
            for id in gone {
                inner.mirrors_open.remove(&id);
            }
        }
        let swept = inner.sweep(config, now);
        drop(inner);
        self.journal_swept(swept);
    }
}

impl Inner {
    /// A creation time later than every one given before, to the microsecond (what stores
    /// keep), so a run created after a page of `GET /_runs` was read sorts before it.
    fn next_created(&mut self) -> SystemTime {
        let now = crate::store::from_micros(crate::store::micros(SystemTime::now()));
        let created = match self.last_created {
            Some(last) if last >= now => last + Duration::from_micros(1),
            _ => now,
        };
        self.last_created = Some(created);
        created
    }

    /// A key stored before (read back from the store), forgotten at `due`.
    fn remember_key(&mut self, key: IdemKey, record: KeyRecord, due: Instant) {
        self.key_generation += 1;
        let generation = self.key_generation;
        self.keys.insert(
            key.clone(),
            KeyEntry {
                fingerprint: record.fingerprint,
                object: record.object,
                run: Some(record.run),
                generation,
                state: watch::Sender::new(KeyState::Stored),
            },
        );
        self.key_order.push_back((due, generation, key));
    }

    fn sweep(&mut self, config: &Config, now: Instant) -> Swept {
        let mut swept = Swept::default();
        while let Some((due, generation, _)) = self.key_order.front() {
            if *due > now && self.key_order.len() <= config.max_idempotency_keys {
                break;
            }
            let generation = *generation;
            if let Some((_, _, key)) = self.key_order.pop_front() {
                if self
                    .keys
                    .get(&key)
                    .is_some_and(|e| e.generation == generation)
                {
                    self.keys.remove(&key);
                }
            }
        }
        while let Some(&first) = self.ended.first() {
            let (due, _, id) = first;
            if due > now && self.ended.len() <= config.max_retained {
                break;
            }
            self.ended.pop_first();
            if let Some(run) = self.runs.remove(&id) {
                self.by_created.remove(&(run.created, id));
                self.tombstones
                    .insert(id, (run.object.clone(), run.tenant.clone()));
                self.tombstone_order
                    .push_back((now + config.tombstone_ttl, id));
                swept
                    .dropped
                    .push((id, run.object.clone(), run.tenant.clone()));
                swept.released.push(run);
            }
        }
        while let Some(&(due, id)) = self.tombstone_order.front() {
            if due > now && self.tombstone_order.len() <= config.max_tombstones {
                break;
            }
            self.tombstone_order.pop_front();
            self.tombstones.remove(&id);
            swept.forgotten.push(id);
        }
        swept
    }
}

/// Drive one run: poll the handler until it returns, or, once a stop is requested, for at
/// most the grace period; then append the terminal event.
async fn drive(
    registry: Arc<Registry>,
    config: Arc<Config>,
    run: Arc<Run>,
    handler: futures::future::BoxFuture<'static, crate::handler::HandlerResult>,
    timeout: Option<Duration>,
    retention: Duration,
) {
    tracing::debug!("run started");
    // A panicking handler must not take the stream down with it (a bug of the seed
    // implementation): it ends the run as `error` like any other failure.
    let mut handler = AssertUnwindSafe(handler).catch_unwind();
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let finished = tokio::select! {
        result = &mut handler => Some(result),
        _ = run.cancel.cancelled() => None,
        _ = deadline => {
            run.request_cancel(CancelReason::Deadline);
            None
        }
    };
    let finished = match finished {
        Some(result) => Some(result),
        // Cooperative cancellation: give the handler the grace period to wind down; after
        // that it is dropped (an exec handler's child is killed on drop).
        None => tokio::time::timeout(config.grace, &mut handler).await.ok(),
    };
    drop(handler);
    let result = match finished {
        Some(Ok(Ok(value))) => Ok(value),
        Some(Ok(Err(e))) => Err(e.to_value()),
        Some(Err(_panic)) => {
            tracing::error!("handler panicked");
            Err(json!({"message": "the handler panicked"}))
        }
        None => Err(json!({"message": "the handler did not stop within the grace period"})),
    };
    registry.end(&config, &run, result, retention);
    tracing::debug!(state = %run.latest_state(), "run ended");
}
