//! The Go example worker (`examples/worker-go`) does what its README says against a real
//! server: it registers, its services run (`upper`, `slow` with progress), its slot gets
//! signals, and a cancel closes the connection of a hanging call (which the worker sees through
//! its request's context). The worker is built once per test binary with `go build`; without
//! `go` the tests say SKIP (an error with `CI` set). Synchronisation is by observable events
//! (the worker's stdout, a run's events, the worker's own `/_signals?count=N` and
//! `/_closed/…`), never by sleeping.

mod common;
mod go_worker;

use std::path::PathBuf;
use std::sync::OnceLock;

use common::TestServer;
use go_worker::GoWorker;
use serde_json::{Value, json};

/// The worker binary, built on first use; `None` (said loudly) when `go` is not installed.
fn worker_binary() -> Option<&'static PathBuf> {
    static BINARY: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let built = go_worker::build("worker-go", &[]);
            if built.is_none() {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "`go` is not installed, and CI needs it for examples/worker-go"
                );
                go_worker::skip("the tests of examples/worker-go");
            }
            built
        })
        .as_ref()
}

/// Start a server with the demo objects and a Go worker registered with it; `None` when there
/// is no `go` (the test then passes, having said SKIP).
async fn setup() -> Option<(TestServer, GoWorker)> {
    let binary = worker_binary()?;
    let server = TestServer::demo().await;
    let worker = GoWorker::start(binary, &server.base).await;
    Some((server, worker))
}

/// Submit `object` with `args` and long-poll the run to its end: every event.
async fn run(server: &TestServer, object: &str, args: Value) -> Vec<Value> {
    let path = server.submit(object, args).await;
    server.events(&path).await
}

#[tokio::test]
async fn it_registers_and_its_node_is_ok() {
    let Some((server, worker)) = setup().await else {
        return;
    };
    let res = reqwest::get(server.url(&format!("/_nodes/{}", worker.id)))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let record: Value = res.json().await.unwrap();
    assert_eq!(record["status"], "ok", "{record}");
    assert_eq!(record["port"], worker.port);
    assert_eq!(record["health_check"], "/health");
    let topics: Vec<&str> = record["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["upper", "slow"], "{record}");
    assert_eq!(record["slots"][0]["topic"], "notes.*", "{record}");
    assert_eq!(record["slots"][0]["path"], "/slot", "{record}");
}

#[tokio::test]
async fn upper_ends_in_success_with_the_text_in_upper_case() {
    let Some((server, _worker)) = setup().await else {
        return;
    };
    let events = run(&server, "upper", json!({"text": "hi"})).await;
    let end = events.last().unwrap();
    assert_eq!(end["state"], "success", "{events:?}");
    assert_eq!(end["value"], json!({"text": "HI"}));
}

#[tokio::test]
async fn slow_reports_one_progress_event_per_step_then_succeeds() {
    let Some((server, _worker)) = setup().await else {
        return;
    };
    let events = run(&server, "slow", json!({"steps": 3})).await;
    let running: Vec<&Value> = events.iter().filter(|e| e["state"] == "running").collect();
    assert_eq!(running.len(), 3, "{events:?}");
    for (i, e) in running.iter().enumerate() {
        assert_eq!(e["value"]["message"], format!("step {}", i + 1), "{e}");
        assert!(e["value"]["progress"].is_number(), "{e}");
    }
    assert_eq!(running[2]["value"]["progress"], 1.0);
    let end = events.last().unwrap();
    assert_eq!(end["state"], "success", "{events:?}");
    assert_eq!(end["value"], json!({"steps": 3}));
}

#[tokio::test]
async fn a_signal_reaches_its_slot() {
    let Some((server, worker)) = setup().await else {
        return;
    };
    let res = reqwest::Client::new()
        .post(server.url("/_signals/notes.x"))
        .json(&json!({"level": "high"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let reply: Value = res.json().await.unwrap();
    assert_eq!(reply["delivered"], 1, "{reply}");
    let res = reqwest::get(worker.url("/_signals?count=1")).await.unwrap();
    assert_eq!(
        res.status(),
        200,
        "the signal arrives within the worker's wait"
    );
    let seen: Value = res.json().await.unwrap();
    let signals = seen["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 1, "{seen}");
    assert_eq!(signals[0]["topic"], "notes.x");
    assert_eq!(signals[0]["data"], json!({"level": "high"}));
    assert!(signals[0]["sender"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn a_cancel_closes_the_connection_of_a_hanging_call() {
    let Some((server, worker)) = setup().await else {
        return;
    };
    let path = server
        .submit("slow", json!({"steps": 0, "hang": true}))
        .await;
    // Follow until the worker says it hangs: it holds the call now.
    let client = reqwest::Client::new();
    let mut cursor = "0".to_owned();
    loop {
        let res = client
            .get(server.url(&path))
            .query(&[("wait", "60")])
            .header("last-event-id", &cursor)
            .send()
            .await
            .unwrap();
        let batch: Vec<Value> = res.json().await.unwrap();
        if batch.iter().any(|e| e["value"]["message"] == "hanging") {
            break;
        }
        if let Some(e) = batch.last() {
            assert_eq!(e["state"], "queued", "ended before hanging: {batch:?}");
            cursor = e["id"].to_string();
        }
    }
    let res = client.delete(server.url(&path)).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let events = server.events(&path).await;
    assert_eq!(events.last().unwrap()["state"], "canceled", "{events:?}");
    let id = path.rsplit('/').next().unwrap();
    let res = reqwest::get(worker.url(&format!("/_closed/{id}")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the worker saw the connection close");
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"closed": true}));
}
