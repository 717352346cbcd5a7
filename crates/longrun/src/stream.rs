//! Reading a run's byte stream (spec §27): one logical stream of bytes over as many HTTP
//! connections as it takes.
//!
//! The count of bytes received is the whole resume state: every connection after the first
//! asks for `Range: bytes=<received>-`, and a 206 must start exactly there (its
//! `Content-Range`), so every byte is handed out once, in order, whatever the network does.
//! A live body that ends cleanly (chunked encoding's last chunk) means the run ended; a body
//! that breaks is resumed under the client's [`Reconnect`](crate::Reconnect) policy.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use reqwest::header::{CONTENT_RANGE, RANGE};

use crate::client::{Inner, error_from};
use crate::follow::backoff;
use crate::{Client, Error, Result, Run, rt};

#[cfg(not(target_arch = "wasm32"))]
type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;
#[cfg(target_arch = "wasm32")]
type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes>>>>;

/// The bytes of a run's stream, in order, each once, ending when the run has ended and every
/// byte was read. An `Err` item is final: the stream ends after it.
pub struct ByteStream {
    chunks: Chunks,
}

impl Stream for ByteStream {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.as_mut().poll_next(cx)
    }
}

impl ByteStream {
    fn failed(error: Error) -> Self {
        ByteStream {
            chunks: Box::pin(futures::stream::once(async move { Err(error) })),
        }
    }
}

impl Client {
    /// Read a run's byte stream from its first byte (spec §27): live while the run goes on,
    /// resumed after a disconnect from the count of bytes received. A run without a stream
    /// is a `NotFound` error (problem `no-stream`).
    pub fn stream(&self, run: &Run) -> ByteStream {
        self.stream_from(run, 0)
    }

    /// Read a run's byte stream from `offset` on (the count of bytes already had).
    pub fn stream_from(&self, run: &Run, offset: u64) -> ByteStream {
        if let Err(e) = self.same_server(run) {
            return ByteStream::failed(e);
        }
        let url = match url::Url::parse(&format!("{}/stream", run.url())) {
            Ok(url) => url,
            Err(e) => return ByteStream::failed(Error::invalid(e.to_string())),
        };
        ByteStream {
            chunks: Box::pin(read(self.inner.clone(), url, offset)),
        }
    }
}

/// How a connection to the stream answered.
enum Opened {
    Body(reqwest::Response, u64),
    /// 416 at the stream's end: every byte was had.
    Done,
}

/// Ask for the bytes from `received` on, and check that the answer starts there.
async fn open(inner: &Inner, url: &url::Url, received: u64) -> Result<Opened> {
    let mut req = inner.http.get(inner.wire(url));
    if received > 0 {
        req = req.header(RANGE, format!("bytes={received}-"));
    }
    // Only the head within the request timeout: a live body may be silent for long.
    // Bulk bytes go over HTTP even on a WebSocket client: a packet carries JSON (spec §28.3).
    let res = inner
        .send_http(req, inner.timeout(), "opening the byte stream")
        .await?;
    let content_range = res
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match res.status().as_u16() {
        // A server that ignored the range sends everything: what was had is skipped.
        200 => Ok(Opened::Body(res, received)),
        206 => {
            let first = content_range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                .and_then(|n| n.parse::<u64>().ok());
            if first != Some(received) {
                return Err(Error::Protocol(format!(
                    "asked for the stream from byte {received}, got Content-Range {content_range:?}"
                )));
            }
            Ok(Opened::Body(res, 0))
        }
        416 if received > 0 => {
            let length = content_range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes */"))
                .and_then(|n| n.parse::<u64>().ok());
            match length {
                Some(len) if len == received => Ok(Opened::Done),
                _ => Err(Error::Protocol(format!(
                    "had {received} bytes of the stream, the server says {content_range:?}"
                ))),
            }
        }
        _ => Err(error_from(res, url.as_str()).await),
    }
}

fn read(
    inner: Arc<Inner>,
    url: url::Url,
    offset: u64,
) -> impl Stream<Item = Result<Bytes>> + 'static {
    async_stream::stream! {
        let mut received = offset;
        let mut failures = 0u32;
        loop {
            // One connection; `failure` says why it ended before the stream did.
            let failure: Error = match open(&inner, &url, received).await {
                Ok(Opened::Done) => return,
                Err(e) if !e.is_retryable() => {
                    yield Err(e);
                    return;
                }
                Err(e) => e,
                Ok(Opened::Body(res, mut skip)) => {
                    let mut body = res.bytes_stream();
                    'conn: loop {
                        match body.next().await {
                            // The body ended cleanly: the run ended, every byte is here.
                            None => return,
                            Some(Err(e)) => break 'conn Error::transport(&e),
                            Some(Ok(mut chunk)) => {
                                if skip > 0 {
                                    let n = skip.min(chunk.len() as u64);
                                    skip -= n;
                                    chunk = chunk.slice(n as usize..);
                                }
                                if !chunk.is_empty() {
                                    received += chunk.len() as u64;
                                    failures = 0;
                                    yield Ok(chunk);
                                }
                            }
                        }
                    }
                }
            };
            failures += 1;
            let policy = inner.reconnect();
            if failures > policy.max_attempts {
                yield Err(failure);
                return;
            }
            rt::sleep(backoff(policy.initial_delay, policy.max_delay, failures)).await;
        }
    }
}

/// A run's byte stream as a blocking [`std::io::Read`] ([`crate::blocking::Client::stream`]).
#[cfg(not(target_arch = "wasm32"))]
pub struct StreamReader {
    stream: ByteStream,
    rt: Arc<tokio::runtime::Runtime>,
    /// What the last chunk had beyond what the last `read` took.
    rest: Bytes,
    done: bool,
}

#[cfg(not(target_arch = "wasm32"))]
impl StreamReader {
    pub(crate) fn new(stream: ByteStream, rt: Arc<tokio::runtime::Runtime>) -> Self {
        StreamReader {
            stream,
            rt,
            rest: Bytes::new(),
            done: false,
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl std::io::Read for StreamReader {
    /// Errors are `std::io::Error`s of kind `Other` wrapping the [`Error`].
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.rest.is_empty() && !self.done {
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(chunk)) => self.rest = chunk,
                Some(Err(e)) => {
                    self.done = true;
                    return Err(std::io::Error::other(e));
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.rest.len());
        buf[..n].copy_from_slice(&self.rest[..n]);
        let _ = self.rest.split_to(n);
        Ok(n)
    }
}
