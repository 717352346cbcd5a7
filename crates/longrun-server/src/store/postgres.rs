//! The Postgres store: one database shared by several `longrun serve` replicas.
//!
//! Each replica journals the runs it executes exactly as the SQLite store does (group
//! commit; an event is visible once committed), and serves the runs other replicas execute
//! as *mirrors*: an in-memory log (`Run::mirror`) fed from the `events` table. Every commit
//! notifies `longrun_events` with the ids of the runs it appended to; a replica that mirrors
//! one of them reads the rows after its mirror's length. The listening connection is open
//! before any mirror is made, and a new mirror is read once more after it is registered, so
//! no event falls between a notification and a read; a periodic read of every mirror is the
//! safety net for a lost connection.
//!
//! A stop request for a run another replica executes is recorded in its row and notified on
//! `longrun_stops`; its owner cancels it. Each replica holds a lease (its `replicas` row,
//! renewed every third of the lease): runs whose owner's lease ran out are ended by whichever
//! replica notices first, with the same `interrupted` error a SQLite restart writes.
//! `max_active_runs` is one limit over the whole database (counted under an advisory lock
//! in the transaction that creates runs); retention runs in the database too, so runs whose
//! replica died still go.
//!
//! Pubsub (spec §28.5) is shared the same way: a topic's offsets come from its row in
//! `topic_offsets`, taken in the transaction that inserts the publication (the row stays
//! locked until it commits, so the offsets of a topic are dense over all replicas and commit
//! in order), and `longrun_topics` notifies `<offset>\t<topic>\t<namespace>`; each replica
//! reads the rows after what it delivered (`Topics::follow`). The run feeds are written by
//! the journal in the commit of a run's `queued` and of its end, and by the reaper.
//!
//! The connections live on a thread of their own with a small runtime: `build()` is not
//! async, and the journal keeps committing whatever the server's runtime is doing. The
//! clients' futures are runtime-agnostic, so handlers await reads directly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use longrun_proto::{CancelReason, Event, RunId, State};
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use super::{
    Command, CreateError, DEFAULT_LEASE, GROUP, IdemKey, KeyRecord, NodeRow, NodeWrite, Owner,
    StoreConfig, closing, committed, failed, interrupted_value, millis,
};
use crate::run::Run;

/// The schema version this binary writes (`longrun.meta`).
const SCHEMA_VERSION: i32 = 8;

/// Advisory lock keys: migrations, run creation (the shared active-run count), reaping.
const MIGRATE_LOCK: i64 = 0x6c6f_6e67_0001;
const CREATE_LOCK: i64 = 0x6c6f_6e67_0002;
const REAP_LOCK: i64 = 0x6c6f_6e67_0003;

/// `postgres://…[?lease=15s]`: longrun's own option is taken off; the rest is libpq's.
pub(super) fn parse(url: &str) -> Result<StoreConfig, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut lease = DEFAULT_LEASE;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("lease=") {
            Some(text) => {
                lease = humantime::parse_duration(text)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        format!("{}: lease={text:?} is not a duration like 15s", redact(url))
                    })?;
            }
            None => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    url.parse::<tokio_postgres::Config>()
        .map_err(|e| format!("{}: {e}", redact(&url)))?;
    Ok(StoreConfig::Postgres { url, lease })
}

/// The URL without its password, for messages and logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {}", db.message()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("postgres: {e}: {source}"),
            None => format!("postgres: {e}"),
        },
    }
}

/// What the server's settings mean for the shared database.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub max_active_runs: usize,
    pub tombstone_ttl: Duration,
    pub max_tombstones: usize,
    pub keys: super::KeyLimits,
    pub lease: Duration,
    /// Publications kept per topic (spec §28.5), by count (at least the last) and by age.
    pub topic_history: usize,
    pub topic_history_age: Duration,
}

/// A run as the database holds it, for a replica that does not execute it.
pub(crate) enum Loaded {
    Run {
        seq: i64,
        object: String,
        tenant: Owner,
        retention: Duration,
        /// Each event's JSON as it was served.
        events: Vec<String>,
        /// The content type of its byte stream, when it has one (spec §27).
        stream: Option<String>,
    },
    /// A tombstone of this object and tenant.
    Gone(String, Owner),
}

/// The handle the server holds: the journal's queue, and the reading connection.
pub(crate) struct Handle {
    journal: mpsc::UnboundedSender<Command>,
    reader: Arc<Reader>,
    shared: Arc<Shared>,
}

/// The reading (and listening) connection, replaced when it is lost.
struct Reader(Mutex<Arc<Client>>);

impl Reader {
    fn get(&self) -> Arc<Client> {
        lock(&self.0).clone()
    }

    fn set(&self, client: Client) {
        *lock(&self.0) = Arc::new(client);
    }
}

/// How long to wait before connecting again after a lost connection.
const RECONNECT: Duration = Duration::from_secs(1);

/// What the connections' tasks and the server share.
struct Shared {
    replica: String,
    /// Runs of other replicas served here, by id: their row's `seq`, the log.
    mirrors: Mutex<HashMap<RunId, (i64, Weak<Run>)>>,
    /// Runs this replica executes and has not ended, for stop requests from other replicas.
    owned: Mutex<HashMap<RunId, Weak<Run>>>,
    /// What notifications asked for since the last look: mirrors to read, runs to stop.
    /// Bounded by the runs mirrored and owned here.
    pending: Mutex<Pending>,
    wake: Notify,
    /// What other replicas changed about worker nodes, for `Handle::node_notes`.
    node_notes: Mutex<NodeNotes>,
    node_wake: Notify,
    /// Publications committed (by any replica), for `Topics`; bounded by the topics.
    topic_notes: Mutex<TopicNotes>,
    topic_wake: Notify,
    /// The topics this replica holds (subscribed, or cached): their rows are kept meanwhile.
    watched: Mutex<Vec<(String, String)>>,
}

/// The characters of a namespace a `longrun_topics` notification carries at most, so that
/// its payload stays within Postgres' 8000 bytes whatever a tenant is called.
pub(crate) const NOTIFIED_NS: usize = 1000;

/// What the topics of this replica have to read (spec §28.5).
#[derive(Default)]
pub(crate) struct TopicNotes {
    /// The connection was lost: every topic held must be read again.
    pub reload: bool,
    /// The lowest and highest offsets notified per `(namespace, topic)` (`""` is the
    /// server's namespace; its first `NOTIFIED_NS` characters); a highest of `u64::MAX`
    /// asks for whatever was committed.
    pub seen: HashMap<(String, String), (u64, u64)>,
}

/// A topic as the database holds it: the offset its next publication gets, its oldest kept
/// publication, and the publications from the offset asked for.
pub(crate) struct TopicRead {
    pub next: u64,
    pub first: Option<u64>,
    pub rows: Vec<(u64, String)>,
}

/// Progress reports waiting for this replica at most (each a NOTIFY payload, < 8000 bytes):
/// beyond it they are dropped, and logged.
const MAX_FORWARDED_PROGRESS: usize = 1024;
/// The largest progress value another replica can forward (Postgres' NOTIFY payload limit,
/// less the node and run ids).
pub(crate) const MAX_FORWARDED_BYTES: usize = 7900;

/// What the node registry of this replica has to look at (spec §25.7).
#[derive(Default)]
pub(crate) struct NodeNotes {
    /// The connection was lost: every node must be read again.
    pub reload: bool,
    /// Nodes whose row changed (or went).
    pub changed: HashSet<String>,
    /// Progress callbacks another replica received for calls this one may hold:
    /// `(node, sender, value JSON)`.
    pub progress: Vec<(String, String, String)>,
}

impl NodeNotes {
    fn is_empty(&self) -> bool {
        !self.reload && self.changed.is_empty() && self.progress.is_empty()
    }
}

