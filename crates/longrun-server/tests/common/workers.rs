//! Worker nodes for the node suites: `examples/worker-python/worker.py` as a real process on
//! an ephemeral port, and the HTTP helpers those suites share.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use longrun_server::Config;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::TestServer;

pub fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/worker-python/worker.py")
}

/// A worker process; killed when dropped.
pub struct Worker {
    child: Child,
    pub port: u16,
    /// The node id, when it registered itself.
    pub id: Option<String>,
    /// The rest of its stdout.
    _out: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Worker {
    pub async fn start(server: Option<&TestServer>, extra: &[&str]) -> Worker {
        let mut cmd = Command::new("python3");
        cmd.arg(worker_script())
            .args(extra)
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        match server {
            Some(s) => cmd.arg("--server").arg(&s.base),
            None => cmd.arg("--no-register"),
        };
        let mut child = cmd.spawn().expect("python3 runs");
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = out
            .next_line()
            .await
            .unwrap()
            .expect("the worker says its port");
        let port = line
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let id = match server {
            Some(_) => {
                let line = out
                    .next_line()
                    .await
                    .unwrap()
                    .expect("the worker registers");
                Some(
                    line.strip_prefix("registered ")
                        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                        .to_owned(),
                )
            }
            None => None,
        };
        Worker {
            child,
            port,
            id,
            _out: out,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn id(&self) -> &str {
        self.id.as_deref().unwrap()
    }

    pub async fn seen(&self) -> Vec<String> {
        let v: Value = get_json(self.url("/_seen")).await;
        v["seen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn kill(&mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Fast health checks, for the tests that watch status changes.
pub fn fast() -> Config {
    Config {
        health_interval: Duration::from_millis(20),
        health_failures: 2,
        ..Config::default()
    }
}

pub async fn server_with(config: Config) -> TestServer {
    TestServer::with_config(config).await
}

pub async fn node(server: &TestServer, id: &str) -> Value {
    let res = reqwest::get(server.url(&format!("/_nodes/{id}")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Wait (by polling the record, bounded by the test's own deadline) until the node is in
/// `status`.
pub async fn wait_status(server: &TestServer, id: &str, status: &str) -> Value {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let record = node(server, id).await;
        if record["status"] == status {
            return record;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "node never became {status}: {record}"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn last(events: &[Value]) -> (&str, &Value) {
    let e = events.last().unwrap();
    (e["state"].as_str().unwrap(), &e["value"])
}

pub async fn get_json(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

pub async fn delete(url: String) -> reqwest::Response {
    reqwest::Client::new().delete(url).send().await.unwrap()
}

pub async fn post(url: String, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
}

pub async fn assert_problem(res: reqwest::Response, status: u16, slug: &str) {
    assert_eq!(res.status(), status);
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["type"], format!("urn:longrun:problem:{slug}"), "{p}");
    assert_eq!(p["status"], status);
}

/// Follow `path` until a `running` event whose value has `message`.
pub async fn wait_event(server: &TestServer, path: &str, message: &str) -> Vec<Value> {
    wait_events(server, path, message, 1).await
}

/// Follow `path` until `count` `running` events whose value has `message`.
pub async fn wait_events(
    server: &TestServer,
    path: &str,
    message: &str,
    count: usize,
) -> Vec<Value> {
    let client = reqwest::Client::new();
    let mut all: Vec<Value> = Vec::new();
    loop {
        let mut req = client.get(server.url(path)).query(&[("wait", "60")]);
        if let Some(last) = all.last() {
            req = req.header("last-event-id", last["id"].to_string());
        }
        let batch: Vec<Value> = req.send().await.unwrap().json().await.unwrap();
        all.extend(batch);
        if all
            .iter()
            .filter(|e| e["value"]["message"] == message)
            .count()
            >= count
        {
            return all;
        }
        let state = all.last().unwrap()["state"].as_str().unwrap().to_owned();
        assert!(
            !["success", "error", "canceled"].contains(&state.as_str()),
            "ended before {count} × {message:?}: {all:?}"
        );
    }
}

/// Cancel the run at `path` once its node reports `hanging` (`slow` with `hang`): the DELETE
/// is accepted, the run ends `canceled` by the client, and the worker saw the connection of
/// that run close. The run's events.
pub async fn cancel_hanging(server: &TestServer, w: &Worker, path: &str) -> Vec<Value> {
    wait_event(server, path, "hanging").await;
    let res = delete(server.url(path)).await;
    assert_eq!(res.status(), 202);
    let events = server.events(path).await;
    assert_eq!(last(&events), ("canceled", &json!({"reason": "client"})));
    let id = path.rsplit('/').next().unwrap();
    let res = reqwest::get(w.url(&format!("/_closed/{id}")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the worker saw its connection close");
    events
}

/// The values of the `running` events among `events`.
pub fn running(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["state"] == "running")
        .map(|e| &e["value"])
        .collect()
}
