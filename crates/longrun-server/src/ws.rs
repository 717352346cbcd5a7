//! `GET /_ws` (spec §28): the whole API over one WebSocket, plus pubsub.
//!
//! A request packet becomes an `http::Request` served by the very router HTTP uses, so no
//! route is written twice and a route added later answers here with no extra code. Its
//! response becomes one reply packet, or — for an event stream — one packet per batch of
//! events. Packets are correlated by `uid` alone.
//!
//! Everything towards the client goes through one queue per connection, bounded in bytes
//! ([`Outbound`]): replies and stream packets wait for room (a stream's source is its run's
//! log, so waiting loses nothing and holds nothing); publications never wait — a subscriber
//! that has no room is closed with 4008 and resumes from its offset. A connection that
//! accepts no byte for the stall timeout, or answers no ping, is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use futures::{SinkExt, StreamExt};
use longrun_proto::ProblemKind;
use longrun_proto::header as h;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::Server;
use crate::auth::{Caller, Scope};
use crate::http::ApiError;
use crate::topics::{self, Namespace, Subscription};

/// Marks a request that came as a packet, so a follow answers in packets' form (spec §28.3).
#[derive(Clone, Copy)]
pub(crate) struct Packets;

/// The path of the socket; a packet may not ask for it.
pub const PATH: &str = "/_ws";

/// Close codes (RFC 6455 §7.4 and the private range).
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const UNSUPPORTED: u16 = 1003;
    pub const TOO_BIG: u16 = 1009;
    /// The connection fell behind its publications (Centrifugo's "slow" is 3008; 4008 here).
    pub const SLOW: u16 = 4008;
}

/// The sockets of a server: stopped together on shutdown.
#[derive(Default)]
pub(crate) struct Sockets {
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Sockets {
    /// Close every socket (1001) and wait until each has ended.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// What `/_ws` needs: the server and the router every packet is served by.
#[derive(Clone)]
pub(crate) struct WsState {
    pub server: Server,
    pub api: Router,
}

/// `GET /_ws`: check the token if the upgrade carries one, then upgrade.
pub(crate) async fn upgrade(
    State(state): State<WsState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    req: Request<Body>,
) -> Response {
    let (mut parts, _) = req.into_parts();
    let token = parts.headers.get(header::AUTHORIZATION).cloned();
    if token.is_some() {
        if let Err(e) = Caller::from_request_parts(&mut parts, &state.server).await {
            return e.into_response();
        }
    }
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => {
            let why = rejection.body_text();
            return ApiError::new(
                ProblemKind::UpgradeRequired,
                format!(
                    "GET /_ws is a WebSocket (spec §28): upgrade with Connection: Upgrade, \
                     Upgrade: websocket ({why})"
                ),
            )
            .header(header::UPGRADE, HeaderValue::from_static("websocket"))
            .into_response();
        }
    };
    let config = &state.server.config;
    let ws = ws
        .max_message_size(config.ws_max_message)
        .max_frame_size(config.ws_max_message)
        // tungstenite allocates its read buffer whole, per connection: small, so an idle
        // socket stays light; it grows for a big message.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(16 * 1024);
    let guard = state.server.sockets.tasks.token();
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    ws.on_upgrade(move |socket| async move {
        let _guard = guard;
        serve(socket, state, token, peer).await;
    })
}

/// One queued packet and the room it holds in the queue until written.
struct Queued {
    message: Message,
    _room: Option<OwnedSemaphorePermit>,
}

/// The queue towards one connection, bounded in bytes.
pub(crate) struct Outbound {
    tx: mpsc::UnboundedSender<Queued>,
    room: Arc<Semaphore>,
    capacity: usize,
    closing: CancellationToken,
    close: Mutex<Option<(u16, &'static str)>>,
}

impl Outbound {
    fn new(capacity: usize) -> (Arc<Self>, mpsc::UnboundedReceiver<Queued>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = capacity.clamp(1, u32::MAX as usize);
        let out = Outbound {
            tx,
            room: Arc::new(Semaphore::new(capacity)),
            capacity,
            closing: CancellationToken::new(),
            close: Mutex::new(None),
        };
        (Arc::new(out), rx)
    }