#[derive(Default)]
struct Pending {
    events: HashSet<RunId>,
    stops: HashMap<RunId, CancelReason>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn notified(&self, channel: &str, payload: &str) {
        match channel {
            "longrun_events" => {
                let Ok(id) = RunId::parse(payload) else {
                    return;
                };
                if lock(&self.mirrors).contains_key(&id) {
                    lock(&self.pending).events.insert(id);
                    self.wake.notify_one();
                }
            }
            "longrun_topics" => {
                // `<offset>\t<topic>\t<namespace>`: the namespace last, as it may be any text.
                let mut parts = payload.splitn(3, '\t');
                let (Some(Ok(offset)), Some(topic), Some(ns)) = (
                    parts.next().map(str::parse::<u64>),
                    parts.next(),
                    parts.next(),
                ) else {
                    return;
                };
                let mut notes = lock(&self.topic_notes);
                let seen = notes
                    .seen
                    .entry((ns.to_owned(), topic.to_owned()))
                    .or_insert((offset, offset));
                *seen = (seen.0.min(offset), seen.1.max(offset));
                drop(notes);
                self.topic_wake.notify_one();
            }
            "longrun_nodes" => {
                lock(&self.node_notes).changed.insert(payload.to_owned());
                self.node_wake.notify_one();
            }
            "longrun_progress" => {
                let mut parts = payload.splitn(3, ' ');
                let (Some(node), Some(sender), Some(value)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return;
                };
                let mut notes = lock(&self.node_notes);
                if notes.progress.len() >= MAX_FORWARDED_PROGRESS {
                    tracing::warn!(
                        node,
                        run = sender,
                        "a forwarded progress report was dropped: too many waiting"
                    );
                    return;
                }
                notes
                    .progress
                    .push((node.to_owned(), sender.to_owned(), value.to_owned()));
                drop(notes);
                self.node_wake.notify_one();
            }
            "longrun_stops" => {
                let Some((id, reason)) = payload.split_once(' ') else {
                    return;
                };
                let (Ok(id), Some(reason)) = (RunId::parse(id), parse_reason(reason)) else {
                    return;
                };
                if lock(&self.owned).contains_key(&id) {
                    lock(&self.pending).stops.entry(id).or_insert(reason);
                    self.wake.notify_one();
                }
            }
            _ => {}
        }
    }

    fn stop(&self, id: RunId, reason: CancelReason) {
        let run = lock(&self.owned).get(&id).and_then(Weak::upgrade);
        if let Some(run) = run {
            run.request_cancel(reason);
        }
    }
}

fn parse_reason(text: &str) -> Option<CancelReason> {
    [
        CancelReason::Client,
        CancelReason::Deadline,
        CancelReason::Shutdown,
    ]
    .into_iter()
    .find(|r| r.as_str() == text)
}

