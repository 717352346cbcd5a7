//! What every test suite of the server shares: a real server on an ephemeral loopback port,
//! and a raw HTTP/1.1 client for asserting exact bytes on the wire.
#![allow(dead_code)] // each test binary uses its own part of this module

pub mod postgres;
pub mod workers;
pub mod ws;

/// Tenants and tokens for a test server: `(tenant, token, scopes)` rows, a tenant's tokens in
/// consecutive rows.
pub fn auth(tokens: &[(&str, &str, &[&str])]) -> longrun_server::Auth {
    let mut text = String::new();
    let mut last = None;
    for (tenant, token, scopes) in tokens {
        if last != Some(tenant) {
            text.push_str(&format!("[[tenant]]\nname = {tenant:?}\n"));
            last = Some(tenant);
        }
        text.push_str(&format!(
            "[[tenant.token]]\nhash = {:?}\nscopes = {scopes:?}\n",
            longrun_server::auth::token_hash(token)
        ));
    }
    longrun_server::Auth::from_toml(&text).expect("a valid auth file")
}

use std::net::SocketAddr;

use longrun_server::{Config, Server, ServerBuilder};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub server: Server,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// The demo objects with the default configuration.
    pub async fn demo() -> Self {
        Self::start(Server::builder().demo()).await
    }

    pub async fn with_config(config: Config) -> Self {
        Self::start(Server::builder().config(config).demo()).await
    }

    pub async fn start(builder: ServerBuilder) -> Self {
        let server = builder.build().expect("unique object names");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(longrun_server::serve(listener, server.clone(), async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            base: format!("http://{addr}"),
            server,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Trigger the graceful shutdown and wait until `serve` returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap()
    }

    /// Send raw bytes on a fresh connection and read the whole response until the server
    /// closes (requests should say `Connection: close`).
    pub async fn raw(&self, request: &str) -> RawResponse {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.unwrap();
        RawResponse::parse(&buf)
    }

    /// Open a connection, send a request, and return a reader positioned after the headers,
    /// for reading a stream incrementally.
    pub async fn open(&self, request: &str) -> (RawResponse, BufReader<TcpStream>) {
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        (RawResponse::parse(head.as_bytes()), reader)
    }

    /// Submit through reqwest and return the run's path.
    pub async fn submit(&self, object: &str, args: serde_json::Value) -> String {
        let res = reqwest::Client::new()
            .post(self.url(&format!("/{object}")))
            .json(&args)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "submit {object}");
        let body: serde_json::Value = res.json().await.unwrap();
        body["url"].as_str().unwrap().to_owned()
    }

    /// Long-poll a run to its end and return every event.
    pub async fn events(&self, path: &str) -> Vec<serde_json::Value> {
        let client = reqwest::Client::new();
        let mut all: Vec<serde_json::Value> = Vec::new();
        loop {
            let mut req = client.get(self.url(path)).query(&[("wait", "60")]);
            if let Some(last) = all.last() {
                req = req.header("last-event-id", last["id"].to_string());
            }
            let batch: Vec<serde_json::Value> = req.send().await.unwrap().json().await.unwrap();
            all.extend(batch);
            let last = all.last().unwrap();
            if ["success", "error", "canceled"].contains(&last["state"].as_str().unwrap()) {
                return all;
            }
        }
    }
}

/// A parsed HTTP/1.1 response: status, headers (names lowercased), body (chunked decoded).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    fn parse(buf: &[u8]) -> Self {
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buf.len(), |p| p + 4);
        let head = std::str::from_utf8(&buf[..split]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let mut body = buf[split..].to_vec();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        if chunked {
            body = dechunk(&body);
        }
        RawResponse {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }

    /// Assert an RFC 9457 problem of the given slug and status.
    pub fn assert_problem(&self, status: u16, slug: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let p = self.json();
        assert_eq!(p["type"], format!("urn:longrun:problem:{slug}"), "{p}");
        assert_eq!(p["status"], status);
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(p["detail"].as_str().is_some_and(|t| !t.is_empty()));
    }
}

pub fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_hex = std::str::from_utf8(&body[..eol]).unwrap();
        let size = usize::from_str_radix(size_hex.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&body[start..start + size]);
        body = &body[start + size + 2..];
    }
}

/// A request with `Connection: close` so `raw` can read to EOF.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}
