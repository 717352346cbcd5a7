//! The WebSocket transport (spec §28): one socket per client, shared by every submit,
//! follow, cancel, exists, wait and subscription, correlated by `uid`.
//!
//! A request goes out as a packet and comes back as an [`Answer`], which callers read
//! through [`Response`](crate::client::Response) exactly as an HTTP answer: an event
//! stream's packets come out as batches of events that `follow.rs` takes as they are (no
//! SSE text in between). The socket is opened on first use and again on the first use
//! after it was lost; what was in flight then fails as a transport error, which a follow
//! resumes from its cursor and a subscription from its offset (both under the client's
//! `Reconnect` policy).
//!
//! The same code runs natively (tokio-tungstenite) and in a browser (the browser's
//! `WebSocket` through gloo-net): only opening a socket differs (`platform` below). A
//! browser cannot set headers on a WebSocket, so there the token goes in a first `AUTH`
//! packet (§28.4), answered before any other packet is sent.
//!
//! Memory is bounded on this side too: each request or subscription has a small queue of
//! packets; one whose reader falls behind is stopped (a `STOP`, or an `UNSUB`) and fails, so
//! its follow resumes from its cursor once read again — it never holds the socket up for the
//! others, nor buffers without bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{Sink, SinkExt, Stream, StreamExt};
#[cfg(target_arch = "wasm32")]
use longrun_proto::Problem;
use longrun_proto::RawEvent;
use longrun_proto::header as h;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use crate::{Error, Result, rt};

/// Packets queued for one request or subscription before its reader counts as behind.
const QUEUE: usize = 64;

/// A reply packet (spec §28.3) or a publication.
#[derive(Deserialize)]
pub(crate) struct Reply {
    uid: Option<serde_json::Value>,
    #[serde(default)]
    pub r: String,
    pub c: Option<u16>,
    #[serde(default)]
    pub h: HashMap<String, String>,
    pub d: Option<Box<RawValue>>,
    #[serde(default)]
    pub more: bool,
    #[serde(default)]
    pub stopped: bool,
}

enum Cmd {
    /// Send `text` (a packet with `uid`) and route every reply of `uid` to `to`.
    Open {
        uid: u64,
        text: String,
        to: mpsc::Sender<Reply>,
        subscription: bool,
    },
    /// Stop routing `uid` and tell the server (a `STOP`, or the `UNSUB` given).
    Close { uid: u64, unsub: Option<String> },
}

/// One open socket.
#[derive(Clone)]
struct Link {
    tx: mpsc::UnboundedSender<Cmd>,
}

/// The client's socket: opened on first use, again after it is lost.
pub(crate) struct Socket {
    url: Url,
    #[cfg(unix)]
    unix: Option<std::path::PathBuf>,
    /// Sent with the upgrade (natively) or in a first `AUTH` packet (in a browser).
    token: Option<HeaderValue>,
    /// Sent in every packet: the client's own headers.
    packet_headers: Vec<(String, String)>,
    base: Url,
    link: futures::lock::Mutex<Option<Link>>,
    uids: Arc<AtomicU64>,
}

