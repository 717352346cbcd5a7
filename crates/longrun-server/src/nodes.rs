//! Worker nodes (spec §25): HTTP programs that register their services and slots with
//! `POST /_nodes`, are health-checked, and receive the runs of their services' topics (which are
//! objects like any other) and the signals of their slots. Registrations and health live in
//! the store (spec §25.7): a SQLite server keeps them over a restart, and replicas on one
//! Postgres share them, each node pinged by one replica at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::future::BoxFuture;
use longrun_proto::{CancelReason, ObjectName, ProblemKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Server;
use crate::auth::{Caller, Scope};
use crate::handler::{Handler, HandlerResult, Object, ObjectOptions, RunContext, RunError};
use crate::http::{ApiError, OwnErrorBody, json_response, read_args};
use crate::run::Run;
use crate::store::{Journal, NodeRow, NodeWrite};

/// Health checking and dispatch timings of worker nodes (spec §25.3, §25.4), from the
/// server's [`Config`](crate::Config).
struct NodeSettings {
    health_interval: Duration,
    health_timeout: Duration,
    health_failures: u32,
    dispatch_timeout: Duration,
}

/// How many health results a node's record shows.
const HEALTH_HISTORY: usize = 5;
/// Signal deliveries in flight at once, over all slots: beyond it a delivery is dropped (and
/// counted in the reply), so a burst of signals to slow slots cannot grow memory without bound.
const MAX_SIGNAL_DELIVERIES: usize = 1024;
/// Header naming the run in a dispatch, and the URL the node reports progress to.
pub const RUN_HEADER: &str = "longrun-run";
pub const CALLBACK_HEADER: &str = "longrun-callback";
/// Header of a health ping naming the replica that sends it.
pub const REPLICA_HEADER: &str = "longrun-replica";

/// A service or a slot: a topic (a pattern, for slots), its exclusion group and the node's
/// path that handles it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Service {
    topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    path: String,
    timeout: f64,
    /// Services only: dispatch again to another node this many times when the node fails
    /// while holding a run (at-least-once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retry: Option<u32>,
    /// Services only: what the service does, for `GET /_objects` (spec §13.6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    /// Services only: the JSON Schema of its arguments, checked at submit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    args_schema: Option<Value>,
    /// The catalogue entry, its schema compiled: at registration, or on first use for a
    /// registration read back from the store. A changed registration is a new `Service`.
    #[serde(skip)]
    entry: Arc<std::sync::OnceLock<Arc<crate::catalogue::Entry>>>,
}

impl Service {
    fn compile(&self) -> Result<crate::catalogue::Entry, String> {
        crate::catalogue::Entry::new(
            crate::catalogue::Kind::Service,
            self.description.clone(),
            self.args_schema.clone(),
            false,
        )
    }

    /// The service's catalogue entry.
    fn entry(&self) -> Arc<crate::catalogue::Entry> {
        self.entry
            .get_or_init(|| {
                // Checked at registration; a stored schema that no longer compiles (a
                // newer validator) is dropped rather than refusing every submit.
                let entry = self.compile().unwrap_or_else(|why| {
                    tracing::error!(topic = %self.topic, %why, "a stored service schema is ignored");
                    crate::catalogue::Entry::new(
                        crate::catalogue::Kind::Service,
                        self.description.clone(),
                        None,
                        false,
                    )
                    .expect("no schema is valid")
                });
                Arc::new(entry)
            })
            .clone()
    }
}

#[derive(Debug, Deserialize)]
struct Registration {
    #[serde(default)]
    host: Option<String>,
    port: i64,
    #[serde(default)]
    health_check: Option<String>,
    #[serde(default)]
    concurrency: Option<u64>,
    #[serde(default)]
    slots: Vec<Service>,
    #[serde(default)]
    services: Vec<Service>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    Unavailable,
    /// Something answers on the node's port that is not the registered node (§25.3): no work
    /// and no health checks until the node registers again.
    Dirty,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unavailable => "unavailable",
            Status::Dirty => "dirty",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct HealthResult {
    at: String,
    ok: bool,
    detail: String,
}

struct Health {
    failures: u32,
    last: VecDeque<HealthResult>,
    /// Why the node turned dirty.
    dirty: Option<String>,
}

/// The two subscription lists of a node, which `/_nodes/{id}/services` and `/slots` change.
#[derive(Default, Clone)]
struct Subscriptions {
    services: Vec<Service>,
    slots: Vec<Service>,
}

/// Which list a sub-resource route works on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Service,
    Slot,
}

impl Kind {
    /// The last segment of `/_nodes/{id}/services` or `/slots`.
    fn parse(segment: &str) -> Result<Kind, ApiError> {
        match segment {
            "services" => Ok(Kind::Service),
            "slots" => Ok(Kind::Slot),
            _ => Err(ApiError::new(
                ProblemKind::NotFound,
                "no route has this path",
            )),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Slot => "slot",
        }
    }

    fn list(self, subs: &mut Subscriptions) -> &mut Vec<Service> {
        match self {
            Kind::Service => &mut subs.services,
            Kind::Slot => &mut subs.slots,
        }
    }
}

/// The registration part of a node's row in the store.
#[derive(Serialize, Deserialize)]
struct StoredRecord {
    host: String,
    port: u16,
    health_check: String,
    concurrency: Option<u64>,
    services: Vec<Service>,
    slots: Vec<Service>,
    callback_base: String,
}

/// The health part of a node's row, written by the replica that checks it.
#[derive(Serialize, Deserialize)]
struct StoredHealth {
    status: Status,
    consecutive_failures: u32,
    last: VecDeque<HealthResult>,
}

/// How many calls of one sender a node holds, and their run.
type Holders = (usize, Option<Arc<Run>>);

pub(crate) struct Node {
    id: String,
    host: String,
    port: u16,
    health_check: String,
    concurrency: Option<u64>,
    subs: Mutex<Subscriptions>,
    /// `http://{host the node registered through}`: where its callbacks go.
    callback_base: String,
    status: watch::Sender<Status>,
    health: Mutex<Health>,
    in_flight: AtomicUsize,
    /// The calls this node holds now, by sender, with their run (none for a node-side
    /// request), for its progress callbacks; counted, as the parallel steps of a
    /// composition share their run's sender.
    calls: Mutex<HashMap<String, Holders>>,
}

