//! `cargo xtask bench ws`: the WebSocket (spec §28) against SSE in the same run — draining
//! 100,000 events (raw, and through the Rust client), 1,000 runs followed over one socket
//! against 1,000 SSE streams, RSS per idle socket on a fresh server, and pubsub fan-out.
//!
//! The server runs as a child process of this binary (re-executed with `--serve`), so its
//! memory can be read from /proc; this process is the load generator. Both share the
//! machine's cores: read the ratios.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const DRAIN_EVENTS: u64 = 100_000;
const ROUNDS: usize = 5;
const RUNS: usize = 1000;
const IDLE_SOCKETS: usize = 10_000;
const SUBSCRIBERS: usize = 1000;
const PUBLICATIONS: usize = 1000;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn main() {
    if std::env::args().any(|a| a == "--serve") {
        return serve();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

fn serve() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("{}", listener.local_addr().unwrap());
        let server = longrun_server::Server::builder()
            .config(longrun_server::Config {
                max_active_runs: 100_000,
                ..Default::default()
            })
            .demo()
            .build()
            .unwrap();
        longrun_server::serve(listener, server, std::future::pending())
            .await
            .unwrap();
    });
}

struct ChildServer {
    child: Child,
    base: String,
    addr: String,
}

impl ChildServer {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().to_owned();
        ChildServer {
            base: format!("http://{addr}"),
            addr,
            child,
        }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    async fn socket(&self) -> Socket {
        tokio_tungstenite::connect_async(format!("ws://{}/_ws", self.addr))
            .await
            .unwrap()
            .0
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn submit(http: &reqwest::Client, base: &str, object: &str, args: Value) -> String {
    let reply: Value = http
        .post(format!("{base}/{object}"))
        .json(&args)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["url"].as_str().unwrap().to_owned()
}

async fn recv(ws: &mut Socket) -> Value {
    loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Events of `path` over SSE, raw: seconds and count.
async fn drain_sse(http: &reqwest::Client, base: &str, path: &str) -> (f64, u64) {
    let start = Instant::now();
    let res = http
        .get(format!("{base}{path}"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let mut decoder = longrun_proto::sse::Decoder::new();
    let mut n = 0;
    while let Some(chunk) = body.next().await {
        decoder.feed_with(&chunk.unwrap(), |item| {
            if matches!(item, longrun_proto::sse::SseItemRef::Message(_)) {
                n += 1;
            }
        });
    }
    (start.elapsed().as_secs_f64(), n)
}

/// Events of `path` over the WebSocket, raw: seconds and count.
async fn drain_ws(ws: &mut Socket, path: &str) -> (f64, u64) {
    let start = Instant::now();
    let packet = json!({"uid": 1, "m": "GET", "r": path, "h": {"accept": "text/event-stream"}});
    ws.send(Message::Text(packet.to_string().into()))
        .await
        .unwrap();
    // Each event's value is only checked to be JSON, as the SSE side's decoder only frames
    // its messages.
    #[derive(serde::Deserialize)]
    struct Packet<'a> {
        #[serde(borrow)]
        d: Option<Vec<&'a serde_json::value::RawValue>>,
        #[serde(default)]
        more: bool,
    }
    let mut n = 0;
    loop {
        let Message::Text(t) = ws.next().await.unwrap().unwrap() else {
            continue;
        };
        let p: Packet<'_> = serde_json::from_str(&t).unwrap();
        n += p.d.map_or(0, |d| d.len() as u64);
        if !p.more {
            break;
        }
    }
    (start.elapsed().as_secs_f64(), n)
}

/// The same through the Rust client core, over `transport`.
async fn drain_client(base: &str, path: &str, transport: longrun::Transport) -> (f64, u64) {
    let client = longrun::Client::builder(base.to_owned())
        .transport(transport)
        .build()
        .unwrap();
    let run = longrun::Run::from_url(&format!("{base}{path}")).unwrap();
    let start = Instant::now();
    let mut events = client.follow(&run);
    let mut n = 0;
    loop {
        let batch = events.next_raw_batch(10_000).await.unwrap();
        if batch.is_empty() {
            break;
        }
        n += batch.len() as u64;
    }
    (start.elapsed().as_secs_f64(), n)
}

async fn bench() {
    println!(
        "longrun WebSocket benchmark — release build, loopback; server and load generator share {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    let http = reqwest::Client::new();
    {
        let server = ChildServer::start();
        let run = submit(&http, &server.base, "count", json!({"n": DRAIN_EVENTS})).await;
        longrun::Client::new(&server.base)
            .unwrap()
            .wait(
                &longrun::Run::from_url(&format!("{}{run}", server.base)).unwrap(),
                None,
            )
            .await
            .unwrap();
        let mut ws = server.socket().await;
        let (mut sse, mut wss, mut csse, mut cws) = (vec![], vec![], vec![], vec![]);
        for round in 0..=ROUNDS {
            let (a, na) = drain_sse(&http, &server.base, &run).await;
            let (b, nb) = drain_ws(&mut ws, &run).await;
            let (c, nc) = drain_client(&server.base, &run, longrun::Transport::Sse).await;
            let (d, nd) = drain_client(&server.base, &run, longrun::Transport::WebSocket).await;
            assert_eq!([na, nb, nc, nd], [DRAIN_EVENTS + 2; 4]);
            if round > 0 {
                sse.push(a);
                wss.push(b);
                csse.push(c);
                cws.push(d);
            }
        }
        let rate = |s: f64| (DRAIN_EVENTS + 2) as f64 / s;
        let (sse, wss, csse, cws) = (median(sse), median(wss), median(csse), median(cws));
        println!(
            "drain, raw         ws {:.0} events/s, sse {:.0} events/s, ratio {:.2}x  (goal >= 0.8x)",
            rate(wss),
            rate(sse),
            sse / wss
        );
        println!(
            "drain, Rust client ws {:.0} events/s, sse {:.0} events/s, ratio {:.2}x  (goal >= 0.8x)",
            rate(cws),
            rate(csse),
            csse / cws
        );
        many_runs(&http, &server).await;
        fan_out(&server).await;
    }
    idle_rss().await;
}

/// 1,000 ended runs followed at once: over one socket, and over 1,000 SSE streams.
async fn many_runs(http: &reqwest::Client, server: &ChildServer) {
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(submit(http, &server.base, "count", json!({"n": 10})).await);
    }
    // Ended, so both sides read the same whole logs.
    let client = longrun::Client::new(&server.base).unwrap();
    for run in &runs {
        let run = longrun::Run::from_url(&format!("{}{run}", server.base)).unwrap();
        client.wait(&run, None).await.unwrap();
    }
    let mut ws = server.socket().await;
    let start = Instant::now();
    for (uid, run) in runs.iter().enumerate() {
        let packet =
            json!({"uid": uid, "m": "GET", "r": run, "h": {"accept": "text/event-stream"}});
        ws.send(Message::Text(packet.to_string().into()))
            .await
            .unwrap();
    }
    let mut ended = 0;
    while ended < RUNS {
        let p = recv(&mut ws).await;
        if p["more"] != true {
            assert_eq!(p["c"], 200, "{p}");
            ended += 1;
        }
    }
    let over_ws = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let followers: Vec<_> = runs
        .iter()
        .map(|run| {
            let (http, url) = (http.clone(), format!("{}{run}", server.base));
            tokio::spawn(async move {
                let res = http
                    .get(url)
                    .header("accept", "text/event-stream")
                    .send()
                    .await
                    .unwrap();
                res.bytes().await.unwrap().len()
            })
        })
        .collect();
    for f in followers {
        assert!(f.await.unwrap() > 0);
    }
    let over_sse = start.elapsed().as_secs_f64();
    println!(
        "1000 runs          over one socket {:.0} ms, over 1000 SSE streams {:.0} ms, ratio {:.2}x",
        over_ws * 1000.0,
        over_sse * 1000.0,
        over_sse / over_ws
    );
}

/// 1,000 subscribers of one topic, 1,000 publications: deliveries per second and the
/// latency from publish to receive.
async fn fan_out(server: &ChildServer) {
    let origin = Instant::now();
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut ws = server.socket().await;
        let sub = json!({"uid": i, "m": "SUB", "r": "bench.fan"});
        ws.send(Message::Text(sub.to_string().into()))
            .await
            .unwrap();
        assert_eq!(recv(&mut ws).await["c"], 200);
        subscribers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(PUBLICATIONS);
            while latencies.len() < PUBLICATIONS {
                let p = recv(&mut ws).await;
                let sent = p["d"]["data"].as_u64().unwrap();
                let now = origin.elapsed().as_micros() as u64;
                latencies.push(now.saturating_sub(sent));
            }
            (latencies, Instant::now())
        }));
    }
    let mut publisher = server.socket().await;
    let start = Instant::now();
    for uid in 0..PUBLICATIONS {
        let at = origin.elapsed().as_micros() as u64;
        let packet = json!({"uid": uid, "m": "PUB", "r": "bench.fan", "d": at});
        publisher
            .send(Message::Text(packet.to_string().into()))
            .await
            .unwrap();
        // One at a time: the latency is the delivery's, not a queue's behind the publisher.
        assert_eq!(recv(&mut publisher).await["c"], 202);
    }
    let mut all = Vec::with_capacity(SUBSCRIBERS * PUBLICATIONS);
    let mut last = start;
    for s in subscribers {
        let (latencies, done) = s.await.unwrap();
        all.extend(latencies);
        last = last.max(done);
    }
    all.sort_unstable();
    let secs = (last - start).as_secs_f64();
    let p = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)] as f64 / 1000.0;
    println!(
        "pubsub fan-out     {SUBSCRIBERS} subscribers x {PUBLICATIONS} publications: {:.0} deliveries/s, publish -> receive p50 {:.2} ms, p99 {:.2} ms",
        all.len() as f64 / secs,
        p(0.5),
        p(0.99)
    );
}