impl Socket {
    pub fn new(
        base: &Url,
        headers: &HeaderMap,
        #[cfg(unix)] unix: Option<std::path::PathBuf>,
    ) -> Self {
        let mut url = base.join("_ws").expect("a base URL joins a relative path");
        let scheme = if base.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        if base.scheme() == crate::client::UNIX {
            url = Url::parse("ws://localhost/_ws").expect("a valid URL");
        } else {
            url.set_scheme(scheme)
                .expect("ws and wss are valid schemes");
        }
        let mut token = None;
        let mut packet_headers = Vec::new();
        for (name, value) in headers {
            if *name == reqwest::header::AUTHORIZATION {
                token = Some(value.clone());
            } else if let Ok(v) = value.to_str() {
                packet_headers.push((name.as_str().to_owned(), v.to_owned()));
            }
        }
        Socket {
            url,
            #[cfg(unix)]
            unix,
            token,
            packet_headers,
            base: base.clone(),
            link: futures::lock::Mutex::new(None),
            uids: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The open link, opening the socket if it is not (within `limit`).
    async fn link(&self, limit: Duration) -> Result<Link> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_ref().filter(|l| !l.tx.is_closed()) {
            return Ok(l.clone());
        }
        let opened = rt::timeout(limit, Box::pin(self.open()))
            .await
            .unwrap_or_else(|| {
                Err(Error::Timeout {
                    after: limit,
                    what: "opening the WebSocket".into(),
                })
            })?;
        *link = Some(opened.clone());
        Ok(opened)
    }

    async fn open(&self) -> Result<Link> {
        let (tx, rx) = mpsc::unbounded();
        let link = Link { tx };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let (sink, incoming) = platform::connect(
                &self.url,
                self.token.as_ref(),
                #[cfg(unix)]
                self.unix.as_deref(),
            )
            .await?;
            tokio::spawn(run(sink, incoming, rx, self.uids.clone()));
        }
        #[cfg(target_arch = "wasm32")]
        {
            let (sink, incoming) = platform::connect(&self.url)?;
            wasm_bindgen_futures::spawn_local(run(sink, incoming, rx, self.uids.clone()));
            // The token first, answered before anything else is sent (spec §28.4).
            if let Some(token) = &self.token {
                self.authenticate(&link, token).await?;
            }
        }
        Ok(link)
    }

    /// Send the token in an `AUTH` packet and wait for its answer.
    #[cfg(target_arch = "wasm32")]
    async fn authenticate(&self, link: &Link, token: &HeaderValue) -> Result<()> {
        let token = token
            .to_str()
            .ok()
            .and_then(|t| t.strip_prefix("Bearer "))
            .unwrap_or_default();
        let packet = |uid: u64| {
            serde_json::json!({"uid": uid, "m": "AUTH", "d": {"token": token}}).to_string()
        };
        let (mut from, mut guard) = self.send_on(link, packet, false)?;
        let reply = from.next().await.ok_or_else(lost)?;
        guard.done = true;
        match reply.c {
            Some(200) => Ok(()),
            status => {
                let problem = reply
                    .d
                    .as_ref()
                    .and_then(|d| serde_json::from_str::<Problem>(d.get()).ok());
                Err(Error::from_status(
                    status.unwrap_or(500),
                    problem,
                    "opening the WebSocket",
                ))
            }
        }
    }

    /// Send one packet and return the receiver of its replies, with the guard that stops it.
    pub async fn open_packet(
        &self,
        make: impl FnOnce(u64) -> String,
        subscription: bool,
        limit: Duration,
    ) -> Result<(mpsc::Receiver<Reply>, Guard)> {
        let link = self.link(limit).await?;
        self.send_on(&link, make, subscription)
    }

    fn send_on(
        &self,
        link: &Link,
        make: impl FnOnce(u64) -> String,
        subscription: bool,
    ) -> Result<(mpsc::Receiver<Reply>, Guard)> {
        let uid = self.uids.fetch_add(1, Ordering::Relaxed);
        // One slot per sender comes on top of the buffer: `QUEUE` packets in all.
        let (to, from) = mpsc::channel(QUEUE - 1);
        link.tx
            .unbounded_send(Cmd::Open {
                uid,
                text: make(uid),
                to,
                subscription,
            })
            .map_err(|_| lost())?;
        let guard = Guard {
            link: link.clone(),
            uid,
            done: false,
            unsub: None,
        };
        Ok((from, guard))
    }