impl Handle {
    /// Connect, migrate, register this replica, end the runs of dead replicas, and start the
    /// journal; returns once all of that is done (or failed).
    pub fn connect(url: &str, limits: Limits) -> Result<Handle, String> {
        let (ready, started) = std::sync::mpsc::channel();
        let url = url.to_owned();
        std::thread::Builder::new()
            .name("longrun-postgres".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready.send(Err(format!("cannot start the Postgres runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    match start(&url, limits).await {
                        Ok((handle, background)) => {
                            let _ = ready.send(Ok(handle));
                            background.await;
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                });
            })
            .map_err(|e| format!("cannot start the Postgres thread: {e}"))?;
        started
            .recv()
            .map_err(|_| "the Postgres thread stopped".to_owned())?
    }

    pub(super) fn send(&self, cmd: Command) -> bool {
        self.journal.send(cmd).is_ok()
    }

    /// Read a run (or its tombstone) that this replica does not hold.
    pub async fn load(&self, id: RunId) -> Result<Option<Loaded>, String> {
        let key = id.to_string();
        let reader = self.reader.get();
        let row = reader
            .query_opt(
                "SELECT seq, object, retention_ms, tenant, stream FROM longrun.runs WHERE id = $1",
                &[&key],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        if let Some(row) = row {
            let seq: i64 = row.get(0);
            let events = reader
                .query(
                    "SELECT event FROM longrun.events WHERE run = $1 ORDER BY id",
                    &[&seq],
                )
                .await
                .map_err(|e| pg_error(&e))?;
            // Dropped between the two reads: it is a tombstone now.
            if !events.is_empty() {
                return Ok(Some(Loaded::Run {
                    seq,
                    object: row.get(1),
                    tenant: row.get::<_, Option<&str>>(3).map(Arc::from),
                    retention: Duration::from_millis(row.get::<_, i64>(2).max(0) as u64),
                    events: events.iter().map(|r| r.get(0)).collect(),
                    stream: row.get(4),
                }));
            }
        }
        let tomb = reader
            .query_opt(
                "SELECT object, tenant FROM longrun.tombstones WHERE id = $1",
                &[&key],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(tomb.map(|r| Loaded::Gone(r.get(0), r.get::<_, Option<&str>>(1).map(Arc::from))))
    }

    /// `GET /_runs` from the shared table: the runs of `tenant` (`None`: all) that `filter`
    /// takes, newest first, older than `after`; `limit` at most.
    pub async fn list_runs(
        &self,
        filter: &crate::runs::Filter,
        tenant: Option<&str>,
        after: Option<(SystemTime, RunId)>,
        limit: usize,
    ) -> Result<Vec<crate::runs::Listed>, String> {
        let after_us = after.map(|(t, _)| super::micros(t));
        let after_id = after.map(|(_, id)| id.to_string());
        let states = filter.state_names();
        // A run's state is its newest event's; the state is read from the first bytes of
        // that event's text (the server writes `{"id":N,"state":"…",…}`), so a large value
        // is never parsed for a listing.
        let rows = self
            .reader
            .get()
            .query(
                "SELECT r.object, r.id, r.created_us, r.ended_ms, r.tenant, e.state \
                 FROM longrun.runs r CROSS JOIN LATERAL (SELECT \
                 substring(left(event, 64) FROM '\"state\":\"([a-z]+)\"') AS state \
                 FROM longrun.events WHERE run = r.seq ORDER BY id DESC LIMIT 1) e \
                 WHERE ($1::text IS NULL OR r.object = $1) \
                 AND ($2::text IS NULL OR r.tenant = $2) \
                 AND ($3::int8 IS NULL OR (r.created_us, r.id) < ($3, $4::text)) \
                 AND ($5::text[] IS NULL OR e.state = ANY($5)) \
                 ORDER BY r.created_us DESC, r.id DESC LIMIT $6",
                &[
                    &filter.object,
                    &tenant,
                    &after_us,
                    &after_id,
                    &states,
                    &(limit as i64),
                ],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let state = State::parse(row.get::<_, Option<&str>>(5)?)?;
                Some(crate::runs::Listed {
                    object: row.get(0),
                    id: RunId::parse(row.get::<_, &str>(1)).ok()?,
                    state,
                    created: super::from_micros(row.get(2)),
                    ended: row
                        .get::<_, Option<i64>>(3)
                        .filter(|_| state.is_terminal())
                        .map(super::from_millis),
                    tenant: row.get::<_, Option<&str>>(4).map(Arc::from),
                })
            })
            .collect())
    }

    /// What an idempotency key made, if another replica (or this one) stored it.
    pub async fn find_key(
        &self,
        key: &IdemKey,
        ttl: Duration,
    ) -> Result<Option<KeyRecord>, String> {
        let since = now_ms() - ttl.as_millis() as i64;
        let row = self
            .reader
            .get()
            .query_opt(
                "SELECT fingerprint, run, object, created_ms FROM longrun.idempotency \
                 WHERE scope = $1 AND key = $2 AND created_ms > $3",
                &[&key.scope, &key.key, &since],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(row.and_then(|r| {
            Some(KeyRecord {
                fingerprint: r.get(0),
                run: RunId::parse(r.get::<_, &str>(1)).ok()?,
                object: r.get(2),
                created: super::from_millis(r.get(3)),
            })
        }))
    }

    /// Serve `run` as a mirror of row `seq` from now on, and read what was committed since
    /// it was loaded (a notification before this would have found no mirror).
    pub async fn watch(&self, run: &Arc<Run>, seq: i64) {
        lock(&self.shared.mirrors).insert(run.id, (seq, Arc::downgrade(run)));
        refresh(&self.shared, &self.reader.get(), &[run.id]).await;
    }

    /// The reading connection, for the hook outbox's statements (spec §26.7).
    pub fn client(&self) -> Arc<Client> {
        self.reader.get()
    }

    /// This replica's id (in `longrun.replicas`).
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }

    /// Change a node's row, and tell every replica.
    pub async fn write_node(&self, id: &str, write: NodeWrite) -> Result<(), String> {
        let (sql, value) = match write {
            NodeWrite::Record(v) => (
                "INSERT INTO longrun.nodes (id, record) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record RETURNING id",
                Some(v),
            ),
            NodeWrite::Health(v) => (
                "UPDATE longrun.nodes SET health = $2 WHERE id = $1 RETURNING id",
                Some(v),
            ),
            NodeWrite::Dirty(v) => (
                "UPDATE longrun.nodes SET dirty = COALESCE(dirty, $2) WHERE id = $1 RETURNING id",
                Some(v),
            ),
            NodeWrite::Delete => ("DELETE FROM longrun.nodes WHERE id = $1 RETURNING id", None),
        };
        let sql = format!("WITH w AS ({sql}) SELECT pg_notify('longrun_nodes', id) FROM w");
        let reader = self.reader.get();
        let result = match &value {
            Some(v) => reader.query(&sql, &[&id, v]).await,
            None => reader.query(&sql, &[&id]).await,
        };
        result.map(drop).map_err(|e| pg_error(&e))
    }

    /// Every node row, or one (none when it is gone).
    pub async fn load_nodes(&self, id: Option<&str>) -> Result<Vec<NodeRow>, String> {
        let reader = self.reader.get();
        let rows = match id {
            Some(id) => {
                reader
                    .query(
                        "SELECT id, record, health, dirty FROM longrun.nodes WHERE id = $1",
                        &[&id],
                    )
                    .await
            }
            None => {
                reader
                    .query(
                        "SELECT id, record, health, dirty FROM longrun.nodes ORDER BY id",
                        &[],
                    )
                    .await
            }
        }
        .map_err(|e| pg_error(&e))?;
        Ok(rows
            .iter()
            .map(|r| NodeRow {
                id: r.get(0),
                record: r.get(1),
                health: r.get(2),
                dirty: r.get(3),
            })
            .collect())
    }

    /// Whether this replica health-checks the nodes: the live replica with the lowest id
    /// does, so each node is pinged by one replica at a time, and by another once that
    /// one's lease has run out.
    pub async fn is_health_checker(&self) -> bool {
        let first = self
            .reader
            .get()
            .query_opt(
                "SELECT id FROM longrun.replicas WHERE lease_until_ms > $1 ORDER BY id LIMIT 1",
                &[&now_ms()],
            )
            .await;
        match first {
            Ok(Some(row)) => row.get::<_, &str>(0) == self.shared.replica,
            // No live replica at all: this one's lease is being renewed.
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %pg_error(&e), "cannot tell which replica checks node health");
                false
            }
        }
    }

    /// Hand a progress report for a call this replica does not hold to the replica that
    /// may hold it.
    pub async fn forward_progress(
        &self,
        node: &str,
        sender: &str,
        value: &str,
    ) -> Result<(), String> {
        let payload = format!("{node} {sender} {value}");
        self.reader
            .get()
            .execute("SELECT pg_notify('longrun_progress', $1)", &[&payload])
            .await
            .map(drop)
            .map_err(|e| pg_error(&e))
    }

    /// Wait for what other replicas changed about nodes, and take it.
    pub async fn node_notes(&self) -> NodeNotes {
        loop {
            {
                let mut notes = lock(&self.shared.node_notes);
                if !notes.is_empty() {
                    return std::mem::take(&mut *notes);
                }
            }
            self.shared.node_wake.notified().await;
        }
    }

    /// Publish `data` (JSON text) to `topic` of `ns` (`""`: the server's): its offset. One
    /// statement takes the offset from the topic's row (locked until it commits, so every
    /// replica's publications to a topic are one dense sequence, committed in offset order),
    /// inserts the publication, deletes those past the `keep` newest, and notifies. `None`
    /// when the topic is new and the database holds `max_topics` already (counted only then).
    pub async fn publish(
        &self,
        ns: &str,
        topic: &str,
        data: &str,
        keep: usize,
        max_topics: usize,
    ) -> Result<Option<u64>, String> {
        let keep = keep.max(1) as i64;
        let max_topics = max_topics.min(i64::MAX as usize) as i64;
        let row = self
            .reader
            .get()
            .query_opt(
                "WITH o AS (INSERT INTO longrun.topic_offsets AS t (ns, topic, next, last_ms) \
                 SELECT $1::text, $2::text, 1, $3::int8 WHERE EXISTS (SELECT 1 FROM \
                 longrun.topic_offsets WHERE ns = $1 AND topic = $2) \
                 OR (SELECT count(*) FROM longrun.topic_offsets) < $6::int8 \
                 ON CONFLICT (ns, topic) DO UPDATE \
                 SET next = t.next + 1, last_ms = EXCLUDED.last_ms RETURNING t.next - 1 AS n), \
                 p AS (INSERT INTO longrun.publications (ns, topic, n, at_ms, data) \
                 SELECT $1, $2, n, $3, $4::text FROM o RETURNING n), \
                 d AS (DELETE FROM longrun.publications WHERE ns = $1 AND topic = $2 \
                 AND n <= (SELECT n FROM o) - $5::int8) \
                 SELECT n, pg_notify('longrun_topics', \
                 n || E'\\t' || $2 || E'\\t' || left($1, 1000)) FROM p",
                &[&ns, &topic, &now_ms(), &data, &keep, &max_topics],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// A topic of `ns` as committed, in one snapshot: its next offset, its oldest kept
    /// publication, and with `since` the publications from it on (none older than
    /// `max_age`); its row is touched, as a replica that holds it does.
    pub async fn topic(
        &self,
        ns: &str,
        topic: &str,
        since: Option<u64>,
        max_age: Duration,
    ) -> Result<TopicRead, String> {
        let since = since.map_or(i64::MAX, |s| s.min(i64::MAX as u64) as i64);
        // Publications older than their age are gone, whether or not the sweep came by.
        let after_ms = now_ms().saturating_sub(max_age.as_millis().min(i64::MAX as u128) as i64);
        let rows = self
            .reader
            .get()
            .query(
                "WITH touched AS (UPDATE longrun.topic_offsets SET last_ms = $5 \
                 WHERE ns = $1 AND topic = $2 RETURNING 1) \
                 SELECT o.next, f.first, p.n, p.data, (SELECT count(*) FROM touched) \
                 FROM (SELECT COALESCE((SELECT next FROM \
                 longrun.topic_offsets WHERE ns = $1 AND topic = $2), 0) AS next) o \
                 CROSS JOIN (SELECT min(n) AS first FROM longrun.publications \
                 WHERE ns = $1 AND topic = $2 AND at_ms > $4) f \
                 LEFT JOIN longrun.publications p ON p.ns = $1 AND p.topic = $2 AND p.n >= $3 \
                 AND p.at_ms > $4 ORDER BY p.n",
                &[&ns, &topic, &since, &after_ms, &now_ms()],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        let first = rows.first();
        // The row is touched, so no replica's sweep forgets the topic before this one holds
        // it; one this read saw but could not touch was forgotten meanwhile (its offsets
        // start again at 0).
        let held = first.is_some_and(|r| r.get::<_, i64>(4) > 0);
        Ok(TopicRead {
            next: first
                .filter(|_| held)
                .map_or(0, |r| r.get::<_, i64>(0).max(0) as u64),
            first: first
                .and_then(|r| r.get::<_, Option<i64>>(1))
                .map(|n| n.max(0) as u64),
            rows: rows
                .iter()
                .filter_map(|r| {
                    let n = r.get::<_, Option<i64>>(2)?;
                    Some((n.max(0) as u64, r.get::<_, String>(3)))
                })
                .collect(),
        })
    }

    /// The offset of the newest kept publication of `topic` of `ns`.
    pub async fn last_offset(&self, ns: &str, topic: &str) -> Result<Option<u64>, String> {
        let row = self
            .reader
            .get()
            .query_one(
                "SELECT max(n) FROM longrun.publications WHERE ns = $1 AND topic = $2",
                &[&ns, &topic],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(row.get::<_, Option<i64>>(0).map(|n| n.max(0) as u64))
    }

    /// The publications of each `(ns, topic)` from its offset on, in offset order per topic.
    pub async fn read_topics(
        &self,
        wants: &[(String, String, u64)],
    ) -> Result<Vec<(String, String, u64, String)>, String> {
        let ns: Vec<&str> = wants.iter().map(|w| w.0.as_str()).collect();
        let topics: Vec<&str> = wants.iter().map(|w| w.1.as_str()).collect();
        let from: Vec<i64> = wants
            .iter()
            .map(|w| w.2.min(i64::MAX as u64) as i64)
            .collect();
        let rows = self
            .reader
            .get()
            .query(
                "SELECT p.ns, p.topic, p.n, p.data \
                 FROM unnest($1::text[], $2::text[], $3::int8[]) AS w(ns, topic, after) \
                 JOIN longrun.publications p ON p.ns = w.ns AND p.topic = w.topic \
                 AND p.n >= w.after ORDER BY p.ns, p.topic, p.n",
                &[&ns, &topics, &from],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    r.get(1),
                    r.get::<_, i64>(2).max(0) as u64,
                    r.get(3),
                )
            })
            .collect())
    }

    /// Wait for publications committed since the last look, and take them.
    pub async fn topic_notes(&self) -> TopicNotes {
        loop {
            {
                let mut notes = lock(&self.shared.topic_notes);
                if notes.reload || !notes.seen.is_empty() {
                    return std::mem::take(&mut *notes);
                }
            }
            self.shared.topic_wake.notified().await;
        }
    }

    /// Have `topic_notes` ask for whatever `(ns, topic)` committed (none when `topic` is
    /// `None`: every topic held, as after a lost connection).
    pub fn topic_again(&self, ns: &str, topic: Option<&str>) {
        let mut notes = lock(&self.shared.topic_notes);
        match topic {
            Some(t) => {
                let seen = notes.seen.entry((ns.to_owned(), t.to_owned()));
                seen.or_insert((u64::MAX, u64::MAX)).1 = u64::MAX;
            }
            None => notes.reload = true,
        }
        drop(notes);
        self.shared.topic_wake.notify_one();
    }

    /// The topics this replica holds, kept in the database while it does.
    pub fn watch_topics(&self, topics: Vec<(String, String)>) {
        *lock(&self.shared.watched) = topics;
    }

    /// Read the new events of `run` now (a cancel that found it ended wants its end).
    pub async fn refresh(&self, run: &Run) {
        refresh(&self.shared, &self.reader.get(), &[run.id]).await;
    }

    /// Record a stop request for a run another replica executes; false when it has ended
    /// (or is gone).
    pub async fn cancel(&self, id: RunId, reason: CancelReason) -> Result<bool, String> {
        let rows = self
            .reader
            .get()
            .query(
                "WITH u AS (UPDATE longrun.runs SET stop = COALESCE(stop, $2) \
                 WHERE id = $1 AND ended_ms IS NULL RETURNING id) \
                 SELECT pg_notify('longrun_stops', id || ' ' || $2) FROM u",
                &[&id.to_string(), &reason.as_str()],
            )
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(!rows.is_empty())
    }
}

