//! Response hooks (spec §26, seed 001 acomm): a submit names a URL (`Longrun-Hook`) that is
//! told when its run ends (`Longrun-Hook-Events: ended`, the default) or of every event
//! (`all`, coalesced). Deliveries are rows of an **outbox** in the store, sent by one
//! background task apart from the runs, signed as Standard Webhooks says, retried on a
//! schedule, and readable at `GET /{object}/{id}/hooks`.
//!
//! - Memory and SQLite: the outbox is in memory (bounded), and for SQLite written through to
//!   the `hook_deliveries` table and read back at start, so pending deliveries survive a
//!   restart.
//! - Postgres: the outbox is the table `longrun.hook_deliveries` shared by the replicas; each
//!   replica claims due rows with a lease (`FOR UPDATE SKIP LOCKED`), so one replica sends
//!   each attempt.
//!
//! A run never waits for its hooks: a watcher task per hooked run turns its events into
//! deliveries; the sender's attempts run in tasks of their own, each within `hook_timeout`.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures::FutureExt as _;
use longrun_proto::{Event, ProblemKind, RunId, State as RunState};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Caller, Scope};
use crate::http::{ApiError, json_response, lookup};
use crate::run::Run;
use crate::store::Journal;
use crate::{Config, Server};

use longrun_proto::header::{LONGRUN_HOOK, LONGRUN_HOOK_EVENTS};

/// At most one `run.event` delivery per run in this window (spec §26.2).
pub(crate) const COALESCE: Duration = Duration::from_millis(500);
/// Attempts kept per delivery (the newest; `attempt_count` counts them all).
const MAX_ATTEMPTS_KEPT: usize = 20;
/// `run.event` deliveries per run at most; `run.ended` is always delivered.
const MAX_EVENT_DELIVERIES: u32 = 1000;
/// Attempts in flight at once (a hanging receiver holds one for `hook_timeout`).
const MAX_IN_FLIGHT: usize = 64;
/// Due deliveries claimed per round.
const CLAIM: i64 = 32;
/// How often the sender looks for due deliveries it was not woken for (retries of other
/// replicas on Postgres; a wake-up otherwise comes with each enqueue and each due time).
const POLL: Duration = Duration::from_millis(250);
/// The kind of the row that keeps a hooked run's hook on SQLite until its `run.ended`.
const WATCH: &str = "watch";
/// How often finished deliveries past their retention are deleted.
const FORGET_EVERY: Duration = Duration::from_secs(10);
/// The longest ack a unix socket receiver may send.
const MAX_ACK: u32 = 64 * 1024;
/// The longest hook URL.
const MAX_URL: usize = 2048;

/// Which events a hook is told of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Events {
    Ended,
    All,
}

/// Where a hook delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    Http {
        url: String,
        host: String,
        port: u16,
    },
    Unix(PathBuf),
}

#[derive(Debug, Clone)]
pub(crate) struct Hook {
    pub events: Events,
    /// The URL as given.
    pub url: String,
}

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DState {
    Pending,
    Delivered,
    Failed,
    GaveUp,
}

impl DState {
    fn as_str(self) -> &'static str {
        match self {
            DState::Pending => "pending",
            DState::Delivered => "delivered",
            DState::Failed => "failed",
            DState::GaveUp => "gave_up",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Attempt {
    /// RFC 3339, milliseconds.
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
}

/// One delivery as the outbox keeps it (its JSON is the stored row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Delivery {
    /// The `webhook-id`, the same on every attempt.
    pub id: String,
    pub run: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub event: u64,
    pub url: String,
    /// The payload, fixed at enqueue (a retry sends the same bytes).
    pub body: String,
    pub state: DState,
    pub attempts: Vec<Attempt>,
    pub attempt_count: u32,
    /// When the next attempt is due (ms since the epoch), while pending.
    pub next_ms: Option<i64>,
    /// When it stopped being pending (for the outbox's retention).
    #[serde(default)]
    pub finished_ms: Option<i64>,
    #[serde(default)]
    pub seq: u64,
}

impl Delivery {
    /// A new delivery of `kind` for event `event` of `run`, first due at `due_ms`.
    fn pending(
        run: String,
        kind: &str,
        event: u64,
        url: String,
        body: String,
        due_ms: i64,
    ) -> Self {
        Delivery {
            id: format!("msg_{}", uuid::Uuid::new_v4().simple()),
            run,
            kind: kind.to_owned(),
            event,
            url,
            body,
            state: DState::Pending,
            attempts: Vec::new(),
            attempt_count: 0,
            next_ms: Some(due_ms),
            finished_ms: None,
            seq: 0,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The `Longrun-Hook` and `Longrun-Hook-Events` headers of a submit: none, a hook, or the
/// problem to answer (400 `invalid-hook`, 422 `hook-refused`).
pub(crate) async fn parse(config: &Config, headers: &HeaderMap) -> Result<Option<Hook>, ApiError> {
    let invalid = |detail: String| ApiError::new(ProblemKind::InvalidHook, detail);
    let events = match headers.get(LONGRUN_HOOK_EVENTS).map(|v| v.to_str()) {
        None => Events::Ended,
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("ended") => Events::Ended,
        Some(Ok(v)) if v.trim().eq_ignore_ascii_case("all") => Events::All,
        Some(_) => {
            return Err(invalid(
                "Longrun-Hook-Events is `ended` (the default) or `all`".into(),
            ));
        }
    };
    let Some(value) = headers.get(LONGRUN_HOOK) else {
        if headers.contains_key(LONGRUN_HOOK_EVENTS) {
            return Err(invalid("Longrun-Hook-Events needs a Longrun-Hook".into()));
        }
        return Ok(None);
    };
    let url = value
        .to_str()
        .map_err(|_| invalid("Longrun-Hook is not visible ASCII".into()))?
        .trim()
        .to_owned();
    let target = parse_target(&url).map_err(invalid)?;
    if config.hook_secret.is_none() {
        return Err(ApiError::new(
            ProblemKind::HookRefused,
            "this server sends no hooks (it was started without --hook-secret)",
        ));
    }
    let allow = Allow::parse(&config.hook_allow);
    check_target(&allow, &target, true)
        .await
        .map_err(|why| ApiError::new(ProblemKind::HookRefused, why))?;
    Ok(Some(Hook { events, url }))
}

/// `http://host[:port]/path`, `https://…` or `unix:///absolute/path.sock`.
pub(crate) fn parse_target(url: &str) -> Result<Target, String> {
    if url.is_empty() || url.len() > MAX_URL {
        return Err(format!(
            "Longrun-Hook is a URL of 1 to {MAX_URL} characters"
        ));
    }
    if url.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err("Longrun-Hook must not hold spaces or control characters".into());
    }
    if let Some(path) = url.strip_prefix("unix://") {
        if !path.starts_with('/') || path.len() < 2 {
            return Err(format!(
                "{url:?}: a unix hook is unix:///absolute/path.sock"
            ));
        }
        return Ok(Target::Unix(PathBuf::from(path)));
    }
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, 443)
    } else {
        return Err(format!(
            "{url:?}: a hook is an http://, https:// or unix:/// URL"
        ));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?}: name a host (and no user information)"));
    }
    if rest.contains('#') {
        return Err(format!("{url:?}: a hook URL has no fragment"));
    }
    let (host, port) = split_host_port(authority)
        .ok_or_else(|| format!("{url:?}: the host or port is not valid"))?;
    Ok(Target::Http {
        url: url.to_owned(),
        host,
        port: port.unwrap_or(default_port),
    })
}

fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        v6.parse::<std::net::Ipv6Addr>().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (v6.to_owned(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => None,
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b));
    valid.then(|| (host.to_ascii_lowercase(), port))
}

/// The SSRF guard (spec §26.6): what `--hook-allow` lets through beyond public addresses.
#[derive(Debug, Default)]
pub(crate) struct Allow {
    hosts: Vec<String>,
    nets: Vec<(IpAddr, u8)>,
    paths: Vec<PathBuf>,
}

impl Allow {
    pub fn parse(entries: &[String]) -> Allow {
        let mut allow = Allow::default();
        for entry in entries.iter().flat_map(|e| e.split(',')) {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            if entry.starts_with('/') {
                allow.paths.push(PathBuf::from(entry));
            } else if let Some(net) = parse_net(entry) {
                allow.nets.push(net);
            } else {
                allow.hosts.push(entry.to_ascii_lowercase());
            }
        }
        allow
    }

    fn path(&self, path: &Path) -> bool {
        self.paths.iter().any(|p| {
            path == p || (p.as_os_str().to_string_lossy().ends_with('/') && path.starts_with(p))
        })
    }

    fn host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host)
    }

    fn addr(&self, ip: IpAddr) -> bool {
        !is_internal(ip) || self.nets.iter().any(|(net, bits)| in_net(ip, *net, *bits))
    }
}

/// Entries of `--hook-allow` are checked once at start (spec §26.6); this says what is wrong
/// with one.
pub fn check_allow_entry(entry: &str) -> Result<(), String> {
    let entry = entry.trim();
    if entry.starts_with('/') || parse_net(entry).is_some() {
        return Ok(());
    }
    if entry.contains('/') {
        return Err(format!("{entry:?} is not a CIDR (e.g. 10.0.0.0/8)"));
    }
    match split_host_port(entry) {
        Some((_, None)) => Ok(()),
        _ => Err(format!(
            "{entry:?} is not a host name, an IP address, a CIDR or an absolute socket path"
        )),
    }
}