    /// Serve one HTTP request over the socket: its first reply (and, for an event stream,
    /// the packets after it) as an [`Answer`].
    pub async fn exchange(&self, req: reqwest::Request, limit: Duration) -> Result<Answer> {
        let u = req.url();
        let r = match u.as_str().strip_prefix(self.base.as_str()) {
            Some(rest) => format!("/{rest}"),
            // A unix base's requests go to http://localhost/… (`Inner::wire`).
            None => match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_owned(),
            },
        };
        let mut headers = serde_json::Map::new();
        for (name, value) in &self.packet_headers {
            headers.insert(name.clone(), value.clone().into());
        }
        for (name, value) in req.headers() {
            if let Ok(v) = value.to_str() {
                headers.insert(name.as_str().to_owned(), v.into());
            }
        }
        // The body as given, never re-encoded (arguments may hold numbers a `Value` rounds).
        let d = match req
            .body()
            .and_then(|b| b.as_bytes())
            .filter(|b| !b.is_empty())
        {
            None => String::new(),
            Some(b) => {
                let d = serde_json::from_slice::<&RawValue>(b).map_err(|e| {
                    Error::invalid(format!("a WebSocket request body must be JSON: {e}"))
                })?;
                format!(r#","d":{}"#, d.get())
            }
        };
        let m = req.method().as_str().to_owned();
        let head = format!(
            r#""m":{},"r":{},"h":{}{d}}}"#,
            serde_json::Value::from(m.as_str()),
            serde_json::Value::from(r.as_str()),
            serde_json::Value::Object(headers),
        );
        let packet = |uid: u64| format!(r#"{{"uid":{uid},{head}"#);
        let (mut from, mut guard) = self.open_packet(packet, false, limit).await?;
        let first = match rt::timeout(limit, from.next()).await {
            Some(Some(first)) => first,
            Some(None) => return Err(lost()),
            None => {
                return Err(Error::Timeout {
                    after: limit,
                    what: format!("{m} {r} over the WebSocket"),
                });
            }
        };
        let status = StatusCode::from_u16(first.c.unwrap_or(500))
            .map_err(|_| Error::Protocol(format!("a WebSocket reply's status {:?}", first.c)))?;
        let mut head = HeaderMap::new();
        for (name, value) in &first.h {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                head.insert(name, value);
            }
        }
        let is_sse = first
            .h
            .get("content-type")
            .is_some_and(|ct| ct.starts_with(h::EVENT_STREAM));
        let body = if is_sse {
            let events = events_of(&first)?;
            if !first.more {
                guard.done = true;
            }
            Body::Events(Packets {
                first: Some(events),
                from,
                guard,
            })
        } else {
            guard.done = true;
            let text = first.d.as_ref().map_or("null", |d| d.get());
            let text_body = first
                .h
                .get("content-type")
                .is_some_and(|ct| ct.starts_with("text/"));
            Body::Full(match serde_json::from_str::<String>(text) {
                Ok(s) if text_body => Bytes::from(s),
                _ if text == "null" => Bytes::new(),
                _ => Bytes::from(text.to_owned()),
            })
        };
        Ok(Answer {
            status,
            headers: head,
            body,
        })
    }
}

/// An answer over the socket, read as [`Response`](crate::client::Response).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Body,
}

pub(crate) enum Body {
    /// A reply's whole body (`d`, as the bytes HTTP would have sent).
    Full(Bytes),
    /// An event stream's packets.
    Events(Packets),
}

/// The packets of an event stream after its first.
pub(crate) struct Packets {
    first: Option<Vec<RawEvent>>,
    from: mpsc::Receiver<Reply>,
    guard: Guard,
}

impl Packets {
    /// The next packet's events; `None` after the last packet; an error when the socket
    /// closed or the server stopped the stream before its last packet.
    pub async fn next(&mut self) -> Option<Result<Vec<RawEvent>>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
        }
        if self.guard.done {
            return None;
        }
        match self.from.next().await {
            Some(p) if !p.stopped => {
                if !p.more {
                    self.guard.done = true;
                }
                Some(events_of(&p))
            }
            _ => {
                // Nothing more comes on this uid: the guard has nothing to stop.
                self.guard.done = true;
                Some(Err(Error::Transport {
                    message: "the WebSocket closed in the middle of the stream".into(),
                }))
            }
        }
    }
}

