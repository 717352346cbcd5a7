//! The WebSocket transport (spec §28): one socket per client, shared by every submit,
//! follow, cancel, exists, wait and subscription, correlated by `uid`.
//!
//! A request goes out as a packet and comes back as a `reqwest::Response`, so every caller
//! (and the resume logic of `follow.rs`) is the same as over HTTP: an event stream's packets
//! become the body of an SSE response. The socket is opened on first use and again on the
//! first use after it was lost; what was in flight then fails as a transport error, which a
//! follow resumes from its cursor and a subscription from its offset (both under the
//! client's `Reconnect` policy).
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
use futures::{SinkExt, StreamExt};
use longrun_proto::header as h;
use longrun_proto::{Problem, RawEvent};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
use url::Url;

use crate::{Error, Result, rt};

/// Packets queued for one request or subscription before its reader counts as behind.
const QUEUE: usize = 64;

/// A reply packet (spec §28.3) or a publication.
#[derive(Deserialize)]
pub(crate) struct Reply {
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

#[derive(Deserialize)]
struct Uid {
    uid: Option<serde_json::Value>,
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
    /// Sent with the upgrade (the token) and in every packet (the client's own headers).
    upgrade_headers: HeaderMap,
    packet_headers: Vec<(String, String)>,
    base: Url,
    link: tokio::sync::Mutex<Option<Link>>,
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
        let mut upgrade_headers = HeaderMap::new();
        let mut packet_headers = Vec::new();
        for (name, value) in headers {
            if *name == reqwest::header::AUTHORIZATION {
                upgrade_headers.insert(name.clone(), value.clone());
            } else if let Ok(v) = value.to_str() {
                packet_headers.push((name.as_str().to_owned(), v.to_owned()));
            }
        }
        Socket {
            url,
            #[cfg(unix)]
            unix,
            upgrade_headers,
            packet_headers,
            base: base.clone(),
            link: tokio::sync::Mutex::new(None),
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
        let mut req =
            self.url.as_str().into_client_request().map_err(|e| {
                Error::invalid(format!("cannot open a WebSocket to {}: {e}", self.url))
            })?;
        req.headers_mut().extend(self.upgrade_headers.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        #[cfg(unix)]
        if let Some(path) = &self.unix {
            let io = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| Error::Transport {
                    message: format!("cannot connect to {}: {e}", path.display()),
                })?;
            let (ws, _) = tokio_tungstenite::client_async(req, io)
                .await
                .map_err(upgrade_error)?;
            tokio::spawn(run(ws, rx, self.uids.clone()));
            return Ok(Link { tx });
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(upgrade_error)?;
        tokio::spawn(run(ws, rx, self.uids.clone()));
        Ok(Link { tx })
    }

    /// Send one packet and return the receiver of its replies, with the guard that stops it.
    pub async fn open_packet(
        &self,
        make: impl FnOnce(u64) -> String,
        subscription: bool,
        limit: Duration,
    ) -> Result<(mpsc::Receiver<Reply>, Guard)> {
        let link = self.link(limit).await?;
        let uid = self.uids.fetch_add(1, Ordering::Relaxed);
        let (to, from) = mpsc::channel(QUEUE);
        link.tx
            .send(Cmd::Open {
                uid,
                text: make(uid),
                to,
                subscription,
            })
            .map_err(|_| lost())?;
        let guard = Guard {
            link,
            uid,
            done: false,
            unsub: None,
        };
        Ok((from, guard))
    }

    /// Serve one HTTP request over the socket: its reply as a response (an event stream's
    /// packets as its SSE body).
    pub async fn exchange(
        &self,
        req: reqwest::Request,
        limit: Duration,
    ) -> Result<reqwest::Response> {
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
        let first = match rt::timeout(limit, from.recv()).await {
            Some(Some(first)) => first,
            Some(None) => return Err(lost()),
            None => {
                return Err(Error::Timeout {
                    after: limit,
                    what: format!("{m} {r} over the WebSocket"),
                });
            }
        };
        let status = first.c.unwrap_or(500);
        let mut res = http::Response::builder().status(status);
        for (name, value) in &first.h {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                res = res.header(name, value);
            }
        }
        let is_sse = first
            .h
            .get("content-type")
            .is_some_and(|ct| ct.starts_with(h::EVENT_STREAM));
        let body = if is_sse {
            let head = sse_frames(&first)?;
            if !first.more {
                guard.done = true;
            }
            let rest = async_stream::stream! {
                yield Ok::<Bytes, std::io::Error>(head);
                let mut guard = guard;
                if !guard.done {
                    loop {
                        match from.recv().await {
                            Some(p) if p.stopped => break,
                            Some(p) => {
                                let last = !p.more;
                                match sse_frames(&p) {
                                    Ok(b) => yield Ok(b),
                                    Err(e) => { yield Err(std::io::Error::other(e.to_string())); break; }
                                }
                                if last {
                                    guard.done = true;
                                    return;
                                }
                            }
                            None => break,
                        }
                    }
                    yield Err(std::io::Error::other("the WebSocket closed in the middle of the stream"));
                }
            };
            reqwest::Body::wrap_stream(rest)
        } else {
            guard.done = true;
            let text = first.d.as_ref().map_or("null", |d| d.get());
            let text_body = first
                .h
                .get("content-type")
                .is_some_and(|ct| ct.starts_with("text/"));
            match serde_json::from_str::<String>(text) {
                Ok(s) if text_body => reqwest::Body::from(s),
                _ if text == "null" => reqwest::Body::from(Bytes::new()),
                _ => reqwest::Body::from(text.to_owned()),
            }
        };
        let res = res
            .body(body)
            .map_err(|e| Error::Protocol(format!("a WebSocket reply is not a response: {e}")))?;
        Ok(reqwest::Response::from(res))
    }
}

/// An event-stream packet's events, as SSE frames for `follow.rs`.
fn sse_frames(p: &Reply) -> Result<Bytes> {
    let Some(d) = &p.d else {
        return Ok(Bytes::new());
    };
    let events: Vec<RawEvent> = serde_json::from_str(d.get())
        .map_err(|e| Error::Protocol(format!("a stream packet holds no events: {e}")))?;
    let mut out = String::new();
    for e in events {
        out.push_str(&format!(
            "id: {}\nevent: {}\ndata: {}\n\n",
            e.id,
            e.state,
            e.value.get()
        ));
    }
    Ok(Bytes::from(out))
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
            let _ = self.link.tx.send(Cmd::Close {
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

/// The socket's task: writes what callers send, routes what arrives by uid.
async fn run<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    uids: Arc<AtomicU64>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    struct Route {
        to: mpsc::Sender<Reply>,
        subscription: bool,
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
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                // The client is gone.
                None => break,
                Some(Cmd::Open { uid, text, to, subscription }) => {
                    routes.insert(uid, Route { to, subscription });
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Cmd::Close { uid, unsub }) => {
                    if routes.remove(&uid).is_some() {
                        let text = stop(uid, unsub.as_deref());
                        if ws.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                }
            },
            msg = ws.next() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                    Some(Ok(Message::Binary(_))) => continue,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                };
                let Some(uid) = serde_json::from_str::<Uid>(&text)
                    .ok()
                    .and_then(|u| u.uid?.as_u64())
                else {
                    continue;
                };
                let Ok(reply) = serde_json::from_str::<Reply>(&text) else {
                    continue;
                };
                let mut behind = None;
                {
                    let Some(route) = routes.get(&uid) else { continue };
                    // A subscription's replies (its ack, its publications) never end it.
                    let last = !route.subscription && !reply.more;
                    let subscription = route.subscription;
                    let topic = reply.r.clone();
                    match route.to.try_send(reply) {
                        Ok(()) if last => {
                            routes.remove(&uid);
                        }
                        Ok(()) => {}
                        // Its reader is behind (or gone): stop it; it resumes by itself.
                        Err(e) => {
                            routes.remove(&uid);
                            let full = matches!(e, mpsc::error::TrySendError::Full(_));
                            if !last || full {
                                behind = Some(stop(uid, subscription.then_some(topic.as_str())));
                            }
                        }
                    }
                }
                if let Some(text) = behind {
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    // Every route's sender goes with `routes`: their readers see the end and fail (a follow
    // or subscription then resumes on a new socket).
    let _ = ws.close(None).await;
}