impl Node {
    /// The run of a call this node holds (`Some(None)`: a call without a run).
    fn held(&self, sender: &str) -> Option<Option<Arc<Run>>> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sender)
            .map(|(_, run)| run.clone())
    }

    fn new(id: String, r: StoredRecord) -> Node {
        Node {
            id,
            host: r.host,
            port: r.port,
            health_check: r.health_check,
            concurrency: r.concurrency,
            subs: Mutex::new(Subscriptions {
                services: r.services,
                slots: r.slots,
            }),
            callback_base: r.callback_base,
            status: watch::Sender::new(Status::Ok),
            health: Mutex::new(Health {
                failures: 0,
                last: VecDeque::new(),
                dirty: None,
            }),
            in_flight: AtomicUsize::new(0),
            calls: Mutex::new(HashMap::new()),
        }
    }

    /// The registration as stored, with `subs` as its subscriptions.
    fn stored_record(&self, subs: &Subscriptions) -> String {
        serde_json::to_string(&StoredRecord {
            host: self.host.clone(),
            port: self.port,
            health_check: self.health_check.clone(),
            concurrency: self.concurrency,
            services: subs.services.clone(),
            slots: subs.slots.clone(),
            callback_base: self.callback_base.clone(),
        })
        .expect("a record serializes")
    }

    fn stored_health(&self) -> String {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let status = match *self.status.borrow() {
            Status::Dirty => Status::Unavailable,
            other => other,
        };
        serde_json::to_string(&StoredHealth {
            status,
            consecutive_failures: health.failures,
            last: health.last.clone(),
        })
        .expect("health serializes")
    }

    /// Take the health another replica stored (and the dirty mark, which stays).
    fn apply_health(&self, health: Option<&str>, dirty: Option<&str>) {
        let stored = health.and_then(|h| serde_json::from_str::<StoredHealth>(h).ok());
        let mut mine = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = stored {
            mine.failures = h.consecutive_failures;
            mine.last = h.last;
            if mine.dirty.is_none() {
                self.status
                    .send_if_modified(|s| std::mem::replace(s, h.status) != h.status);
            }
        }
        if let (None, Some(why)) = (&mine.dirty, dirty) {
            mine.dirty = Some(why.to_owned());
            self.status.send_replace(Status::Dirty);
        }
    }

    fn base(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, Subscriptions> {
        self.subs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self) -> Value {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let subs = self.subs();
        let mut record = json!({
            "id": self.id,
            "host": self.host,
            "port": self.port,
            "health_check": self.health_check,
            "concurrency": self.concurrency,
            "services": subs.services,
            "slots": subs.slots,
            "status": self.status.borrow().as_str(),
            "in_flight": self.in_flight.load(Ordering::SeqCst),
            "health": {
                "consecutive_failures": health.failures,
                "last": health.last,
            },
        });
        if let Some(why) = &health.dirty {
            record["dirty"] = Value::String(why.clone());
        }
        record
    }

    fn service(&self, topic: &str) -> Option<Service> {
        self.subs()
            .services
            .iter()
            .find(|s| s.topic == topic)
            .cloned()
    }

    /// Where and how `topic` is dispatched here: what a call needs of its service, without
    /// a copy of the rest (its schema may be large).
    fn route(&self, topic: &str) -> Option<Route> {
        self.subs()
            .services
            .iter()
            .find(|s| s.topic == topic)
            .map(|s| Route {
                path: s.path.clone(),
                timeout: s.timeout,
                retry: s.retry,
            })
    }

    /// The catalogue entry of `topic` here, or, before its first use, a copy of the service
    /// to compile it from (outside every lock: a schema may take a while).
    fn entry(&self, topic: &str) -> Option<Result<Arc<crate::catalogue::Entry>, Service>> {
        let subs = self.subs();
        let service = subs.services.iter().find(|s| s.topic == topic)?;
        Some(service.entry.get().cloned().ok_or_else(|| service.clone()))
    }

    fn serves(&self, topic: &str) -> bool {
        self.subs().services.iter().any(|s| s.topic == topic)
    }

    fn is_ok(&self) -> bool {
        *self.status.borrow() == Status::Ok
    }

    fn has_room(&self) -> bool {
        self.concurrency
            .is_none_or(|c| (self.in_flight.load(Ordering::SeqCst) as u64) < c)
    }

    /// Turn dirty (once): no more work, no more health checks.
    fn mark_dirty(&self, nodes: &Nodes, why: String) {
        {
            let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
            if health.dirty.is_some() {
                return;
            }
            health.dirty = Some(why.clone());
        }
        tracing::warn!(node = %self.id, %why, "node is dirty: it gets no work until it registers again");
        self.status.send_replace(Status::Dirty);
        nodes.bump();
        if let Some(journal) = nodes.journal.clone() {
            let id = self.id.clone();
            tokio::spawn(async move {
                if let Err(e) = journal.write_node(&id, NodeWrite::Dirty(why)).await {
                    tracing::error!(node = %id, error = %e, "cannot store that the node is dirty");
                }
            });
        }
    }
}

/// How one call of a topic ended (spec §25.4, §25.9).
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The node answered with this status and body.
    Answered { code: StatusCode, data: Value },
    /// No node served the topic in time.
    NoListeners,
    /// The service timeout (or the caller's deadline) passed; the connection was closed.
    TimedOut,
    /// The caller gave up (a DELETE of the run, or shutdown); the connection was closed.
    Canceled,
    /// The node failed while holding the call (and no retry was left).
    NodeFailed { node: String, why: String },
}

/// Codes of the gilmour message for outcomes that are not a node's answer.
const CODE_TIMEOUT: u16 = 499;
const CODE_NODE_FAILED: u16 = 502;
const CODE_NO_LISTENERS: u16 = 503;

impl Outcome {
    /// The code of gilmour's `{data, code}` message: the node's status, or 499 (timed out or
    /// canceled, gilmour's timeout code), 502 (the node failed), 503 (no active listeners).
    pub fn code(&self) -> u16 {
        match self {
            Outcome::Answered { code, .. } => code.as_u16(),
            Outcome::TimedOut | Outcome::Canceled => CODE_TIMEOUT,
            Outcome::NodeFailed { .. } => CODE_NODE_FAILED,
            Outcome::NoListeners => CODE_NO_LISTENERS,
        }
    }

    /// The data of gilmour's message: the node's body, or `{message}` saying what happened.
    pub fn data(&self, topic: &str) -> Value {
        match self {
            Outcome::Answered { data, .. } => data.clone(),
            _ => json!({ "message": self.message(topic) }),
        }
    }

    fn message(&self, topic: &str) -> String {
        match self {
            Outcome::Answered { code, data } => data
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{topic} failed with HTTP {}", code.as_u16())),
            Outcome::NoListeners => format!("No active listeners for: {topic}"),
            Outcome::TimedOut => "the service timeout passed".into(),
            Outcome::Canceled => "canceled".into(),
            Outcome::NodeFailed { node, why } => format!("the node {node} {why}"),
        }
    }

    /// What a run of the topic ends with.
    fn into_result(self, topic: &str) -> HandlerResult {
        match self {
            Outcome::Answered { code, data } if code.is_success() => Ok(data),
            other => {
                let error = RunError::new(other.message(topic));
                Err(match other {
                    Outcome::Answered { code, data } => {
                        error.with("code", code.as_u16()).with("data", data)
                    }
                    Outcome::NodeFailed { node, .. } => error.with("node", node),
                    _ => error,
                })
            }
        }
    }
}

/// What the caller of [`Nodes::call`] brings.
pub(crate) struct Call<'a> {
    /// The run the call belongs to: progress callbacks become its `running` events, and its
    /// id is the `sender`.
    pub run: Option<&'a Arc<Run>>,
    pub cancel: &'a CancellationToken,
    /// When the whole call (waiting for a node and every attempt) must be over.
    pub deadline: Option<Instant>,
}

/// What a dispatch needs of a node's service.
struct Route {
    path: String,
    timeout: f64,
    retry: Option<u32>,
}

/// The body of a dispatch (and of a signal): the seed's, written from borrowed parts.
#[derive(Serialize)]
struct Dispatch<'a> {
    topic: &'a str,
    sender: &'a str,
    data: &'a Value,
    timeout: f64,
}