/// RSS growth per idle socket (each with one subscription) on a fresh server, beside idle
/// SSE followers on another fresh server.
async fn idle_rss() {
    let server = ChildServer::start();
    // One warm-up socket, so the growth measured is per socket, not the first one's setup.
    let mut warm = server.socket().await;
    warm.send(Message::Text(
        r#"{"uid":0,"m":"GET","r":"/_health"}"#.into(),
    ))
    .await
    .unwrap();
    recv(&mut warm).await;
    let before = server.rss_kib();
    let mut held = Vec::with_capacity(IDLE_SOCKETS);
    for i in 0..IDLE_SOCKETS {
        let mut ws = server.socket().await;
        let sub = json!({"uid": i, "m": "SUB", "r": "idle"});
        ws.send(Message::Text(sub.to_string().into()))
            .await
            .unwrap();
        assert_eq!(recv(&mut ws).await["c"], 200);
        held.push(ws);
    }
    let after = server.rss_kib();
    let per_socket = after.saturating_sub(before) as f64 / IDLE_SOCKETS as f64;
    drop(held);
    drop(server);

    let server = ChildServer::start();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let run = submit(&http, &server.base, "sleep", json!({"ms": 3_600_000})).await;
    let url = format!("{}{run}", server.base);
    let before = server.rss_kib();
    let mut streams = Vec::with_capacity(IDLE_SOCKETS);
    for _ in 0..IDLE_SOCKETS {
        let res = http
            .get(&url)
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        let mut body = res.bytes_stream();
        let mut seen = Vec::new();
        while !seen.windows(12).any(|w| w == b"data: null\n\n") {
            seen.extend_from_slice(&body.next().await.unwrap().unwrap());
        }
        streams.push(body);
    }
    let after = server.rss_kib();
    let per_follower = after.saturating_sub(before) as f64 / IDLE_SOCKETS as f64;
    drop(streams);
    println!(
        "idle sockets       RSS growth {per_socket:.1} KiB per idle WebSocket with one subscription over {IDLE_SOCKETS}, fresh server  (goal <= 16 KiB); idle SSE follower {per_follower:.1} KiB"
    );
}
