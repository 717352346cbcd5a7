//! Where runs are kept: in memory only, or also in a SQLite file that survives restarts.
//!
//! The in-memory log (`run.rs`) stays what every follower reads; a durable store is a journal
//! behind it. Each append goes to the log at once, and becomes *visible* (readable by
//! followers, counted by `HEAD`) only once the journal has committed it, so no follower ever
//! sees an event that a crash could take back, and ids stay dense across restarts. One writer
//! thread owns the SQLite connection and commits whatever is pending in one transaction (group
//! commit): a busy run's events, new runs (a `201` waits for its run and event 0 to be
//! committed), and what retention dropped.
//!
//! At start, the journal is read back: ended runs are served as before (the same ids, events
//! and bytes), runs that were still running end with one `error` event whose value says the
//! server stopped (`"reason": "interrupted"`), and tombstones answer 410 again.
//!
//! The Postgres store (`postgres.rs`) is the same journal shared by several replicas: a run
//! another replica executes is served here as a *mirror*, a log fed from the database.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use longrun_proto::{Event, RunId, State};
use rusqlite::{Connection, params};
use tokio::sync::oneshot;

use crate::run::Run;

pub(crate) mod postgres;
pub(crate) use postgres::{Limits, Loaded};

/// The schema version this binary writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 8;

/// How many pending commands one transaction takes at most.
const GROUP: usize = 4096;

/// After this many commits the WAL is checkpointed and truncated; between those, SQLite's own
/// checkpoint runs every `WAL_PAGES` pages and `journal_size_limit` cuts the file back to
/// `WAL_BYTES`: the WAL stays a few megabytes however long the server runs (each checkpoint
/// syncs the file, so they are kept rare).
const CHECKPOINT_EVERY: u64 = 1024;
const WAL_PAGES: i64 = 1000;
const WAL_BYTES: i64 = 1024 * 1024;

/// Which store a server keeps its runs in (`longrun serve --store`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreConfig {
    /// Runs live in this process only; a restart forgets them.
    #[default]
    Memory,
    /// Runs are also written to this SQLite file and served again after a restart.
    Sqlite {
        path: PathBuf,
        /// `synchronous=FULL` (survives power loss) instead of `NORMAL` (survives a crash of
        /// the process, not of the machine).
        full_sync: bool,
    },
    /// Runs are kept in Postgres and shared by every replica that names the same database.
    Postgres {
        /// The connection URL without longrun's own options.
        url: String,
        /// How long a replica's lease on the runs it executes lasts without renewal: when a
        /// replica dies, another ends its in-flight runs within this time.
        lease: Duration,
    },
}

/// The default lease of a Postgres replica on its runs.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

impl StoreConfig {
    /// `memory`, `sqlite:PATH` or `sqlite:PATH?synchronous=full`.
    pub fn parse(url: &str) -> Result<Self, String> {
        if url == "memory" {
            return Ok(StoreConfig::Memory);
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(format!("{url:?}: name the file, e.g. sqlite:longrun.db"));
            }
            let full_sync = match query {
                "" | "synchronous=normal" => false,
                "synchronous=full" => true,
                other => {
                    return Err(format!(
                        "{url:?}: unknown option {other:?} (synchronous=normal or synchronous=full)"
                    ));
                }
            };
            return Ok(StoreConfig::Sqlite {
                path: PathBuf::from(path),
                full_sync,
            });
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return postgres::parse(url);
        }
        Err(format!(
            "{url:?} is not a store: use sqlite:PATH (the default, sqlite:longrun.db), \
             postgres://… or memory"
        ))
    }
}

/// The tenant a run belongs to (`None` on a server without an auth file).
pub(crate) type Owner = Option<Arc<str>>;

/// A submit's idempotency key as stored with its run: whose (the tenant, `""` on an open
/// server), the key, and a hash of the object and arguments it was first sent with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct IdemKey {
    pub scope: String,
    pub key: String,
}

/// A remembered key: what it was sent with, and the run it made.
#[derive(Debug, Clone)]
pub(crate) struct KeyRecord {
    pub fingerprint: String,
    pub run: RunId,
    pub object: String,
    pub created: SystemTime,
}