fn parse_net(entry: &str) -> Option<(IpAddr, u8)> {
    let (addr, bits) = match entry.split_once('/') {
        Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
        None => (entry, None),
    };
    let ip: IpAddr = addr.trim_matches(['[', ']']).parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let bits = bits.unwrap_or(max);
    (bits <= max).then_some((ip, bits))
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let ip = canonical(ip);
    match (ip, canonical(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses refused unless allowed: loopback, private, link-local (cloud metadata),
/// shared (CGNAT), benchmarking, reserved, multicast, unspecified.
fn is_internal(ip: IpAddr) -> bool {
    const V4: &[([u8; 4], u8)] = &[
        ([0, 0, 0, 0], 8),
        ([10, 0, 0, 0], 8),
        ([100, 64, 0, 0], 10),
        ([127, 0, 0, 0], 8),
        ([169, 254, 0, 0], 16),
        ([172, 16, 0, 0], 12),
        ([192, 0, 0, 0], 24),
        ([192, 168, 0, 0], 16),
        ([198, 18, 0, 0], 15),
        ([224, 0, 0, 0], 4),
        ([240, 0, 0, 0], 4),
    ];
    const V6: &[(u128, u8)] = &[
        (0, 127),                                        // :: and ::1
        (0xfc00 << 112, 7),                              // unique local
        (0xfe80 << 112, 10),                             // link-local
        (0xff00 << 112, 8),                              // multicast
        (0x0064_ff9b_0000_0000_0000_0000_0000_0000, 96), // NAT64
    ];
    match canonical(ip) {
        IpAddr::V4(v4) => V4
            .iter()
            .any(|(net, bits)| in_net(IpAddr::V4(v4), IpAddr::from(*net), *bits)),
        IpAddr::V6(v6) => V6
            .iter()
            .any(|(net, bits)| in_net(IpAddr::V6(v6), IpAddr::V6((*net).into()), *bits)),
    }
}

/// Check a hook against the guard: a unix path must be allowed; an HTTP host is resolved
/// and every address it resolves to must be allowed (or the host name itself listed). At
/// submit (`lenient`) a name that does not resolve yet passes: delivery checks again.
/// Returns the addresses to connect to.
async fn check_target(
    allow: &Allow,
    target: &Target,
    lenient: bool,
) -> Result<Vec<SocketAddr>, String> {
    match target {
        Target::Unix(path) => {
            if allow.path(path) {
                Ok(Vec::new())
            } else {
                Err(format!(
                    "unix socket {} is not in --hook-allow",
                    path.display()
                ))
            }
        }
        Target::Http { host, port, .. } => {
            let named = allow.host(host);
            let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, *port)],
                Err(_) => {
                    let lookup = tokio::net::lookup_host((host.as_str(), *port));
                    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
                        Ok(Ok(addrs)) => addrs.collect(),
                        _ if lenient => return Ok(Vec::new()),
                        Ok(Err(e)) => return Err(format!("{host} does not resolve: {e}")),
                        Err(_) => return Err(format!("{host} did not resolve within 5s")),
                    }
                }
            };
            if addrs.is_empty() && !lenient {
                return Err(format!("{host} resolves to no address"));
            }
            if let Some(refused) = addrs.iter().find(|a| !named && !allow.addr(a.ip())) {
                return Err(format!(
                    "{host} is (or resolves to) {}, an internal address not in --hook-allow",
                    refused.ip()
                ));
            }
            Ok(addrs)
        }
    }
}

// ---------------------------------------------------------------------------------------
// The outbox.

/// In memory (the memory and SQLite stores).
#[derive(Default)]
struct Local {
    deliveries: HashMap<String, Delivery>,
    /// Pending deliveries not in flight, by due time.
    due: BTreeSet<(i64, u64, String)>,
    by_run: HashMap<String, Vec<String>>,
    pending: usize,
    /// Finished deliveries by when they are forgotten.
    finished: BTreeSet<(i64, String)>,
    seq: u64,
}

