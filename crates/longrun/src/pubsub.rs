//! Pubsub (spec §28.5): [`Client::subscribe`] over the client's WebSocket, resumed from the
//! next offset after the socket is lost; [`Client::publish`] over whatever the client uses.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use longrun_proto::Problem;
use serde::Deserialize;
use serde_json::Value;

use crate::client::Inner;
use crate::follow::backoff;
use crate::{Client, Error, Result, rt};

/// One publication of a topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication {
    /// The topic it was published to (for a pattern subscription, the one that matched).
    pub topic: String,
    /// Its offset: dense per topic, so a jump means publications were missed (they had left
    /// the server's history before this subscription came back).
    pub offset: u64,
    pub data: Value,
}

/// The server's acknowledgement of a subscription (spec §28.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The offset the topic's next publication gets (0 for a pattern).
    pub offset: u64,
    /// `false` when `since` asked for publications the server no longer holds.
    pub recovered: bool,
}

/// What the socket gives a subscription: each (re)subscription's ack, then publications.
enum Item {
    Acked(Subscribed),
    Publication(Publication),
}

#[cfg(not(target_arch = "wasm32"))]
type Items = Pin<Box<dyn Stream<Item = Result<Item>> + Send>>;
#[cfg(target_arch = "wasm32")]
type Items = Pin<Box<dyn Stream<Item = Result<Item>>>>;

/// The publications of a topic (or pattern), in order, each once, across reconnects.
///
/// It subscribes when first polled; [`ready`](Self::ready) waits for the server's ack, so
/// that everything published from then on is delivered (what the SDKs' `subscribe` does
/// before it returns).
pub struct Subscription {
    inner: Items,
    acked: Option<Subscribed>,
}

impl Subscription {
    /// Subscribe (if not yet) and wait for the server's acknowledgement: the first one, also
    /// when called again later. A refused subscription is its error (`Forbidden`,
    /// `InvalidArgument` for a bad topic, …).
    pub async fn ready(&mut self) -> Result<Subscribed> {
        if let Some(acked) = self.acked {
            return Ok(acked);
        }
        match self.inner.next().await {
            Some(Ok(Item::Acked(acked))) => {
                self.acked = Some(acked);
                Ok(acked)
            }
            // The server sends the ack before any publication (spec §28.5).
            Some(Ok(Item::Publication(_))) => Err(Error::Protocol(
                "a publication came before the subscription's ack".into(),
            )),
            Some(Err(e)) => Err(e),
            None => Err(Error::Transport {
                message: "the subscription ended before the server acknowledged it".into(),
            }),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Publication>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            return match self.inner.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(Item::Acked(acked)))) => {
                    self.acked.get_or_insert(acked);
                    continue;
                }
                Poll::Ready(Some(Ok(Item::Publication(p)))) => Poll::Ready(Some(Ok(p))),
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription")
    }
}

#[derive(Deserialize)]
struct Pub {
    offset: u64,
    data: Value,
}

#[derive(Deserialize)]
struct Ack {
    offset: u64,
    recovered: bool,
}

impl Client {
    /// Subscribe to `topic` (a dotted name, or a pattern with `*` and `?`), from offset
    /// `since` if given (one topic only; from now otherwise). The subscription opens the
    /// client's WebSocket whatever its transport, and comes back after the socket is lost
    /// from the offset after the last publication it gave, under the client's [`Reconnect`]
    /// policy. Drop it to unsubscribe.
    ///
    /// [`Reconnect`]: crate::Reconnect
    pub fn subscribe(&self, topic: &str, since: Option<u64>) -> Subscription {
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        Subscription {
            inner: Box::pin(subscribe(inner, topic, since)),
            acked: None,
        }
    }