    /// The room a packet takes: its size, at most the whole queue (a big one goes alone).
    fn room_for(&self, text: &str) -> u32 {
        text.len().clamp(1, self.capacity) as u32
    }

    /// Queue `text`, waiting for room; `false` once the connection is closing.
    async fn send(&self, text: String) -> bool {
        let n = self.room_for(&text);
        let room = tokio::select! {
            room = self.room.clone().acquire_many_owned(n) => room.ok(),
            _ = self.closing.cancelled() => None,
        };
        let Some(room) = room else { return false };
        self.tx
            .send(Queued {
                message: Message::Text(text.into()),
                _room: Some(room),
            })
            .is_ok()
    }

    /// Close the connection with `code` (the first reason wins), dropping what is queued.
    fn close(&self, code: u16, reason: &'static str) {
        let mut close = self.close.lock().unwrap_or_else(|e| e.into_inner());
        close.get_or_insert((code, reason));
        self.closing.cancel();
    }
}

impl topics::Sink for Outbound {
    fn offer(&self, packet: String) -> bool {
        let n = self.room_for(&packet);
        match self.room.clone().try_acquire_many_owned(n) {
            Ok(room) => self
                .tx
                .send(Queued {
                    message: Message::Text(packet.into()),
                    _room: Some(room),
                })
                .is_ok(),
            Err(_) => {
                self.close(
                    close::SLOW,
                    "slow: publications outran this connection; resubscribe with since",
                );
                false
            }
        }
    }
}

/// One connection's state.
struct Conn {
    state: WsState,
    out: Arc<Outbound>,
    /// The `Authorization` value every request is sent with: the upgrade's, or an `AUTH`
    /// packet's.
    token: Mutex<Option<HeaderValue>>,
    peer: Option<SocketAddr>,
    /// Requests in flight by uid (canonical JSON text): what a `STOP` ends.
    inflight: Mutex<HashMap<String, Inflight>>,
    /// Subscriptions by the topic (or pattern) they name, each with its SUB's uid.
    subs: Mutex<HashMap<String, Vec<(String, Subscription)>>>,
}

struct Inflight {
    task: tokio::task::AbortHandle,
    m: String,
    r: String,
    /// Whether the reply has begun (a stream's first packet is out).
    started: Arc<std::sync::atomic::AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn serve(
    socket: WebSocket,
    state: WsState,
    token: Option<HeaderValue>,
    peer: Option<SocketAddr>,
) {
    let config = state.server.config.clone();
    let (out, rx) = Outbound::new(config.ws_queue_bytes);
    let shutdown = state.server.sockets.shutdown.clone();
    let conn = Arc::new(Conn {
        state,
        out: out.clone(),
        token: Mutex::new(token),
        peer,
        inflight: Mutex::default(),
        subs: Mutex::default(),
    });
    let (sink, mut stream) = socket.split();
    let seen = Arc::new(Mutex::new(Instant::now()));
    let writer = write(sink, rx, out.clone(), seen.clone(), shutdown, &config);
    let reader = async {
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                _ = out.closing.cancelled() => break,
            };
            *lock(&seen) = Instant::now();
            match msg {
                Some(Ok(Message::Text(text))) => conn.packet(text.as_str()).await,
                Some(Ok(Message::Binary(_))) => {
                    out.close(close::UNSUPPORTED, "send packets as text frames of JSON");
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    let too_big = e
                        .into_inner()
                        .downcast::<tungstenite::Error>()
                        .is_ok_and(|e| matches!(*e, tungstenite::Error::Capacity(_)));
                    if too_big {
                        out.close(close::TOO_BIG, "a packet is larger than the server takes");
                    }
                    break;
                }
            }
        }
        // The writer ends too (after sending a close frame, if one was asked for).
        out.closing.cancel();
    };
    tokio::join!(reader, writer);
    for (_, inflight) in lock(&conn.inflight).drain() {
        inflight.task.abort();
    }
    let topics = &conn.state.server.topics;
    for (_, subs) in lock(&conn.subs).drain() {
        for (_, sub) in subs {
            topics.unsubscribe(&sub);
        }
    }
}

/// Write queued packets (several per flush when they pile up), pings, and the close frame.
async fn write(
    mut sink: futures::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    out: Arc<Outbound>,
    seen: Arc<Mutex<Instant>>,
    shutdown: CancellationToken,
    config: &crate::Config,
) {
    let stall = config.stall_timeout;
    let mut ping = tokio::time::interval(config.ws_ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut pinged: Option<Instant> = None;
    let mut held = Vec::new();
    let close = loop {
        tokio::select! {
            biased;
            _ = out.closing.cancelled() => break *lock(&out.close),
            _ = shutdown.cancelled() => break Some((close::GOING_AWAY, "the server is shutting down")),
            queued = rx.recv() => {
                let Some(first) = queued else { break None };
                let mut bytes = 0;
                let mut next = Some(first);
                // Up to ~256 KiB per flush: one syscall for a burst of small packets.
                while let Some(q) = next.take() {
                    if let Message::Text(t) = &q.message {
                        bytes += t.len();
                    }
                    let fed = tokio::time::timeout(stall, sink.feed(q.message)).await;
                    if !matches!(fed, Ok(Ok(()))) {
                        out.closing.cancel();
                        return;
                    }
                    held.push(q._room);
                    if bytes < 256 * 1024 {
                        next = rx.try_recv().ok();
                    }
                }
                if !matches!(tokio::time::timeout(stall, sink.flush()).await, Ok(Ok(()))) {
                    out.closing.cancel();
                    return;
                }
                held.clear();
            }
            _ = ping.tick() => {
                // Nothing heard since the last ping, not even its pong: the peer is gone.
                if pinged.is_some_and(|at| *lock(&seen) < at) {
                    out.closing.cancel();
                    return;
                }
                pinged = Some(Instant::now());
                let sent = tokio::time::timeout(stall, sink.send(Message::Ping(Default::default()))).await;
                if !matches!(sent, Ok(Ok(()))) {
                    out.closing.cancel();
                    return;
                }
            }
        }
    };
    out.closing.cancel();
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(stall, sink.send(Message::Close(Some(frame)))).await;
    } else {
        let _ = tokio::time::timeout(stall, sink.close()).await;
    }
}

/// A packet from the client (spec §28.2).
#[derive(Deserialize)]
struct Packet<'a> {
    #[serde(borrow)]
    uid: Option<&'a RawValue>,
    m: Option<String>,
    r: Option<String>,
    #[serde(default)]
    h: HashMap<String, String>,
    #[serde(borrow)]
    d: Option<&'a RawValue>,
}