/// How one dispatch to one node went.
enum Attempt {
    Done(Outcome),
    /// The node's port answered as another program would: nothing ran, dispatch elsewhere.
    Dirty(String),
    /// The node failed while holding the call: it may have run.
    Failed(String),
}

/// What the server sends nodes: plain HTTP/1.1 on pooled keep-alive connections.
///
/// hyper's own pooled client rather than reqwest, measured: a dispatch through reqwest spent
/// about an eighth of a bare proxy's time in what a node call never needs (URL parsing with
/// IDNA, redirect and proxy layers, per-request header maps; `cargo xtask bench workers`).
/// Nothing here follows redirects (a node answers for itself) or reads proxy settings from
/// the environment (a node is reached directly, wherever the server runs).
#[derive(Clone)]
struct NodeClient {
    inner: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    /// The largest reply read (the server's body limit): a node's reply becomes an event,
    /// and one that never ends must not fill the server's memory.
    reply_limit: usize,
}

/// A node's reply, read whole.
struct Reply {
    status: StatusCode,
    body: bytes::Bytes,
}

impl NodeClient {
    fn new(reply_limit: usize) -> Self {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        // A dispatch is one small write each way: no Nagle delay on either.
        connector.set_nodelay(true);
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .build(connector);
        NodeClient { inner, reply_limit }
    }

    /// One request, its reply read to the end. Dropping the future closes the connection
    /// if the reply has not come (hyper does not reuse a connection with a request in flight).
    async fn send(
        &self,
        method: axum::http::Method,
        url: &str,
        headers: &[(&'static str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Reply, String> {
        use http_body_util::BodyExt;
        let mut req = axum::http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(http_body_util::Full::new(body.unwrap_or_default().into()))
            .map_err(|e| format!("bad request to {url}: {e}"))?;
        let res = self
            .inner
            .request(req)
            .await
            .map_err(|e| crate::hooks::error_chain(&e))?;
        let status = res.status();
        // Dropping a reply cut short closes its connection: the rest is never read.
        let body = http_body_util::Limited::new(res.into_body(), self.reply_limit)
            .collect()
            .await
            .map_err(
                |e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                    Some(_) => format!(
                        "its reply is larger than {} bytes (the body limit)",
                        self.reply_limit
                    ),
                    None => crate::hooks::error_chain(&*e),
                },
            )?
            .to_bytes();
        Ok(Reply { status, body })
    }
}

/// The registered nodes of this replica.
pub(crate) struct Nodes {
    settings: NodeSettings,
    client: NodeClient,
    inner: Mutex<Inner>,
    /// Bumped whenever a node comes, goes, changes status or frees a slot: waiting runs look
    /// again.
    changed: watch::Sender<u64>,
    rotate: AtomicU64,
    signal_permits: Arc<Semaphore>,
    /// Where registrations and health are kept; none on the memory store.
    journal: Option<Arc<Journal>>,
    /// Nodes whose health changed and is not stored yet (the health loop writes them).
    unsaved: Mutex<BTreeSet<String>>,
    /// Whether this replica checks health now (it then owns the health in the store).
    checking: std::sync::atomic::AtomicBool,
    started: std::sync::atomic::AtomicBool,
    stop: CancellationToken,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, Arc<Node>>,
    /// Every service topic registered since the server started, so that runs of a topic
    /// whose nodes have left can still be read.
    topics: BTreeSet<String>,
}

impl Nodes {
    /// The nodes of `rows` (read back from the store) are registered again as they were;
    /// health checks start with [`Nodes::start`].
    pub fn new(config: &crate::Config, journal: Option<Arc<Journal>>, rows: Vec<NodeRow>) -> Self {
        let nodes = Nodes {
            settings: NodeSettings {
                health_interval: config.health_interval,
                health_timeout: config.health_timeout,
                health_failures: config.health_failures.max(1),
                dispatch_timeout: config.dispatch_timeout,
            },
            client: NodeClient::new(config.body_limit),
            inner: Mutex::new(Inner::default()),
            changed: watch::Sender::new(0),
            rotate: AtomicU64::new(0),
            signal_permits: Arc::new(Semaphore::new(MAX_SIGNAL_DELIVERIES)),
            journal,
            unsaved: Mutex::new(BTreeSet::new()),
            checking: std::sync::atomic::AtomicBool::new(false),
            started: std::sync::atomic::AtomicBool::new(false),
            stop: CancellationToken::new(),
        };
        for row in rows {
            nodes.apply(row);
        }
        nodes
    }

    /// Start checking health, writing it, and (on Postgres) following other replicas.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(health_loop(self.clone()));
        let shared = self.journal.as_deref().and_then(Journal::shared).is_some();
        if shared {
            tokio::spawn(follow_replicas(self.clone()));
        }
    }