/// A run read back from the journal at start, ended (an interrupted one was ended then).
pub(crate) struct RestoredRun {
    pub id: RunId,
    pub object: String,
    pub tenant: Owner,
    pub events: Vec<Event>,
    /// Each event's JSON exactly as it was served.
    pub json: Vec<Bytes>,
    /// When it was created (its place in `GET /_runs`).
    pub created: SystemTime,
    /// When it ended, and how long it is kept after that.
    pub ended: SystemTime,
    pub retention: Duration,
    /// Its byte stream (spec §27): the content type and the chunks, from offset 0.
    pub stream: Option<(String, Vec<Bytes>)>,
}

pub(crate) struct RestoredTombstone {
    pub id: RunId,
    pub object: String,
    pub tenant: Owner,
    pub dropped: SystemTime,
}

/// What the journal found at start.
pub(crate) struct Restored {
    /// Idempotency keys still remembered, oldest first.
    pub keys: Vec<(IdemKey, KeyRecord)>,
    /// The row of every run read back, for the writer.
    seqs: HashMap<RunId, i64>,
    pub runs: Vec<RestoredRun>,
    pub tombstones: Vec<RestoredTombstone>,
    /// Runs that were running when the server stopped, ended now as `interrupted`.
    pub interrupted: usize,
    /// Worker node rows.
    pub nodes: Vec<NodeRow>,
    /// The hook outbox's rows (spec §26.7), each a delivery as JSON.
    pub hooks: Vec<String>,
}

/// A worker node as stored (spec §25.7). The registration and the health are written apart
/// (by whoever changes the registration, and by the replica that checks health), so neither
/// writer overwrites what the other wrote.
pub(crate) struct NodeRow {
    pub id: String,
    /// The registration as JSON.
    pub record: String,
    /// The status and health results as JSON; none before the first check.
    pub health: Option<String>,
    /// Why the node turned dirty; once set it stays.
    pub dirty: Option<String>,
}

/// One change of a worker node's row.
pub(crate) enum NodeWrite {
    /// Insert or replace the registration.
    Record(String),
    Health(String),
    Dirty(String),
    Delete,
}

/// Why a run could not be created in the store.
#[derive(Debug)]
pub(crate) enum CreateError {
    /// The replicas sharing the store run `max_active_runs` already.
    TooManyRuns,
    /// Another replica stored this idempotency key first.
    DuplicateKey,
    Store(String),
}

pub(crate) type CreateAck = Result<(), CreateError>;

pub(crate) enum Command {
    Create {
        id: RunId,
        /// The run itself, for a shared store that forwards stop requests to it.
        run: Weak<Run>,
        object: String,
        tenant: Owner,
        /// The run's creation time, kept to the microsecond, so its place in `GET /_runs`
        /// is the same after a restart.
        created: SystemTime,
        retention: Duration,
        event0: Bytes,
        key: Option<(IdemKey, String)>,
        ack: oneshot::Sender<CreateAck>,
    },
    /// The run has appended events not journaled yet.
    Dirty(Arc<Run>),
    /// Retention dropped these runs (they become tombstones) and forgot these tombstones.
    Drop {
        runs: Vec<(RunId, String, Owner)>,
        forgotten: Vec<RunId>,
    },
    /// Change a worker node's row; answered once committed.
    Node {
        id: String,
        write: NodeWrite,
        ack: oneshot::Sender<Result<(), String>>,
    },
    /// Commit what is pending, then close the store (its file or connections are free once
    /// this is answered).
    Close(oneshot::Sender<()>),
    /// Write a row of the hook outbox (spec §26.7).
    Hook(HookWrite),
}

/// A change of the SQLite hook outbox: a delivery as JSON, written whole, or forgotten.
pub(crate) enum HookWrite {
    Put {
        id: String,
        run: String,
        record: String,
    },
    Delete {
        id: String,
    },
}