/// The hooks of a server: settings, the outbox, the sender.
pub(crate) struct Hooks {
    key: Option<Vec<u8>>,
    retry: Vec<Duration>,
    timeout: Duration,
    max_outbox: usize,
    retention: Duration,
    allow: Allow,
    local: Mutex<Local>,
    journal: Option<Arc<Journal>>,
    wake: Notify,
    watchers: TaskTracker,
    in_flight: Arc<Semaphore>,
    /// Fired at shutdown: the sender stops claiming.
    stop: CancellationToken,
    /// Attempts recorded so far (for tests and metrics: a change means a delivery's record
    /// changed).
    attempts: watch::Sender<u64>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Hooks {
    /// The hooks of a server with this store; `restored` are the SQLite outbox's rows.
    pub fn new(
        config: &Config,
        journal: Option<Arc<Journal>>,
        restored: Vec<String>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let key = config.hook_secret.as_deref().and_then(|s| {
            longrun_proto::webhook::secret_key(s)
                .map_err(|e| tracing::error!(error = e, "the hook secret is not valid"))
                .ok()
        });
        let hooks = Hooks {
            key,
            retry: if config.hook_retry.is_empty() {
                vec![Duration::ZERO]
            } else {
                config.hook_retry.clone()
            },
            timeout: config.hook_timeout,
            max_outbox: config.hook_outbox,
            retention: config.retention,
            allow: Allow::parse(&config.hook_allow),
            local: Mutex::new(Local::default()),
            journal,
            wake: Notify::new(),
            watchers: TaskTracker::new(),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            stop: CancellationToken::new(),
            attempts: watch::Sender::new(0),
            metrics,
        };
        {
            let mut local = hooks.lock();
            for row in restored {
                if let Ok(d) = serde_json::from_str::<Delivery>(&row) {
                    local.insert(d);
                }
            }
        }
        hooks
    }

    fn lock(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shared(&self) -> Option<&crate::store::postgres::Handle> {
        self.journal.as_deref().and_then(Journal::shared)
    }

    /// Start the sender (`serve` calls it).
    pub fn start(self: &Arc<Self>, server: &Server) {
        let hooks = self.clone();
        tokio::spawn(async move { hooks.send_loop().await });
        let hooks = self.clone();
        let server = server.clone();
        self.watchers
            .spawn(async move { hooks.resume(&server).await });
    }

    /// Watch a hooked run (just created) and enqueue its deliveries. On a durable store the
    /// hook is written down too (a `watch` row), so that a run ended without its watcher —
    /// the process stopped (SQLite: its `interrupted` end after the restart) or its replica
    /// died (Postgres: the reaper ends it and turns the row into its `run.ended`) — still gets
    /// its `run.ended`. On Postgres the row is committed before the submit is answered.
    pub async fn attach(self: &Arc<Self>, run: Arc<Run>, hook: Hook) {
        if self.journal.is_some() {
            let watch = Delivery {
                id: watch_id(&run.id.to_string()),
                run: run.id.to_string(),
                kind: WATCH.into(),
                event: 0,
                url: hook.url.clone(),
                body: serde_json::json!({
                    "object": run.object,
                    "events": if hook.events == Events::All { "all" } else { "ended" },
                })
                .to_string(),
                state: DState::Delivered,
                attempts: Vec::new(),
                attempt_count: 0,
                next_ms: None,
                finished_ms: None,
                seq: 0,
            };
            if let Some(pg) = self.shared() {
                if let Err(e) = pg_insert_watch(pg, &watch).await {
                    tracing::error!(error = e, run = %run.id, "a hook could not be stored");
                }
            } else {
                let watch = self.lock().insert(watch);
                self.persist(&watch);
            }
        }
        self.spawn_watch(run, hook, None);
    }

    fn spawn_watch(self: &Arc<Self>, run: Arc<Run>, hook: Hook, after: Option<u64>) {
        let hooks = self.clone();
        self.watchers
            .spawn(async move { hooks.watch(run, hook, after).await });
    }

    /// Watch again the hooked runs of the file's `watch` rows (at start): each run has ended
    /// by now (a restart ends the runs it finds running), so each gets its `run.ended`.
    async fn resume(self: &Arc<Self>, server: &Server) {
        let watches: Vec<Delivery> = {
            let local = self.lock();
            local
                .deliveries
                .values()
                .filter(|d| d.kind == WATCH)
                .cloned()
                .collect()
        };
        for w in watches {
            let spec: serde_json::Value = serde_json::from_str(&w.body).unwrap_or_default();
            let object = spec["object"].as_str().unwrap_or_default();
            let events = match spec["events"].as_str() {
                Some("all") => Events::All,
                _ => Events::Ended,
            };
            let caller = Caller::server();
            let found = server
                .registry
                .find(&server.config, &caller, object, &w.run)
                .await;
            let Ok(crate::registry::Lookup::Found(run)) = found else {
                self.unwatch(&w.run).await;
                continue;
            };
            let after = {
                let local = self.lock();
                local.by_run.get(&w.run).and_then(|ids| {
                    ids.iter()
                        .filter_map(|id| local.deliveries.get(id))
                        .filter(|d| d.kind != WATCH)
                        .map(|d| d.event)
                        .max()
                })
            };
            let hook = Hook { events, url: w.url };
            self.spawn_watch(run, hook, after);
        }
    }

    /// The run's `run.ended` is in the outbox: its `watch` row goes.
    async fn unwatch(&self, run: &str) {
        let Ok(id) = RunId::parse(run) else {
            return;
        };
        let id = watch_id(&id.to_string());
        if let Some(pg) = self.shared() {
            let deleted = pg
                .client()
                .execute("DELETE FROM longrun.hook_deliveries WHERE id = $1", &[&id])
                .await;
            if let Err(e) = deleted {
                tracing::error!(error = %e, run, "a hook's watch row could not be deleted");
            }
            return;
        }
        let found = {
            let mut local = self.lock();
            let found = local.deliveries.contains_key(&id);
            local.remove(&id);
            found
        };
        if let (true, Some(journal)) = (found, &self.journal) {
            journal.hook(crate::store::HookWrite::Delete { id });
        }
    }

    /// Wait until every watcher has enqueued what its run ended with, then stop the sender
    /// and let the attempts in flight record their outcome (shutdown, after the runs ended
    /// and before the store closes). An attempt cut off here stays pending: it is made again
    /// after the restart (or by another replica), with the same `webhook-id`.
    pub async fn drain(&self) {
        self.watchers.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.watchers.wait()).await;
        self.stop.cancel();
        let all = self.in_flight.acquire_many(MAX_IN_FLIGHT as u32).map(drop);
        let _ = tokio::time::timeout(self.timeout + Duration::from_secs(1), all).await;
    }

    /// Attempts recorded so far; the receiver sees every change.
    pub fn attempts(&self) -> watch::Receiver<u64> {
        self.attempts.subscribe()
    }

    /// Turn the run's events into deliveries until it ends; `after`: the newest event a
    /// delivery was made for already (a watch resumed at start).
    async fn watch(&self, run: Arc<Run>, hook: Hook, after: Option<u64>) {
        let mut appended = run.subscribe();
        let mut next = after.map_or(0, |id| id + 1);
        let mut sent_events = 0u32;
        let mut last_sent: Option<tokio::time::Instant> = None;
        let mut held: Option<Event> = None;
        loop {
            let batch = run.read_json(next, usize::MAX);
            next = batch.next;
            let events: Vec<Event> = serde_json::from_slice(&batch.bytes).unwrap_or_default();
            for event in events {
                if event.state.is_terminal() {
                    self.enqueue(&run, &hook, "run.ended", &event).await;
                    self.unwatch(&run.id.to_string()).await;
                    return;
                }
                if hook.events == Events::All {
                    held = Some(event);
                    self.flush(&run, &hook, &mut held, &mut last_sent, &mut sent_events)
                        .await;
                }
            }
            self.flush(&run, &hook, &mut held, &mut last_sent, &mut sent_events)
                .await;
            let window = async {
                match (held.is_some(), last_sent) {
                    (true, Some(t)) => tokio::time::sleep_until(t + COALESCE).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = appended.changed() => if changed.is_err() { return },
                _ = window => {}
            }
        }
    }

    /// Deliver the held `run.event` if the coalescing window is open: the first event of a
    /// burst goes at once, then at most one per [`COALESCE`], the newest.
    async fn flush(
        &self,
        run: &Run,
        hook: &Hook,
        held: &mut Option<Event>,
        last_sent: &mut Option<tokio::time::Instant>,
        sent: &mut u32,
    ) {
        let open = last_sent.is_none_or(|t| t.elapsed() >= COALESCE);
        if !open || *sent >= MAX_EVENT_DELIVERIES {
            return;
        }
        if let Some(event) = held.take() {
            self.enqueue(run, hook, "run.event", &event).await;
            *sent += 1;
            *last_sent = Some(tokio::time::Instant::now());
        }
    }

    /// The payload (spec §26.3), fixed for the delivery's life.
    fn payload(run: &Run, kind: &str, event: &Event) -> String {
        payload(&run.object, &run.id, crate::stream::url(run), kind, event)
    }

    async fn enqueue(&self, run: &Run, hook: &Hook, kind: &str, event: &Event) {
        let now = now_ms();
        let delivery = Delivery::pending(
            run.id.to_string(),
            kind,
            event.id,
            hook.url.clone(),
            Self::payload(run, kind, event),
            now + self.delay(0).as_millis() as i64,
        );
        let ended = kind == "run.ended";
        if let Some(pg) = self.shared() {
            if !ended {
                match pg_pending(pg).await {
                    Ok(n) if n as usize >= self.max_outbox => {
                        tracing::warn!(run = %run.id, "the hook outbox is full: a run.event is dropped");
                        return;
                    }
                    _ => {}
                }
            }
            if let Err(e) = pg_insert(pg, &delivery).await {
                tracing::error!(error = e, run = %run.id, "a hook delivery could not be stored");
            }
        } else {
            let mut local = self.lock();
            if !ended && local.pending >= self.max_outbox {
                tracing::warn!(run = %run.id, "the hook outbox is full: a run.event is dropped");
                return;
            }
            let d = local.insert(delivery);
            drop(local);
            self.persist(&d);
        }
        self.wake.notify_one();
    }

    /// Write a delivery through to the SQLite outbox.
    fn persist(&self, d: &Delivery) {
        if let Some(journal) = &self.journal {
            journal.hook(crate::store::HookWrite::Put {
                id: d.id.clone(),
                run: d.run.clone(),
                record: serde_json::to_string(d).expect("deliveries serialize"),
            });
        }
    }

    /// The delay before attempt `n` (0-based), with ±10% jitter; `None` after the last.
    fn delay(&self, n: usize) -> Duration {
        let base = self.retry.get(n).copied().unwrap_or_default();
        let spread = base.as_millis() as u64 / 10;
        if spread == 0 {
            return base;
        }
        let jitter = (getrandom::u64().unwrap_or(0) % (2 * spread + 1)) as i64 - spread as i64;
        Duration::from_millis((base.as_millis() as i64 + jitter).max(0) as u64)
    }

    async fn send_loop(self: Arc<Self>) {
        let mut forgot = tokio::time::Instant::now();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let due = self.claim().await;
            for d in due {
                let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                    return;
                };
                if self.stop.is_cancelled() {
                    // Claimed but not sent: on Postgres its lease runs out, here it is due.
                    self.lock().insert(d);
                    return;
                }
                let hooks = self.clone();
                tokio::spawn(async move {
                    hooks.attempt(d).await;
                    drop(permit);
                });
            }
            let next = self.next_due();
            let wait = next.map_or(POLL, |ms| {
                Duration::from_millis((ms - now_ms()).max(0) as u64).min(POLL)
            });
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return,
            }
            if forgot.elapsed() >= FORGET_EVERY {
                forgot = tokio::time::Instant::now();
                self.forget_finished();
            }
        }
    }

    fn next_due(&self) -> Option<i64> {
        if self.shared().is_some() {
            return None;
        }
        self.lock().due.first().map(|(ms, _, _)| *ms)
    }

    /// Take the due deliveries (on Postgres: lease them, so no other replica sends them).
    async fn claim(&self) -> Vec<Delivery> {
        let now = now_ms();
        if let Some(pg) = self.shared() {
            let lease = now + self.timeout.as_millis() as i64 + 30_000;
            return pg_claim(pg, now, lease).await.unwrap_or_else(|e| {
                tracing::error!(error = e, "the hook outbox could not be read");
                Vec::new()
            });
        }
        let mut local = self.lock();
        let mut out = Vec::new();
        while let Some((ms, _, _)) = local.due.first() {
            if *ms > now || out.len() as i64 >= CLAIM {
                break;
            }
            let (_, _, id) = local.due.pop_first().expect("a first entry");
            if let Some(d) = local.deliveries.get(&id) {
                out.push(d.clone());
            }
        }
        out
    }

    async fn attempt(&self, mut d: Delivery) {
        let timestamp = now_ms() / 1000;
        let outcome = tokio::time::timeout(self.timeout, self.send(&d, timestamp)).await;
        let outcome = outcome.unwrap_or_else(|_| {
            Outcome::Retry(None, format!("no answer within {:?}", self.timeout), None)
        });
        let now = now_ms();
        let mut attempt = Attempt {
            at: rfc3339(now),
            status: None,
            error: None,
        };
        d.attempt_count += 1;
        let n = d.attempt_count as usize;
        match outcome {
            Outcome::Delivered(_) => self.metrics.hook_deliveries.inc(),
            _ => self.metrics.hook_failures.inc(),
        };
        match outcome {
            Outcome::Delivered(status) => {
                attempt.status = status;
                d.state = DState::Delivered;
            }
            Outcome::GaveUp(status, why) => {
                attempt.status = status;
                attempt.error = why;
                d.state = DState::GaveUp;
            }
            Outcome::Retry(status, why, retry_after) => {
                attempt.status = status;
                attempt.error = (status.is_none() || !why.is_empty()).then_some(why);
                if n >= self.retry.len() {
                    d.state = DState::Failed;
                } else {
                    let mut delay = self.delay(n);
                    if let Some(after) = retry_after {
                        delay = delay.max(after.min(Duration::from_secs(36_000)));
                    }
                    d.next_ms = Some(now + delay.as_millis() as i64);
                }
            }
        }
        if d.state != DState::Pending {
            d.next_ms = None;
            d.finished_ms = Some(now);
        }
        d.attempts.push(attempt);
        if d.attempts.len() > MAX_ATTEMPTS_KEPT {
            d.attempts.remove(0);
        }
        if let Some(pg) = self.shared() {
            if let Err(e) = pg_update(pg, &d).await {
                tracing::error!(
                    error = e,
                    delivery = d.id,
                    "a hook attempt could not be stored"
                );
            }
        } else {
            let d = self.lock().insert(d);
            self.persist(&d);
        }
        self.attempts.send_modify(|n| *n += 1);
        self.wake.notify_one();
    }

    async fn send(&self, d: &Delivery, timestamp: i64) -> Outcome {
        let target = match parse_target(&d.url) {
            Ok(t) => t,
            Err(e) => return Outcome::GaveUp(None, Some(e)),
        };
        let addrs = match check_target(&self.allow, &target, false).await {
            Ok(addrs) => addrs,
            Err(e) => return Outcome::Retry(None, e, None),
        };
        match target {
            Target::Unix(path) => send_unix(&path, d.body.as_bytes()).await,
            Target::Http { url, host, .. } => {
                let Some(key) = &self.key else {
                    return Outcome::Retry(
                        None,
                        "the server has no valid hook secret".into(),
                        None,
                    );
                };
                let signature =
                    longrun_proto::webhook::sign(key, &d.id, timestamp, d.body.as_bytes());
                send_http(&url, &host, &addrs, d, timestamp, &signature).await
            }
        }
    }

    /// Forget deliveries that finished more than a retention ago (their run is gone too).
    fn forget_finished(&self) {
        if let Some(pg) = self.shared() {
            let pg = pg.client();
            let before = now_ms() - self.retention.as_millis() as i64;
            tokio::spawn(async move {
                let _ = pg
                    .execute(
                        "DELETE FROM longrun.hook_deliveries WHERE finished_ms < $1",
                        &[&before],
                    )
                    .await;
            });
            return;
        }
        let before = now_ms() - self.retention.as_millis() as i64;
        let mut local = self.lock();
        let mut gone = Vec::new();
        // Past their retention, and the oldest beyond `hook_outbox` finished ones.
        while let Some((ms, _)) = local.finished.first() {
            if *ms >= before && local.finished.len() <= self.max_outbox {
                break;
            }
            let (_, id) = local.finished.pop_first().expect("a first entry");
            local.remove(&id);
            gone.push(id);
        }
        drop(local);
        if let Some(journal) = &self.journal {
            for id in gone {
                journal.hook(crate::store::HookWrite::Delete { id });
            }
        }
    }

    /// A run's deliveries, oldest first.
    async fn list(&self, run: RunId) -> Result<Vec<Delivery>, String> {
        let run = run.to_string();
        if let Some(pg) = self.shared() {
            return pg_list(pg, &run).await;
        }
        let local = self.lock();
        let mut out: Vec<Delivery> = local
            .by_run
            .get(&run)
            .into_iter()
            .flatten()
            .filter_map(|id| local.deliveries.get(id).cloned())
            .filter(|d| d.kind != WATCH)
            .collect();
        out.sort_by_key(|d| d.seq);
        Ok(out)
    }
}

