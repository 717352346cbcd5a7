//! `cargo xtask bench workers`: calls of a worker node's service through the server (spec §25:
//! submit, dispatch to the node, long-poll the run to its end) against the same calls made to
//! the worker directly, and through a bare axum proxy that makes the same call to the worker
//! and nothing else (no run): the most any server with the same two HTTP hops could do here.
//!
//! The server runs in this process (memory store) beside the load generator; the worker is
//! the Go example (`examples/worker-go`, built here with `go build`) as a child process. All
//! of them share the machine's cores, the same way for both paths, so read the ratios and the
//! differences rather than the absolute numbers. Without `go` the benchmark says SKIP and
//! exits 0. `LONGRUN_BENCH_ONLY=via|proxy|direct` makes 200,000 calls of one path and nothing
//! else, long enough to profile (`perf record -p`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "../tests/go_worker/mod.rs"]
mod go_worker;

/// Clients calling at once, for the throughput.
const CLIENTS: usize = 16;
/// Calls per path for the throughput, split over rounds that alternate the paths.
const CALLS: usize = 20000;
const ROUNDS: usize = 4;
/// Sequential calls per path for the latency, after `WARM_UP` of each.
const LATENCY_SAMPLES: usize = 2000;
const WARM_UP: usize = 200;

/// The allocator `longrun serve` ships with, so the server measured here is what it runs.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let Some(worker) = go_worker::build("worker-go-bench", &["-trimpath", "-ldflags=-s -w"]) else {
        go_worker::skip("the workers benchmark");
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench(worker));
}

/// One way of calling `upper` with `{"text": "x"}`.
#[derive(Clone, Copy)]
enum Path {
    /// Submit to the server, then long-poll the run to its terminal event.
    Server,
    /// POST the dispatch body straight to the worker's service path.
    Direct,
    /// POST to a bare axum proxy in this process that makes the same dispatch to the worker
    /// and answers with its reply: the two HTTP exchanges of the server path and nothing else.
    Proxy,
}

#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    server: Arc<str>,
    worker: Arc<str>,
    proxy: Arc<str>,
}

impl Target {
    async fn call(&self, path: Path) {
        match path {
            Path::Server => self.via_server().await,
            Path::Direct => self.direct().await,
            Path::Proxy => self.via_proxy().await,
        }
    }