/// The handle to a durable store's writer.
pub(crate) enum Journal {
    /// A writer thread owning the SQLite connection.
    Sqlite(mpsc::Sender<Command>),
    Postgres(postgres::Handle),
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

pub(crate) fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

pub(crate) fn from_micros(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

fn sql_error(path: &Path, e: rusqlite::Error) -> String {
    if let rusqlite::Error::SqliteFailure(f, _) = &e {
        if matches!(
            f.code,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        ) {
            return format!(
                "{}: another longrun server uses this file (one server per SQLite file; give \
                 this one another --store)",
                path.display()
            );
        }
    }
    format!("{}: {e}", path.display())
}

impl Journal {
    /// Open (or create) the file, migrate its schema, read back what it holds, end the runs
    /// that were interrupted, and start the writer thread.
    pub fn open(
        path: &Path,
        full_sync: bool,
        limits: KeyLimits,
    ) -> Result<(Arc<Journal>, Restored), String> {
        let err = |e| sql_error(path, e);
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(Duration::ZERO).map_err(err)?;
        // One server per file: the exclusive lock is taken by the first write below and kept
        // for the connection's life, so a second server fails at once with a clear message.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(
            None,
            "synchronous",
            if full_sync { "FULL" } else { "NORMAL" },
        )
        .map_err(err)?;
        conn.pragma_update(None, "journal_size_limit", WAL_BYTES)
            .map_err(err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_PAGES)
            .map_err(err)?;
        migrate(&mut conn).map_err(|e| match e {
            Migrate::Sql(e) => err(e),
            Migrate::Newer(v) => format!(
                "{}: its schema is version {v}, newer than this longrun knows ({SCHEMA_VERSION}); \
                 use a newer longrun, or another file",
                path.display()
            ),
        })?;
        let mut restored = restore(&mut conn, limits.idempotency_ttl).map_err(err)?;
        let seqs = std::mem::take(&mut restored.seqs);
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("longrun-journal".into())
            .spawn(move || writer(conn, rx, seqs, limits))
            .map_err(|e| format!("cannot start the journal thread: {e}"))?;
        Ok((Arc::new(Journal::Sqlite(tx)), restored))
    }

    /// Connect to Postgres, migrate its schema, register this replica and end the runs of
    /// replicas whose lease ran out.
    pub fn connect(url: &str, limits: postgres::Limits) -> Result<Arc<Journal>, String> {
        Ok(Arc::new(Journal::Postgres(postgres::Handle::connect(
            url, limits,
        )?)))
    }

    fn send(&self, cmd: Command) -> bool {
        match self {
            Journal::Sqlite(tx) => tx.send(cmd).is_ok(),
            Journal::Postgres(pg) => pg.send(cmd),
        }
    }

    /// The Postgres handle when the store is shared with other replicas.
    pub fn shared(&self) -> Option<&postgres::Handle> {
        match self {
            Journal::Sqlite(_) => None,
            Journal::Postgres(pg) => Some(pg),
        }
    }

    /// Journal a new run and its event 0; the answer comes once they are committed.
    pub fn create(
        &self,
        run: &Arc<Run>,
        retention: Duration,
        event0: Bytes,
        key: Option<(IdemKey, String)>,
    ) -> oneshot::Receiver<CreateAck> {
        let (ack, done) = oneshot::channel();
        let (id, object) = (run.id, &run.object);
        self.send(Command::Create {
            id,
            tenant: run.tenant.clone(),
            created: run.created,
            run: Arc::downgrade(run),
            object: object.to_owned(),
            retention,
            event0,
            key,
            ack,
        });
        done
    }

    /// Write a row of the hook outbox (committed with the next group commit).
    pub fn hook(&self, write: HookWrite) {
        self.send(Command::Hook(write));
    }

    pub fn dirty(&self, run: Arc<Run>) {
        self.send(Command::Dirty(run));
    }

    pub fn dropped(&self, runs: Vec<(RunId, String, Owner)>, forgotten: Vec<RunId>) {
        if !runs.is_empty() || !forgotten.is_empty() {
            self.send(Command::Drop { runs, forgotten });
        }
    }

    /// Change a worker node's row: once this returns `Ok` it is committed, and on Postgres
    /// every replica is told.
    pub async fn write_node(&self, id: &str, write: NodeWrite) -> Result<(), String> {
        match self {
            Journal::Sqlite(tx) => {
                let (ack, done) = oneshot::channel();
                let cmd = Command::Node {
                    id: id.to_owned(),
                    write,
                    ack,
                };
                if tx.send(cmd).is_err() {
                    return Err("the store is closed".into());
                }
                done.await
                    .unwrap_or_else(|_| Err("the store is closed".into()))
            }
            Journal::Postgres(pg) => pg.write_node(id, write).await,
        }
    }

    /// Commit everything sent before, then close: later commands are dropped.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.send(Command::Close(ack)) {
            let _ = done.await;
        }
    }
}