impl Local {
    /// Insert or replace a delivery, keeping the indexes right.
    fn insert(&mut self, mut d: Delivery) -> Delivery {
        if let Some(old) = self.deliveries.get(&d.id) {
            d.seq = old.seq;
            let old_key = old.next_ms.map(|ms| (ms, old.seq, old.id.clone()));
            let was_pending = old.state == DState::Pending;
            if let Some(k) = old_key {
                self.due.remove(&k);
            }
            if was_pending {
                self.pending -= 1;
            }
        } else {
            self.seq += 1;
            if d.seq == 0 {
                d.seq = self.seq;
            }
            self.seq = self.seq.max(d.seq);
            self.by_run
                .entry(d.run.clone())
                .or_default()
                .push(d.id.clone());
        }
        if d.state == DState::Pending {
            self.pending += 1;
            if let Some(ms) = d.next_ms {
                self.due.insert((ms, d.seq, d.id.clone()));
            }
        } else if let Some(ms) = d.finished_ms {
            self.finished.insert((ms, d.id.clone()));
        }
        self.deliveries.insert(d.id.clone(), d.clone());
        d
    }

    fn remove(&mut self, id: &str) {
        let Some(d) = self.deliveries.remove(id) else {
            return;
        };
        if let Some(ids) = self.by_run.get_mut(&d.run) {
            ids.retain(|i| i != id);
            if ids.is_empty() {
                self.by_run.remove(&d.run);
            }
        }
    }
}