    /// A node's row as stored: registered (again) or changed here as it says.
    fn apply(&self, row: NodeRow) {
        let record: StoredRecord = match serde_json::from_str(&row.record) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(node = %row.id, error = %e, "a stored node record cannot be read; ignored");
                return;
            }
        };
        let mut inner = self.lock();
        for s in &record.services {
            inner.topics.insert(s.topic.clone());
        }
        let node = match inner.nodes.get(&row.id) {
            Some(node) => {
                *node.subs() = Subscriptions {
                    services: record.services,
                    slots: record.slots,
                };
                node.clone()
            }
            None => {
                let node = Arc::new(Node::new(row.id.clone(), record));
                inner.nodes.insert(row.id.clone(), node.clone());
                node
            }
        };
        drop(inner);
        // The replica that checks health owns it; every other one takes it from the store.
        let health = if self.checking.load(Ordering::SeqCst) {
            None
        } else {
            row.health.as_deref()
        };
        node.apply_health(health, row.dirty.as_deref());
        self.bump();
    }

    /// Change a node's subscriptions: stored first, then served.
    async fn change_subs(&self, node: &Node, subs: Subscriptions) -> Result<(), ApiError> {
        self.persist(&node.id, NodeWrite::Record(node.stored_record(&subs)))
            .await?;
        *node.subs() = subs;
        self.bump();
        Ok(())
    }

    fn forget(&self, id: &str) {
        if self.lock().nodes.remove(id).is_some() {
            self.bump();
        }
    }

    /// Write a change of a node before it is acknowledged; 503 when the store cannot.
    async fn persist(&self, id: &str, write: NodeWrite) -> Result<(), ApiError> {
        let Some(journal) = &self.journal else {
            return Ok(());
        };
        journal.write_node(id, write).await.map_err(|e| {
            ApiError::new(
                ProblemKind::StoreUnavailable,
                format!("the node could not be stored: {e}"),
            )
        })
    }

    /// How many nodes are in each health status, every status named (for `/_metrics`).
    pub fn count_by_status(&self) -> [(&'static str, i64); 3] {
        let mut counts = [Status::Ok, Status::Unavailable, Status::Dirty].map(|s| (s, 0));
        for node in self.lock().nodes.values() {
            let status = *node.status.borrow();
            if let Some((_, n)) = counts.iter_mut().find(|(s, _)| *s == status) {
                *n += 1;
            }
        }
        counts.map(|(s, n)| (s.as_str(), n))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    fn turn(&self, len: usize) -> usize {
        self.rotate.fetch_add(1, Ordering::Relaxed) as usize % len
    }

    /// The object a node topic stands for, while some node serves it.
    pub fn object(self: &Arc<Self>, topic: &str) -> Option<Object> {
        let found = self.lock().nodes.values().find_map(|n| n.entry(topic))?;
        let entry = found.unwrap_or_else(|first_use| first_use.entry());
        Some(Object {
            handler: Arc::new(NodeService {
                nodes: self.clone(),
                topic: topic.to_owned(),
            }),
            options: ObjectOptions::default(),
            entry,
        })
    }

    /// The catalogue entry of every topic some node serves now (every node serving a topic
    /// declares the same schema and description, [`check_groups`]).
    pub fn catalogue(&self) -> BTreeMap<String, Arc<crate::catalogue::Entry>> {
        let mut topics = BTreeMap::new();
        for node in self.lock().nodes.values() {
            for s in &node.subs().services {
                topics.entry(s.topic.clone()).or_insert_with(|| s.entry());
            }
        }
        topics
    }

    /// Whether `topic` was ever a node service here (its runs can be read).
    pub fn knows(&self, topic: &str) -> bool {
        self.lock().topics.contains(topic)
    }

    pub fn stop_all(&self) {
        self.stop.cancel();
    }

    /// Ping a node's health path once: `Ok(detail)` for a 2xx, else the status (when one
    /// came) and why not.
    async fn ping(&self, base: &str, path: &str) -> Result<String, (Option<u16>, String)> {
        // Which replica pings, for whoever wants to see that only one does (spec §25.7).
        let replica = self.journal.as_deref().and_then(Journal::shared);
        let headers: &[(&str, &str)] = match &replica {
            Some(pg) => &[(REPLICA_HEADER, pg.replica())],
            None => &[],
        };
        let url = format!("{base}{path}");
        let get = self
            .client
            .send(axum::http::Method::GET, &url, headers, None);
        let res = match tokio::time::timeout(self.settings.health_timeout, get).await {
            Ok(res) => res.map_err(|e| (None, e))?,
            Err(_) => {
                return Err((
                    None,
                    format!("no answer within {:?}", self.settings.health_timeout),
                ));
            }
        };
        if res.status.is_success() {
            Ok(format!("HTTP {}", res.status.as_u16()))
        } else {
            Err((
                Some(res.status.as_u16()),
                format!("HTTP {}", res.status.as_u16()),
            ))
        }
    }

    /// The `ok` node with the fewest calls in flight (within its concurrency) serving
    /// `topic`, preferring nodes not in `avoid`; ties go round-robin. The chosen node's slot
    /// is taken.
    fn pick(&self, topic: &str, avoid: &[String]) -> Option<(Arc<Node>, Route)> {
        let inner = self.lock();
        let candidates: Vec<&Arc<Node>> = inner
            .nodes
            .values()
            .filter(|n| n.is_ok() && n.has_room() && n.serves(topic))
            .collect();
        let fresh: Vec<&Arc<Node>> = candidates
            .iter()
            .copied()
            .filter(|n| !avoid.contains(&n.id))
            .collect();
        let candidates = if fresh.is_empty() { candidates } else { fresh };
        // One reading of each count: they drop (a call ends) without this lock.
        let loads: Vec<(usize, &Arc<Node>)> = candidates
            .into_iter()
            .map(|n| (n.in_flight.load(Ordering::SeqCst), n))
            .collect();
        let least = loads.iter().map(|(load, _)| *load).min()?;
        let tied: Vec<&Arc<Node>> = loads
            .into_iter()
            .filter(|(load, _)| *load == least)
            .map(|(_, n)| n)
            .collect();
        let node = tied[self.turn(tied.len())].clone();
        let route = node.route(topic)?;
        node.in_flight.fetch_add(1, Ordering::SeqCst);
        Some((node, route))
    }

    /// Wait until a node can take a call of `topic`, within the dispatch timeout.
    async fn wait_for_node(
        &self,
        topic: &str,
        avoid: &[String],
        call: &Call<'_>,
    ) -> Result<(Arc<Node>, Route), Outcome> {
        let mut changed = self.changed.subscribe();
        let waited = tokio::time::sleep(self.settings.dispatch_timeout);
        tokio::pin!(waited);
        loop {
            changed.borrow_and_update();
            if let Some(found) = self.pick(topic, avoid) {
                return Ok(found);
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = &mut waited => return Err(Outcome::NoListeners),
                _ = until(call.deadline) => return Err(Outcome::TimedOut),
                _ = call.cancel.cancelled() => return Err(Outcome::Canceled),
            }
        }
    }

    /// One call of `topic` with `data`: dispatched to one node of its exclusion group, again
    /// to another when the node turns out dirty or fails and the service allows retries.
    pub(crate) async fn call(
        self: &Arc<Self>,
        topic: &str,
        data: Value,
        call: Call<'_>,
    ) -> Outcome {
        let sender = match call.run {
            Some(run) => run.id.to_string(),
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut avoid = Vec::new();
        let mut retries = 0;
        loop {
            let (node, service) = match self.wait_for_node(topic, &avoid, &call).await {
                Ok(found) => found,
                Err(outcome) => return outcome,
            };
            let again = match self
                .attempt(&node, &service, topic, &sender, &data, &call)
                .await
            {
                Attempt::Done(outcome) => return outcome,
                Attempt::Dirty(why) => {
                    node.mark_dirty(self, why.clone());
                    format!("the node {} is dirty ({why}); dispatching again", node.id)
                }
                Attempt::Failed(why) => {
                    let allowed = service.retry.unwrap_or(0);
                    if retries >= allowed {
                        return Outcome::NodeFailed {
                            node: node.id.clone(),
                            why,
                        };
                    }
                    retries += 1;
                    format!(
                        "the node {} {why}; dispatching again (retry {retries} of {allowed})",
                        node.id
                    )
                }
            };
            tracing::info!(sender = %sender, node = %node.id, "{again}");
            if let Some(run) = call.run {
                run.emit(json!({ "message": again, "node": node.id }));
            }
            avoid.push(node.id.clone());
        }
    }

    async fn attempt(
        self: &Arc<Self>,
        node: &Arc<Node>,
        service: &Route,
        topic: &str,
        sender: &str,
        data: &Value,
        call: &Call<'_>,
    ) -> Attempt {
        let _held = Held::new(self, node, sender, call.run);
        let callback = format!(
            "{}/_nodes/{}/runs/{}/events",
            node.callback_base, node.id, sender
        );
        tracing::debug!(sender, node = %node.id, topic, "dispatching");
        let body = serde_json::to_vec(&Dispatch {
            topic,
            sender,
            data,
            timeout: service.timeout,
        })
        .expect("JSON values serialize");
        let url = format!("{}{}", node.base(), service.path);
        let headers = [(RUN_HEADER, sender), (CALLBACK_HEADER, callback.as_str())];
        let request = self
            .client
            .send(axum::http::Method::POST, &url, &headers, Some(body));
        let mut status = node.status.subscribe();
        let timeout = Duration::from_secs_f64(service.timeout);
        // Whichever comes first; dropping `request` closes the connection to the node.
        let answered = tokio::select! {
            answered = request => answered,
            _ = tokio::time::sleep(timeout) => return Attempt::Done(Outcome::TimedOut),
            _ = until(call.deadline) => return Attempt::Done(Outcome::TimedOut),
            _ = call.cancel.cancelled() => return Attempt::Done(Outcome::Canceled),
            _ = status.wait_for(|s| *s != Status::Ok) => {
                return Attempt::Failed("turned unavailable while holding the run".into());
            }
        };
        let (code, bytes) = match answered {
            Ok(reply) => (reply.status, reply.body),
            Err(e) => return Attempt::Failed(format!("failed while holding the run: {e}")),
        };
        // A POST to a registered path that the port's program does not take at all: it is
        // not the node that registered (§25.3).
        if matches!(
            code,
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED
        ) {
            return Attempt::Dirty(format!(
                "{} answered HTTP {} to a dispatch",
                service.path,
                code.as_u16()
            ));
        }
        Attempt::Done(Outcome::Answered {
            code,
            data: body_value(&bytes),
        })
    }

    /// Deliver a signal to every matching slot: one node per exclusion group, every
    /// ungrouped slot (§25.8). Fire and forget: the deliveries run apart, and a failure is
    /// logged, never retried.
    pub(crate) fn signal(self: &Arc<Self>, topic: &str, data: Value) -> (usize, usize) {
        let mut targets: Vec<(Arc<Node>, Service)> = Vec::new();
        let mut groups: BTreeMap<String, Vec<(Arc<Node>, Service)>> = BTreeMap::new();
        for node in self.lock().nodes.values().filter(|n| n.is_ok()) {
            for slot in node
                .subs()
                .slots
                .iter()
                .filter(|s| matches(&s.topic, topic))
            {
                let target = (node.clone(), slot.clone());
                match &slot.group {
                    Some(g) => groups.entry(g.clone()).or_default().push(target),
                    None => targets.push(target),
                }
            }
        }
        for members in groups.into_values() {
            let pick = self.turn(members.len());
            targets.extend(members.into_iter().nth(pick));
        }
        let (mut delivered, mut dropped) = (0, 0);
        for (node, slot) in targets {
            let Ok(permit) = self.signal_permits.clone().try_acquire_owned() else {
                tracing::warn!(node = %node.id, topic, "signal dropped: {MAX_SIGNAL_DELIVERIES} deliveries in flight");
                dropped += 1;
                continue;
            };
            delivered += 1;
            let body = serde_json::to_vec(&Dispatch {
                topic,
                sender: &uuid::Uuid::new_v4().to_string(),
                data: &data,
                timeout: slot.timeout,
            })
            .expect("JSON values serialize");
            let (client, url) = (self.client.clone(), format!("{}{}", node.base(), slot.path));
            let timeout = Duration::from_secs_f64(slot.timeout);
            let topic = topic.to_owned();
            tokio::spawn(async move {
                let _permit = permit;
                let post = client.send(axum::http::Method::POST, &url, &[], Some(body));
                match tokio::time::timeout(timeout, post).await {
                    Ok(Ok(res)) if res.status.is_success() => {}
                    Ok(Ok(res)) => {
                        tracing::warn!(node = %node.id, %topic, status = res.status.as_u16(), "slot answered the signal with an error")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(node = %node.id, %topic, error = %e, "signal delivery failed")
                    }
                    Err(_) => {
                        tracing::warn!(node = %node.id, %topic, "signal delivery failed: no answer within {timeout:?}")
                    }
                }
            });
        }
        (delivered, dropped)
    }
}

/// Completes at `deadline`, never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A node's reply body: JSON, or a string when it is not JSON, or `null` when empty.
fn body_value(bytes: &[u8]) -> Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// Does a slot pattern match a topic? gilmour subscribes slots with Redis glob patterns:
/// `*` is any run of characters (dots included, possibly none), `?` exactly one; every other
/// character stands for itself.
pub(crate) fn matches(pattern: &str, topic: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), topic.as_bytes());
    // The classic greedy glob with one backtrack point: linear in practice, no recursion.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A call held by a node: counted in its `in_flight`, reachable by its callbacks.
struct Held {
    nodes: Arc<Nodes>,
    node: Arc<Node>,
    sender: String,
}

impl Held {
    fn new(nodes: &Arc<Nodes>, node: &Arc<Node>, sender: &str, run: Option<&Arc<Run>>) -> Self {
        node.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(sender.to_owned())
            .or_insert_with(|| (0, run.cloned()))
            .0 += 1;
        Held {
            nodes: nodes.clone(),
            node: node.clone(),
            sender: sender.to_owned(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut calls = self.node.calls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((count, _)) = calls.get_mut(&self.sender) {
            *count -= 1;
            if *count == 0 {
                calls.remove(&self.sender);
            }
        }
        drop(calls);
        self.node.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.nodes.bump();
    }
}

struct NodeService {
    nodes: Arc<Nodes>,
    topic: String,
}

impl Handler for NodeService {
    fn start(&self, args: Value, ctx: RunContext) -> BoxFuture<'static, HandlerResult> {
        let (nodes, topic) = (self.nodes.clone(), self.topic.clone());
        Box::pin(async move {
            let cancel = ctx.cancel_token();
            let call = Call {
                run: Some(&ctx.run),
                cancel: &cancel,
                deadline: None,
            };
            let outcome = nodes.call(&topic, args, call).await;
            if matches!(outcome, Outcome::TimedOut) {
                ctx.run.request_cancel(CancelReason::Deadline);
            }
            outcome.into_result(&topic)
        })
    }
}

/// Every health interval, if this replica is the one that checks (always, without
/// Postgres), ping every node that is not dirty, all at once; then store the health that
/// changed.
async fn health_loop(nodes: Arc<Nodes>) {
    loop {
        tokio::select! {
            _ = nodes.stop.cancelled() => return,
            _ = tokio::time::sleep(nodes.settings.health_interval) => {}
        }
        let checking = match nodes.journal.as_deref().and_then(Journal::shared) {
            Some(pg) => pg.is_health_checker().await,
            None => true,
        };
        nodes.checking.store(checking, Ordering::SeqCst);
        if checking {
            let due: Vec<Arc<Node>> = nodes
                .lock()
                .nodes
                .values()
                .filter(|n| *n.status.borrow() != Status::Dirty)
                .cloned()
                .collect();
            let pings = due.iter().map(|node| check(&nodes, node));
            tokio::select! {
                _ = nodes.stop.cancelled() => return,
                _ = futures::future::join_all(pings) => {}
            }
        }
        nodes.save_health().await;
    }
}

/// Store the health of the nodes whose health changed.
impl Nodes {
    async fn save_health(&self) {
        let Some(journal) = &self.journal else {
            return;
        };
        let ids = std::mem::take(&mut *self.unsaved.lock().unwrap_or_else(|e| e.into_inner()));
        for id in ids {
            let Some(node) = self.lock().nodes.get(&id).cloned() else {
                continue;
            };
            if let Err(e) = journal
                .write_node(&id, NodeWrite::Health(node.stored_health()))
                .await
            {
                tracing::warn!(node = %id, error = %e, "cannot store the node's health; the next check tries again");
                self.unsaved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id);
            }
        }
    }
}

/// Ping one node: `failures` consecutive failures turn it `unavailable`, one success turns it
/// `ok` again, and a health path that is not there turns it `dirty`.
async fn check(nodes: &Arc<Nodes>, node: &Arc<Node>) {
    let result = nodes.ping(&node.base(), &node.health_check).await;
    if let Err((Some(code @ (404 | 405 | 501)), _)) = &result {
        node.mark_dirty(
            nodes,
            format!("its health path {} answered HTTP {code}", node.health_check),
        );
        return;
    }
    let now = *node.status.borrow();
    let next = {
        let mut health = node.health.lock().unwrap_or_else(|e| e.into_inner());
        let ok = result.is_ok();
        if health.last.len() == HEALTH_HISTORY {
            health.last.pop_front();
        }
        health.last.push_back(HealthResult {
            at: now_rfc3339(),
            ok,
            detail: match &result {
                Ok(d) | Err((_, d)) => d.clone(),
            },
        });
        if ok {
            health.failures = 0;
            Status::Ok
        } else {
            health.failures += 1;
            if health.failures >= nodes.settings.health_failures {
                Status::Unavailable
            } else {
                now
            }
        }
    };
    nodes
        .unsaved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(node.id.clone());
    if next != now {
        match &result {
            Ok(_) => tracing::info!(node = %node.id, "node answers its health path again: ok"),
            Err((_, why)) => {
                tracing::warn!(node = %node.id, %why, "node failed its health checks: unavailable")
            }
        }
        node.status.send_replace(next);
        nodes.bump();
    }
}

/// Postgres: take what other replicas changed (nodes registered, changed, deleted, their
/// health) and the progress reports they received for calls held here.
async fn follow_replicas(nodes: Arc<Nodes>) {
    let Some(pg) = nodes.journal.as_deref().and_then(Journal::shared) else {
        return;
    };
    let mut reload = true;
    loop {
        if reload {
            match pg.load_nodes(None).await {
                Ok(rows) => {
                    let ids: BTreeSet<String> = rows.iter().map(|r| r.id.clone()).collect();
                    for row in rows {
                        nodes.apply(row);
                    }
                    let gone: Vec<String> = nodes
                        .lock()
                        .nodes
                        .keys()
                        .filter(|id| !ids.contains(*id))
                        .cloned()
                        .collect();
                    for id in gone {
                        nodes.forget(&id);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the nodes; trying again on the next change")
                }
            }
        }
        let notes = tokio::select! {
            _ = nodes.stop.cancelled() => return,
            notes = pg.node_notes() => notes,
        };
        reload = notes.reload;
        for id in notes.changed {
            match pg.load_nodes(Some(&id)).await {
                Ok(rows) if rows.is_empty() => nodes.forget(&id),
                Ok(rows) => rows.into_iter().for_each(|row| nodes.apply(row)),
                Err(e) => {
                    tracing::warn!(node = %id, error = %e, "cannot read a changed node");
                    reload = true;
                }
            }
        }
        for (node, sender, value) in notes.progress {
            nodes.deliver_progress(&node, &sender, &value);
        }
    }
}

impl Nodes {
    /// A progress report another replica received for a call this one may hold.
    fn deliver_progress(&self, node: &str, sender: &str, value: &str) {
        let Some(node) = self.lock().nodes.get(node).cloned() else {
            return;
        };
        let held = node.held(sender);
        if let (Some(Some(run)), Ok(value)) = (held, serde_json::from_str(value)) {
            run.emit(value);
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemKind::InvalidNode, detail)
}

fn validate_path(what: &str, path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!(
            "{what} must be an absolute path such as /work, not {path:?}"
        )));
    }
    Ok(())
}