/// Take the close requests out of a batch (they are answered once the store is closed).
fn closing(batch: &mut Vec<Command>, acks: &mut Vec<oneshot::Sender<()>>) {
    let mut kept = Vec::with_capacity(batch.len());
    for cmd in batch.drain(..) {
        match cmd {
            Command::Close(ack) => acks.push(ack),
            other => kept.push(other),
        }
    }
    *batch = kept;
}

enum Migrate {
    Sql(rusqlite::Error),
    Newer(i64),
}

impl From<rusqlite::Error> for Migrate {
    fn from(e: rusqlite::Error) -> Self {
        Migrate::Sql(e)
    }
}

/// The schema's migrations: entry `k` takes a file from version `k` to `k + 1`. Each runs in
/// one transaction with the `user_version` it reaches; a released entry is never edited.
const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [
    // Events are keyed by the run's sequence number, not its (random) id, so the
    // rows a commit writes sit together at the end of the table: a few pages per
    // commit instead of one per run.
    "CREATE TABLE runs (
         seq INTEGER PRIMARY KEY,
         id TEXT NOT NULL UNIQUE,
         object TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         retention_ms INTEGER NOT NULL,
         ended_ms INTEGER
     );
     CREATE TABLE events (
         run INTEGER NOT NULL,
         id INTEGER NOT NULL,
         event TEXT NOT NULL,
         PRIMARY KEY (run, id)
     ) WITHOUT ROWID;
     CREATE TABLE tombstones (
         id TEXT PRIMARY KEY,
         object TEXT NOT NULL,
         dropped_ms INTEGER NOT NULL
     );",
    // v2: no index on the run id. Ids are random, so each new run wrote one more random
    // index page per commit; the writer keeps id → seq for the runs it holds instead.
    "CREATE TABLE runs_v2 (
         seq INTEGER PRIMARY KEY,
         id TEXT NOT NULL,
         object TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         retention_ms INTEGER NOT NULL,
         ended_ms INTEGER
     );
     INSERT INTO runs_v2 SELECT seq, id, object, created_ms, retention_ms, ended_ms FROM runs;
     DROP TABLE runs;
     ALTER TABLE runs_v2 RENAME TO runs;",
    // v3: the tenant a run (and its tombstone) belongs to; NULL without an auth file.
    "ALTER TABLE runs ADD COLUMN tenant TEXT;
     ALTER TABLE tombstones ADD COLUMN tenant TEXT;",
    // v4: idempotency keys, written with the run they made.
    "CREATE TABLE idempotency (
         scope TEXT NOT NULL,
         key TEXT NOT NULL,
         fingerprint TEXT NOT NULL,
         run TEXT NOT NULL,
         object TEXT NOT NULL,
         created_ms INTEGER NOT NULL,
         PRIMARY KEY (scope, key)
     ) WITHOUT ROWID;
     CREATE INDEX idempotency_created ON idempotency (created_ms);",
    // v5: worker node registrations (spec §25.7): the registration as JSON, its health as
    // JSON, and why it turned dirty (written once).
    "CREATE TABLE nodes (
         id TEXT PRIMARY KEY,
         record TEXT NOT NULL,
         health TEXT,
         dirty TEXT
     ) WITHOUT ROWID;",
    // v6: the hook outbox (spec §26.7): one row per delivery, its state and attempts as
    // JSON; a run's rows go with it.
    "CREATE TABLE hook_deliveries (
         id TEXT PRIMARY KEY,
         run TEXT NOT NULL,
         record TEXT NOT NULL
     ) WITHOUT ROWID;
     CREATE INDEX hook_deliveries_run ON hook_deliveries (run);",
    // v7: byte streams (spec §27): a run's content type when it has one, and its bytes in
    // chunks (one per run and commit), keyed by the run's sequence number and offset.
    "ALTER TABLE runs ADD COLUMN stream TEXT;
     CREATE TABLE stream_chunks (
         run INTEGER NOT NULL,
         offset INTEGER NOT NULL,
         data BLOB NOT NULL,
         PRIMARY KEY (run, offset)
     ) WITHOUT ROWID;",
    // v8: a run's creation time to the microsecond (`GET /_runs` lists newest first and
    // pages by it, so two runs of one millisecond keep their order across a restart).
    "ALTER TABLE runs ADD COLUMN created_us INTEGER;
     UPDATE runs SET created_us = created_ms * 1000;",
];

