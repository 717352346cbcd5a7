//! The run registry: which runs exist, which ended and when they are dropped, which were
//! dropped (tombstones, for 410), and the task that drives each run's handler.
//!
//! Memory is bounded by construction: active runs by `max_active_runs`, ended runs by
//! `max_retained` and `retention`, tombstones by `max_tombstones` and `tombstone_ttl`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use longrun_proto::{CancelReason, RunId};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::Config;
use crate::handler::{Object, RunContext};
use crate::run::Run;
use crate::store::{Journal, Restored};
use bytes::Bytes;
use tokio::sync::oneshot;

pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Every run's driver task, so shutdown can wait for all of them.
    tasks: TaskTracker,
    /// The durable store's writer, when runs are kept on disk too.
    journal: Option<Arc<Journal>>,
}

#[derive(Default)]
struct Inner {
    runs: HashMap<RunId, Arc<Run>>,
    active: usize,
    /// Ended runs by the time they are due to be dropped (`seq` breaks ties in end order).
    ended: BTreeSet<(Instant, u64, RunId)>,
    seq: u64,
    tombstones: HashMap<RunId, String>,
    /// Tombstones in creation order, for both expiry and the count limit.
    tombstone_order: VecDeque<(Instant, RunId)>,
    shutting_down: bool,
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

/// A run just created; with a durable store, `durable` answers once its event 0 is committed
/// (a submit answers 201 only then).
pub(crate) struct Submitted {
    pub run: Arc<Run>,
    pub durable: Option<oneshot::Receiver<Result<(), String>>>,
}

/// What a sweep dropped, for the journal.
#[derive(Default)]
struct Swept {
    dropped: Vec<(RunId, String)>,
    forgotten: Vec<RunId>,
}

impl Registry {
    pub fn new(journal: Option<Arc<Journal>>) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            tasks: TaskTracker::new(),
            journal,
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
            let run = Arc::new(Run::restored(r.id, r.object, &r.events, r.json));
            let seq = inner.seq;
            inner.seq += 1;
            inner.ended.insert((due, seq, run.id));
            inner.runs.insert(run.id, run);
        }
        for t in restored.tombstones {
            let due = now + left(t.dropped, config.tombstone_ttl);
            inner.tombstones.insert(t.id, t.object);
            inner.tombstone_order.push_back((due, t.id));
        }
        let swept = inner.sweep(config, now);
        drop(inner);
        self.journal_swept(swept);
    }

    fn journal_swept(&self, swept: Swept) {
        if let Some(journal) = &self.journal {
            journal.dropped(swept.dropped, swept.forgotten);
        }
    }

    /// Wait until everything journaled so far is on disk (shutdown calls it last).
    pub async fn flush(&self) {
        if let Some(journal) = &self.journal {
            journal.flush().await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn lookup(&self, config: &Config, object: &str, id: &str) -> Lookup {
        let Ok(id) = RunId::parse(id) else {
            return Lookup::NotFound;
        };
        let mut inner = self.lock();
        let swept = inner.sweep(config, Instant::now());
        let found = if let Some(run) = inner.runs.get(&id) {
            if run.object == object {
                Lookup::Found(run.clone())
            } else {
                Lookup::NotFound
            }
        } else {
            match inner.tombstones.get(&id) {
                Some(o) if o == object => Lookup::Gone,
                _ => Lookup::NotFound,
            }
        };
        drop(inner);
        self.journal_swept(swept);
        found
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
        args: Value,
    ) -> Result<Submitted, SubmitError> {
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
            let run = Arc::new(Run::new(
                RunId::from_uuid(uuid::Uuid::new_v4()),
                name.to_owned(),
                config.max_events_per_run,
                self.journal.clone(),
            ));
            inner.runs.insert(run.id, run.clone());
            inner.active += 1;
            (run, swept)
        };
        self.journal_swept(swept);
        let retention = object
            .options
            .retention
            .map_or(config.retention, |r| r.min(config.retention));
        // Journaled before the handler starts, so the writer takes event 0 before any other.
        let durable = self.journal.as_ref().map(|journal| {
            let event0 = Bytes::from(
                serde_json::to_vec(&longrun_proto::Event::queued()).expect("events serialize"),
            );
            journal.create(run.id, &run.object, retention, event0)
        });
        let mut driver = Box::pin(drive(
            self.clone(),
            config.clone(),
            run.clone(),
            object.handler.start(args, RunContext { run: run.clone() }),
            object.options.timeout,
            retention,
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
            inner.runs.values().cloned().collect()
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
        let now = Instant::now();
        let seq = inner.seq;
        inner.seq += 1;
        inner.ended.insert((now + retention, seq, run.id));
        let swept = inner.sweep(config, now);
        drop(inner);
        self.journal_swept(swept);
    }

    /// Drop what is due now; called on every registry access and by the janitor.
    pub fn sweep(&self, config: &Config) {
        let swept = self.lock().sweep(config, Instant::now());
        self.journal_swept(swept);
    }
}

impl Inner {
    fn sweep(&mut self, config: &Config, now: Instant) -> Swept {
        let mut swept = Swept::default();
        while let Some(&first) = self.ended.first() {
            let (due, _, id) = first;
            if due > now && self.ended.len() <= config.max_retained {
                break;
            }
            self.ended.pop_first();
            if let Some(run) = self.runs.remove(&id) {
                self.tombstones.insert(id, run.object.clone());
                self.tombstone_order
                    .push_back((now + config.tombstone_ttl, id));
                swept.dropped.push((id, run.object.clone()));
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
            tracing::error!(run = %run.id, object = %run.object, "handler panicked");
            Err(json!({"message": "the handler panicked"}))
        }
        None => Err(json!({"message": "the handler did not stop within the grace period"})),
    };
    registry.end(&config, &run, result, retention);
    tracing::debug!(run = %run.id, object = %run.object, state = %run.status().0, "run ended");
}