/// What an attempt came to.
enum Outcome {
    /// 2xx (or an ack `{"ok": true}`).
    Delivered(Option<u16>),
    /// 410 (or an ack `{"ok": false, "retry": false}`): stop.
    GaveUp(Option<u16>, Option<String>),
    /// Anything else: the status (if any), why, and the receiver's `Retry-After`.
    Retry(Option<u16>, String, Option<Duration>),
}

async fn send_http(
    url: &str,
    host: &str,
    addrs: &[SocketAddr],
    d: &Delivery,
    timestamp: i64,
    signature: &str,
) -> Outcome {
    // Connect to the addresses the guard checked, never to a second resolution's.
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if host.parse::<IpAddr>().is_err() && !addrs.is_empty() {
        builder = builder.resolve_to_addrs(host, addrs);
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return Outcome::Retry(None, e.to_string(), None),
    };
    let res = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", concat!("longrun/", env!("CARGO_PKG_VERSION")))
        .header(longrun_proto::webhook::WEBHOOK_ID, &d.id)
        .header(
            longrun_proto::webhook::WEBHOOK_TIMESTAMP,
            timestamp.to_string(),
        )
        .header(longrun_proto::webhook::WEBHOOK_SIGNATURE, signature)
        .body(d.body.clone())
        .send()
        .await;
    match res {
        Err(e) => Outcome::Retry(None, error_chain(&e), None),
        Ok(res) => {
            let status = res.status().as_u16();
            if res.status().is_success() {
                Outcome::Delivered(Some(status))
            } else if status == 410 {
                Outcome::GaveUp(Some(status), None)
            } else {
                let after = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, std::time::SystemTime::now()));
                Outcome::Retry(Some(status), String::new(), after)
            }
        }
    }
}