/// Versioned migrations, applied at start in one transaction each.
fn migrate(conn: &mut Connection) -> Result<(), Migrate> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Migrate::Newer(version));
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

pub(crate) fn interrupted_value() -> serde_json::Value {
    serde_json::json!({
        "message": "the server stopped while this run was running",
        "reason": "interrupted",
    })
}

/// Read every run and tombstone back; end the runs that never ended, durably.
fn restore(conn: &mut Connection, key_ttl: Duration) -> rusqlite::Result<Restored> {
    let now = SystemTime::now();
    let tx = conn.transaction()?;
    let mut runs = Vec::new();
    let mut seqs = HashMap::new();
    let mut interrupted = 0;
    {
        let mut list = tx.prepare(
            "SELECT seq, id, object, retention_ms, ended_ms, tenant, stream, created_us FROM runs \
             ORDER BY seq",
        )?;
        let mut chunks =
            tx.prepare("SELECT offset, data FROM stream_chunks WHERE run = ?1 ORDER BY offset")?;
        let mut events = tx.prepare("SELECT id, event FROM events WHERE run = ?1 ORDER BY id")?;
        type Row = (
            i64,
            String,
            String,
            i64,
            Option<i64>,
            Option<String>,
            Option<String>,
            i64,
        );
        let rows: Vec<Row> = list
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        for (seq, id_text, object, retention_ms, ended_ms, tenant, stream, created_us) in rows {
            let Ok(id) = RunId::parse(&id_text) else {
                continue;
            };
            let mut evs = Vec::new();
            let mut json = Vec::new();
            for row in
                events.query_map([seq], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            {
                let (_, text) = row?;
                match serde_json::from_str::<Event>(&text) {
                    Ok(ev) if ev.id == evs.len() as u64 => {
                        evs.push(ev);
                        json.push(Bytes::from(text));
                    }
                    // Ids are dense by construction; anything else ends the log here.
                    _ => break,
                }
            }
            if evs.is_empty() {
                continue;
            }
            let ended = match ended_ms {
                Some(ms) if evs.last().is_some_and(|e| e.state.is_terminal()) => from_millis(ms),
                _ => {
                    let event = Event {
                        id: evs.len() as u64,
                        state: State::Error,
                        value: interrupted_value(),
                    };
                    let text = serde_json::to_string(&event).expect("events serialize");
                    tx.execute(
                        "INSERT INTO events (run, id, event) VALUES (?1, ?2, ?3)",
                        params![seq, event.id as i64, text],
                    )?;
                    tx.execute(
                        "UPDATE runs SET ended_ms = ?2 WHERE seq = ?1",
                        params![seq, millis(now)],
                    )?;
                    evs.push(event);
                    json.push(Bytes::from(text));
                    interrupted += 1;
                    now
                }
            };
            seqs.insert(id, seq);
            let stream = match stream {
                None => None,
                Some(ct) => Some((ct, restore_chunks(&mut chunks, seq)?)),
            };
            runs.push(RestoredRun {
                id,
                object,
                tenant: tenant.map(Arc::from),
                events: evs,
                json,
                created: from_micros(created_us),
                ended,
                retention: Duration::from_millis(retention_ms.max(0) as u64),
                stream,
            });
        }
    }
    let tombstones = {
        let mut list = tx
            .prepare("SELECT id, object, dropped_ms, tenant FROM tombstones ORDER BY dropped_ms")?;
        let rows: Vec<(String, String, i64, Option<String>)> = list
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .filter_map(|(id, object, ms, tenant)| {
                Some(RestoredTombstone {
                    id: RunId::parse(&id).ok()?,
                    object,
                    tenant: tenant.map(Arc::from),
                    dropped: from_millis(ms),
                })
            })
            .collect()
    };
    let keys = {
        let since = millis(now) - key_ttl.as_millis() as i64;
        let mut list = tx.prepare(
            "SELECT scope, key, fingerprint, run, object, created_ms FROM idempotency \
             WHERE created_ms > ?1 ORDER BY created_ms",
        )?;
        type Row = (String, String, String, String, String, i64);
        let rows: Vec<Row> = list
            .query_map([since], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .filter_map(|(scope, key, fingerprint, run, object, ms)| {
                Some((
                    IdemKey { scope, key },
                    KeyRecord {
                        fingerprint,
                        run: RunId::parse(&run).ok()?,
                        object,
                        created: from_millis(ms),
                    },
                ))
            })
            .collect()
    };
    let nodes = {
        let mut list = tx.prepare("SELECT id, record, health, dirty FROM nodes ORDER BY id")?;
        list.query_map([], |r| {
            Ok(NodeRow {
                id: r.get(0)?,
                record: r.get(1)?,
                health: r.get(2)?,
                dirty: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<NodeRow>>>()?
    };
    let hooks = {
        let mut list = tx.prepare("SELECT record FROM hook_deliveries")?;
        list.query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?
    };
    tx.commit()?;
    Ok(Restored {
        keys,
        seqs,
        runs,
        tombstones,
        interrupted,
        nodes,
        hooks,
    })
}

/// A run's stream chunks, contiguous from offset 0 (a gap ends them: nothing after it was
/// ever visible).
fn restore_chunks(chunks: &mut rusqlite::Statement<'_>, seq: i64) -> rusqlite::Result<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut len = 0i64;
    for row in chunks.query_map([seq], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })? {
        let (offset, data) = row?;
        if offset != len {
            break;
        }
        len += data.len() as i64;
        out.push(Bytes::from(data));
    }
    Ok(out)
}

/// The writer thread: take what is pending, commit it in one transaction, then make it
/// visible and answer who waits. Ends when every `Journal` handle is gone.
/// How long, and how many, idempotency keys a store keeps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyLimits {
    pub idempotency_ttl: Duration,
    pub max_idempotency_keys: usize,
}

fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<Command>,
    mut seqs: HashMap<RunId, i64>,
    limits: KeyLimits,
) {
    // The row of every run the file holds, until retention drops it (bounded as the runs in
    // memory are: `max_active_runs` + `max_retained`).
    let mut commits = 0u64;
    let mut retry: Vec<Command> = Vec::new();
    let mut close = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut retry);
        if batch.is_empty() {
            match rx.recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        while batch.len() < GROUP {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        closing(&mut batch, &mut close);
        match commit(&mut conn, &mut batch, &mut seqs) {
            Ok(published) => {
                commits += 1;
                if commits % CHECKPOINT_EVERY == 0 {
                    forget_keys(&conn, limits);
                    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
                }
                committed(batch, published, &mut HashMap::new());
                if !close.is_empty() {
                    break;
                }
            }
            Err(e) => {
                failed(batch, &e.to_string(), &mut retry);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    // The file's lock goes with the connection, before anyone hears it is closed.
    drop(conn);
    for ack in close {
        let _ = ack.send(());
    }
}

/// Delete the idempotency keys past their time, and the oldest beyond the count.
fn forget_keys(conn: &Connection, limits: KeyLimits) {
    let before = millis(SystemTime::now()) - limits.idempotency_ttl.as_millis() as i64;
    let _ = conn.execute("DELETE FROM idempotency WHERE created_ms <= ?1", [before]);
    let _ = conn.execute(
        "DELETE FROM idempotency WHERE created_ms < (SELECT created_ms FROM idempotency \
         ORDER BY created_ms DESC LIMIT 1 OFFSET ?1)",
        [limits.max_idempotency_keys as i64],
    );
}

/// After a commit: make what it wrote visible and answer who waits. A create refused by the
/// store (`refused`) is answered with its reason instead.
fn committed(
    batch: Vec<Command>,
    published: Vec<(Arc<Run>, usize)>,
    refused: &mut HashMap<RunId, CreateError>,
) {
    for (run, upto) in published {
        run.publish(upto);
    }
    for cmd in batch {
        match cmd {
            Command::Create { ack, id, .. } => {
                let _ = ack.send(refused.remove(&id).map_or(Ok(()), Err));
            }
            Command::Node { ack, .. } => {
                let _ = ack.send(Ok(()));
            }
            Command::Dirty(_) | Command::Drop { .. } | Command::Close(_) | Command::Hook(_) => {}
        }
    }
}

/// After a failed commit (a full disk, a lost connection): nothing that was acknowledged is
/// lost. Submits waiting on it are refused, appended events stay invisible and are written
/// again on the next try, with everything else in the batch.
fn failed(batch: Vec<Command>, error: &str, retry: &mut Vec<Command>) {
    tracing::error!(error, "the journal could not commit; retrying");
    for cmd in batch {
        match cmd {
            Command::Create { ack, .. } => {
                let _ = ack.send(Err(CreateError::Store(error.to_owned())));
            }
            Command::Dirty(run) => {
                run.unjournal();
                retry.push(Command::Dirty(run));
            }
            // The request that changes a node answers 503; the node is as it was.
            Command::Node { ack, .. } => {
                let _ = ack.send(Err(error.to_owned()));
            }
            other => retry.push(other),
        }
    }
}

/// One transaction for a batch; returns the runs to publish up to which event count.
fn commit(
    conn: &mut Connection,
    batch: &mut [Command],
    seqs: &mut HashMap<RunId, i64>,
) -> rusqlite::Result<Vec<(Arc<Run>, usize)>> {
    // Sequence numbers given in this transaction, undone if it fails.
    let mut created = Vec::new();
    let result = commit_inner(conn, batch, seqs, &mut created);
    if result.is_err() {
        for id in created {
            seqs.remove(&id);
        }
    }
    result
}

fn commit_inner(
    conn: &mut Connection,
    batch: &mut [Command],
    seqs: &mut HashMap<RunId, i64>,
    created: &mut Vec<RunId>,
) -> rusqlite::Result<Vec<(Arc<Run>, usize)>> {
    let tx = conn.transaction()?;
    let mut published = Vec::new();
    // Runs whose rows this deletes: forgotten only once that is committed, so a retry after
    // a failed commit deletes them still.
    let mut gone = Vec::new();
    {
        let mut insert_event = tx
            .prepare_cached("INSERT OR REPLACE INTO events (run, id, event) VALUES (?1, ?2, ?3)")?;
        let now = millis(SystemTime::now());
        for cmd in batch.iter() {
            match cmd {
                Command::Create {
                    id,
                    run,
                    object,
                    tenant,
                    created: created_at,
                    retention,
                    event0,
                    key,
                    ..
                } => {
                    if let Some((k, fingerprint)) = key {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO idempotency \
                             (scope, key, fingerprint, run, object, created_ms) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                        )?
                        .execute(params![
                            k.scope,
                            k.key,
                            fingerprint,
                            id.to_string(),
                            object,
                            now
                        ])?;
                    }
                    let stream = run.upgrade().and_then(|r| crate::stream::content_type(&r));
                    tx.prepare_cached(
                        "INSERT INTO runs \
                         (id, object, created_ms, retention_ms, tenant, stream, created_us) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )?
                    .execute(params![
                        id.to_string(),
                        object,
                        millis(*created_at),
                        retention.as_millis() as i64,
                        tenant.as_deref(),
                        stream,
                        micros(*created_at)
                    ])?;
                    let seq = tx.last_insert_rowid();
                    seqs.insert(*id, seq);
                    created.push(*id);
                    insert_event.execute(params![
                        seq,
                        0i64,
                        std::str::from_utf8(event0).unwrap_or("null")
                    ])?;
                }
                Command::Dirty(run) => {
                    let Some(&seq) = seqs.get(&run.id) else {
                        // Its creation failed (the submit was refused): nothing to keep.
                        let _ = run.take_unjournaled();
                        continue;
                    };
                    let (first, events, terminal) = run.take_unjournaled();
                    // Taken after the events: a byte written before the terminal event is
                    // in this commit or an earlier one.
                    if let Some((offset, data)) = run.stream().and_then(|s| s.take_unjournaled()) {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO stream_chunks (run, offset, data) \
                             VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![
                            seq,
                            offset as i64,
                            &data[..]
                        ])?;
                    }
                    for (i, json) in events.iter().enumerate() {
                        let text = std::str::from_utf8(json).expect("events are JSON text");
                        insert_event.execute(params![seq, (first + i) as i64, text])?;
                    }
                    if terminal {
                        // The run's own end, so it reads the same after a restart.
                        let ended = run.ended.get().map_or(now, |t| millis(*t));
                        tx.prepare_cached("UPDATE runs SET ended_ms = ?2 WHERE seq = ?1")?
                            .execute(params![seq, ended])?;
                    }
                    published.push((run.clone(), first + events.len()));
                }
                Command::Drop { runs, forgotten } => {
                    for (id, object, tenant) in runs {
                        // A run without a row here was never stored (its submit was refused).
                        if let Some(&seq) = seqs.get(id) {
                            tx.prepare_cached("DELETE FROM events WHERE run = ?1")?
                                .execute([seq])?;
                            tx.prepare_cached("DELETE FROM stream_chunks WHERE run = ?1")?
                                .execute([seq])?;
                            tx.prepare_cached("DELETE FROM runs WHERE seq = ?1")?
                                .execute([seq])?;
                            gone.push(*id);
                        }
                        let id = id.to_string();
                        tx.prepare_cached("DELETE FROM hook_deliveries WHERE run = ?1")?
                            .execute([&id])?;
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO tombstones (id, object, dropped_ms, tenant) \
                             VALUES (?1, ?2, ?3, ?4)",
                        )?
                        .execute(params![
                            id,
                            object,
                            now,
                            tenant.as_deref()
                        ])?;
                    }
                    for id in forgotten {
                        tx.prepare_cached("DELETE FROM tombstones WHERE id = ?1")?
                            .execute([id.to_string()])?;
                    }
                }
                Command::Node { id, write, .. } => {
                    let (sql, value) = match write {
                        NodeWrite::Record(v) => (
                            "INSERT INTO nodes (id, record) VALUES (?1, ?2) \
                             ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                            Some(v),
                        ),
                        NodeWrite::Health(v) => {
                            ("UPDATE nodes SET health = ?2 WHERE id = ?1", Some(v))
                        }
                        NodeWrite::Dirty(v) => (
                            "UPDATE nodes SET dirty = COALESCE(dirty, ?2) WHERE id = ?1",
                            Some(v),
                        ),
                        NodeWrite::Delete => ("DELETE FROM nodes WHERE id = ?1", None),
                    };
                    let mut stmt = tx.prepare_cached(sql)?;
                    match value {
                        Some(v) => stmt.execute(params![id, v])?,
                        None => stmt.execute([id])?,
                    };
                }
                Command::Hook(HookWrite::Put { id, run, record }) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO hook_deliveries (id, run, record) \
                         VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![id, run, record])?;
                }
                Command::Hook(HookWrite::Delete { id }) => {
                    tx.prepare_cached("DELETE FROM hook_deliveries WHERE id = ?1")?
                        .execute([id])?;
                }
                Command::Close(_) => {}
            }
        }
    }
    tx.commit()?;
    for id in gone {
        seqs.remove(&id);
    }
    Ok(published)
}