/// An event-stream packet's events.
fn events_of(p: &Reply) -> Result<Vec<RawEvent>> {
    let Some(d) = &p.d else {
        return Ok(Vec::new());
    };
    serde_json::from_str(d.get())
        .map_err(|e| Error::Protocol(format!("a stream packet holds no events: {e}")))
}

/// Ends a request or subscription's routing when dropped before its last packet.
pub(crate) struct Guard {
    link: Link,
    uid: u64,
    pub done: bool,
    pub unsub: Option<String>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.link.tx.unbounded_send(Cmd::Close {
                uid: self.uid,
                unsub: self.unsub.take(),
            });
        }
    }
}

fn lost() -> Error {
    Error::Transport {
        message: "the WebSocket closed".into(),
    }
}

/// Opening a socket: the one part that differs between native and browser builds. Each gives
/// a sink of text frames and the text frames that arrive, ending when the socket does.
#[cfg(not(target_arch = "wasm32"))]
mod platform {
    use std::pin::Pin;

    use futures::future::ready;
    use futures::{Sink, SinkExt, Stream, StreamExt};
    use reqwest::header::HeaderValue;
    use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
    use url::Url;

    use crate::{Error, Result};
    use longrun_proto::Problem;

    pub type Frames = Pin<Box<dyn Sink<String, Error = ()> + Send>>;
    pub type Incoming = Pin<Box<dyn Stream<Item = tungstenite::Utf8Bytes> + Send>>;

    pub async fn connect(
        url: &Url,
        token: Option<&HeaderValue>,
        #[cfg(unix)] unix: Option<&std::path::Path>,
    ) -> Result<(Frames, Incoming)> {
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::invalid(format!("cannot open a WebSocket to {url}: {e}")))?;
        if let Some(token) = token {
            req.headers_mut()
                .insert(reqwest::header::AUTHORIZATION, token.clone());
        }
        #[cfg(unix)]
        if let Some(path) = unix {
            let io = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| Error::Transport {
                    message: format!("cannot connect to {}: {e}", path.display()),
                })?;
            let (ws, _) = tokio_tungstenite::client_async(req, io)
                .await
                .map_err(upgrade_error)?;
            return Ok(split(ws));
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(upgrade_error)?;
        Ok(split(ws))
    }

    fn split<S>(ws: tokio_tungstenite::WebSocketStream<S>) -> (Frames, Incoming)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let frames = sink
            .with(|text: String| ready(Ok::<_, tungstenite::Error>(Message::Text(text.into()))))
            .sink_map_err(|_| ());
        let incoming = stream
            .take_while(|m| ready(matches!(m, Ok(m) if !m.is_close())))
            // Pings are answered by tungstenite; binary frames are not the protocol's.
            .filter_map(|m| {
                ready(match m {
                    Ok(Message::Text(text)) => Some(text),
                    _ => None,
                })
            });
        (Box::pin(frames), Box::pin(incoming))
    }

    fn upgrade_error(e: tungstenite::Error) -> Error {
        match e {
            tungstenite::Error::Http(res) => {
                let status = res.status().as_u16();
                let problem = res
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<Problem>(b).ok());
                Error::from_status(status, problem, "opening the WebSocket")
            }
            other => Error::Transport {
                message: format!("cannot open the WebSocket: {other}"),
            },
        }
    }
}

/// The browser's `WebSocket`. It has no backpressure of its own (every message arrives as an
/// event): the socket's task reads each at once into its route's bounded queue, so what is
/// held stays bounded by the routes' queues.
#[cfg(target_arch = "wasm32")]
mod platform {
    use std::pin::Pin;

    use futures::future::ready;
    use futures::{Sink, SinkExt, Stream, StreamExt};
    use gloo_net::websocket::{Message, WebSocketError, futures::WebSocket};
    use url::Url;

    use crate::{Error, Result};

    pub type Frames = Pin<Box<dyn Sink<String, Error = ()>>>;
    pub type Incoming = Pin<Box<dyn Stream<Item = String>>>;

