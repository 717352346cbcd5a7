//! Accepted connections, bounded whatever the peer does: each gets a capped kernel send
//! buffer (`send_buffer`) and is reset when a write makes no progress for `stall_timeout`, and
//! followers (SSE streams, held long polls) are counted against `max_followers_per_run` and
//! `max_followers`.
//!
//! Together with the log's shared segments (`run.rs`), a follower that never reads costs its
//! connection's state, a few handles to shared bytes and a capped kernel buffer, until the
//! stall cut; the followers that do read are never slowed by it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_io_timeout::TimeoutStream;

use crate::Config;
use crate::run::Run;

/// What the server counts across connections.
pub(crate) struct Connections {
    followers: AtomicUsize,
    /// How many connections were reset for stalling, since the start.
    stalled: watch::Sender<u64>,
}

impl Connections {
    pub fn new() -> Self {
        Connections {
            followers: AtomicUsize::new(0),
            stalled: watch::Sender::new(0),
        }
    }

    pub fn stalled(&self) -> watch::Receiver<u64> {
        self.stalled.subscribe()
    }

    /// A place for one more follower of `run`, or `None` when the run or the server has as
    /// many as it may.
    pub fn follow(self: &Arc<Self>, config: &Config, run: &Arc<Run>) -> Option<FollowerSlot> {
        if !take(&self.followers, config.max_followers) {
            return None;
        }
        if !run.add_follower(config.max_followers_per_run) {
            self.followers.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(FollowerSlot {
            run: run.clone(),
            conns: self.clone(),
            tenant: None,
        })
    }
}

/// Count one more in `counter` unless it holds `max` already.
pub(crate) fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

/// One follower counted; given back when dropped (the stream or the poll ended).
pub(crate) struct FollowerSlot {
    run: Arc<Run>,
    conns: Arc<Connections>,
    /// The tenant's count, when it has a follower limit.
    tenant: Option<crate::auth::TenantFollower>,
}

impl FollowerSlot {
    pub fn with_tenant(mut self, tenant: Option<crate::auth::TenantFollower>) -> Self {
        self.tenant = tenant;
        self
    }
}

impl Drop for FollowerSlot {
    fn drop(&mut self) {
        self.run.remove_follower();
        self.conns.followers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The TCP listener `serve` hands to axum: it configures each accepted connection.
pub(crate) struct Listener {
    inner: TcpListener,
    send_buffer: usize,
    stall_timeout: Duration,
    conns: Arc<Connections>,
}

impl Listener {
    pub fn new(inner: TcpListener, config: &Config, conns: Arc<Connections>) -> Self {
        Listener {
            inner,
            send_buffer: config.send_buffer,
            stall_timeout: config.stall_timeout,
            conns,
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    let _ = tcp.set_nodelay(true);
                    if self.send_buffer > 0 {
                        if let Err(e) =
                            socket2::SockRef::from(&tcp).set_send_buffer_size(self.send_buffer)
                        {
                            tracing::warn!(error = %e, "cannot cap a connection's send buffer");
                        }
                    }
                    let mut io = TimeoutStream::new(tcp);
                    io.set_write_timeout(Some(self.stall_timeout));
                    let conn = Connection {
                        io: Box::pin(io),
                        conns: self.conns.clone(),
                    };
                    return (conn, addr);
                }
                // As axum's own TcpListener: a connection that died before it was accepted
                // is nobody's problem; anything else (EMFILE, …) is waited out.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    tracing::error!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// An accepted connection: its writes time out after `stall_timeout` without progress.
pub(crate) struct Connection {
    io: Pin<Box<TimeoutStream<TcpStream>>>,
    conns: Arc<Connections>,
}

impl Connection {
    /// A write that timed out means a peer that stopped reading: reset the connection when it
    /// closes (`SO_LINGER` 0) rather than leave the kernel retrying to deliver what it holds.
    fn on_stall<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &result {
            if e.kind() == io::ErrorKind::TimedOut {
                let _ = socket2::SockRef::from(self.io.get_ref()).set_linger(Some(Duration::ZERO));
                self.conns.stalled.send_modify(|n| *n += 1);
                tracing::debug!("closed a connection that accepted no bytes for the stall timeout");
            }
        }
        result
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.io.as_mut().poll_write(cx, buf);
        self.on_stall(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = self.io.as_mut().poll_write_vectored(cx, bufs);
        self.on_stall(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.io.as_mut().poll_flush(cx);
        self.on_stall(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.io.as_mut().poll_shutdown(cx);
        self.on_stall(result)
    }
}
