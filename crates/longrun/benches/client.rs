//! `cargo xtask bench client`: drain 100,000 small events from one run with this client,
//! beside `reqwest` + `eventsource-stream` used raw, in the same run against the same server
//! (a child process, so this process's memory is the client's alone).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use futures::StreamExt;
use longrun::{Client, FollowOptions, Transport};
use serde_json::{Value, json};

const EVENTS: u64 = 100_000;
const ROUNDS: usize = 3;

fn main() {
    if std::env::args().any(|a| a == "--serve") {
        exit_with_parent();
        let rt = tokio::runtime::Runtime::new().unwrap();
        return rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("{}", listener.local_addr().unwrap());
            let server = longrun_server::Server::builder()
                .demo()
                .build()
                .expect("the demo objects have unique names");
            longrun_server::serve(listener, server, std::future::pending())
                .await
                .unwrap();
        });
    }
    let mut child = ServerProcess(
        Command::new(std::env::current_exe().unwrap())
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut addr = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut addr)
        .unwrap();
    let base = format!("http://{}", addr.trim());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(&base));
}

/// Kills the server child when the benchmark ends, also by a panic.
struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn bench(base: &str) {
    let client = Client::new(base).unwrap();
    let run = client.submit("count", json!({"n": EVENTS})).await.unwrap();
    client.wait(&run, None).await.unwrap();
    let small = client
        .submit("count", json!({"n": EVENTS / 10}))
        .await
        .unwrap();
    client.wait(&small, None).await.unwrap();
    let total = EVENTS + 2;
    println!(
        "longrun client benchmark — drain {total} events of one ended run, release build, loopback, best of {ROUNDS}"
    );
    println!();

    let ours = best(|| drain_ours(&client, &run, Transport::Sse)).await;
    let raw = best(|| drain_raw(run.url().as_str())).await;
    let poll = best(|| drain_ours(&client, &run, Transport::Poll)).await;
    let rate = |secs: f64| total as f64 / secs;
    println!(
        "SSE drain         longrun client {:>9.0} events/s   reqwest+eventsource-stream {:>9.0} events/s   ratio {:.2}x  (goal >= 1.0x)",
        rate(ours),
        rate(raw),
        raw / ours
    );
    println!(
        "long-poll drain   longrun client {:>9.0} events/s",
        rate(poll)
    );

    // Peak RSS growth while following: a run 10x longer must not need 10x the memory.
    let growth_small = peak_growth_kib(|| drain_ours(&client, &small, Transport::Sse)).await;
    let growth_big = peak_growth_kib(|| drain_ours(&client, &run, Transport::Sse)).await;
    println!(
        "client peak RSS   growth while following {} events: {growth_small} KiB; {} events: {growth_big} KiB  (must not grow with the count)",
        EVENTS / 10 + 2,
        total
    );
}

async fn best<F, Fut>(mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = u64>,
{
    let mut best = f64::MAX;
    f().await; // warm-up
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let n = f().await;
        assert!(n > 0);
        best = best.min(start.elapsed().as_secs_f64());
    }
    best
}

async fn drain_ours(client: &Client, run: &longrun::Run, transport: Transport) -> u64 {
    let mut events = client.follow_with(
        run,
        FollowOptions {
            since: None,
            transport: Some(transport),
        },
    );
    let mut n = 0;
    while let Some(ev) = events.next().await {
        std::hint::black_box(ev.unwrap());
        n += 1;
    }
    // Every run here is a `count`: queued, n running, success.
    let expected = client.status(run).await.unwrap().last_event_id + 1;
    assert_eq!(n, expected, "{transport:?}");
    n
}

/// The peer: what a user would write by hand with the usual crates, doing the same work
/// (decode every message, parse its data as JSON, stop at the terminal event).
async fn drain_raw(url: &str) -> u64 {
    use eventsource_stream::Eventsource;
    let res = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut events = res.bytes_stream().eventsource();
    let mut n = 0;
    while let Some(ev) = events.next().await {
        let ev = ev.unwrap();
        let value: Value = serde_json::from_str(&ev.data).unwrap();
        std::hint::black_box((&ev.id, value));
        n += 1;
        if matches!(ev.event.as_str(), "success" | "error" | "canceled") {
            break;
        }
    }
    n
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn peak_growth_kib<F, Fut>(f: F) -> u64
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = u64>,
{
    // Writing 5 to clear_refs resets the peak (VmHWM) to the current RSS.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    f().await;
    status_kib("VmHWM:").saturating_sub(before)
}

/// The server child exits when its stdin closes, i.e. when the benchmark is gone however it
/// ended (even killed), so no server outlives a run.
fn exit_with_parent() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}