/// Read the events after each mirror's length, in one query for all of them.
async fn refresh(shared: &Shared, reader: &Client, ids: &[RunId]) {
    let mut runs: HashMap<i64, Arc<Run>> = HashMap::new();
    {
        let mut mirrors = lock(&shared.mirrors);
        for id in ids {
            match mirrors.get(id).map(|(seq, run)| (*seq, run.upgrade())) {
                Some((seq, Some(run))) => {
                    runs.insert(seq, run);
                }
                Some((_, None)) => {
                    mirrors.remove(id);
                }
                None => {}
            }
        }
    }
    if runs.is_empty() {
        return;
    }
    // A stream not ended yet is read too: its last bytes come with (or before) the
    // terminal event.
    let streaming = |run: &Arc<Run>| run.stream().is_some_and(|s| !s.length().1);
    let (seqs, after): (Vec<i64>, Vec<i64>) = runs
        .iter()
        .filter(|(_, run)| !run.status().0.is_terminal() || streaming(run))
        .map(|(seq, run)| (*seq, run.len() as i64))
        .unzip();
    if seqs.is_empty() {
        return;
    }
    let rows = match reader
        .query(
            "SELECT e.run, e.id, e.event FROM unnest($1::int8[], $2::int8[]) AS w(run, after) \
             JOIN longrun.events e ON e.run = w.run AND e.id >= w.after ORDER BY e.run, e.id",
            &[&seqs, &after],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %pg_error(&e), "could not read mirrored runs; the next tick retries");
            return;
        }
    };
    let mut at = 0;
    while at < rows.len() {
        let seq: i64 = rows[at].get(0);
        let end = rows[at..]
            .iter()
            .position(|r| r.get::<_, i64>(0) != seq)
            .map_or(rows.len(), |n| at + n);
        if let Some(run) = runs.get(&seq) {
            let first = rows[at].get::<_, i64>(1).max(0) as u64;
            run.mirror_append(first, rows[at..end].iter().map(|r| r.get::<_, &str>(2)));
        }
        at = end;
    }
    refresh_streams(reader, &runs, &seqs).await;
}

/// Copy the committed stream chunks of mirrors past what they hold (read after their events,
/// so every byte written before an event read is there), and end a stream whose run ended.
async fn refresh_streams(reader: &Client, runs: &HashMap<i64, Arc<Run>>, seqs: &[i64]) {
    let (seqs, after): (Vec<i64>, Vec<i64>) = seqs
        .iter()
        .filter_map(|seq| {
            let (len, ended) = runs.get(seq)?.stream()?.length();
            (!ended).then_some((*seq, len as i64))
        })
        .unzip();
    if seqs.is_empty() {
        return;
    }
    let rows = match reader
        .query(
            "SELECT c.run, c.at, c.data FROM unnest($1::int8[], $2::int8[]) AS w(run, after) \
             JOIN longrun.stream_chunks c ON c.run = w.run AND c.at + length(c.data) > w.after \
             ORDER BY c.run, c.at",
            &[&seqs, &after],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %pg_error(&e), "could not read mirrored streams; the next tick retries");
            return;
        }
    };
    for row in &rows {
        let Some(stream) = runs.get(&row.get::<_, i64>(0)).and_then(|r| r.stream()) else {
            continue;
        };
        let at = row.get::<_, i64>(1).max(0) as u64;
        stream.restore(at, Bytes::copy_from_slice(row.get::<_, &[u8]>(2)));
    }
    for seq in &seqs {
        let Some(run) = runs.get(seq) else { continue };
        let Some(stream) = run.stream() else { continue };
        let ended = run.status().0.is_terminal();
        if ended {
            stream.close();
        }
        stream.publish(u64::MAX, ended);
    }
}

type Background = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Connect the journal's connection (its driver logs a failure; the journal notices it on
/// its next statement and connects again).
async fn connect_writer(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::error!(error = %pg_error(&e), "the journal's Postgres connection failed");
        }
    });
    Ok(client)
}

/// Connect the reading connection and LISTEN; the task ends when the connection does.
async fn connect_reader(
    url: &str,
    shared: &Arc<Shared>,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let listening = shared.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => listening.notified(n.channel(), n.payload()),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %pg_error(&e), "the Postgres listening connection failed");
                    break;
                }
            }
        }
    });
    client
        .batch_execute(
            "LISTEN longrun_events; LISTEN longrun_stops; LISTEN longrun_nodes; \
             LISTEN longrun_progress; LISTEN longrun_topics;",
        )
        .await?;
    Ok((client, driver))
}

/// Keep the reading connection: when it is lost, connect again, LISTEN again, and read every
/// mirror (what was notified meanwhile was missed).
async fn keep_reader(
    url: String,
    shared: Arc<Shared>,
    reader: Arc<Reader>,
    mut driver: tokio::task::JoinHandle<()>,
) {
    loop {
        let _ = (&mut driver).await;
        tracing::warn!("the Postgres listening connection is gone; connecting again");
        loop {
            tokio::time::sleep(RECONNECT).await;
            match connect_reader(&url, &shared).await {
                Ok((client, next)) => {
                    reader.set(client);
                    driver = next;
                    break;
                }
                Err(e) => tracing::error!(error = %pg_error(&e), "cannot connect to Postgres"),
            }
        }
        tracing::info!("the Postgres listening connection is back");
        lock(&shared.node_notes).reload = true;
        shared.node_wake.notify_one();
        lock(&shared.topic_notes).reload = true;
        shared.topic_wake.notify_one();
        let all: Vec<RunId> = lock(&shared.mirrors).keys().copied().collect();
        refresh(&shared, &reader.get(), &all).await;
    }
}

async fn start(url: &str, limits: Limits) -> Result<(Handle, Background), String> {
    let where_ = redact(url);
    let mut writer = connect_writer(url)
        .await
        .map_err(|e| format!("{where_}: {}", pg_error(&e)))?;
    migrate(&mut writer)
        .await
        .map_err(|e| format!("{where_}: {e}"))?;
    let replica = uuid::Uuid::new_v4().to_string();
    let shared = Arc::new(Shared {
        replica,
        mirrors: Mutex::new(HashMap::new()),
        owned: Mutex::new(HashMap::new()),
        pending: Mutex::new(Pending::default()),
        wake: Notify::new(),
        node_notes: Mutex::new(NodeNotes::default()),
        node_wake: Notify::new(),
        topic_notes: Mutex::new(TopicNotes::default()),
        topic_wake: Notify::new(),
        watched: Mutex::new(Vec::new()),
    });
    let (reader, driver) = connect_reader(url, &shared)
        .await
        .map_err(|e| format!("{where_}: {}", pg_error(&e)))?;
    let reader = Arc::new(Reader(Mutex::new(Arc::new(reader))));
    renew(&writer, &shared, &limits)
        .await
        .map_err(|e| format!("{where_}: {}", pg_error(&e)))?;
    maintain(&mut writer, &shared, &limits)
        .await
        .map_err(|e| format!("{where_}: {}", pg_error(&e)))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = Handle {
        journal: tx,
        reader: reader.clone(),
        shared: shared.clone(),
    };
    let url = url.to_owned();
    let background = Box::pin(async move {
        let notes = notes(shared.clone(), reader.clone());
        let kept = keep_reader(url.clone(), shared.clone(), reader.clone(), driver);
        tokio::select! {
            _ = write(url, writer, rx, shared, reader, limits) => {}
            _ = notes => {}
            _ = kept => {}
        }
    });
    Ok((handle, background))
}