    /// The socket, connecting: packets sent meanwhile wait for it to open, and a socket that
    /// cannot open ends its incoming frames (what was sent then fails as a transport error).
    pub fn connect(url: &Url) -> Result<(Frames, Incoming)> {
        let ws = WebSocket::open(url.as_str()).map_err(|e| Error::Transport {
            message: format!("cannot open the WebSocket to {url}: {e}"),
        })?;
        let (sink, stream) = ws.split();
        let frames = sink
            .with(|text: String| ready(Ok::<_, WebSocketError>(Message::Text(text))))
            .sink_map_err(|_| ());
        let incoming = stream.take_while(|m| ready(m.is_ok())).filter_map(|m| {
            ready(match m {
                Ok(Message::Text(text)) => Some(text),
                _ => None,
            })
        });
        Ok((Box::pin(frames), Box::pin(incoming)))
    }
}

/// The socket's task: writes what callers send, routes what arrives by uid.
async fn run<T, Si, St>(
    mut frames: Si,
    incoming: St,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    uids: Arc<AtomicU64>,
) where
    T: std::ops::Deref<Target = str>,
    Si: Sink<String> + Unpin,
    St: Stream<Item = T> + Unpin,
{
    struct Route {
        to: mpsc::Sender<Reply>,
        subscription: bool,
    }
    enum Ev<T> {
        Cmd(Cmd),
        Frame(T),
        /// The client is gone, or the socket is.
        End,
    }
    let mut routes: HashMap<u64, Route> = HashMap::new();
    let stop = |uid: u64, unsub: Option<&str>| {
        let own = uids.fetch_add(1, Ordering::Relaxed);
        match unsub {
            Some(topic) => {
                serde_json::json!({"uid": own, "m": "UNSUB", "r": topic, "d": uid}).to_string()
            }
            None => serde_json::json!({"uid": own, "m": "STOP", "d": uid}).to_string(),
        }
    };
    let end = || futures::stream::once(futures::future::ready(Ev::End));
    let mut events = futures::stream::select(
        cmds.map(Ev::Cmd).chain(end()),
        incoming.map(Ev::Frame).chain(end()),
    );
    while let Some(ev) = events.next().await {
        let text = match ev {
            Ev::End => break,
            Ev::Cmd(Cmd::Open {
                uid,
                text,
                to,
                subscription,
            }) => {
                routes.insert(uid, Route { to, subscription });
                if frames.send(text).await.is_err() {
                    break;
                }
                continue;
            }
            Ev::Cmd(Cmd::Close { uid, unsub }) => {
                if routes.remove(&uid).is_some()
                    && frames.send(stop(uid, unsub.as_deref())).await.is_err()
                {
                    break;
                }
                continue;
            }
            Ev::Frame(text) => text,
        };
        let Ok(reply) = serde_json::from_str::<Reply>(&text) else {
            continue;
        };
        let Some(uid) = reply.uid.as_ref().and_then(serde_json::Value::as_u64) else {
            continue;
        };
        let Some(route) = routes.get_mut(&uid) else {
            continue;
        };
        // A subscription's replies (its ack, its publications) never end it.
        let last = !route.subscription && !reply.more;
        let subscription = route.subscription;
        let behind = match route.to.try_send(reply) {
            Ok(()) => {
                if last {
                    routes.remove(&uid);
                }
                None
            }
            // Its reader is behind (or gone): stop it; it resumes by itself.
            Err(e) => {
                routes.remove(&uid);
                let full = e.is_full();
                let reply = e.into_inner();
                (!last || full).then(|| stop(uid, subscription.then_some(reply.r.as_str())))
            }
        };
        if let Some(text) = behind
            && frames.send(text).await.is_err()
        {
            break;
        }
    }
    // Every route's sender goes with `routes`: their readers see the end and fail (a follow
    // or subscription then resumes on a new socket). The commands go before the close is
    // awaited, so the link reads as closed at once and the next call opens a new socket.
    drop(routes);
    drop(events);
    let _ = frames.close().await;
}