/// A slot pattern: an object name in which `*` and `?` may stand for characters.
fn is_valid_pattern(pattern: &str) -> bool {
    let literal: String = pattern.replace(['*', '?'], "a");
    ObjectName::is_valid(&literal)
}

fn validate_entry(kind: Kind, s: &Service, server: &Server) -> Result<(), ApiError> {
    let name = kind.name();
    match kind {
        Kind::Service if !ObjectName::is_valid(&s.topic) => {
            return Err(invalid(format!(
                "service topic {:?} is not a valid object name (letters, digits, '.', '_', '-', starting with a letter or digit; no wildcards)",
                s.topic
            )));
        }
        Kind::Slot if !is_valid_pattern(&s.topic) => {
            return Err(invalid(format!(
                "slot topic {:?} is not a valid pattern (an object name in which '*' and '?' are wildcards)",
                s.topic
            )));
        }
        _ => {}
    }
    validate_path(&format!("the path of {name} {:?}", s.topic), &s.path)?;
    if !(s.timeout.is_finite() && s.timeout > 0.0 && s.timeout <= 365.0 * 86400.0) {
        return Err(invalid(format!(
            "the timeout of {name} {:?} must be a positive number of seconds",
            s.topic
        )));
    }
    if s.group.as_deref() == Some("") {
        return Err(invalid(format!(
            "the group of {name} {:?} is empty",
            s.topic
        )));
    }
    match kind {
        Kind::Slot if s.retry.is_some() => {
            return Err(invalid(format!(
                "slot {:?} has a retry: signals are never retried",
                s.topic
            )));
        }
        Kind::Slot if s.args_schema.is_some() || s.description.is_some() => {
            return Err(invalid(format!(
                "slot {:?} has a description or an args_schema: only services are objects",
                s.topic
            )));
        }
        Kind::Service => {
            let entry = s
                .compile()
                .map_err(|why| invalid(format!("service {:?}: {why}", s.topic)))?;
            let _ = s.entry.set(Arc::new(entry));
        }
        _ => {}
    }
    match kind {
        Kind::Service if s.group.is_none() => {
            return Err(invalid(format!(
                "service {:?} needs an exclusion group",
                s.topic
            )));
        }
        Kind::Service if server.objects.contains_key(&s.topic) => {
            return Err(ApiError::new(
                ProblemKind::TopicTaken,
                format!("{:?} is an object of this server", s.topic),
            ));
        }
        _ => {}
    }
    Ok(())
}