/// The schema's migrations: entry `k` takes the database from version `k` to `k + 1`, each in
/// the one migrating transaction; a released entry is never edited.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // The same tables as the SQLite store, plus who executes a run (`owner`, a
    // replica) and a stop request recorded for it by another replica.
    "CREATE TABLE longrun.replicas (
                 id TEXT PRIMARY KEY,
                 lease_until_ms BIGINT NOT NULL
             );
             CREATE TABLE longrun.runs (
                 seq BIGSERIAL PRIMARY KEY,
                 id TEXT NOT NULL UNIQUE,
                 object TEXT NOT NULL,
                 created_ms BIGINT NOT NULL,
                 retention_ms BIGINT NOT NULL,
                 ended_ms BIGINT,
                 owner TEXT,
                 stop TEXT
             );
             CREATE INDEX runs_active ON longrun.runs (owner) WHERE ended_ms IS NULL;
             CREATE INDEX runs_due ON longrun.runs ((ended_ms + retention_ms))
                 WHERE ended_ms IS NOT NULL;
             CREATE TABLE longrun.events (
                 run BIGINT NOT NULL REFERENCES longrun.runs (seq) ON DELETE CASCADE,
                 id BIGINT NOT NULL,
                 event TEXT NOT NULL,
                 PRIMARY KEY (run, id)
             );
             CREATE TABLE longrun.tombstones (
                 id TEXT PRIMARY KEY,
                 object TEXT NOT NULL,
                 dropped_ms BIGINT NOT NULL
             );
             CREATE INDEX tombstones_dropped ON longrun.tombstones (dropped_ms);
             DELETE FROM longrun.meta;",
    // v2: the tenant a run (and its tombstone) belongs to; NULL without an auth file.
    "ALTER TABLE longrun.runs ADD COLUMN tenant TEXT;
             ALTER TABLE longrun.tombstones ADD COLUMN tenant TEXT;",
    // v3: idempotency keys, written with the run they made; the key is unique across
    // replicas, so two racing duplicates make one run.
    "CREATE TABLE longrun.idempotency (
                 scope TEXT NOT NULL,
                 key TEXT NOT NULL,
                 fingerprint TEXT NOT NULL,
                 run TEXT NOT NULL,
                 object TEXT NOT NULL,
                 created_ms BIGINT NOT NULL,
                 PRIMARY KEY (scope, key)
             );
             CREATE INDEX idempotency_created ON longrun.idempotency (created_ms);",
    // v4: worker node registrations (spec §25.7), shared by the replicas.
    "CREATE TABLE longrun.nodes (
                 id TEXT PRIMARY KEY,
                 record TEXT NOT NULL,
                 health TEXT,
                 dirty TEXT
             );",
    // v5: the hook outbox (spec §26.7), shared by the replicas: a replica leases the due
    // rows it sends (`lease_until_ms`), so each attempt is made by one replica.
    "CREATE TABLE longrun.hook_deliveries (
                 id TEXT PRIMARY KEY,
                 run TEXT NOT NULL,
                 state TEXT NOT NULL,
                 next_ms BIGINT,
                 lease_until_ms BIGINT,
                 finished_ms BIGINT,
                 created BIGSERIAL,
                 record TEXT NOT NULL
             );
             CREATE INDEX hook_deliveries_due ON longrun.hook_deliveries (next_ms)
                 WHERE state = 'pending';
             CREATE INDEX hook_deliveries_run ON longrun.hook_deliveries (run);
             CREATE INDEX hook_deliveries_finished ON longrun.hook_deliveries (finished_ms);",
    // v6: byte streams (spec §27): a run's content type when it has one, and its bytes
    // in chunks (one per run and commit) by offset, deleted with the run.
    "ALTER TABLE longrun.runs ADD COLUMN stream TEXT;
             CREATE TABLE longrun.stream_chunks (
                 run BIGINT NOT NULL REFERENCES longrun.runs (seq) ON DELETE CASCADE,
                 at BIGINT NOT NULL,
                 data BYTEA NOT NULL,
                 PRIMARY KEY (run, at)
             );",
    // v7: `GET /_runs` (spec §13.4) lists newest first and pages by (created_us, id). The
    // time is the database's clock when the run's row is inserted, under the lock every
    // creating transaction takes, so on every replica a run committed later sorts newer.
    "ALTER TABLE longrun.runs ADD COLUMN created_us BIGINT;
             UPDATE longrun.runs SET created_us = created_ms * 1000;
             ALTER TABLE longrun.runs ALTER COLUMN created_us SET NOT NULL;
             CREATE INDEX runs_listed ON longrun.runs (created_us DESC, id DESC);",
    // v8: pubsub shared by the replicas (spec §28.5): each topic's next offset (per
    // namespace: a tenant's name, '' for the server's), and its kept publications.
    "CREATE TABLE longrun.topic_offsets (
                 ns TEXT NOT NULL,
                 topic TEXT NOT NULL,
                 next BIGINT NOT NULL,
                 last_ms BIGINT NOT NULL,
                 PRIMARY KEY (ns, topic)
             );
             CREATE TABLE longrun.publications (
                 ns TEXT NOT NULL,
                 topic TEXT NOT NULL,
                 n BIGINT NOT NULL,
                 at_ms BIGINT NOT NULL,
                 data TEXT NOT NULL,
                 PRIMARY KEY (ns, topic, n)
             );
             CREATE INDEX publications_at ON longrun.publications (at_ms);",
];

/// Versioned migrations under an advisory lock, so replicas starting together migrate once.
async fn migrate(client: &mut Client) -> Result<(), String> {
    let e = |e: tokio_postgres::Error| pg_error(&e);
    let tx = client.transaction().await.map_err(e)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await
        .map_err(e)?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS longrun;
         CREATE TABLE IF NOT EXISTS longrun.meta (version INTEGER NOT NULL);",
    )
    .await
    .map_err(e)?;
    let version: i32 = tx
        .query_opt("SELECT version FROM longrun.meta", &[])
        .await
        .map_err(e)?
        .map_or(0, |r| r.get(0));
    if version > SCHEMA_VERSION {
        return Err(format!(
            "its schema is version {version}, newer than this longrun knows ({SCHEMA_VERSION}); \
             use a newer longrun, or another database"
        ));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        tx.batch_execute(sql).await.map_err(e)?;
        let to = from as i32 + 1;
        let bumped = tx
            .execute("UPDATE longrun.meta SET version = $1", &[&to])
            .await
            .map_err(e)?;
        if bumped == 0 {
            tx.execute("INSERT INTO longrun.meta (version) VALUES ($1)", &[&to])
                .await
                .map_err(e)?;
        }
    }
    tx.commit().await.map_err(e)
}

fn now_ms() -> i64 {
    millis(SystemTime::now())
}

/// The run feeds' publications of a run created, started or ended (spec §28.5), as `(namespace,
/// topic, data)`, added to `feeds`.
fn feed(
    feeds: &mut Vec<(String, String, String)>,
    tenant: &Owner,
    object: &str,
    id: &str,
    state: State,
) {
    let (data, topics) = crate::topics::feed(tenant.as_ref(), object, id, state);
    for (ns, topic) in topics {
        feeds.push((ns.as_deref().unwrap_or("").to_owned(), topic, data.clone()));
    }
}

