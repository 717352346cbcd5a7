//! `cargo xtask bench hooks`: response hooks (spec §26) to a local receiver — deliveries per
//! second and the time from a run's end to its hook arriving — beside the same receiver
//! taking plain POSTs of the same size from one client in the same run (the most any sender
//! could do).
//!
//! Server, receiver and load generator share the machine's cores: read the ratio.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use longrun_server::{Config, Server};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const RUNS: usize = 5000;
const CONCURRENCY: usize = 32;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

/// A receiver that answers 204 and reports each delivery's run id and arrival.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(String, Instant)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let at = Instant::now();
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let id = v["data"]["id"].as_str().unwrap_or("").to_owned();
                let _ = tx.send((id, at));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

async fn bench() {
    println!(
        "longrun hooks benchmark — release build, loopback; server, receiver and load generator share {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    let server = Server::builder()
        .config(Config {
            hook_secret: Some(SECRET.into()),
            hook_allow: vec!["127.0.0.1".into()],
            ..Config::default()
        })
        .demo()
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(longrun_server::serve(
        listener,
        server,
        std::future::pending(),
    ));
    let (hook, mut arrivals) = receiver().await;
    let http = reqwest::Client::new();

    // Runs of `echo` end as they are submitted: the 201's arrival is just after the end.
    let ended: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (http, base, hook, ended, next) = (
                http.clone(),
                base.clone(),
                hook.clone(),
                ended.clone(),
                next.clone(),
            );
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < RUNS {
                    let reply: Value = http
                        .post(format!("{base}/echo"))
                        .header("longrun-hook", &hook)
                        .json(&json!({"x": 1}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let id = reply["id"].as_str().unwrap().to_owned();
                    ended.lock().unwrap().push((id, Instant::now()));
                }
            })
        })
        .collect();
    let mut received = std::collections::HashMap::new();
    while received.len() < RUNS {
        let (id, at) = tokio::time::timeout(Duration::from_secs(60), arrivals.recv())
            .await
            .expect("every hook arrives")
            .unwrap();
        received.insert(id, at);
    }
    for w in workers {
        w.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let mut latencies: Vec<f64> = ended
        .lock()
        .unwrap()
        .iter()
        .map(|(id, end)| {
            let at = received[id];
            at.saturating_duration_since(*end).as_secs_f64() * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];

    // The peer: the same receiver taking POSTs of a delivery's size from one client.
    let body = json!({
        "type": "run.ended", "timestamp": "2026-12-02T00:00:00Z",
        "data": {"id": "0", "object": "echo", "url": "/echo/0", "state": "success",
                 "event": {"id": 2, "state": "success", "value": {"x": 1}}, "result": {"x": 1}}
    });
    let start = Instant::now();
    let posts: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (http, hook, body) = (http.clone(), hook.clone(), body.clone());
            tokio::spawn(async move {
                for _ in 0..RUNS / CONCURRENCY {
                    http.post(&hook).json(&body).send().await.unwrap();
                }
            })
        })
        .collect();
    for p in posts {
        p.await.unwrap();
    }
    let direct = (RUNS / CONCURRENCY * CONCURRENCY) as f64 / start.elapsed().as_secs_f64();
    while arrivals.try_recv().is_ok() {}
    let rate = RUNS as f64 / secs;
    println!(
        "hooks     {RUNS} runs, each with a run.ended hook: {rate:.0} deliveries/s (submits included), direct POSTs {direct:.0}/s, ratio {:.2}x",
        rate / direct
    );
    println!(
        "latency   submit answered -> hook received: p50 {:.2} ms, p99 {:.2} ms",
        q(0.5),
        q(0.99)
    );
}