/// `POST /_nodes`.
pub(crate) async fn register(
    caller: Caller,
    State(server): State<Server>,
    req: Request,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    let host_header = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned);
    let value = read_args(&server, &parts.headers, Body::new(body)).await?;
    let reg: Registration = serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            ProblemKind::InvalidJson,
            format!("the body is not a node registration: {e}"),
        )
    })?;
    let port = u16::try_from(reg.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(format!("port {} is not in 1..=65535", reg.port)))?;
    let health_check = reg.health_check.unwrap_or_else(|| "/health".into());
    validate_path("health_check", &health_check)?;
    if reg.concurrency == Some(0) {
        return Err(invalid(
            "concurrency must be at least 1 (or absent: unbounded)",
        ));
    }
    let mut seen = BTreeSet::new();
    for s in &reg.services {
        validate_entry(Kind::Service, s, &server)?;
        if !seen.insert(s.topic.as_str()) {
            return Err(invalid(format!("service {:?} is listed twice", s.topic)));
        }
    }
    for s in &reg.slots {
        validate_entry(Kind::Slot, s, &server)?;
    }
    let host = match reg.host.filter(|h| !h.is_empty()).or(peer) {
        Some(h) => h,
        None => return Err(invalid("give the node's host: the peer address is unknown")),
    };
    if host.contains(['/', ' ', '?', '#', '@']) {
        return Err(invalid(format!(
            "host {host:?} is not a host name or address"
        )));
    }
    let Some(host_header) = host_header else {
        return Err(invalid(
            "the registration needs a Host header (the callbacks' address)",
        ));
    };
    let nodes = &server.nodes;
    check_groups(&nodes.lock(), None, &reg.services)?;
    let mut node = Node::new(
        uuid::Uuid::new_v4().to_string(),
        StoredRecord {
            host,
            port,
            health_check,
            concurrency: reg.concurrency,
            services: reg.services,
            slots: reg.slots,
            callback_base: format!("http://{host_header}"),
        },
    );
    let detail = nodes
        .ping(&node.base(), &node.health_check)
        .await
        .map_err(|(_, why)| {
            ApiError::new(
                ProblemKind::NodeUnreachable,
                format!(
                    "{}{} did not answer the health check with a 2xx: {why}",
                    node.base(),
                    node.health_check
                ),
            )
        })?;
    node.health
        .get_mut()
        .unwrap_or_else(|e| e.into_inner())
        .last
        .push_back(HealthResult {
            at: now_rfc3339(),
            ok: true,
            detail,
        });
    let node = Arc::new(node);
    check_groups(&nodes.lock(), None, &node.subs().services)?;
    let record = node.stored_record(&node.subs());
    nodes.persist(&node.id, NodeWrite::Record(record)).await?;
    nodes
        .persist(&node.id, NodeWrite::Health(node.stored_health()))
        .await?;
    {
        let mut inner = nodes.lock();
        for s in &node.subs().services {
            inner.topics.insert(s.topic.clone());
        }
        inner.nodes.insert(node.id.clone(), node.clone());
    }
    tracing::info!(node = %node.id, at = %node.base(), "node registered: ok");
    nodes.bump();
    nodes.start();
    let mut res = json_response(StatusCode::CREATED, &json!({"id": node.id, "status": "ok"}));
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/_nodes/{}", node.id)).expect("a uuid is header-safe"),
    );
    Ok(res)
}