/// Publish `feeds` (`(namespace, topic, data)`, in order) in `tx`: each topic's offsets are
/// taken from its row once for all of its publications, rows locked in (namespace, topic)
/// order so that transactions publishing to the same feeds never deadlock; publications
/// past the `keep` newest go, and each topic is notified once with its last offset.
async fn publish_feeds(
    tx: &tokio_postgres::Transaction<'_>,
    feeds: &[(String, String, String)],
    now: i64,
    keep: usize,
) -> Result<(), tokio_postgres::Error> {
    if feeds.is_empty() {
        return Ok(());
    }
    let ns: Vec<&str> = feeds.iter().map(|f| f.0.as_str()).collect();
    let topics: Vec<&str> = feeds.iter().map(|f| f.1.as_str()).collect();
    let data: Vec<&str> = feeds.iter().map(|f| f.2.as_str()).collect();
    let keep = keep.max(1) as i64;
    tx.execute(
        "WITH u AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) \
         WITH ORDINALITY AS u(ns, topic, data, i)), \
         c AS (SELECT ns, topic, count(*)::int8 AS k FROM u GROUP BY ns, topic), \
         o AS (INSERT INTO longrun.topic_offsets AS t (ns, topic, next, last_ms) \
         SELECT ns, topic, k, $4::int8 FROM c ORDER BY ns, topic \
         ON CONFLICT (ns, topic) DO UPDATE SET next = t.next + EXCLUDED.next, \
         last_ms = EXCLUDED.last_ms RETURNING t.ns, t.topic, t.next), \
         p AS (INSERT INTO longrun.publications (ns, topic, n, at_ms, data) \
         SELECT u.ns, u.topic, o.next - c.k - 1 + row_number() OVER \
         (PARTITION BY u.ns, u.topic ORDER BY u.i), $4, u.data \
         FROM u JOIN c USING (ns, topic) JOIN o USING (ns, topic)), \
         d AS (DELETE FROM longrun.publications x USING o \
         WHERE x.ns = o.ns AND x.topic = o.topic AND x.n < o.next - $5::int8) \
         SELECT pg_notify('longrun_topics', \
         (next - 1) || E'\\t' || topic || E'\\t' || left(ns, 1000)) \
         FROM o",
        &[&ns, &topics, &data, &now, &keep],
    )
    .await?;
    Ok(())
}

/// Renew this replica's lease (or take one again after it was thought dead).
async fn renew(
    client: &Client,
    shared: &Shared,
    limits: &Limits,
) -> Result<(), tokio_postgres::Error> {
    let until = now_ms() + limits.lease.as_millis() as i64;
    let renewed = client
        .execute(
            "UPDATE longrun.replicas SET lease_until_ms = $2 WHERE id = $1",
            &[&shared.replica, &until],
        )
        .await?;
    if renewed == 0 {
        client
            .execute(
                "INSERT INTO longrun.replicas (id, lease_until_ms) VALUES ($1, $2)",
                &[&shared.replica, &until],
            )
            .await?;
    }
    Ok(())
}

/// End the runs whose replica's lease ran out, apply retention in the database, and pick up
/// stop requests a lost notification did not bring.
async fn maintain(
    client: &mut Client,
    shared: &Shared,
    limits: &Limits,
) -> Result<(), tokio_postgres::Error> {
    let now = now_ms();
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REAP_LOCK])
        .await?;
    tx.execute(
        "DELETE FROM longrun.replicas WHERE lease_until_ms < $1",
        &[&now],
    )
    .await?;
    let orphans = tx
        .query(
            "SELECT r.seq, r.id, (SELECT max(e.id) FROM longrun.events e WHERE e.run = r.seq), \
             r.stream IS NOT NULL, r.object, r.tenant FROM longrun.runs r \
             WHERE r.ended_ms IS NULL AND NOT EXISTS \
             (SELECT 1 FROM longrun.replicas p WHERE p.id = r.owner)",
            &[],
        )
        .await?;
    let mut feeds = Vec::new();
    for row in &orphans {
        let (seq, id): (i64, String) = (row.get(0), row.get(1));
        let tenant: Owner = row.get::<_, Option<&str>>(5).map(Arc::from);
        feed(&mut feeds, &tenant, row.get(4), &id, State::Error);
        let next = row.get::<_, Option<i64>>(2).map_or(0, |last| last + 1);
        let event = Event {
            id: next as u64,
            state: State::Error,
            value: interrupted_value(),
        };
        let text = serde_json::to_string(&event).expect("events serialize");
        tx.execute(
            "INSERT INTO longrun.events (run, id, event) VALUES ($1, $2, $3)",
            &[&seq, &next, &text],
        )
        .await?;
        tx.execute(
            "UPDATE longrun.runs SET ended_ms = $2 WHERE seq = $1",
            &[&seq, &now],
        )
        .await?;
        tx.execute("SELECT pg_notify('longrun_events', $1)", &[&id])
            .await?;
        // A hooked run's watcher died with its replica: its `run.ended` goes into the
        // outbox in this transaction, so the end and its delivery commit together.
        let watch = tx
            .query_opt(
                "DELETE FROM longrun.hook_deliveries WHERE id = $1 RETURNING record",
                &[&crate::hooks::watch_id(&id)],
            )
            .await?;
        let stream: bool = row.get(3);
        if let Some(delivery) =
            watch.and_then(|w| crate::hooks::reaped(w.get::<_, &str>(0), &event, stream))
        {
            crate::hooks::insert_pending(&tx, &delivery).await?;
        }
    }
    // Their ends on the run feeds, in the transaction that ends them (after every run's row,
    // as a journal's commit locks them).
    publish_feeds(&tx, &feeds, now, limits.topic_history).await?;
    if !orphans.is_empty() {
        tracing::warn!(
            runs = orphans.len(),
            "runs whose replica stopped renewing its lease ended as interrupted"
        );
    }
    tx.execute(
        "WITH gone AS (DELETE FROM longrun.runs WHERE ended_ms IS NOT NULL \
         AND ended_ms + retention_ms <= $1 RETURNING id, object, tenant) \
         INSERT INTO longrun.tombstones (id, object, dropped_ms, tenant) \
         SELECT id, object, $1, tenant FROM gone ON CONFLICT (id) DO NOTHING",
        &[&now],
    )
    .await?;
    let forget_before = now - limits.tombstone_ttl.as_millis() as i64;
    tx.execute(
        "DELETE FROM longrun.tombstones WHERE dropped_ms <= $1",
        &[&forget_before],
    )
    .await?;
    tx.execute(
        "DELETE FROM longrun.tombstones WHERE id IN (SELECT id FROM longrun.tombstones \
         ORDER BY dropped_ms DESC OFFSET $1)",
        &[&(limits.max_tombstones as i64)],
    )
    .await?;
    let keys_before = now - limits.keys.idempotency_ttl.as_millis() as i64;
    tx.execute(
        "DELETE FROM longrun.idempotency WHERE created_ms <= $1",
        &[&keys_before],
    )
    .await?;
    tx.execute(
        "DELETE FROM longrun.idempotency WHERE created_ms < (SELECT created_ms FROM \
         longrun.idempotency ORDER BY created_ms DESC LIMIT 1 OFFSET $1)",
        &[&(limits.keys.max_idempotency_keys as i64)],
    )
    .await?;
    let stops = tx
        .query(
            "SELECT id, stop FROM longrun.runs WHERE owner = $1 AND stop IS NOT NULL \
             AND ended_ms IS NULL",
            &[&shared.replica],
        )
        .await?;
    tx.commit().await?;
    // Pubsub (spec §28.5), outside that transaction: the topics this replica holds stay (so
    // their offsets never start again under its subscribers; rows locked in the order a
    // journal's commit locks them), then publications older than their age go, and topics
    // with none left that no replica touched meanwhile.
    let watched = lock(&shared.watched).clone();
    let (ns, topics): (Vec<&str>, Vec<&str>) = watched
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .unzip();
    if !ns.is_empty() {
        client
            .execute(
                "UPDATE longrun.topic_offsets t SET last_ms = $3 FROM (SELECT ns, topic \
                 FROM longrun.topic_offsets WHERE (ns, topic) IN \
                 (SELECT * FROM unnest($1::text[], $2::text[])) ORDER BY ns, topic FOR UPDATE) w \
                 WHERE t.ns = w.ns AND t.topic = w.topic",
                &[&ns, &topics, &now],
            )
            .await?;
    }
    let aged = now - limits.topic_history_age.as_millis() as i64;
    client
        .execute(
            "DELETE FROM longrun.publications WHERE at_ms <= $1",
            &[&aged],
        )
        .await?;
    // Every live replica touches the topics it holds once per third of its lease, so a row
    // untouched for a whole lease (and its age) is held by none, however short the age.
    let idle = now - limits.topic_history_age.max(limits.lease).as_millis() as i64;
    client
        .execute(
            "DELETE FROM longrun.topic_offsets t WHERE last_ms <= $1 AND NOT EXISTS \
             (SELECT 1 FROM longrun.publications p WHERE p.ns = t.ns AND p.topic = t.topic)",
            &[&idle],
        )
        .await?;
    for row in stops {
        if let (Ok(id), Some(reason)) = (
            RunId::parse(row.get::<_, &str>(0)),
            parse_reason(row.get::<_, &str>(1)),
        ) {
            shared.stop(id, reason);
        }
    }
    Ok(())
}

