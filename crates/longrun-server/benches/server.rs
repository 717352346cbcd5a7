//! `cargo xtask bench`: the reference server measured against a peer in the same run.
//!
//! The servers run as child processes of this binary (re-executed with `--serve-longrun` or
//! `--serve-bare`) so their memory can be read from /proc; this process is the load
//! generator. Both share the machine's cores, the same way for every figure and its peer, so
//! read the ratios rather than the absolute numbers.
//!
//! With `LONGRUN_SEED_SERVER` set (`cargo xtask bench server` builds go/seed/cmd/seedserver
//! when `go` is installed), the seed's own Go server (go-longrun v0.1.0) is measured too, on
//! the same submit load and the same drain. Contenders take turns, round after round, so a
//! swing of the machine's speed hits each alike; each figure is the median of its rounds.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use futures::StreamExt;
use serde_json::{Value, json};

const SUBMIT_CONCURRENCY: usize = 32;
const SUBMIT_SECONDS: f64 = 1.0;
const ROUNDS: usize = 9;
const DRAIN_EVENTS: u64 = 10_000;
const FOLLOWERS: usize = 1000;
const FANOUT_EVENTS: u64 = 1000;
const LATENCY_SAMPLES: usize = 2000;
const IDLE_FOLLOWERS: usize = 10_000;
const STALLED_FOLLOWERS: usize = 1000;
const STALLED_RUN_EVENTS: u64 = 100_000;

#[path = "../tests/common/postgres.rs"]
mod postgres;

/// The allocator `longrun serve` ships with, so the servers measured here are what it runs.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve-longrun") {
        return serve(true, longrun_server::StoreConfig::Memory);
    }
    if let Some(i) = args.iter().position(|a| a == "--serve-store") {
        let store = longrun_server::StoreConfig::parse(&args[i + 1]).expect("a store URL");
        return serve(true, store);
    }
    if args.iter().any(|a| a == "--serve-bare") {
        return serve(false, longrun_server::StoreConfig::Memory);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

// ---------------------------------------------------------------- servers (child processes)

fn serve(longrun: bool, store: longrun_server::StoreConfig) {
    // Exit when the benchmark is gone, however it ended: its end closes our stdin.
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        if longrun {
            let server = longrun_server::Server::builder()
                .store(store)
                .demo()
                .build()
                .expect("the demo objects have unique names");
            longrun_server::serve(listener, server, std::future::pending())
                .await
                .unwrap();
        } else {
            axum::serve(listener, bare_router()).await.unwrap();
        }
    });
}

/// The peer for submits: a bare axum POST handler doing the same visible work (parse the JSON
/// body, make a v4 id, answer 201 with Location and the same JSON) and nothing else.
fn bare_router() -> axum::Router {
    async fn submit(
        axum::extract::Path(object): axum::extract::Path<String>,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        let _args: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let id = uuid::Uuid::new_v4();
        let url = format!("/{object}/{id}");
        let body = serde_json::to_vec(
            &json!({"id": id.to_string(), "object": object, "state": "queued", "url": url}),
        )
        .unwrap();
        (
            StatusCode::CREATED,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (header::LOCATION, HeaderValue::from_str(&url).unwrap()),
            ],
            body,
        )
            .into_response()
    }
    axum::Router::new().route("/{object}", axum::routing::post(submit))
}

struct ChildServer {
    child: Child,
    base: String,
}

impl ChildServer {
    fn start(flag: &str) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg(flag);
        Self::spawn(cmd)
    }

    /// A server pinned to one core (with `taskset`, when there is one and more than one
    /// core), so that the load generator and the server do not trade places between rounds.
    fn start_pinned(flag: &str) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let taskset = std::path::Path::new("/usr/bin/taskset");
        if cores < 2 || !taskset.exists() {
            return Self::start(flag);
        }
        let mut cmd = Command::new(taskset);
        cmd.arg("-c").arg((cores - 1).to_string());
        cmd.arg(std::env::current_exe().unwrap()).arg(flag);
        Self::spawn(cmd)
    }

    /// Start a server that prints its address as its first stdout line and exits when its
    /// stdin closes.
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        ChildServer {
            base: format!("http://{}", line.trim()),
            child,
        }
    }

    /// Resident set size of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------- measurements

async fn bench() {
    println!(
        "longrun server benchmark — release build, loopback; servers and load generator share {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    // LONGRUN_BENCH_PHASES=memory (or throughput) runs one part alone.
    let only = std::env::var("LONGRUN_BENCH_PHASES").ok();
    let runs = |phase: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p == phase))
    };
    if runs("throughput") {
        throughput().await;
    }
    // `memory` is both; `idle` the idle followers alone.
    if runs("memory") || runs("idle") {
        idle().await;
    }
    if runs("memory") {
        stalled().await;
    }
    if runs("store") {
        store().await;
    }
}