    /// Publish `data` to `topic` (spec §28.5): its offset.
    pub async fn publish(&self, topic: &str, data: &Value) -> Result<u64> {
        #[derive(Deserialize)]
        struct Published {
            offset: u64,
        }
        let url = self
            .inner
            .base
            .join(&format!("_topics/{topic}"))
            .map_err(|e| Error::invalid(format!("{topic:?} is not a topic: {e}")))?;
        let req = self.inner.http.post(self.inner.wire(&url)).json(data);
        let what = format!("publishing to {topic}");
        let res = self.inner.send(req, &what).await?;
        if res.status().as_u16() != 202 {
            return Err(crate::client::error_from(res, &what).await);
        }
        let body = self
            .inner
            .exchange(&what, async { res.bytes().await })
            .await?;
        let p: Published = serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("a publish answer has no offset: {e}")))?;
        Ok(p.offset)
    }
}

fn subscribe(
    inner: std::sync::Arc<Inner>,
    topic: String,
    since: Option<u64>,
) -> impl Stream<Item = Result<Item>> {
    async_stream::stream! {
        let mut next = since;
        let mut failures = 0u32;
        loop {
            let packet = |uid: u64| {
                let d = match next {
                    Some(n) => serde_json::json!({"since": n}),
                    None => Value::Null,
                };
                serde_json::json!({"uid": uid, "m": "SUB", "r": topic, "d": d}).to_string()
            };
            let opened = match inner.socket() {
                Ok(socket) => socket.open_packet(packet, true, inner.timeout()).await,
                Err(e) => Err(e),
            };
            let lost = match opened {
                Ok((mut from, mut guard)) => {
                    guard.unsub = Some(topic.clone());
                    let mut lost = None;
                    match rt::timeout(inner.timeout(), from.next()).await {
                        Some(Some(ack)) if ack.c == Some(200) => {
                            let ack = ack.d.as_ref().and_then(|d| serde_json::from_str::<Ack>(d.get()).ok());
                            match ack {
                                Some(a) => yield Ok(Item::Acked(Subscribed { offset: a.offset, recovered: a.recovered })),
                                None => {
                                    yield Err(Error::Protocol("a subscription's ack has no {offset, recovered}".into()));
                                    return;
                                }
                            }
                        }
                        Some(Some(refused)) => {
                            guard.done = true;
                            let problem = refused
                                .d
                                .as_ref()
                                .and_then(|d| serde_json::from_str::<Problem>(d.get()).ok());
                            let what = format!("subscribing to {topic}");
                            yield Err(Error::from_status(refused.c.unwrap_or(500), problem, &what));
                            return;
                        }
                        Some(None) => lost = Some(Error::Transport { message: "the WebSocket closed".into() }),
                        None => lost = Some(Error::Timeout { after: inner.timeout(), what: format!("subscribing to {topic}") }),
                    }
                    if lost.is_none() {
                        while let Some(p) = from.next().await {
                            let Some(d) = p.d.as_ref() else { continue };
                            match serde_json::from_str::<Pub>(d.get()) {
                                Ok(publication) => {
                                    failures = 0;
                                    next = Some(publication.offset + 1);
                                    yield Ok(Item::Publication(Publication { topic: p.r, offset: publication.offset, data: publication.data }));
                                }
                                Err(e) => {
                                    yield Err(Error::Protocol(format!("a publication is not {{offset, data}}: {e}")));
                                    return;
                                }
                            }
                        }
                        lost = Some(Error::Transport { message: "the WebSocket closed".into() });
                    }
                    lost.expect("set above")
                }
                // Refused (a token the server does not know, a bad URL): trying again
                // changes nothing, so the subscription fails now, as a follow does.
                Err(e) if !e.is_retryable() => {
                    yield Err(e);
                    return;
                }
                Err(e) => e,
            };
            // A pattern has no offsets to resume from: it comes back from now.
            if topic.contains(['*', '?']) {
                next = None;
            }
            failures += 1;
            let policy = inner.reconnect();
            if failures > policy.max_attempts {
                yield Err(lost);
                return;
            }
            rt::sleep(backoff(policy.initial_delay, policy.max_delay, failures)).await;
        }
    }
}