/// Act on notifications: read mirrors that others appended to, stop runs others canceled.
async fn notes(shared: Arc<Shared>, reader: Arc<Reader>) {
    loop {
        shared.wake.notified().await;
        let pending = std::mem::take(&mut *lock(&shared.pending));
        for (id, reason) in pending.stops {
            shared.stop(id, reason);
        }
        let ids: Vec<RunId> = pending.events.into_iter().collect();
        if !ids.is_empty() {
            refresh(&shared, &reader.get(), &ids).await;
        }
    }
}

/// The journal: commit what is pending in one transaction, as the SQLite writer does; renew
/// the lease and maintain the database every third of the lease. Ends when the server drops
/// its handle.
async fn write(
    url: String,
    mut client: Client,
    mut rx: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    reader: Arc<Reader>,
    limits: Limits,
) {
    let mut st = match Statements::prepare(&client).await {
        Ok(st) => st,
        Err(e) => {
            tracing::error!(error = %pg_error(&e), "could not prepare the journal's statements");
            return;
        }
    };
    let mut seqs: HashMap<RunId, i64> = HashMap::new();
    let mut retry: Vec<Command> = Vec::new();
    let mut close = Vec::new();
    let mut tick = tokio::time::interval((limits.lease / 3).max(Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = std::mem::take(&mut retry);
        // A close whose commit failed commits again at once (on the new connection), rather
        // than waiting for a command that will not come.
        if batch.is_empty() && close.is_empty() {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => batch.push(cmd),
                    None => break,
                },
                _ = tick.tick() => {
                    if client.is_closed() {
                        (client, st) = reconnect(&url).await;
                    }
                    if let Err(e) = renew(&client, &shared, &limits).await {
                        tracing::error!(error = %pg_error(&e), "could not renew this replica's lease");
                    }
                    if let Err(e) = maintain(&mut client, &shared, &limits).await {
                        tracing::error!(error = %pg_error(&e), "could not maintain the Postgres store");
                    }
                    // The safety net for a lost notification.
                    let all: Vec<RunId> = lock(&shared.mirrors).keys().copied().collect();
                    refresh(&shared, &reader.get(), &all).await;
                    continue;
                }
            }
        }
        while batch.len() < GROUP {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        closing(&mut batch, &mut close);
        match commit(&mut client, &st, &mut batch, &mut seqs, &shared, &limits).await {
            Ok((published, mut refused)) => {
                committed(batch, published, &mut refused);
                if !close.is_empty() {
                    break;
                }
            }
            Err(e) => {
                failed(batch, &pg_error(&e), &mut retry);
                if client.is_closed() {
                    // What was taken is written again on the new connection.
                    (client, st) = reconnect(&url).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    // A replica that stops cleanly has no runs in flight: its lease goes at once.
    let _ = client
        .execute(
            "DELETE FROM longrun.replicas WHERE id = $1",
            &[&shared.replica],
        )
        .await;
    drop(client);
    for ack in close {
        let _ = ack.send(());
    }
}

/// Connect the journal again after its connection was lost, however long it takes (submits
/// answer 503 meanwhile, appended events wait, invisible).
async fn reconnect(url: &str) -> (Client, Statements) {
    tracing::warn!("the journal's Postgres connection is gone; connecting again");
    loop {
        tokio::time::sleep(RECONNECT).await;
        match connect_writer(url).await {
            Ok(client) => match Statements::prepare(&client).await {
                Ok(st) => {
                    tracing::info!("the journal's Postgres connection is back");
                    return (client, st);
                }
                Err(e) => tracing::error!(error = %pg_error(&e), "cannot prepare statements"),
            },
            Err(e) => tracing::error!(error = %pg_error(&e), "cannot connect to Postgres"),
        }
    }
}

type Committed = (Vec<(Arc<Run>, usize)>, HashMap<RunId, CreateError>);

/// What a commit took from one run's log.
struct Taken {
    run: Arc<Run>,
    seq: i64,
    first: usize,
    events: Vec<Bytes>,
    terminal: bool,
    /// The events hold the run's start (`Run::started_in`), which the run feeds announce.
    started: bool,
}

/// The journal's statements, prepared once per connection.
struct Statements {
    keys: Statement,
    lock: Statement,
    active: Statement,
    runs: Statement,
    events: Statement,
    ended: Statement,
    notify: Statement,
    drop_runs: Statement,
    tombstones: Statement,
    forget: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, tokio_postgres::Error> {
        let (lock, active, runs, events, ended) = tokio::try_join!(
            client.prepare("SELECT pg_advisory_xact_lock($1)"),
            client.prepare("SELECT count(*) FROM longrun.runs WHERE ended_ms IS NULL"),
            client.prepare(
                "INSERT INTO longrun.runs \
                 (id, object, retention_ms, created_ms, owner, tenant, created_us) \
                 SELECT i, o, r, $4, $5, t, \
                 (extract(epoch FROM clock_timestamp()) * 1000000)::int8 FROM \
                 unnest($1::text[], $2::text[], $3::int8[], $6::text[]) AS u(i, o, r, t) \
                 RETURNING id, seq"
            ),
            // A run another replica ended (this one's lease ran out) takes no more events.
            client.prepare(
                "INSERT INTO longrun.events (run, id, event) \
                 SELECT u.run, u.id, u.event FROM unnest($1::int8[], $2::int8[], $3::text[]) \
                 AS u(run, id, event) JOIN longrun.runs r ON r.seq = u.run \
                 AND r.ended_ms IS NULL ON CONFLICT DO NOTHING"
            ),
            client.prepare(
                "UPDATE longrun.runs SET ended_ms = $2 WHERE seq = ANY($1) AND ended_ms IS NULL"
            ),
        )?;
        let keys = client
            .prepare(
                "INSERT INTO longrun.idempotency (scope, key, fingerprint, run, object, created_ms) \
                 SELECT s, k, f, r, o, $6 FROM \
                 unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) \
                 AS u(s, k, f, r, o) ON CONFLICT DO NOTHING RETURNING scope, key",
            )
            .await?;
        let (notify, drop_runs, tombstones, forget) = tokio::try_join!(
            client.prepare("SELECT pg_notify('longrun_events', i) FROM unnest($1::text[]) AS u(i)"),
            client.prepare("DELETE FROM longrun.runs WHERE id = ANY($1)"),
            client.prepare(
                "INSERT INTO longrun.tombstones (id, object, dropped_ms, tenant) \
                 SELECT i, o, $3, t FROM unnest($1::text[], $2::text[], $4::text[]) AS u(i, o, t) \
                 ON CONFLICT (id) DO NOTHING"
            ),
            client.prepare("DELETE FROM longrun.tombstones WHERE id = ANY($1)"),
        )?;
        Ok(Statements {
            keys,
            lock,
            active,
            runs,
            events,
            ended,
            notify,
            drop_runs,
            tombstones,
            forget,
        })
    }
}

async fn commit(
    client: &mut Client,
    st: &Statements,
    batch: &mut [Command],
    seqs: &mut HashMap<RunId, i64>,
    shared: &Shared,
    limits: &Limits,
) -> Result<Committed, tokio_postgres::Error> {
    let now = now_ms();
    let tx = client.transaction().await?;
    let mut refused = HashMap::new();
    // New runs first (their events may be in this batch too), counted against the one
    // limit all replicas share.
    let creates: Vec<_> = batch
        .iter()
        .filter_map(|c| match c {
            Command::Create {
                id,
                run,
                object,
                tenant,
                retention,
                event0,
                key,
                ..
            } => Some((id, run, (object, tenant, key), retention, event0)),
            _ => None,
        })
        .collect();
    let mut new_seqs: HashMap<RunId, i64> = HashMap::new();
    let (mut ev_run, mut ev_id, mut ev_text): (Vec<i64>, Vec<i64>, Vec<&str>) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut taken: Vec<Taken> = Vec::new();
    if !creates.is_empty() {
        // Pipelined: the count runs once the lock is held (its own snapshot, after the lock).
        let (_, active) = tokio::try_join!(
            tx.execute(&st.lock, &[&CREATE_LOCK]),
            tx.query_one(&st.active, &[])
        )?;
        let active: i64 = active.get(0);
        let room = (limits.max_active_runs as i64 - active).max(0) as usize;
        // Keys first: a key another replica stored (or a duplicate in this batch) refuses
        // its run, so two racing duplicates make one run.
        let keyed: Vec<_> = creates
            .iter()
            .take(room)
            .filter_map(|(id, _, (object, _, key), _, _)| {
                key.as_ref().map(|(k, fp)| (id, object, k, fp))
            })
            .collect();
        let mut taken_keys: HashSet<(String, String)> = HashSet::new();
        if !keyed.is_empty() {
            let scopes: Vec<&str> = keyed.iter().map(|(_, _, k, _)| k.scope.as_str()).collect();
            let names: Vec<&str> = keyed.iter().map(|(_, _, k, _)| k.key.as_str()).collect();
            let fps: Vec<&str> = keyed.iter().map(|(_, _, _, fp)| fp.as_str()).collect();
            let runs: Vec<String> = keyed.iter().map(|(id, ..)| id.to_string()).collect();
            let objs: Vec<&str> = keyed.iter().map(|(_, o, ..)| o.as_str()).collect();
            let rows = tx
                .query(&st.keys, &[&scopes, &names, &fps, &runs, &objs, &now])
                .await?;
            for row in rows {
                taken_keys.insert((row.get(0), row.get(1)));
            }
        }
        let (mut ids, mut objects, mut retentions) = (Vec::new(), Vec::new(), Vec::new());
        let mut tenants: Vec<Option<&str>> = Vec::new();
        for (i, (id, _, (object, tenant, key), retention, _)) in creates.iter().enumerate() {
            let duplicate = key
                .as_ref()
                .is_some_and(|(k, _)| !taken_keys.contains(&(k.scope.clone(), k.key.clone())));
            if duplicate && i < room {
                refused.insert(**id, CreateError::DuplicateKey);
            } else if i < room {
                ids.push(id.to_string());
                objects.push(object.as_str());
                tenants.push(tenant.as_deref());
                retentions.push(retention.as_millis() as i64);
            } else {
                refused.insert(**id, CreateError::TooManyRuns);
            }
        }
        let rows = tx
            .query(
                &st.runs,
                &[&ids, &objects, &retentions, &now, &shared.replica, &tenants],
            )
            .await?;
        for row in rows {
            if let Ok(id) = RunId::parse(row.get::<_, &str>(0)) {
                new_seqs.insert(id, row.get(1));
            }
        }
    }
    for (id, _, _, _, event0) in &creates {
        if let Some(seq) = new_seqs.get(id) {
            ev_run.push(*seq);
            ev_id.push(0);
            ev_text.push(std::str::from_utf8(event0).unwrap_or("null"));
        }
    }
    let mut ended = Vec::new();
    let mut touched = Vec::new();
    let (mut chunk_run, mut chunk_at, mut chunks) = (Vec::new(), Vec::new(), Vec::<Bytes>::new());
    // The content type of each new run's stream.
    let (mut stream_ids, mut stream_types) = (Vec::new(), Vec::new());
    for (id, run, ..) in &creates {
        let ct = run.upgrade().and_then(|r| crate::stream::content_type(&r));
        if let (Some(ct), true) = (ct, new_seqs.contains_key(id)) {
            stream_ids.push(id.to_string());
            stream_types.push(ct);
        }
    }
    for cmd in batch.iter() {
        if let Command::Dirty(run) = cmd {
            let Some(&seq) = seqs.get(&run.id).or_else(|| new_seqs.get(&run.id)) else {
                // Its creation failed or was refused: nothing to keep.
                let _ = run.take_unjournaled();
                continue;
            };
            let (first, events, terminal) = run.take_unjournaled();
            // Taken after the events: a byte written before an event taken is in this
            // commit or an earlier one.
            if let Some((at, data)) = run.stream().and_then(|s| s.take_unjournaled()) {
                chunk_run.push(seq);
                chunk_at.push(at as i64);
                chunks.push(data);
            }
            if terminal {
                ended.push(seq);
            }
            touched.push(run.id.to_string());
            taken.push(Taken {
                started: run.started_in(first, events.len()),
                run: run.clone(),
                seq,
                first,
                events,
                terminal,
            });
        }
    }
    for t in &taken {
        for (i, json) in t.events.iter().enumerate() {
            ev_run.push(t.seq);
            ev_id.push((t.first + i) as i64);
            ev_text.push(std::str::from_utf8(json).expect("events are JSON text"));
        }
    }
    let (mut dropped, mut objects, mut forgotten) = (Vec::new(), Vec::new(), Vec::new());
    let mut dropped_tenants: Vec<Option<&str>> = Vec::new();
    for cmd in batch.iter() {
        if let Command::Drop { runs, forgotten: f } = cmd {
            for (id, object, tenant) in runs {
                dropped.push(id.to_string());
                objects.push(object.as_str());
                dropped_tenants.push(tenant.as_deref());
            }
            forgotten.extend(f.iter().map(RunId::to_string));
        }
    }
    // The rest of the transaction in one round trip: statements are sent together and run
    // in order.
    type Params<'a, const N: usize> = [&'a (dyn tokio_postgres::types::ToSql + Sync); N];
    let events: Params<3> = [&ev_run, &ev_id, &ev_text];
    let ends: Params<2> = [&ended, &now];
    let notes: Params<1> = [&touched];
    let drops: Params<1> = [&dropped];
    let tombs: Params<4> = [&dropped, &objects, &now, &dropped_tenants];
    let forgets: Params<1> = [&forgotten];
    let chunk_data: Vec<&[u8]> = chunks.iter().map(|c| &c[..]).collect();
    let chunk_rows: Params<3> = [&chunk_run, &chunk_at, &chunk_data];
    let streams: Params<2> = [&stream_ids, &stream_types];
    // Streams (spec §27) before the events: a reader that saw an event finds every byte
    // written before it.
    if !stream_ids.is_empty() {
        tx.execute(
            "UPDATE longrun.runs r SET stream = u.s FROM unnest($1::text[], $2::text[]) \
             AS u(i, s) WHERE r.id = u.i",
            &streams,
        )
        .await?;
    }
    if !chunk_run.is_empty() {
        tx.execute(
            "INSERT INTO longrun.stream_chunks (run, at, data) \
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::bytea[]) ON CONFLICT DO NOTHING",
            &chunk_rows,
        )
        .await?;
    }
    let mut writes = Vec::new();
    if !ev_run.is_empty() {
        writes.push(tx.execute(&st.events, &events));
    }
    if !ended.is_empty() {
        writes.push(tx.execute(&st.ended, &ends));
    }
    if !touched.is_empty() {
        writes.push(tx.execute(&st.notify, &notes));
    }
    if !dropped.is_empty() {
        writes.push(tx.execute(&st.drop_runs, &drops));
        writes.push(tx.execute(&st.tombstones, &tombs));
    }
    if !forgotten.is_empty() {
        writes.push(tx.execute(&st.forget, &forgets));
    }
    // The run feeds (spec §28.5) in the same transaction: a run's `queued`, its start and its
    // end are published exactly once, by the replica that commits them, and never for a run whose
    // creation is not committed. Sent after the writes above (run rows before topic rows).
    let mut feeds = Vec::new();
    for (id, _, (object, tenant, _), ..) in &creates {
        if new_seqs.contains_key(id) {
            feed(&mut feeds, tenant, object, &id.to_string(), State::Queued);
        }
    }
    for t in taken.iter().filter(|t| t.started || t.terminal) {
        let id = t.run.id.to_string();
        if t.started {
            feed(
                &mut feeds,
                &t.run.tenant,
                &t.run.object,
                &id,
                State::Running,
            );
        }
        if t.terminal {
            feed(
                &mut feeds,
                &t.run.tenant,
                &t.run.object,
                &id,
                t.run.latest_state(),
            );
        }
    }
    tokio::try_join!(
        futures::future::try_join_all(writes),
        publish_feeds(&tx, &feeds, now, limits.topic_history)
    )?;
    // If this fails nothing of the batch is kept, and what was taken is taken again on the
    // retry: the bookkeeping below moves on only once committed.
    tx.commit().await?;
    {
        let mut owned = lock(&shared.owned);
        for (id, run, ..) in &creates {
            let run: &Weak<Run> = run;
            if let Some(&seq) = new_seqs.get(id) {
                seqs.insert(**id, seq);
                owned.insert(**id, Weak::clone(run));
            }
        }
        for t in taken.iter().filter(|t| t.terminal) {
            seqs.remove(&t.run.id);
            owned.remove(&t.run.id);
        }
    }
    let published = taken
        .into_iter()
        .map(|t| (t.run, t.first + t.events.len()))
        .collect();
    Ok((published, refused))
}