/// A receiver's `Retry-After` (RFC 9110 §10.2.3): seconds, or an HTTP date (a date already
/// passed is no delay).
fn retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An error with its causes, as one line: reqwest's and hyper's own messages ("error sending
/// request", "client error (Connect)") leave out why.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// acomm's framing: a 4-byte big-endian length, then the JSON; the receiver answers with a
/// framed ack `{"ok": true}` (delivered), `{"ok": false, "retry": false}` (give up), or
/// anything else (retry).
async fn send_unix(path: &Path, body: &[u8]) -> Outcome {
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(path).await?;
        stream.write_all(&(body.len() as u32).to_be_bytes()).await?;
        stream.write_all(body).await?;
        stream.flush().await?;
        let len = stream.read_u32().await?;
        if len > MAX_ACK {
            return Err(std::io::Error::other(format!("an ack of {len} bytes")));
        }
        let mut ack = vec![0; len as usize];
        stream.read_exact(&mut ack).await?;
        Ok::<_, std::io::Error>(ack)
    };
    match exchange.await {
        Err(e) => Outcome::Retry(None, e.to_string(), None),
        Ok(ack) => {
            #[derive(Deserialize)]
            struct Ack {
                ok: bool,
                #[serde(default = "yes")]
                retry: bool,
                #[serde(default)]
                error: Option<String>,
            }
            fn yes() -> bool {
                true
            }
            match serde_json::from_slice::<Ack>(&ack) {
                Ok(Ack { ok: true, .. }) => Outcome::Delivered(None),
                Ok(Ack {
                    retry: false,
                    error,
                    ..
                }) => Outcome::GaveUp(None, Some(error.unwrap_or_else(|| "refused".into()))),
                Ok(Ack { error, .. }) => Outcome::Retry(
                    None,
                    error.unwrap_or_else(|| "the receiver answered ok: false".into()),
                    None,
                ),
                Err(e) => Outcome::Retry(None, format!("the ack is not valid: {e}"), None),
            }
        }
    }
}

/// The payload (spec §26.3) of a run's delivery.
fn payload(
    object: &str,
    id: &RunId,
    stream_url: Option<String>,
    kind: &str,
    event: &Event,
) -> String {
    let mut data = serde_json::json!({
        "id": id.to_string(),
        "object": object,
        "url": longrun_proto::run_path(object, id),
        "state": event.state.as_str(),
        "event": event,
    });
    // acomm's name, for the run's byte stream (§27) when it has one.
    if let Some(stream) = stream_url {
        data["stream_url"] = stream.into();
    }
    match event.state {
        RunState::Success => data["result"] = event.value.clone(),
        RunState::Error | RunState::Canceled => data["error"] = event.value.clone(),
        _ => {}
    }
    serde_json::json!({
        "type": kind,
        "timestamp": rfc3339(now_ms()),
        "data": data,
    })
    .to_string()
}

/// The `run.ended` delivery of a hooked run that the Postgres reaper ended (its replica died
/// before its watcher saw the end), from the run's `watch` row: what that watcher would have
/// enqueued, due at once. `None` when the row is not a watch.
pub(crate) fn reaped(watch: &str, event: &Event, stream: bool) -> Option<Delivery> {
    let watch: Delivery = serde_json::from_str(watch).ok()?;
    let spec: serde_json::Value = serde_json::from_str(&watch.body).ok()?;
    let object = spec["object"].as_str()?;
    let id = RunId::parse(&watch.run).ok()?;
    let stream_url = stream.then(|| crate::stream::path(object, &id));
    let body = payload(object, &id, stream_url, "run.ended", event);
    Some(Delivery::pending(
        watch.run,
        "run.ended",
        event.id,
        watch.url,
        body,
        now_ms(),
    ))
}

/// The id of a run's `watch` row.
pub(crate) fn watch_id(run: &str) -> String {
    format!("{WATCH}_{run}")
}

// ---------------------------------------------------------------------------------------
// Postgres.