/// The durable stores against memory: whole short runs, one busy run's appends, fan-out and
/// idle followers (Postgres on the throwaway cluster `cargo xtask bench` starts, if any).
async fn store() {
    let dir = tempfile::tempdir().unwrap();
    let store_server = |url: String| {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg("--serve-store").arg(url);
        ChildServer::spawn(cmd)
    };
    let sqlite_url = |name: &str| format!("sqlite:{}", dir.path().join(name).display());
    let memory = ChildServer::start("--serve-longrun");
    let sqlite = store_server(sqlite_url("bench.db"));
    let postgres = postgres::database("bench store").await.map(store_server);
    let mut servers = vec![("memory", &memory), ("sqlite", &sqlite)];
    if let Some(pg) = &postgres {
        servers.push(("postgres", pg));
    }
    let mut short: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    let mut busy: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for round in 0..=ROUNDS {
        for (k, (_, server)) in servers.iter().enumerate() {
            let rate = short_runs(&server.base).await;
            let secs = drain(&format!("{}/count", server.base)).await;
            if round > 0 {
                short[k].push(rate);
                busy[k].push(secs);
            }
        }
    }
    let rates: Vec<f64> = short.into_iter().map(median).collect();
    let secs: Vec<f64> = busy.into_iter().map(median).collect();
    let line = |values: &[f64], unit: &str| {
        servers
            .iter()
            .zip(values)
            .map(|((name, _), v)| format!("{name} {v:>9.0} {unit}"))
            .collect::<Vec<_>>()
            .join("   ")
    };
    let ratios = |values: &[f64]| {
        servers[1..]
            .iter()
            .zip(&values[1..])
            .map(|((name, _), v)| format!("{name}/memory {:.2}x", v / values[0]))
            .collect::<Vec<_>>()
            .join("   ")
    };
    println!(
        "store             submit + 10 events + follow to the end, {SUBMIT_CONCURRENCY} at once: {}   {}  (goal sqlite >= 0.5x)",
        line(&rates, "runs/s"),
        ratios(&rates)
    );
    let events: Vec<f64> = secs.iter().map(|s| DRAIN_EVENTS as f64 / s).collect();
    println!(
        "store             one busy run's {DRAIN_EVENTS} events to a follower (group commit): {}   {}",
        line(&events, "events/s"),
        ratios(&events)
    );
    if postgres.is_none() {
        println!(
            "store             postgres: SKIPPED (no cluster; `cargo xtask bench` starts one when Debian's postgresql is installed)"
        );
    }
    let (events, secs) = fan_out(&sqlite.base, 0).await;
    println!(
        "store             fan-out replay on sqlite: {FOLLOWERS} SSE followers of one ended count run, {events} events in {secs:.2} s = {:>10.0} events/s",
        events as f64 / secs
    );
    drop((memory, sqlite, postgres));
    let fresh = store_server(sqlite_url("idle.db"));
    println!(
        "store             idle followers on sqlite: RSS growth {:.1} KiB per idle SSE follower over {IDLE_FOLLOWERS} followers, fresh server  (goal <= 8 KiB)",
        idle_follower_rss(&fresh).await
    );
}

/// Runs per second, each submitted (count n=10) and followed by SSE to its end.
async fn short_runs(base: &str) -> f64 {
    let (client, base) = (reqwest::Client::new(), base.to_owned());
    per_second(move || {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let run = submit(&base, "count", json!({"n": 10})).await;
            let res = client.get(&run).header("accept", "text/event-stream");
            let body = res.send().await.unwrap().bytes().await.unwrap();
            assert!(body.ends_with(b"data: {\"n\":10}\n\n"));
        }
    })
    .await
}