/// One exclusion group per topic: another node's service of the same topic in another group
/// is a conflict (`except`: the node whose own list is being changed).
fn check_groups(inner: &Inner, except: Option<&str>, services: &[Service]) -> Result<(), ApiError> {
    for s in services {
        for other in inner
            .nodes
            .values()
            .filter(|n| Some(n.id.as_str()) != except)
        {
            if let Some(o) = other.service(&s.topic) {
                // One topic is one object: its arguments are described once.
                if o.args_schema != s.args_schema || o.description != s.description {
                    return Err(ApiError::new(
                        ProblemKind::TopicTaken,
                        format!(
                            "service {:?} is served with another description or args_schema \
                             already; every node of a topic declares the same ones",
                            s.topic
                        ),
                    ));
                }
                if o.group != s.group {
                    return Err(ApiError::new(
                        ProblemKind::TopicTaken,
                        format!(
                            "service {:?} is served by group {:?} already; a topic has one exclusion group",
                            s.topic,
                            o.group.as_deref().unwrap_or_default()
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn node_not_found(id: &str) -> ApiError {
    ApiError::new(
        ProblemKind::NodeNotFound,
        format!("no node {id:?} is registered"),
    )
}

fn find(server: &Server, id: &str) -> Result<Arc<Node>, ApiError> {
    server
        .nodes
        .lock()
        .nodes
        .get(id)
        .cloned()
        .ok_or_else(|| node_not_found(id))
}

fn ok() -> Response {
    json_response(StatusCode::OK, &json!({"status": "ok"}))
}

/// `GET /_nodes`.
pub(crate) async fn list(
    caller: Caller,
    State(server): State<Server>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let nodes: Vec<Arc<Node>> = server.nodes.lock().nodes.values().cloned().collect();
    let records: Vec<Value> = nodes.iter().map(|n| n.record()).collect();
    Ok(json_response(StatusCode::OK, &json!({ "nodes": records })))
}

/// `GET /_nodes/{id}`.
pub(crate) async fn show(
    caller: Caller,
    State(server): State<Server>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    Ok(json_response(StatusCode::OK, &find(&server, &id)?.record()))
}

/// `DELETE /_nodes/{id}`: the node gets no new runs; the runs it holds go on.
pub(crate) async fn remove(
    caller: Caller,
    State(server): State<Server>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    find(&server, &id)?;
    server.nodes.persist(&id, NodeWrite::Delete).await?;
    server.nodes.forget(&id);
    tracing::info!(node = %id, "node unregistered");
    Ok(ok())
}

/// `GET /_nodes/{id}/services` and `/slots`.
pub(crate) async fn list_subs(
    caller: Caller,
    State(server): State<Server>,
    Path((id, kind)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let kind = Kind::parse(&kind)?;
    let node = find(&server, &id)?;
    let list = kind.list(&mut node.subs()).clone();
    let key = format!("{}s", kind.name());
    Ok(json_response(StatusCode::OK, &json!({ key: list })))
}

/// `POST /_nodes/{id}/services` and `/slots`: one more subscription.
pub(crate) async fn add_sub(
    caller: Caller,
    State(server): State<Server>,
    Path((id, kind)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let kind = Kind::parse(&kind)?;
    let node = find(&server, &id)?;
    let entry: Service = read_json(&server, req, &format!("a {}", kind.name())).await?;
    validate_entry(kind, &entry, &server)?;
    let nodes = &server.nodes;
    let mut subs = node.subs().clone();
    {
        let mut inner = nodes.lock();
        let list = kind.list(&mut subs);
        match kind {
            Kind::Service => {
                if list.iter().any(|s| s.topic == entry.topic) {
                    return Err(ApiError::new(
                        ProblemKind::TopicTaken,
                        format!("the node serves {:?} already", entry.topic),
                    ));
                }
                check_groups(&inner, Some(&node.id), std::slice::from_ref(&entry))?;
                inner.topics.insert(entry.topic.clone());
            }
            Kind::Slot => {
                if list.iter().any(|s| {
                    s.topic == entry.topic && s.path == entry.path && s.group == entry.group
                }) {
                    // The same subscription twice is one subscription.
                    return Ok(json_response(StatusCode::OK, &json!({"status": "ok"})));
                }
            }
        }
        list.push(entry);
    }
    nodes.change_subs(&node, subs).await?;
    Ok(json_response(StatusCode::CREATED, &json!({"status": "ok"})))
}

#[derive(Deserialize)]
pub(crate) struct Unsubscribe {
    topic: Option<String>,
    path: Option<String>,
}

/// `DELETE /_nodes/{id}/services?topic=&path=` and `/slots?…`: without `path`, every
/// subscription of the topic goes.
pub(crate) async fn remove_sub(
    caller: Caller,
    State(server): State<Server>,
    Path((id, kind)): Path<(String, String)>,
    Query(query): Query<Unsubscribe>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let kind = Kind::parse(&kind)?;
    let node = find(&server, &id)?;
    let Some(topic) = query.topic else {
        return Err(invalid(format!(
            "name the {} to remove: ?topic=…[&path=…]",
            kind.name()
        )));
    };
    let mut subs = node.subs().clone();
    let removed = {
        let list = kind.list(&mut subs);
        let before = list.len();
        list.retain(|s| !(s.topic == topic && query.path.as_ref().is_none_or(|p| *p == s.path)));
        before - list.len()
    };
    if removed == 0 {
        return Err(ApiError::new(
            ProblemKind::SubscriptionNotFound,
            format!("node {id} has no {} {topic:?}", kind.name())
                + &query.path.map(|p| format!(" at {p}")).unwrap_or_default(),
        ));
    }
    server.nodes.change_subs(&node, subs).await?;
    Ok(ok())
}

fn signal_reply(topic: &str, (delivered, dropped): (usize, usize)) -> Response {
    tracing::debug!(topic, delivered, dropped, "signal");
    json_response(
        StatusCode::ACCEPTED,
        &json!({"delivered": delivered, "dropped": dropped}),
    )
}

fn valid_signal_topic(topic: &str) -> Result<(), ApiError> {
    if ObjectName::is_valid(topic) {
        Ok(())
    } else {
        Err(ApiError::new(
            ProblemKind::InvalidArguments,
            format!("signal topic {topic:?} is not a valid object name (no wildcards)"),
        ))
    }
}

/// `POST /_signals/{topic}`: the body (any JSON value) goes to every matching slot.
pub(crate) async fn signal(
    caller: Caller,
    State(server): State<Server>,
    Path(topic): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    valid_signal_topic(&topic)?;
    caller.require(Scope::Submit, &topic)?;
    let (parts, body) = req.into_parts();
    let data = read_args(&server, &parts.headers, Body::new(body)).await?;
    Ok(signal_reply(&topic, server.nodes.signal(&topic, data)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSignal {
    topic: String,
    #[serde(default)]
    message: Value,
}

/// The JSON body of a control request, as a `T`; `what` names it in the 400 problem.
async fn read_json<T: serde::de::DeserializeOwned>(
    server: &Server,
    req: Request,
    what: &str,
) -> Result<T, ApiError> {
    let (parts, body) = req.into_parts();
    let value = read_args(server, &parts.headers, Body::new(body)).await?;
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            ProblemKind::InvalidJson,
            format!("the body is not {what}: {e}"),
        )
    })
}

/// `POST /_nodes/{id}/signal` with the seed's `{topic, message}`: a node sends a signal.
pub(crate) async fn node_signal(
    State(server): State<Server>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    find(&server, &id)?;
    let sig: NodeSignal = read_json(&server, req, "a signal {topic, message}").await?;
    valid_signal_topic(&sig.topic)?;
    Ok(signal_reply(
        &sig.topic,
        server.nodes.signal(&sig.topic, sig.message),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeRequest {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    composition: Option<Value>,
    #[serde(default)]
    message: Value,
    /// Seconds; the whole request (every step of a composition) ends by then.
    #[serde(default)]
    timeout: Option<f64>,
}

/// gilmour's reply to a node-side request: every message, the highest code, and the HTTP
/// status is that code.
pub(crate) fn messages_reply(messages: &[(u16, Value)]) -> Response {
    let code = messages.iter().map(|(c, _)| *c).max().unwrap_or(200);
    let list: Vec<Value> = messages
        .iter()
        .map(|(code, data)| json!({"data": data, "code": code}))
        .collect();
    let mut res = json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &json!({"messages": list, "code": code, "length": list.len()}),
    );
    res.extensions_mut().insert(OwnErrorBody);
    res
}

/// `POST /_nodes/{id}/request` with the seed's `{topic | composition, message, timeout}`: a
/// node calls a service and waits for the answer (no run is created).
pub(crate) async fn node_request(
    State(server): State<Server>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    find(&server, &id)?;
    let request: NodeRequest = read_json(
        &server,
        req,
        "a request {topic | composition, message, timeout}",
    )
    .await?;
    let deadline = match request.timeout {
        None => None,
        Some(t) if t.is_finite() && t > 0.0 && t <= 365.0 * 86400.0 => {
            Some(Instant::now() + Duration::from_secs_f64(t))
        }
        Some(t) => {
            return Err(ApiError::new(
                ProblemKind::InvalidArguments,
                format!("timeout {t} is not a positive number of seconds"),
            ));
        }
    };
    let topic = match (request.topic, request.composition) {
        (Some(topic), None) => topic,
        (None, Some(composition)) => {
            // The whole composition ends by the timeout (spec §25.10).
            let composition = crate::compose::Composition::parse(&composition)
                .map_err(crate::compose::invalid)?;
            let cancel = CancellationToken::new();
            let messages = crate::compose::execute(
                &server.nodes,
                &composition,
                request.message,
                None,
                &cancel,
                deadline,
            )
            .await;
            return Ok(messages_reply(&messages));
        }
        _ => {
            return Err(ApiError::new(
                ProblemKind::InvalidArguments,
                "give exactly one of topic and composition",
            ));
        }
    };
    if !ObjectName::is_valid(&topic) {
        return Err(ApiError::new(
            ProblemKind::InvalidArguments,
            format!("topic {topic:?} is not a valid object name"),
        ));
    }
    // Only the timeout ends a request early; a caller that hangs up drops this future, and
    // with it the connection to the node.
    let cancel = CancellationToken::new();
    let outcome = server
        .nodes
        .call(
            &topic,
            request.message,
            Call {
                run: None,
                cancel: &cancel,
                deadline,
            },
        )
        .await;
    Ok(messages_reply(&[(outcome.code(), outcome.data(&topic))]))
}

/// `POST /_nodes/{node}/runs/{id}/events`: a node reports progress of a call it holds.
pub(crate) async fn progress(
    State(server): State<Server>,
    Path((node, sender)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let node = find(&server, &node)?;
    let value = read_args(&server, &parts.headers, Body::new(body)).await?;
    let Some(held) = node.held(&sender) else {
        // With replicas, the callback may reach another replica than the one that holds the
        // call (it goes to the address the node registered through): hand it on.
        if let Some(pg) = server.registry.shared() {
            let text = value.to_string();
            if text.len() > crate::store::postgres::MAX_FORWARDED_BYTES {
                return Err(ApiError::new(
                    ProblemKind::BodyTooLarge,
                    format!(
                        "another replica holds run {sender}; a progress value it is handed is at most {} bytes of JSON",
                        crate::store::postgres::MAX_FORWARDED_BYTES
                    ),
                ));
            }
            pg.forward_progress(&node.id, &sender, &text)
                .await
                .map_err(|e| ApiError::new(ProblemKind::StoreUnavailable, e))?;
            return Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({"status": "ok"}),
            ));
        }
        return Err(ApiError::new(
            ProblemKind::RunNotFound,
            format!("node {} holds no run {sender:?}", node.id),
        ));
    };
    // A node-side request (§25.9) has no run: its progress is accepted and not recorded.
    if let Some(run) = held {
        if !run.emit(value) {
            let state = run.status().0;
            return Err(ApiError::new(
                ProblemKind::RunEnded,
                format!("run {sender} is stopping or ended; the event was dropped"),
            )
            .with("state", state.as_str()));
        }
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "ok"}),
    ))
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn slot_patterns_are_redis_globs() {
        assert!(matches("alerts.*", "alerts.disk"));
        assert!(matches("alerts.*", "alerts.disk.full"));
        assert!(matches("alerts.*", "alerts."));
        assert!(!matches("alerts.*", "alerts"));
        assert!(matches("*", "anything.at.all"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("*.disk", "alerts.disk"));
        assert!(!matches("*.disk", "alerts.cpu"));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("a*b*c", "axxbyy"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }
}