/// A reply packet: `{uid, m, r, c, h?, d, more?}`, `d` as JSON text.
fn reply(uid: &str, m: &str, r: &str, c: u16, h: Option<&str>, d: &str, more: bool) -> String {
    let m = serde_json::to_string(m).expect("strings serialize");
    let r = serde_json::to_string(r).expect("strings serialize");
    let h = h.map(|h| format!(r#","h":{h}"#)).unwrap_or_default();
    let more = if more { r#","more":true"# } else { "" };
    format!(r#"{{"uid":{uid},"m":{m},"r":{r},"c":{c}{h},"d":{d}{more}}}"#)
}

fn problem_reply(uid: &str, m: &str, r: &str, e: ApiError) -> String {
    let (status, body) = e.status_and_body();
    reply(uid, m, r, status, None, &body, false)
}

/// A uid as canonical JSON text, or `None` when it is neither a string nor an integer.
fn canonical_uid(uid: &RawValue) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(uid.get()).ok()? {
        v @ serde_json::Value::String(_) => Some(v.to_string()),
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemKind::InvalidPacket, detail)
}

impl Conn {
    async fn packet(self: &Arc<Self>, text: &str) {
        let packet: Packet<'_> = match serde_json::from_str(text) {
            Ok(p) => p,
            Err(e) => {
                let e = invalid(format!(
                    "a packet is one JSON object {{uid, m, r, h?, d?}}: {e}"
                ));
                self.out.send(problem_reply("null", "", "", e)).await;
                return;
            }
        };
        let m = packet.m.clone().unwrap_or_default();
        let r = packet.r.clone().unwrap_or_default();
        let Some(uid) = packet.uid.and_then(canonical_uid) else {
            let e = invalid("every packet needs a uid: a string or an integer");
            self.out.send(problem_reply("null", &m, &r, e)).await;
            return;
        };
        let answer = match m.as_str() {
            "SUB" => self.subscribe(&uid, &r, packet.d).await,
            "UNSUB" => self.unsubscribe(&uid, &r, packet.d).await,
            "PUB" => self.publish(&uid, &r, packet.d).await,
            "AUTH" => self.auth(&uid, packet.d).await,
            "STOP" => self.stop(&uid, packet.d).await,
            "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => {
                self.request(uid, packet);
                return;
            }
            _ => Err(invalid(format!(
                "m is an HTTP method or SUB, UNSUB, PUB, AUTH, STOP; not {m:?}"
            ))),
        };
        let text = match answer {
            Ok(Some(text)) => text,
            Ok(None) => return,
            Err(e) => problem_reply(&uid, &m, &r, e),
        };
        self.out.send(text).await;
    }

    /// The caller of topic packets: by the connection's token.
    async fn caller(&self) -> Result<Caller, ApiError> {
        let mut req = Request::new(());
        if let Some(token) = lock(&self.token).clone() {
            req.headers_mut().insert(header::AUTHORIZATION, token);
        }
        let (mut parts, ()) = req.into_parts();
        Caller::from_request_parts(&mut parts, &self.state.server).await
    }

    /// The namespace a caller's topic lives in: its tenant's; an admin's run feeds are the
    /// server's (every tenant's runs).
    fn namespace(caller: &Caller, topic: &str) -> Namespace {
        if topic.starts_with(topics::RUNS_FEED) && caller.require_admin().is_ok() {
            return None;
        }
        caller.owner().map(Arc::from)
    }

    async fn subscribe(
        self: &Arc<Self>,
        uid: &str,
        topic: &str,
        d: Option<&RawValue>,
    ) -> Result<Option<String>, ApiError> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Sub {
            since: Option<u64>,
        }
        let since = match d.map(|d| serde_json::from_str::<Option<Sub>>(d.get())) {
            None => None,
            Some(Ok(sub)) => sub.and_then(|s| s.since),
            Some(Err(e)) => return Err(invalid(format!("SUB's d is {{since?: offset}}: {e}"))),
        };
        let caller = self.caller().await?;
        if topic.starts_with(topics::RUNS_FEED) {
            caller.require(Scope::Read, "")?;
        }
        // Packets are read one at a time, so no other SUB lands between this count and the
        // insert below.
        let held: usize = lock(&self.subs).values().map(Vec::len).sum();
        if held >= self.state.server.config.ws_max_subscriptions {
            return Err(ApiError::new(
                ProblemKind::TooManyInFlight,
                format!("this connection holds {held} subscriptions, as many as it may"),
            ));
        }
        let ns = Self::namespace(&caller, topic);
        let sink: Arc<dyn topics::Sink> = self.out.clone();
        let subscribed = self
            .state
            .server
            .topics
            .subscribe(
                &ns,
                topic,
                since,
                uid.to_owned(),
                sink,
                |next, recovered| {
                    let d = format!(r#"{{"offset":{next},"recovered":{recovered}}}"#);
                    reply(uid, "SUB", topic, 200, None, &d, false)
                },
            )
            .await;
        let entry = (uid.to_owned(), subscribed?);
        lock(&self.subs)
            .entry(topic.to_owned())
            .or_default()
            .push(entry);
        Ok(None)
    }

    /// `UNSUB` of a topic: every subscription of it on this connection, or with `d` the uid
    /// of one SUB, that one.
    async fn unsubscribe(
        &self,
        uid: &str,
        topic: &str,
        d: Option<&RawValue>,
    ) -> Result<Option<String>, ApiError> {
        let which =
            match d {
                None => None,
                Some(d) => Some(canonical_uid(d).ok_or_else(|| {
                    invalid("UNSUB's d, when given, is the uid of the SUB to end")
                })?),
            };
        let gone: Vec<Subscription> = {
            let mut subs = lock(&self.subs);
            let list = subs.get_mut(topic);
            let gone = match (list, &which) {
                (None, _) => Vec::new(),
                (Some(list), None) => std::mem::take(list),
                (Some(list), Some(w)) => {
                    let (gone, kept) = std::mem::take(list).into_iter().partition(|(u, _)| u == w);
                    *list = kept;
                    gone
                }
            };
            if subs.get(topic).is_some_and(Vec::is_empty) {
                subs.remove(topic);
            }
            gone.into_iter().map(|(_, s)| s).collect()
        };
        if gone.is_empty() {
            return Err(ApiError::new(
                ProblemKind::SubscriptionNotFound,
                format!("this connection has no such subscription to {topic:?}"),
            ));
        }
        for sub in &gone {
            // On Postgres, once every publication committed before this UNSUB reached it. A
            // store that cannot be read ends the subscription all the same.
            if let Err(e) = self.state.server.topics.settle(sub).await {
                tracing::debug!(error = ?e, "an unsubscribe could not wait for the store");
            }
            self.state.server.topics.unsubscribe(sub);
        }
        // Queued behind every publication offered to those subscriptions.
        Ok(Some(reply(uid, "UNSUB", topic, 200, None, "null", false)))
    }

    async fn publish(
        &self,
        uid: &str,
        topic: &str,
        d: Option<&RawValue>,
    ) -> Result<Option<String>, ApiError> {
        topics::check_publish(topic)?;
        let data = d.map_or_else(
            || RawValue::from_string("null".into()).expect("null is JSON"),
            |d| d.to_owned(),
        );
        let caller = self.caller().await?;
        let offset = self
            .state
            .server
            .topics
            .publish(&Self::namespace(&caller, topic), topic, data)
            .await?;
        let d = format!(r#"{{"offset":{offset}}}"#);
        Ok(Some(reply(uid, "PUB", topic, 202, None, &d, false)))
    }

    async fn auth(&self, uid: &str, d: Option<&RawValue>) -> Result<Option<String>, ApiError> {
        #[derive(Deserialize)]
        struct Auth {
            token: String,
        }
        let token = d
            .and_then(|d| serde_json::from_str::<Auth>(d.get()).ok())
            .ok_or_else(|| invalid("AUTH's d is {\"token\": \"<token>\"}"))?;
        let value = HeaderValue::from_str(&format!("Bearer {}", token.token))
            .map_err(|_| invalid("the token is not header text"))?;
        let previous = lock(&self.token).replace(value);
        if let Err(e) = self.caller().await {
            *lock(&self.token) = previous;
            return Err(e);
        }
        Ok(Some(reply(uid, "AUTH", "", 200, None, "null", false)))
    }

    /// `STOP` with `d` the uid of a request in flight: it ends with a last packet saying
    /// `stopped`, then the STOP is acknowledged.
    async fn stop(&self, uid: &str, d: Option<&RawValue>) -> Result<Option<String>, ApiError> {
        let target = d
            .and_then(canonical_uid)
            .ok_or_else(|| invalid("STOP's d is the uid of the request to stop"))?;
        let Some(inflight) = lock(&self.inflight).remove(&target) else {
            return Err(ApiError::new(
                ProblemKind::NotFound,
                format!("no request {target} is in flight on this connection"),
            ));
        };
        inflight.task.abort();
        let started = inflight.started.load(std::sync::atomic::Ordering::SeqCst);
        // 499, nginx's "client closed request", for one whose reply had not begun.
        let c = if started { 200 } else { 499 };
        let last = reply(&target, &inflight.m, &inflight.r, c, None, "null", false).replacen(
            r#","d":null"#,
            r#","d":null,"stopped":true"#,
            1,
        );
        self.out.send(last).await;
        Ok(Some(reply(uid, "STOP", "", 200, None, "null", false)))
    }

    /// Serve an HTTP request packet through the router, in its own task.
    fn request(self: &Arc<Self>, uid: String, packet: Packet<'_>) {
        let m = packet.m.unwrap_or_default();
        let r = packet.r.unwrap_or_default();
        let built = self.build(&m, &r, packet.h, packet.d);
        let mut inflight = lock(&self.inflight);
        let refused = if inflight.contains_key(&uid) {
            Some(ApiError::new(
                ProblemKind::UidInUse,
                format!("a request with uid {uid} is in flight on this connection"),
            ))
        } else if inflight.len() >= self.state.server.config.ws_max_requests {
            Some(ApiError::new(
                ProblemKind::TooManyInFlight,
                format!(
                    "this connection has {} requests in flight, as many as it may",
                    inflight.len()
                ),
            ))
        } else {
            None
        };
        let req = match (refused, built) {
            (Some(e), _) | (None, Err(e)) => {
                drop(inflight);
                let text = problem_reply(&uid, &m, &r, e);
                let out = self.out.clone();
                tokio::spawn(async move { out.send(text).await });
                return;
            }
            (None, Ok(req)) => req,
        };
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conn = self.clone();
        let (m2, r2, uid2, started2) = (m.clone(), r.clone(), uid.clone(), started.clone());
        let task = tokio::spawn(async move {
            conn.answer(&uid2, &m2, &r2, req, &started2).await;
            lock(&conn.inflight).remove(&uid2);
        });
        inflight.insert(
            uid,
            Inflight {
                task: task.abort_handle(),
                m,
                r,
                started,
            },
        );
    }

    fn build(
        &self,
        m: &str,
        r: &str,
        h: HashMap<String, String>,
        d: Option<&RawValue>,
    ) -> Result<Request<Body>, ApiError> {
        let uri: Uri = r
            .parse()
            .ok()
            .filter(|u: &Uri| u.scheme().is_none() && u.path().starts_with('/'))
            .ok_or_else(|| invalid(format!("r is a path and query starting with /, not {r:?}")))?;
        if uri.path() == PATH {
            return Err(invalid("a packet cannot open another WebSocket"));
        }
        let method = Method::from_bytes(m.as_bytes()).map_err(|_| invalid("bad method"))?;
        let body = match d {
            Some(d) if method != Method::GET && method != Method::HEAD => {
                Body::from(d.get().to_owned())
            }
            _ => Body::empty(),
        };
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .expect("valid parts");
        let headers = req.headers_mut();
        for (name, value) in h {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(format!("{name:?} is not a header name")))?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| invalid(format!("the value of {name} is not header text")))?;
            headers.append(name, value);
        }
        if d.is_some() && !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if !headers.contains_key(header::AUTHORIZATION) {
            if let Some(token) = lock(&self.token).clone() {
                headers.insert(header::AUTHORIZATION, token);
            }
        }
        if let Some(peer) = self.peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        Ok(req)
    }

    /// Send the router's answer to `req` as packets.
    async fn answer(
        &self,
        uid: &str,
        m: &str,
        r: &str,
        req: Request<Body>,
        started: &std::sync::atomic::AtomicBool,
    ) {
        let head = req.method() == Method::HEAD;
        if req.method() == Method::GET && crate::http::wants_event_stream(req.headers()) {
            self.follow(uid, m, r, req, started).await;
            return;
        }
        let res = match self.state.api.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let (parts, body) = res.into_parts();
        let c = parts.status.as_u16();
        let h = headers_json(&parts.headers);
        let ct = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if head || parts.status == StatusCode::NO_CONTENT {
            self.out
                .send(reply(uid, m, r, c, Some(&h), "null", false))
                .await;
            return;
        }
        if ct.starts_with(h::EVENT_STREAM) {
            // Only a follow streams events, and it was served by polls above.
            let e = ApiError::new(
                ProblemKind::NotRepresentable,
                "this answer is an event stream of a kind a packet does not carry",
            );
            self.out.send(problem_reply(uid, m, r, e)).await;
            return;
        }
        let json = ct.starts_with("application/json") || ct.contains("+json");
        if !json && !ct.starts_with("text/") && !ct.is_empty() {
            let e = ApiError::new(
                ProblemKind::NotRepresentable,
                format!("the answer is {ct}, which a packet cannot carry: read it over HTTP"),
            );
            self.out.send(problem_reply(uid, m, r, e)).await;
            return;
        }
        self.reply_with(uid, m, r, Response::from_parts(parts, body))
            .await;
    }

    /// A follow (a GET of a run asking for an event stream) as packets. It is served by the
    /// router like any request — the same route, checks and follower slots — marked with
    /// [`Packets`], so the follow's body is one JSON array of events per read of the run's
    /// log (its pre-encoded JSON, no SSE framing to undo); each becomes one packet. The stream
    /// holds the run like an SSE stream does, so a run dropped at its end is still read whole.
    async fn follow(
        &self,
        uid: &str,
        m: &str,
        r: &str,
        mut req: Request<Body>,
        started: &std::sync::atomic::AtomicBool,
    ) {
        req.extensions_mut().insert(Packets);
        let res = match self.state.api.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let is_stream = res
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(h::EVENT_STREAM.as_bytes()));
        if res.status() != StatusCode::OK || !is_stream {
            self.reply_with(uid, m, r, res).await;
            return;
        }
        let (parts, body) = res.into_parts();
        let mut head = Some(headers_json(&parts.headers));
        let mut body = body.into_data_stream();
        let mut ready = body.next().await;
        loop {
            let Some(Ok(chunk)) = ready.take() else {
                // The body ended (or broke: the server is stopping) after the last packet.
                let h = head.take();
                self.out
                    .send(reply(uid, m, r, 200, h.as_deref(), "[]", false))
                    .await;
                return;
            };
            // The follow ends right after its terminal chunk: if the end is already there,
            // this packet is the last.
            let next = futures::FutureExt::now_or_never(body.next());
            let last = matches!(next, Some(None));
            let d = std::str::from_utf8(&chunk).unwrap_or("[]");
            started.store(true, std::sync::atomic::Ordering::SeqCst);
            let text = reply(uid, m, r, 200, head.take().as_deref(), d, !last);
            if !self.out.send(text).await || last {
                return;
            }
            ready = match next {
                Some(item) => item,
                None => body.next().await,
            };
        }
    }

    /// Send a whole response as one reply packet: `d` the JSON body as it is, any other body
    /// as a string, `null` for none.
    async fn reply_with(&self, uid: &str, m: &str, r: &str, res: Response) {
        let (parts, body) = res.into_parts();
        let json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        let limit = self
            .state
            .server
            .config
            .ws_queue_bytes
            .max(16 * 1024 * 1024);
        let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
            let e = ApiError::new(
                ProblemKind::NotRepresentable,
                "the answer is larger than a packet may be: read it over HTTP",
            );
            self.out.send(problem_reply(uid, m, r, e)).await;
            return;
        };
        let d = if bytes.is_empty() {
            "null".to_owned()
        } else if json && serde_json::from_slice::<&RawValue>(&bytes).is_ok() {
            String::from_utf8(bytes.to_vec()).expect("JSON is UTF-8")
        } else {
            serde_json::to_string(&String::from_utf8_lossy(&bytes)).expect("strings serialize")
        };
        let h = headers_json(&parts.headers);
        let c = parts.status.as_u16();
        self.out
            .send(reply(uid, m, r, c, Some(&h), &d, false))
            .await;
    }
}

/// Response headers as a JSON object, without those of the HTTP framing.
fn headers_json(headers: &HeaderMap) -> String {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        if matches!(
            *name,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION | header::VARY
        ) || name.as_str().starts_with("access-control-")
        {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(serde_json::Value::String(s)) => {
                s.push_str(", ");
                s.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_owned(), value.into());
            }
        }
    }
    serde_json::Value::Object(map).to_string()
}
