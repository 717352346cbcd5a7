//! The server on a unix socket: every route as over TCP (submit, SSE and long-poll follows,
//! HEAD, cancel), one process serving TCP and unix listeners at once, a node registering
//! without a host (no peer address: 422), the stall cut, the socket's mode and the
//! stale-socket rule.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::time::Duration;

use longrun_server::{Config, Listener, Server, bind_unix};
use reqwest::header::{ACCEPT, LOCATION};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A demo server on a unix socket in a fresh directory and on a loopback TCP port.
struct UnixServer {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    tcp: String,
    /// reqwest over the unix socket; URLs name `http://localhost/…`.
    http: reqwest::Client,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    stalled: tokio::sync::watch::Receiver<u64>,
}

impl UnixServer {
    async fn start() -> Self {
        Self::with_config(Config::default()).await
    }

    async fn with_config(config: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("longrun.sock");
        let unix = bind_unix(&socket, 0o660).unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp_base = format!("http://{}", tcp.local_addr().unwrap());
        let server = Server::builder().config(config).demo().build().unwrap();
        let stalled = server.stalled_connections();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(longrun_server::serve_all(
            vec![Listener::Unix(unix), Listener::Tcp(tcp)],
            server,
            async {
                let _ = rx.await;
            },
        ));
        let http = reqwest::Client::builder()
            .unix_socket(socket.as_path())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        UnixServer {
            _dir: dir,
            socket,
            tcp: tcp_base,
            http,
            shutdown: tx,
            task,
            stalled,
        }
    }

    fn url(path: &str) -> String {
        format!("http://localhost{path}")
    }

    async fn submit(&self, object: &str, args: Value) -> String {
        let res = self
            .http
            .post(Self::url(&format!("/{object}")))
            .json(&args)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "submit {object}");
        let location = res.headers()[LOCATION].to_str().unwrap().to_owned();
        let body: Value = res.json().await.unwrap();
        assert!(location.ends_with(&format!("/{object}/{}", body["id"].as_str().unwrap())));
        format!("/{object}/{}", body["id"].as_str().unwrap())
    }

    /// Long-poll a run to its end over the unix socket and return every event.
    async fn long_poll(&self, path: &str) -> Vec<Value> {
        let mut all: Vec<Value> = Vec::new();
        loop {
            let mut req = self.http.get(Self::url(path)).query(&[("wait", "60")]);
            if let Some(last) = all.last() {
                req = req.header("last-event-id", last["id"].to_string());
            }
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200);
            let batch: Vec<Value> = res.json().await.unwrap();
            all.extend(batch);
            if is_terminal(all.last().unwrap()) {
                return all;
            }
        }
    }

    /// Follow a run by SSE over the unix socket to its end; each event's `event:` (state) and
    /// `data:` (value).
    async fn sse(&self, path: &str) -> Vec<(String, Value)> {
        let res = self
            .http
            .get(Self::url(path))
            .header(ACCEPT, "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(
            res.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        // The stream ends after the terminal event: read it whole.
        let text = res.text().await.unwrap();
        let mut events = Vec::new();
        let mut state = None;
        for line in text.lines() {
            if let Some(s) = line.strip_prefix("event:") {
                state = Some(s.trim().to_owned());
            } else if let Some(data) = line.strip_prefix("data:") {
                let value = serde_json::from_str(data.trim()).unwrap();
                events.push((state.take().unwrap_or_default(), value));
            }
        }
        events
    }

    async fn stop(self) {
        self.shutdown.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn is_terminal(event: &Value) -> bool {
    ["success", "error", "canceled"].contains(&event["state"].as_str().unwrap())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn every_route_works_over_a_unix_socket() {
    let s = UnixServer::start().await;
    assert_eq!(mode(&s.socket), 0o660);

    // Submit and follow by long polling.
    let path = s.submit("echo", json!({"a": 1})).await;
    let events = s.long_poll(&path).await;
    assert_eq!(events.last().unwrap()["state"], "success");
    assert_eq!(events.last().unwrap()["value"], json!({"a": 1}));

    // The same run by SSE: the same events, in the same order.
    let streamed = s.sse(&path).await;
    assert_eq!(streamed.len(), events.len());
    assert_eq!(
        streamed.last().unwrap(),
        &("success".to_owned(), json!({"a": 1}))
    );

    // HEAD: the run's state in headers.
    let head = s.http.head(UnixServer::url(&path)).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["longrun-state"], "success");

    // The same server on its TCP listener: the run is there too.
    let over_tcp = reqwest::Client::new()
        .head(format!("{}{path}", s.tcp))
        .send()
        .await
        .unwrap();
    assert_eq!(over_tcp.status(), 200);
    assert_eq!(over_tcp.headers()["longrun-state"], "success");

    // Cancel a run that would sleep for a minute; it ends `canceled`.
    let sleeping = s.submit("sleep", json!({"ms": 60_000})).await;
    let res = s
        .http
        .delete(UnixServer::url(&sleeping))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let events = s.sse(&sleeping).await;
    assert_eq!(events.last().unwrap().0, "canceled");

    // An unknown object: the same problem as over TCP.
    let res = s
        .http
        .post(UnixServer::url("/nope"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    // A node registering over the socket without `host`: no peer address to use.
    let res = s
        .http
        .post(UnixServer::url("/_nodes"))
        .json(&json!({"port": 9, "services": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("host"),
        "{problem}"
    );
    s.stop().await;
}

/// A follower on the socket that stops reading is cut after the stall timeout, as on TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_on_the_socket_is_cut() {
    let mut s = UnixServer::with_config(Config {
        stall_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    // About 1.4 MB of stream: more than the capped send buffer holds.
    let path = s.submit("count", json!({"n": 20_000})).await;
    s.long_poll(&path).await;
    let mut stalled = tokio::net::UnixStream::connect(&s.socket).await.unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut seen = vec![0u8; 1024];
    let n = stalled.read(&mut seen).await.unwrap();
    assert!(seen[..n].starts_with(b"HTTP/1.1 200"));
    // Then nothing is read: the server's write makes no progress and it cuts the connection.
    // (The bound only turns a server that never cuts into a failure instead of a hang.)
    tokio::time::timeout(Duration::from_secs(60), s.stalled.wait_for(|n| *n >= 1))
        .await
        .expect("the server never cut the stalled connection")
        .unwrap();
    // What was sent before the cut, then the end: no terminal event.
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest).await;
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("success"), "the cut came before the end");
    s.stop().await;
}

#[tokio::test]
async fn the_socket_mode_is_the_one_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    for want in [0o600, 0o660, 0o666] {
        let path = dir.path().join(format!("{want:o}.sock"));
        let _listener = bind_unix(&path, want).unwrap();
        assert_eq!(mode(&path), want);
    }
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("longrun.sock");

    // A server that died left its socket file: nothing answers, so it is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = bind_unix(&path, 0o660).unwrap();

    // Something listens: binding fails, and the file (the live server's) stays.
    let err = bind_unix(&path, 0o660).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(err.to_string().contains("another server"), "{err}");
    assert!(path.exists());
    // The first listener still takes connections.
    let connect = tokio::net::UnixStream::connect(&path);
    let (accepted, connected) = tokio::join!(listener.accept(), connect);
    accepted.unwrap();
    connected.unwrap();

    // A file that is no socket is never removed.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "keep me").unwrap();
    let err = bind_unix(&plain, 0o660).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
    assert_eq!(std::fs::read_to_string(&plain).unwrap(), "keep me");
}