    /// Submit with `Prefer: wait` (spec §4.5), as a caller that wants the answer does: one
    /// request, answered 200 with the terminal event; a long poll only if the wait ran out.
    async fn via_server(&self) {
        let res = self
            .client
            .post(format!("{}/upper", self.server))
            .header("content-type", "application/json")
            .header("prefer", "wait=60")
            .body(r#"{"text":"x"}"#)
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            let body = res.bytes().await.unwrap();
            assert!(
                body.windows(17).any(|w| w == br#""state":"success""#),
                "the run did not succeed: {}",
                String::from_utf8_lossy(&body)
            );
            return;
        }
        assert_eq!(res.status(), 201);
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        res.bytes().await.unwrap();
        let url = format!("{}{location}?wait=30", self.server);
        // Event 0 is the `queued` the submit wrote (spec §4): wait for what comes after it.
        let mut cursor = "0".to_owned();
        loop {
            let res = self
                .client
                .get(&url)
                .header("last-event-id", &cursor)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let header = |name: &str| res.headers()[name].to_str().unwrap().to_owned();
            let (state, last) = (header("longrun-state"), header("longrun-last-event-id"));
            res.bytes().await.unwrap();
            match state.as_str() {
                "success" => return,
                "error" | "canceled" => panic!("the run ended {state}"),
                _ => cursor = last,
            }
        }
    }

    async fn via_proxy(&self) {
        let res = self
            .client
            .post(format!("{}/upper", self.proxy))
            .header("content-type", "application/json")
            .body(r#"{"text":"x"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body = res.bytes().await.unwrap();
        assert!(
            body.windows(17).any(|w| w == br#""state":"success""#),
            "the proxy did not succeed: {}",
            String::from_utf8_lossy(&body)
        );
    }

    async fn direct(&self) {
        let body = format!(
            r#"{{"topic":"upper","sender":"{}","data":{{"text":"x"}},"timeout":60}}"#,
            uuid::Uuid::new_v4()
        );
        let res = self
            .client
            .post(format!("{}/upper", self.worker))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(&res.bytes().await.unwrap()[..], br#"{"text":"X"}"#);
    }
}

async fn bench(binary: PathBuf) {
    println!(
        "longrun workers benchmark — release build, loopback; the server (in process), the Go worker and the load generator share {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let server = longrun_server::Server::builder()
        .store(longrun_server::StoreConfig::Memory)
        .build()
        .expect("no objects, no clash");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(longrun_server::serve(
        listener,
        server,
        std::future::pending(),
    ));
    let worker = go_worker::GoWorker::start(&binary, &base).await;
    let proxy = bare_proxy(worker.url("")).await;
    let target = Target {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(2 * CLIENTS)
            .tcp_nodelay(true)
            .build()
            .unwrap(),
        server: base.into(),
        worker: worker.url("").into(),
        proxy: proxy.into(),
    };
    for _ in 0..WARM_UP {
        target.call(Path::Server).await;
        target.call(Path::Proxy).await;
        target.call(Path::Direct).await;
    }

    if let Ok(which) = std::env::var("LONGRUN_BENCH_ONLY") {
        let path = match which.as_str() {
            "via" => Path::Server,
            "proxy" => Path::Proxy,
            _ => Path::Direct,
        };
        let d = concurrent(&target, path, 200000).await;
        println!(
            "workers: {which} only, {:.0} calls/s",
            200000.0 / d.as_secs_f64()
        );
        return;
    }
    // Throughput: the paths take turns, round after round, so a swing of the machine's speed
    // hits all alike.
    let (mut via, mut proxy, mut direct) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS {
        via += concurrent(&target, Path::Server, CALLS / ROUNDS).await;
        proxy += concurrent(&target, Path::Proxy, CALLS / ROUNDS).await;
        direct += concurrent(&target, Path::Direct, CALLS / ROUNDS).await;
    }
    let calls = (CALLS / ROUNDS * ROUNDS) as f64;
    let [via_rate, proxy_rate, direct_rate] = [via, proxy, direct].map(|d| calls / d.as_secs_f64());
    println!(
        "workers: via server {via_rate:.0} runs/s, direct {direct_rate:.0} calls/s, ratio {:.2}x  ({CLIENTS} clients, {} calls each way; goal >= 0.5x)",
        via_rate / direct_rate,
        calls
    );
    println!(
        "workers: via a bare axum proxy {proxy_rate:.0} calls/s, ratio {:.2}x to direct; the server {:.2}x of the bare proxy",
        proxy_rate / direct_rate,
        via_rate / proxy_rate
    );

    // Latency: one call at a time, the paths alternating call by call.
    let (mut via, mut direct) = (Vec::new(), Vec::new());
    for _ in 0..LATENCY_SAMPLES {
        via.push(timed(&target, Path::Server).await);
        direct.push(timed(&target, Path::Direct).await);
    }
    let (via, direct) = (percentiles(via), percentiles(direct));
    println!(
        "workers: latency via server p50 {:.2} ms, p99 {:.2} ms; direct p50 {:.2} ms, p99 {:.2} ms  ({LATENCY_SAMPLES} sequential calls each way)",
        via.0, via.1, direct.0, direct.1
    );
    println!(
        "workers: added latency p50 {:.2} ms, p99 {:.2} ms  (goal p99 < 2 ms)",
        via.0 - direct.0,
        via.1 - direct.1
    );
}

/// The peer for the server path: an axum handler that forwards the call to the worker with
/// the HTTP client the server dispatches with (hyper's pooled client) and answers 200 with
/// the reply. No run,
/// no event, no store: what any server costs that takes a call and makes one to a node.
async fn bare_proxy(worker: String) -> String {
    #[derive(Clone)]
    struct Proxy {
        client: hyper_util::client::legacy::Client<
            hyper_util::client::legacy::connect::HttpConnector,
            http_body_util::Full<bytes::Bytes>,
        >,
        worker: Arc<str>,
    }
    async fn upper(
        axum::extract::State(proxy): axum::extract::State<Proxy>,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        use http_body_util::BodyExt;
        let data: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let body = serde_json::json!({
            "topic": "upper",
            "sender": uuid::Uuid::new_v4().to_string(),
            "data": data,
            "timeout": 60,
        });
        let req = hyper::Request::post(format!("{}/upper", proxy.worker))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::to_vec(&body).unwrap(),
            )))
            .unwrap();
        let res = proxy.client.request(req).await.unwrap();
        let reply = res.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
        let body = serde_json::to_vec(&serde_json::json!({"state": "success", "value": value}));
        ([("content-type", "application/json")], body.unwrap()).into_response()
    }
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let proxy = Proxy {
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector),
        worker: worker.trim_end_matches('/').into(),
    };
    let app = axum::Router::new()
        .route("/upper", axum::routing::post(upper))
        .with_state(proxy);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// How long `CLIENTS` clients take to make `calls` calls of `path` between them.
async fn concurrent(target: &Target, path: Path, calls: usize) -> Duration {
    let left = Arc::new(AtomicUsize::new(calls));
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (target, left) = (target.clone(), left.clone());
            tokio::spawn(async move {
                while left
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
                {
                    target.call(path).await;
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    start.elapsed()
}

/// One call of `path`, in milliseconds.
async fn timed(target: &Target, path: Path) -> f64 {
    let start = Instant::now();
    target.call(path).await;
    start.elapsed().as_secs_f64() * 1e3
}

/// p50 and p99 of the samples.
fn percentiles(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99))
}