/// How many times per second `SUBMIT_CONCURRENCY` workers complete `op`, each looping for
/// `SUBMIT_SECONDS`.
async fn per_second<F, Fut>(op: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(SUBMIT_SECONDS);
    let workers: Vec<_> = (0..SUBMIT_CONCURRENCY)
        .map(|_| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    op().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    for w in workers {
        w.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Submit rate and drains against peers, fan-out, latency.
async fn throughput() {
    let longrun = ChildServer::start_pinned("--serve-longrun");
    let bare = ChildServer::start_pinned("--serve-bare");

    let seed = std::env::var_os("LONGRUN_SEED_SERVER").map(|bin| {
        let mut cmd = Command::new(bin);
        cmd.stderr(Stdio::null()); // it logs a recovered panic at the end of every stream
        ChildServer::spawn(cmd)
    });
    if seed.is_none() {
        println!(
            "(go-longrun not measured: set LONGRUN_SEED_SERVER, as `cargo xtask bench server` does with Go installed)"
        );
    }

    // Submit throughput: the same load on each server in turn, round after round.
    let mut rates: [Vec<f64>; 3] = Default::default();
    for round in 0..=ROUNDS {
        let ours = submit_rate(&format!("{}/echo", longrun.base)).await;
        let bare_rate = submit_rate(&format!("{}/echo", bare.base)).await;
        let seed_rate = match &seed {
            Some(seed) => submit_rate(&format!("{}/echo/", seed.base)).await,
            None => f64::NAN,
        };
        if round > 0 {
            // Round 0 warms connections and allocators.
            rates[0].push(ours);
            rates[1].push(bare_rate);
            rates[2].push(seed_rate);
        }
    }
    // The ratio of each round's neighbouring measurements, then their median: the machine's
    // speed drifts between rounds more than within one.
    let ratio = |k: usize| median(rates[0].iter().zip(&rates[k]).map(|(a, b)| a / b).collect());
    let (bare_ratio, seed_ratio) = (ratio(1), ratio(2));
    let [ours, peer, seed_rate] = rates.map(median);
    println!(
        "submit            longrun echo {:>9.0} req/s   bare axum POST {:>9.0} req/s   ratio {:.2}x  (goal >= 0.9x; median of per-round ratios)",
        ours, peer, bare_ratio
    );
    if seed.is_some() {
        println!(
            "submit            longrun echo {:>9.0} req/s   go-longrun v0.1.0 {:>9.0} req/s   ratio {:.2}x",
            ours, seed_rate, seed_ratio
        );
    }
    drop(bare);

    // Drain: submit a count run with Accept: text/event-stream, follow the 303, read every
    // event until the terminal one; the same for each server in turn.
    let mut drains: [Vec<f64>; 2] = Default::default();
    for round in 0..=ROUNDS {
        let ours = drain(&format!("{}/count", longrun.base)).await;
        let seed_secs = match &seed {
            Some(seed) => drain(&format!("{}/count/", seed.base)).await,
            None => f64::NAN,
        };
        if round > 0 {
            drains[0].push(ours);
            drains[1].push(seed_secs);
        }
    }
    let [ours, seed_secs] = drains.map(median);
    let rate = |secs: f64| DRAIN_EVENTS as f64 / secs;
    match &seed {
        Some(_) => println!(
            "SSE drain         {DRAIN_EVENTS} events of a fresh count run, one follower: longrun {:>9.0} events/s   go-longrun v0.1.0 {:>9.0} events/s   ratio {:.2}x",
            rate(ours),
            rate(seed_secs),
            seed_secs / ours
        ),
        None => println!(
            "SSE drain         {DRAIN_EVENTS} events of a fresh count run, one follower: longrun {:>9.0} events/s",
            rate(ours)
        ),
    }
    drop(seed);

    // Fan-out: one run, many SSE followers.
    let (events, secs) = fan_out(&longrun.base, 0).await;
    println!(
        "fan-out replay    {FOLLOWERS} SSE followers of one ended count run, {events} events delivered in {secs:.2} s = {:>10.0} events/s",
        events as f64 / secs
    );
    let (events, secs) = fan_out(&longrun.base, 1).await;
    println!(
        "fan-out live      {FOLLOWERS} SSE followers of one live count run (1 ms apart), {events} events in {secs:.2} s = {:>10.0} events/s",
        events as f64 / secs
    );

    let (p50, p99) = first_event_latency(&longrun.base).await;
    println!(
        "latency           submit -> first handler event over SSE: p50 {:.0} us, p99 {:.0} us  (goal p99 < 2000 us)",
        p50, p99
    );
    drop(longrun);
}

// Memory figures, each on a fresh server process: a server warmed by the phases above would
// reuse their freed pages and report less than a new one pays.

async fn idle() {
    let fresh = ChildServer::start("--serve-longrun");
    let per_follower = idle_follower_rss(&fresh).await;
    println!(
        "idle followers    RSS growth {:.1} KiB per idle SSE follower over {IDLE_FOLLOWERS} followers, fresh server  (goal <= 8 KiB)",
        per_follower
    );
}

async fn stalled() {
    let fresh = ChildServer::start("--serve-longrun");
    let stalled = stalled_followers(&fresh).await;
    println!(
        "stalled followers {STALLED_FOLLOWERS} never-reading SSE followers of a {STALLED_RUN_EVENTS}-event ended run beside one reader: its drain {:.3} s vs {:.3} s alone = {:.2}x  (goal <= 2x)",
        stalled.drain_beside,
        stalled.drain_alone,
        stalled.drain_beside / stalled.drain_alone
    );
    println!(
        "stalled followers RSS growth {:.1} KiB per stalled follower, fresh server  (goal <= 16 KiB); kernel TCP memory {} -> {} pages of tcp_mem {} (goal: well under)",
        stalled.rss_per_follower_kib,
        stalled.tcp_pages_before,
        stalled.tcp_pages_during,
        stalled.tcp_mem_max
    );
}

fn median(mut samples: Vec<f64>) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Submits per second to `url` from `SUBMIT_CONCURRENCY` connections for `SUBMIT_SECONDS`.
async fn submit_rate(url: &str) -> f64 {
    let (client, url) = (reqwest::Client::new(), url.to_owned());
    per_second(move || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let res = client
                .post(&url)
                .header("content-type", "application/json")
                .body(r#"{"a":1}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
            res.bytes().await.unwrap();
        }
    })
    .await
}

/// Seconds from submitting a `count` run of `DRAIN_EVENTS` to reading its terminal event over
/// SSE, as the seed's client flow does it (POST with `Accept: text/event-stream`, follow the
/// 303). Stops at the terminal event: the seed's server never ends its streams cleanly.
async fn drain(url: &str) -> f64 {
    let start = Instant::now();
    let res = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(format!(r#"{{"n":{DRAIN_EVENTS}}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{url}: the 303 leads to the stream");
    let mut body = res.bytes_stream();
    let (mut events, mut at_start) = (0, LineStart::Yes);
    let mut tail: Vec<u8> = Vec::new();
    loop {
        let chunk = body
            .next()
            .await
            .expect("the stream holds the terminal event")
            .unwrap();
        events += count_events(&chunk, &mut at_start);
        tail.extend_from_slice(&chunk);
        if tail.windows(15).any(|w| w == b"event: success\n") {
            break;
        }
        let keep = tail.len().saturating_sub(14);
        tail.drain(..keep);
    }
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(events, DRAIN_EVENTS + 2, "{url}: every event arrives");
    secs
}

async fn submit(base: &str, object: &str, args: Value) -> String {
    let res = reqwest::Client::new()
        .post(format!("{base}/{object}"))
        .json(&args)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    format!("{base}{}", body["url"].as_str().unwrap())
}

/// Where a reader is in the line structure of an SSE body, across chunks.
#[derive(Clone, Copy, PartialEq)]
enum LineStart {
    Yes,
    /// The line began with `i`.
    AfterI,
    No,
}

/// Count SSE events (frames with an `id:` line) in a chunk; `at` carries over to the next
/// chunk, which may cut anywhere.
fn count_events(chunk: &[u8], at: &mut LineStart) -> u64 {
    let mut n = 0;
    for &b in chunk {
        *at = match (*at, b) {
            (_, b'\n') => LineStart::Yes,
            (LineStart::Yes, b'i') => LineStart::AfterI,
            (LineStart::AfterI, b'd') => {
                n += 1;
                LineStart::No
            }
            _ => LineStart::No,
        };
    }
    n
}

async fn fan_out(base: &str, interval_ms: u64) -> (u64, f64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let run = submit(
        base,
        "count",
        json!({"n": FANOUT_EVENTS, "interval_ms": interval_ms}),
    )
    .await;
    let start = Instant::now();
    let followers: Vec<_> = (0..FOLLOWERS)
        .map(|_| {
            let (client, run) = (client.clone(), run.clone());
            tokio::spawn(async move {
                let res = client
                    .get(&run)
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                    .unwrap();
                let mut body = res.bytes_stream();
                let (mut n, mut at_start) = (0, LineStart::Yes);
                while let Some(chunk) = body.next().await {
                    n += count_events(&chunk.unwrap(), &mut at_start);
                }
                assert_eq!(n, FANOUT_EVENTS + 2, "every follower sees every event");
                n
            })
        })
        .collect();
    let mut total = 0;
    for f in followers {
        total += f.await.unwrap();
    }
    (total, start.elapsed().as_secs_f64())
}

async fn idle_follower_rss(server: &ChildServer) -> f64 {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let run = submit(&server.base, "sleep", json!({"ms": 3_600_000})).await;
    // Open `count` followers and return once each has received the queued event.
    let attach = |count: usize| {
        let (client, run) = (client.clone(), run.clone());
        async move {
            let mut held = Vec::new();
            let mut pending = Vec::new();
            for _ in 0..count {
                let (client, run) = (client.clone(), run.clone());
                pending.push(tokio::spawn(async move {
                    let res = client
                        .get(&run)
                        .header("accept", "text/event-stream")
                        .send()
                        .await
                        .unwrap();
                    let mut body = res.bytes_stream();
                    let mut seen = Vec::new();
                    while !seen.windows(12).any(|w| w == b"data: null\n\n") {
                        seen.extend_from_slice(&body.next().await.unwrap().unwrap());
                    }
                    body
                }));
            }
            for p in pending {
                held.push(p.await.unwrap());
            }
            held
        }
    };
    let before = server.rss_kib();
    let held = attach(IDLE_FOLLOWERS).await;
    let after = server.rss_kib();
    drop(held);
    reqwest::Client::new().delete(&run).send().await.unwrap();
    after.saturating_sub(before) as f64 / IDLE_FOLLOWERS as f64
}

struct Stalled {
    drain_alone: f64,
    drain_beside: f64,
    rss_per_follower_kib: f64,
    tcp_pages_before: u64,
    tcp_pages_during: u64,
    tcp_mem_max: u64,
}

/// Kernel TCP memory in use, in pages (`mem` of the TCP line of /proc/net/sockstat).
fn tcp_pages() -> u64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("TCP:"))
        .and_then(|l| l.split_whitespace().skip_while(|w| *w != "mem").nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// 1,000 followers that send their request and never read a byte, beside one that drains.
async fn stalled_followers(server: &ChildServer) -> Stalled {
    let run = submit(&server.base, "count", json!({"n": STALLED_RUN_EVENTS})).await;
    let client = reqwest::Client::new();
    // Wait for the run's end: the stalled followers then face the whole log.
    let status = client
        .get(format!("{run}?wait=60&last_event_id={STALLED_RUN_EVENTS}"))
        .send()
        .await
        .unwrap();
    status.bytes().await.unwrap();
    let mut alone = Vec::new();
    for _ in 0..3 {
        alone.push(timed_drain(&client, &run).await);
    }
    let drain_alone = median(alone);
    let (tcp_pages_before, before) = (tcp_pages(), server.rss_kib());
    let addr = server.base.trim_start_matches("http://").to_owned();
    let path = run.trim_start_matches(&server.base).to_owned();
    let mut held = Vec::with_capacity(STALLED_FOLLOWERS);
    for _ in 0..STALLED_FOLLOWERS {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut socket, request.as_bytes())
            .await
            .unwrap();
        held.push(socket);
    }
    // The first drain beside them also waits while the server fills their buffers (a one-time
    // cost per connection, bounded by the send buffer); the figure is taken once they are full
    // and the server idles, as a stalled client looks after its first moments.
    timed_drain(&client, &run).await;
    let mut beside = Vec::new();
    for _ in 0..3 {
        beside.push(timed_drain(&client, &run).await);
    }
    let drain_beside = median(beside);
    let (tcp_pages_during, after) = (tcp_pages(), server.rss_kib());
    let tcp_mem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(0);
    drop(held);
    Stalled {
        drain_alone,
        drain_beside,
        rss_per_follower_kib: after.saturating_sub(before) as f64 / STALLED_FOLLOWERS as f64,
        tcp_pages_before,
        tcp_pages_during,
        tcp_mem_max,
    }
}

/// Seconds to read a run's whole SSE stream, counting its events.
async fn timed_drain(client: &reqwest::Client, run: &str) -> f64 {
    let start = Instant::now();
    let res = client
        .get(run)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let (mut n, mut at_start) = (0, LineStart::Yes);
    while let Some(chunk) = body.next().await {
        n += count_events(&chunk.unwrap(), &mut at_start);
    }
    assert_eq!(n, STALLED_RUN_EVENTS + 2, "the reader sees every event");
    start.elapsed().as_secs_f64()
}

async fn first_event_latency(base: &str) -> (f64, f64) {
    let client = reqwest::Client::new();
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES + 200 {
        let start = Instant::now();
        let res = client
            .post(format!("{base}/echo"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        res.bytes().await.unwrap();
        let res = client
            .get(format!("{base}{location}"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        let mut body = res.bytes_stream();
        let mut seen = Vec::new();
        while !seen.windows(6).any(|w| w == b"id: 1\n") {
            seen.extend_from_slice(&body.next().await.unwrap().unwrap());
        }
        if i >= 200 {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    (pct(0.50), pct(0.99))
}
