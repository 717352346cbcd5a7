//! Worker nodes (spec §25): HTTP programs that register their services with `POST /_nodes`,
//! are health-checked, and receive the runs of their services' topics, which are objects like
//! any other. Registrations live in memory, per replica: they do not survive a restart yet.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::future::BoxFuture;
use longrun_proto::{CancelReason, ObjectName, ProblemKind, RunId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Server;
use crate::auth::Caller;
use crate::handler::{Handler, HandlerResult, Object, ObjectOptions, RunContext, RunError};
use crate::http::{ApiError, json_response, read_args};
use crate::run::Run;

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
/// Header naming the run in a dispatch, and the URL the node reports progress to.
pub const RUN_HEADER: &str = "longrun-run";
pub const CALLBACK_HEADER: &str = "longrun-callback";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Service {
    topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    path: String,
    timeout: f64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    Ok,
    Unavailable,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unavailable => "unavailable",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct HealthResult {
    at: String,
    ok: bool,
    detail: String,
}

struct Health {
    failures: u32,
    last: VecDeque<HealthResult>,
}

pub(crate) struct Node {
    id: String,
    host: String,
    port: u16,
    health_check: String,
    concurrency: Option<u64>,
    services: Vec<Service>,
    slots: Vec<Service>,
    /// `http://{host the node registered through}`: where its callbacks go.
    callback_base: String,
    status: watch::Sender<Status>,
    health: Mutex<Health>,
    in_flight: AtomicUsize,
    /// The runs this node holds now, for its progress callbacks.
    runs: Mutex<HashMap<RunId, Arc<Run>>>,
    stop: CancellationToken,
}

impl Node {
    fn base(&self) -> String {
        if self.host.contains(':') {
            format!("http://[{}]:{}", self.host, self.port)
        } else {
            format!("http://{}:{}", self.host, self.port)
        }
    }

    fn record(&self) -> Value {
        let health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        json!({
            "id": self.id,
            "host": self.host,
            "port": self.port,
            "health_check": self.health_check,
            "concurrency": self.concurrency,
            "services": self.services,
            "slots": self.slots,
            "status": self.status.borrow().as_str(),
            "in_flight": self.in_flight.load(Ordering::SeqCst),
            "health": {
                "consecutive_failures": health.failures,
                "last": health.last,
            },
        })
    }

    fn service(&self, topic: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.topic == topic)
    }
}

/// The registered nodes of this replica.
pub(crate) struct Nodes {
    settings: NodeSettings,
    client: reqwest::Client,
    inner: Mutex<Inner>,
    /// Bumped whenever a node comes, goes, changes status or frees a slot: waiting runs look
    /// again.
    changed: watch::Sender<u64>,
    rotate: AtomicU64,
}

#[derive(Default)]
struct Inner {
    nodes: BTreeMap<String, Arc<Node>>,
    /// Every service topic registered since the server started, so that runs of a topic
    /// whose nodes have left can still be read.
    topics: BTreeSet<String>,
}

impl Nodes {
    pub fn new(config: &crate::Config) -> Self {
        Nodes {
            settings: NodeSettings {
                health_interval: config.health_interval,
                health_timeout: config.health_timeout,
                health_failures: config.health_failures.max(1),
                dispatch_timeout: config.dispatch_timeout,
            },
            client: reqwest::Client::new(),
            inner: Mutex::new(Inner::default()),
            changed: watch::Sender::new(0),
            rotate: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// The object a node topic stands for, while some node serves it.
    pub fn object(self: &Arc<Self>, topic: &str) -> Option<Object> {
        let inner = self.lock();
        let served = inner.nodes.values().any(|n| n.service(topic).is_some());
        served.then(|| Object {
            handler: Arc::new(NodeService {
                nodes: self.clone(),
                topic: topic.to_owned(),
            }),
            options: ObjectOptions::default(),
        })
    }

    /// Whether `topic` was ever a node service here (its runs can be read).
    pub fn knows(&self, topic: &str) -> bool {
        self.lock().topics.contains(topic)
    }

    pub fn stop_all(&self) {
        for node in self.lock().nodes.values() {
            node.stop.cancel();
        }
    }

    /// Ping a node's health path once: `Ok(detail)` for a 2xx, else why not.
    async fn ping(&self, base: &str, path: &str) -> Result<String, String> {
        let res = self
            .client
            .get(format!("{base}{path}"))
            .timeout(self.settings.health_timeout)
            .send()
            .await
            .map_err(|e| format!("{e:#}"))?;
        let status = res.status();
        if status.is_success() {
            Ok(format!("HTTP {}", status.as_u16()))
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }

    /// The `ok` node with the fewest runs in flight (within its concurrency) serving `topic`;
    /// ties go round-robin. The chosen node's slot is taken.
    fn pick(&self, topic: &str) -> Option<(Arc<Node>, Service)> {
        let inner = self.lock();
        let candidates: Vec<&Arc<Node>> = inner
            .nodes
            .values()
            .filter(|n| *n.status.borrow() == Status::Ok && n.service(topic).is_some())
            .filter(|n| {
                n.concurrency
                    .is_none_or(|c| (n.in_flight.load(Ordering::SeqCst) as u64) < c)
            })
            .collect();
        let least = candidates
            .iter()
            .map(|n| n.in_flight.load(Ordering::SeqCst))
            .min()?;
        let tied: Vec<&&Arc<Node>> = candidates
            .iter()
            .filter(|n| n.in_flight.load(Ordering::SeqCst) == least)
            .collect();
        let turn = self.rotate.fetch_add(1, Ordering::Relaxed) as usize % tied.len();
        let node = (*tied[turn]).clone();
        node.in_flight.fetch_add(1, Ordering::SeqCst);
        let service = node.service(topic).expect("filtered on it").clone();
        Some((node, service))
    }

    async fn dispatch(
        self: Arc<Self>,
        topic: String,
        args: Value,
        ctx: RunContext,
    ) -> HandlerResult {
        let mut changed = self.changed.subscribe();
        let waited = tokio::time::sleep(self.settings.dispatch_timeout);
        tokio::pin!(waited);
        let (node, service) = loop {
            changed.borrow_and_update();
            if let Some(found) = self.pick(&topic) {
                break found;
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = &mut waited => {
                    return Err(RunError::new(format!("No active listeners for: {topic}")));
                }
                _ = ctx.cancelled() => return Err(RunError::new("canceled while queued")),
            }
        };
        let _slot = Slot::new(&self, &node, &ctx.run);
        let run_id = ctx.id().to_string();
        let callback = format!(
            "{}/_nodes/{}/runs/{}/events",
            node.callback_base, node.id, run_id
        );
        tracing::debug!(run = %run_id, node = %node.id, topic = %topic, "dispatching");
        let body = json!({
            "topic": topic,
            "sender": run_id,
            "data": args,
            "timeout": service.timeout,
        });
        let call = async {
            let res = self
                .client
                .post(format!("{}{}", node.base(), service.path))
                .header(RUN_HEADER, &run_id)
                .header(CALLBACK_HEADER, &callback)
                .json(&body)
                .send()
                .await?;
            let status = res.status();
            let bytes = res.bytes().await?;
            Ok::<_, reqwest::Error>((status, bytes))
        };
        let mut status = node.status.subscribe();
        let deadline = Duration::from_secs_f64(service.timeout);
        // Whichever comes first; dropping `call` closes the connection to the node.
        let answered = tokio::select! {
            answered = call => answered,
            _ = tokio::time::sleep(deadline) => {
                ctx.run.request_cancel(CancelReason::Deadline);
                return Err(RunError::new("the service timeout passed"));
            }
            _ = ctx.cancelled() => return Err(RunError::new("canceled")),
            _ = status.wait_for(|s| *s != Status::Ok) => {
                return Err(RunError::new(format!(
                    "the node {} turned unavailable while holding the run",
                    node.id
                ))
                .with("node", node.id.clone()));
            }
        };
        let (code, bytes) = answered.map_err(|e| {
            RunError::new(format!(
                "the node {} failed while holding the run: {e:#}",
                node.id
            ))
            .with("node", node.id.clone())
        })?;
        let data = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if code.is_success() {
            Ok(data)
        } else {
            let message = data
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("{topic} failed with HTTP {}", code.as_u16()));
            Err(RunError::new(message)
                .with("code", code.as_u16())
                .with("data", data))
        }
    }
}

/// A run held by a node: counted in its `in_flight`, reachable by its callbacks.
struct Slot {
    nodes: Arc<Nodes>,
    node: Arc<Node>,
    run: RunId,
}

impl Slot {
    fn new(nodes: &Arc<Nodes>, node: &Arc<Node>, run: &Arc<Run>) -> Self {
        node.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run.id, run.clone());
        Slot {
            nodes: nodes.clone(),
            node: node.clone(),
            run: run.id,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.node
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.run);
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
        Box::pin(self.nodes.clone().dispatch(self.topic.clone(), args, ctx))
    }
}

/// Every `interval`, ping the node; `failures` consecutive failures turn it `unavailable`,
/// one success turns it `ok` again.
async fn health_loop(nodes: Arc<Nodes>, node: Arc<Node>) {
    let base = node.base();
    loop {
        tokio::select! {
            _ = node.stop.cancelled() => return,
            _ = tokio::time::sleep(nodes.settings.health_interval) => {}
        }
        let result = tokio::select! {
            _ = node.stop.cancelled() => return,
            r = nodes.ping(&base, &node.health_check) => r,
        };
        let now = *node.status.borrow();
        let next = {
            let mut health = node.health.lock().unwrap_or_else(|e| e.into_inner());
            let ok = result.is_ok();
            if health.last.len() == HEALTH_HISTORY {
                health.last.pop_front();
            }
            health.last.push_back(HealthResult {
                at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                ok,
                detail: match &result {
                    Ok(d) | Err(d) => d.clone(),
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
        if next != now {
            match &result {
                Ok(_) => tracing::info!(node = %node.id, "node answers its health path again: ok"),
                Err(why) => {
                    tracing::warn!(node = %node.id, %why, "node failed its health checks: unavailable")
                }
            }
            node.status.send_replace(next);
            nodes.bump();
        }
    }
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

fn validate_entry(kind: &str, s: &Service, server: &Server) -> Result<(), ApiError> {
    if !ObjectName::is_valid(&s.topic) {
        return Err(invalid(format!(
            "{kind} topic {:?} is not a valid object name (letters, digits, '.', '_', '-', starting with a letter or digit); wildcards are not supported yet",
            s.topic
        )));
    }
    validate_path(&format!("the path of {kind} {:?}", s.topic), &s.path)?;
    if !(s.timeout.is_finite() && s.timeout > 0.0 && s.timeout <= 365.0 * 86400.0) {
        return Err(invalid(format!(
            "the timeout of {kind} {:?} must be a positive number of seconds",
            s.topic
        )));
    }
    if let Some(g) = &s.group {
        if g.is_empty() {
            return Err(invalid(format!(
                "the group of {kind} {:?} is empty",
                s.topic
            )));
        }
    }
    if kind == "service" {
        if s.group.is_none() {
            return Err(invalid(format!(
                "service {:?} needs an exclusion group",
                s.topic
            )));
        }
        if server.objects.contains_key(&s.topic) {
            return Err(ApiError::new(
                ProblemKind::TopicTaken,
                format!("{:?} is an object of this server", s.topic),
            ));
        }
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
        validate_entry("service", s, &server)?;
        if !seen.insert(s.topic.as_str()) {
            return Err(invalid(format!("service {:?} is listed twice", s.topic)));
        }
    }
    for s in &reg.slots {
        validate_entry("slot", s, &server)?;
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
    check_groups(&nodes.lock(), &reg.services)?;
    let mut node = Node {
        id: uuid::Uuid::new_v4().to_string(),
        host,
        port,
        health_check,
        concurrency: reg.concurrency,
        services: reg.services,
        slots: reg.slots,
        callback_base: format!("http://{host_header}"),
        status: watch::Sender::new(Status::Ok),
        health: Mutex::new(Health {
            failures: 0,
            last: VecDeque::new(),
        }),
        in_flight: AtomicUsize::new(0),
        runs: Mutex::new(HashMap::new()),
        stop: CancellationToken::new(),
    };
    let pinged = nodes.ping(&node.base(), &node.health_check).await;
    let detail = match pinged {
        Ok(d) => d,
        Err(why) => {
            return Err(ApiError::new(
                ProblemKind::NodeUnreachable,
                format!(
                    "{}{} did not answer the health check with a 2xx: {why}",
                    node.base(),
                    node.health_check
                ),
            ));
        }
    };
    node.health
        .get_mut()
        .unwrap_or_else(|e| e.into_inner())
        .last
        .push_back(HealthResult {
            at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            ok: true,
            detail,
        });
    let node = Arc::new(node);
    {
        let mut inner = nodes.lock();
        check_groups(&inner, &node.services)?;
        for s in &node.services {
            inner.topics.insert(s.topic.clone());
        }
        inner.nodes.insert(node.id.clone(), node.clone());
    }
    tracing::info!(node = %node.id, at = %node.base(), services = node.services.len(), "node registered: ok");
    nodes.bump();
    tokio::spawn(health_loop(nodes.clone(), node.clone()));
    let mut res = json_response(StatusCode::CREATED, &json!({"id": node.id, "status": "ok"}));
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/_nodes/{}", node.id)).expect("a uuid is header-safe"),
    );
    Ok(res)
}

/// One exclusion group per topic: another node's service of the same topic in another group
/// is a conflict.
fn check_groups(inner: &Inner, services: &[Service]) -> Result<(), ApiError> {
    for s in services {
        for other in inner.nodes.values() {
            if let Some(o) = other.service(&s.topic) {
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
    let node = server
        .nodes
        .lock()
        .nodes
        .remove(&id)
        .ok_or_else(|| node_not_found(&id))?;
    node.stop.cancel();
    server.nodes.bump();
    tracing::info!(node = %id, "node unregistered");
    Ok(json_response(StatusCode::OK, &json!({"status": "ok"})))
}

/// `POST /_nodes/{node}/runs/{id}/events`: a node reports progress of a run it holds.
pub(crate) async fn progress(
    State(server): State<Server>,
    Path((node, run)): Path<(String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let node = find(&server, &node)?;
    let value = read_args(&server, &parts.headers, Body::new(body)).await?;
    let held = run.parse::<RunId>().ok().and_then(|id| {
        node.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    });
    let Some(held) = held else {
        return Err(ApiError::new(
            ProblemKind::RunNotFound,
            format!("node {} holds no run {run:?}", node.id),
        ));
    };
    if !held.emit(value) {
        let state = held.status().0;
        return Err(ApiError::new(
            ProblemKind::RunEnded,
            format!("run {run} is stopping or ended; the event was dropped"),
        )
        .with("state", state.as_str()));
    }
    Ok(json_response(
        StatusCode::ACCEPTED,
        &json!({"status": "ok"}),
    ))
}
