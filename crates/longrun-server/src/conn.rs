//! Accepted connections, bounded whatever the peer does: each gets a capped kernel send
//! buffer (`send_buffer`) and is reset when a write makes no progress for `stall_timeout`, and
//! followers (SSE streams, held long polls) are counted against `max_followers_per_run` and
//! `max_followers`.
//!
//! Together with the log's shared segments (`run.rs`), a follower that never reads costs its
//! connection's state, a few handles to shared bytes and a capped kernel buffer, until the
//! stall cut; the followers that do read are never slowed by it.
//!
//! TCP and unix sockets are accepted alike ([`Listener`]): a unix socket has a send buffer
//! too, so it is capped and cut the same way; it has no peer address.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
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
            counted: None,
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
    /// `longrun_followers{transport}`, counted down with the slot.
    counted: Option<crate::metrics::Held>,
}

impl FollowerSlot {
    pub fn with_tenant(mut self, tenant: Option<crate::auth::TenantFollower>) -> Self {
        self.tenant = tenant;
        self
    }

    pub fn counted(mut self, held: crate::metrics::Held) -> Self {
        self.counted = Some(held);
        self
    }
}

impl Drop for FollowerSlot {
    fn drop(&mut self) {
        self.run.remove_follower();
        self.conns.followers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A socket [`serve`](crate::serve) accepts connections on: TCP, or a unix socket
/// ([`bind_unix`] makes one the way `longrun serve --listen unix:PATH` does).
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Self {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Listener::Unix(l)
    }
}

/// Bind a unix socket at `path` with permission bits `mode` (e.g. `0o660`). A socket file
/// already there is replaced only when nothing listens on it (a connect is refused: a server
/// that died left it); when something answers, or the path is not a socket, binding fails
/// (`AddrInUse`, `AlreadyExists`) and the file is left alone. Needs a tokio runtime.
pub fn bind_unix(path: impl AsRef<Path>, mode: u32) -> io::Result<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let path = path.as_ref();
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{shown}: another server is listening on this socket"),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %shown, "replacing a stale socket file");
                    std::fs::remove_file(path)?;
                }
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{shown}: cannot tell whether this socket is in use: {e}"),
                    ));
                }
            }
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{shown} exists and is not a socket"),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{shown}: {e}"))),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {shown}: {e}")))?;
    // Set after bind (the umask decided the first bits); nobody can have connected yet who
    // could not also have read the directory, which is the caller's to protect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot chmod {shown}: {e}")))?;
    Ok(listener)
}

/// A [`Listener`] as `serve` uses it: it configures each accepted connection.
pub(crate) struct Acceptor {
    inner: Listener,
    send_buffer: usize,
    stall_timeout: Duration,
    conns: Arc<Connections>,
}

impl Acceptor {
    pub fn new(inner: Listener, config: &Config, conns: Arc<Connections>) -> Self {
        Acceptor {
            inner,
            send_buffer: config.send_buffer,
            stall_timeout: config.stall_timeout,
            conns,
        }
    }

    /// The next connection, and its peer's address (none on a unix socket).
    pub async fn accept(&mut self) -> (Connection, Option<SocketAddr>) {
        loop {
            let accepted = match &self.inner {
                Listener::Tcp(l) => l.accept().await.map(|(tcp, addr)| {
                    let _ = tcp.set_nodelay(true);
                    (Stream::Tcp(tcp), Some(addr))
                }),
                Listener::Unix(l) => l.accept().await.map(|(unix, _)| (Stream::Unix(unix), None)),
            };
            match accepted {
                Ok((stream, addr)) => {
                    if self.send_buffer > 0 {
                        if let Err(e) =
                            socket2::SockRef::from(&stream).set_send_buffer_size(self.send_buffer)
                        {
                            tracing::warn!(error = %e, "cannot cap a connection's send buffer");
                        }
                    }
                    let mut io = TimeoutStream::new(stream);
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
}

/// An accepted socket of either kind.
pub(crate) enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// Every `AsyncRead`/`AsyncWrite` method, forwarded to the socket of either kind.
macro_rules! forward {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => $e,
            Stream::Unix($s) => $e,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        forward!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        forward!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        forward!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// An accepted connection: its writes time out after `stall_timeout` without progress.
pub(crate) struct Connection {
    io: Pin<Box<TimeoutStream<Stream>>>,
    conns: Arc<Connections>,
}

impl Connection {
    /// A write that timed out means a peer that stopped reading: reset the connection when it
    /// closes (`SO_LINGER` 0) rather than leave the kernel retrying to deliver what it holds.
    /// (A unix socket has no linger: closing it drops what it holds.)
    fn on_stall<T>(&self, result: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if let Poll::Ready(Err(e)) = &result {
            if e.kind() == io::ErrorKind::TimedOut {
                if let Stream::Tcp(tcp) = self.io.get_ref() {
                    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
                }
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