/// A hook's `watch` row: `state = 'watch'`, so it is never claimed, counted or listed.
async fn pg_insert_watch(pg: &crate::store::postgres::Handle, d: &Delivery) -> Result<(), String> {
    let record = serde_json::to_string(d).expect("deliveries serialize");
    pg.client()
        .execute(
            "INSERT INTO longrun.hook_deliveries (id, run, state, record) \
             VALUES ($1, $2, 'watch', $3) ON CONFLICT (id) DO NOTHING",
            &[&d.id, &d.run, &record],
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn pg_pending(pg: &crate::store::postgres::Handle) -> Result<i64, String> {
    let row = pg
        .client()
        .query_one(
            "SELECT count(*) FROM longrun.hook_deliveries WHERE state = 'pending'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

async fn pg_insert(pg: &crate::store::postgres::Handle, d: &Delivery) -> Result<(), String> {
    insert_pending(&*pg.client(), d)
        .await
        .map_err(|e| e.to_string())
}

/// Insert a pending delivery, on a connection or in a transaction (the reaper's).
pub(crate) async fn insert_pending(
    client: &impl tokio_postgres::GenericClient,
    d: &Delivery,
) -> Result<(), tokio_postgres::Error> {
    let record = serde_json::to_string(d).expect("deliveries serialize");
    client
        .execute(
            "INSERT INTO longrun.hook_deliveries (id, run, state, next_ms, record) \
             VALUES ($1, $2, 'pending', $3, $4)",
            &[&d.id, &d.run, &d.next_ms, &record],
        )
        .await
        .map(drop)
}

/// Lease the due deliveries: rows another replica is claiming are skipped, rows another
/// replica leased are not due until their lease ends.
async fn pg_claim(
    pg: &crate::store::postgres::Handle,
    now: i64,
    lease: i64,
) -> Result<Vec<Delivery>, String> {
    let rows = pg
        .client()
        .query(
            "UPDATE longrun.hook_deliveries SET lease_until_ms = $2 WHERE id IN ( \
                 SELECT id FROM longrun.hook_deliveries \
                 WHERE state = 'pending' AND next_ms <= $1 \
                   AND (lease_until_ms IS NULL OR lease_until_ms <= $1) \
                 ORDER BY next_ms LIMIT $3 FOR UPDATE SKIP LOCKED) \
             RETURNING record",
            &[&now, &lease, &CLAIM],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(records(&rows))
}

/// The deliveries of rows whose first column is a record.
fn records(rows: &[tokio_postgres::Row]) -> Vec<Delivery> {
    rows.iter()
        .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
        .collect()
}

async fn pg_update(pg: &crate::store::postgres::Handle, d: &Delivery) -> Result<(), String> {
    let record = serde_json::to_string(d).expect("deliveries serialize");
    pg.client()
        .execute(
            "UPDATE longrun.hook_deliveries SET state = $2, next_ms = $3, finished_ms = $4, \
             lease_until_ms = NULL, record = $5 WHERE id = $1",
            &[
                &d.id,
                &d.state.as_str(),
                &d.next_ms,
                &d.finished_ms,
                &record,
            ],
        )
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

async fn pg_list(pg: &crate::store::postgres::Handle, run: &str) -> Result<Vec<Delivery>, String> {
    let rows = pg
        .client()
        .query(
            "SELECT record FROM longrun.hook_deliveries WHERE run = $1 AND state <> 'watch' \
             ORDER BY created",
            &[&run],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(records(&rows))
}

// ---------------------------------------------------------------------------------------
// The read-back route.

/// `GET /{object}/{id}/hooks`: the run's deliveries, their attempts and outcome (spec §26.5).
pub(crate) async fn list(
    caller: Caller,
    State(server): State<Server>,
    UrlPath((object, id)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read, &object)?;
    let run = lookup(&server, &caller, &object, &id).await?;
    let deliveries = server
        .hooks
        .list(run.id)
        .await
        .map_err(crate::http::store_unavailable)?;
    let deliveries: Vec<serde_json::Value> = deliveries
        .into_iter()
        .map(|d| {
            serde_json::json!({
                "id": d.id,
                "type": d.kind,
                "event": d.event,
                "url": d.url,
                "state": d.state,
                "attempts": d.attempts,
                "attempt_count": d.attempt_count,
                "next_attempt_at": d.next_ms.map(rfc3339),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "deliveries": deliveries }),
    ))
}

#[cfg(test)]
mod retry_after_tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Wed, 02 Dec 2026 12:00:00 GMT").unwrap();
        assert_eq!(retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 12:05:00 GMT", now),
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            retry_after("Wed, 02 Dec 2026 11:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(retry_after("-5", now), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hook_urls_parse_or_say_why_not() {
        assert_eq!(
            parse_target("http://127.0.0.1:9000/hook").unwrap(),
            Target::Http {
                url: "http://127.0.0.1:9000/hook".into(),
                host: "127.0.0.1".into(),
                port: 9000
            }
        );
        assert!(matches!(
            parse_target("https://Example.com/x?y=1").unwrap(),
            Target::Http { port: 443, ref host, .. } if host == "example.com"
        ));
        assert!(matches!(
            parse_target("http://[::1]:80/").unwrap(),
            Target::Http { port: 80, ref host, .. } if host == "::1"
        ));
        assert_eq!(
            parse_target("unix:///run/x.sock").unwrap(),
            Target::Unix("/run/x.sock".into())
        );
        for bad in [
            "",
            "ftp://x/",
            "http://",
            "http://user@host/",
            "http://host:0/",
            "http://host:99999/",
            "http://ho st/",
            "unix://relative.sock",
            "http://host/#frag",
            "/just/a/path",
        ] {
            assert!(parse_target(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_guard_refuses_internal_addresses_unless_allowed() {
        let none = Allow::parse(&[]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!none.addr(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(none.addr(ip.parse().unwrap()), "{ip}");
        }
        let some = Allow::parse(&["127.0.0.0/8,::1".into(), "/tmp/hooks/".into()]);
        assert!(some.addr("127.0.0.2".parse().unwrap()));
        assert!(some.addr("::1".parse().unwrap()));
        assert!(!some.addr("10.0.0.1".parse().unwrap()));
        assert!(some.path(Path::new("/tmp/hooks/a.sock")));
        assert!(!some.path(Path::new("/tmp/other.sock")));
        assert!(check_allow_entry("10.0.0.0/8").is_ok());
        assert!(check_allow_entry("hooks.internal").is_ok());
        assert!(check_allow_entry("10.0.0.0/99").is_err());
    }
}
