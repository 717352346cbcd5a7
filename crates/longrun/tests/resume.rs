//! Exactly once, in order, whatever the network does: every follow here goes through a TCP
//! proxy that cuts the connection at a chosen byte of the server's answer — inside the head,
//! right after it, inside an SSE frame, between two frames, inside the chunked encoding, inside
//! a long-poll body, or at points drawn from a seeded generator — and the client must still
//! hand out every event of the run once, ids 0..=n+1, ending `success`.
//!
//! The proxy counts its connections and the cuts it made, so each test also shows that the
//! follow really was cut and really reconnected: a resume test that never resumes proves
//! nothing. Random tests print their seed; rerun one with `LONGRUN_SEED=<seed>`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use longrun::{Client, Event, FollowOptions, Reconnect, Run, State, Transport};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A reference server whose `retry:` hint is 1 ms, so resumes cost next to nothing.
async fn start_server() -> SocketAddr {
    let server = longrun_server::Server::builder()
        .config(longrun_server::Config {
            retry: Duration::from_millis(1),
            ..Default::default()
        })
        .demo()
        .build()
        .expect("the demo objects have unique names");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(longrun_server::serve(
        listener,
        server,
        std::future::pending(),
    ));
    addr
}

/// Where to cut one connection, counted in bytes of the server→client direction from the
/// start of the connection. Patterns refer to the first answer on the connection.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// After exactly this many bytes.
    At(usize),
    /// Four bytes into the first header line (after the status line).
    MidHeaders,
    /// This many bytes after the blank line that ends the head (0: right after the head).
    IntoBody(usize),
    /// Inside the `data:` line of the k-th SSE frame of the body (0-based).
    MidFrame(usize),
    /// Right after the blank line that ends the k-th SSE frame.
    BetweenFrames(usize),
    /// After the first character of the k-th chunk-size line (chunk 0 carries `retry:`).
    MidChunkSize(usize),
    /// Between the CR and the LF that close the k-th chunk's data.
    MidChunkEnd(usize),
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// The end of the k-th occurrence of `needle` at or after `from`.
fn nth_end(seen: &[u8], needle: &[u8], from: usize, k: usize) -> Option<usize> {
    let mut at = from;
    for _ in 0..k {
        at = find(seen, needle, at)? + needle.len();
    }
    find(seen, needle, at).map(|p| p + needle.len())
}

/// Where each chunk-size line starts and, once it is complete, where that chunk's data starts
/// and how long it is — as far as `seen` shows.
fn chunks(seen: &[u8], body: usize) -> Vec<(usize, Option<(usize, usize)>)> {
    let mut out = Vec::new();
    let mut start = body;
    while start <= seen.len() {
        let line = find(seen, b"\r\n", start).and_then(|end| {
            let size = std::str::from_utf8(&seen[start..end]).ok()?;
            Some((end + 2, usize::from_str_radix(size.trim(), 16).ok()?))
        });
        out.push((start, line));
        match line {
            Some((data, size)) if size > 0 => start = data + size + 2,
            _ => break,
        }
    }
    out
}

impl Cut {
    /// The offset to cut at, once `seen` (every byte of the connection so far) shows it.
    ///
    /// Every cut point lies at or after the end of the pattern that defines it, so while it is
    /// unknown it is beyond `seen`, and forwarding all of `seen` is safe.
    fn point(self, seen: &[u8]) -> Option<usize> {
        let body = || find(seen, b"\r\n\r\n", 0).map(|p| p + 4);
        let at = match self {
            Cut::At(n) => n,
            Cut::MidHeaders => find(seen, b"\r\n", 0)? + 2 + 4,
            Cut::IntoBody(n) => body()? + n,
            Cut::MidFrame(k) => {
                let id = nth_end(seen, b"id: ", body()?, k)?;
                find(seen, b"data: ", id)? + 6 + 3
            }
            Cut::BetweenFrames(k) => {
                let id = nth_end(seen, b"id: ", body()?, k)?;
                find(seen, b"\n\n", id)? + 2
            }
            Cut::MidChunkSize(k) => chunks(seen, body()?).get(k)?.0 + 1,
            Cut::MidChunkEnd(k) => {
                let (data, size) = chunks(seen, body()?).get(k)?.1?;
                data + size + 1
            }
        };
        (at <= seen.len()).then_some(at)
    }
}

/// A TCP proxy in front of the server that cuts connections as planned: the n-th connection
/// it accepts gets the n-th planned cut (later ones are left alone).
struct Proxy {
    addr: SocketAddr,
    plan: Arc<Mutex<VecDeque<Cut>>>,
    /// At a cut point, stop forwarding but keep the connection open (a half-dead connection)
    /// instead of closing it.
    stall: Arc<AtomicBool>,
    connections: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
    /// Bytes passed server→client on connections that were not cut.
    clean_bytes: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            plan: Default::default(),
            stall: Default::default(),
            connections: Default::default(),
            cuts: Default::default(),
            clean_bytes: Default::default(),
        };
        let (plan, stall, connections, cuts, clean_bytes) = (
            proxy.plan.clone(),
            proxy.stall.clone(),
            proxy.connections.clone(),
            proxy.cuts.clone(),
            proxy.clean_bytes.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                connections.fetch_add(1, Ordering::SeqCst);
                let cut = plan.lock().unwrap().pop_front();
                tokio::spawn(pipe(
                    client,
                    upstream,
                    cut,
                    stall.load(Ordering::SeqCst),
                    cuts.clone(),
                    clean_bytes.clone(),
                ));
            }
        });
        proxy
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cut the next connections as listed, and reset the counters.
    fn plan(&self, cuts: impl IntoIterator<Item = Cut>) {
        self.stall.store(false, Ordering::SeqCst);
        *self.plan.lock().unwrap() = cuts.into_iter().collect();
        self.connections.store(0, Ordering::SeqCst);
        self.cuts.store(0, Ordering::SeqCst);
        self.clean_bytes.store(0, Ordering::SeqCst);
    }

    /// Like `plan`, but the connections stall at those points instead of closing.
    fn plan_stalls(&self, stalls: impl IntoIterator<Item = Cut>) {
        self.plan(stalls);
        self.stall.store(true, Ordering::SeqCst);
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    fn clean_bytes(&self) -> usize {
        self.clean_bytes.load(Ordering::SeqCst)
    }
}

async fn pipe(
    client: TcpStream,
    upstream: SocketAddr,
    cut: Option<Cut>,
    stall: bool,
    cuts: Arc<AtomicUsize>,
    clean_bytes: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let requests = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
        let _ = server_wr.shutdown().await;
    });
    let mut seen = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match server_rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(cut) = cut {
            let from = seen.len();
            seen.extend_from_slice(&buf[..n]);
            if let Some(at) = cut.point(&seen) {
                // Counted before the client can see the cut, so a test never reads it early.
                cuts.fetch_add(1, Ordering::SeqCst);
                let _ = client_wr.write_all(&seen[from..at.max(from)]).await;
                if stall {
                    // Nothing more, and no close either: only the client can end this.
                    let _ = requests.await;
                    return;
                }
                let _ = client_wr.shutdown().await;
                requests.abort();
                return;
            }
        } else {
            clean_bytes.fetch_add(n, Ordering::SeqCst);
        }
        if client_wr.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = client_wr.shutdown().await;
    requests.abort();
}

fn reconnect_fast() -> Reconnect {
    Reconnect {
        max_attempts: 10_000,
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

/// A fresh client per follow, so no pooled connection carries over from one follow to the
/// next and the n-th connection the proxy sees is the follow's n-th.
fn proxied_client(proxy: &Proxy) -> Client {
    proxied_client_over(proxy, Transport::Sse)
}

/// A client of the proxy whose calls go by `transport` (over one WebSocket for
/// `Transport::WebSocket`: then a cut kills the socket, and the follow resumes on a new one).
fn proxied_client_over(proxy: &Proxy, transport: Transport) -> Client {
    Client::builder(proxy.url())
        .reconnect(reconnect_fast())
        .transport(transport)
        .build()
        .unwrap()
}

/// Follow `run` to its end through `client`. A `Run` carries its own URL, so the run is first
/// rebuilt on the client's base URL (the proxy).
async fn follow_all(client: &Client, run: &Run, transport: Transport) -> Vec<Event> {
    let run = &client.run(run.object(), &run.id().to_string()).unwrap();
    let options = FollowOptions {
        transport: Some(transport),
        ..Default::default()
    };
    let mut stream = client.follow_with(run, options);
    let mut events = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(ev) => events.push(ev),
            Err(e) => panic!(
                "the follow of {run} failed after {} events: {e}",
                events.len()
            ),
        }
    }
    events
}

/// The events of a `count` run of `n`: queued, n × running {"i": 1..=n}, success {"n": n}.
fn assert_count_events(events: &[Event], n: u64, context: &str) {
    let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
    if ids != (0..=n + 1).collect::<Vec<_>>() {
        panic!("{context}: expected ids 0..={}, got {ids:?}", n + 1);
    }
    assert_eq!(events[0].state, State::Queued, "{context}");
    for (i, ev) in (1..).zip(&events[1..=n as usize]) {
        assert_eq!(ev.state, State::Running, "{context}: event {i}");
        assert_eq!(ev.value["i"], json!(i), "{context}: event {i}");
    }
    let last = &events[n as usize + 1];
    assert_eq!(
        (last.state, &last.value),
        (State::Success, &json!({"n": n})),
        "{context}"
    );
}

/// The seed of a random test: `LONGRUN_SEED` if set, else a fresh one. Printed, so a failing
/// run (libtest shows a failing test's output) says how to reproduce it.
fn seed() -> u64 {
    let seed = std::env::var("LONGRUN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed}: rerun with LONGRUN_SEED={seed}");
    seed
}

/// Submit `count` directly to the server (not through the proxy) and wait for its end, so the
/// followed run is complete and its answers have a known shape.
async fn ended_count(direct: &Client, n: u64) -> Run {
    let run = direct.submit("count", json!({"n": n})).await.unwrap();
    direct.wait(&run, None).await.unwrap();
    run
}

/// Follow one ended `count` run through the proxy with `plan`, and check that every planned
/// cut happened and was followed by exactly one reconnect.
async fn follow_through_plan(
    direct: &Client,
    proxy: &Proxy,
    transport: Transport,
    n: u64,
    plan: &[Cut],
) {
    let run = ended_count(direct, n).await;
    proxy.plan(plan.iter().copied());
    let events = follow_all(&proxied_client(proxy), &run, transport).await;
    let context = format!("{transport:?} with cuts {plan:?}");
    assert_count_events(&events, n, &context);
    assert_eq!(proxy.cuts(), plan.len(), "{context}: every cut lands");
    assert_eq!(
        proxy.connections(),
        plan.len() + 1,
        "{context}: one reconnect per cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_follow_is_exactly_once_through_cuts_at_every_boundary() {
    let server = start_server().await;
    let direct = Client::new(&format!("http://{server}")).unwrap();
    let proxy = Proxy::start(server).await;
    // An SSE answer: head, chunk 0 = `retry: 1\n`, chunk 1 = the events (one shared segment of
    // the log, about 64 KiB, at most).
    let plans: &[&[Cut]] = &[
        &[Cut::At(0)],
        &[Cut::At(5)],
        &[Cut::MidHeaders],
        &[Cut::IntoBody(0)],
        &[Cut::MidChunkSize(0)],
        &[Cut::IntoBody(3)],
        &[Cut::MidChunkEnd(0)],
        &[Cut::MidChunkSize(1)],
        &[Cut::MidFrame(0)],
        &[Cut::BetweenFrames(0)],
        &[Cut::MidFrame(1)],
        &[Cut::BetweenFrames(1)],
        &[Cut::MidFrame(100)],
        &[Cut::BetweenFrames(57)],
        // Between the last `running` event and `success`, then inside `success`.
        &[Cut::BetweenFrames(200)],
        &[Cut::MidFrame(201)],
        // One cut per connection, each resuming from wherever the last one stopped.
        &[
            Cut::MidFrame(50),
            Cut::BetweenFrames(30),
            Cut::MidChunkSize(1),
            Cut::MidHeaders,
            Cut::IntoBody(0),
            Cut::MidFrame(10),
            Cut::BetweenFrames(0),
            Cut::MidChunkEnd(0),
        ],
    ];
    for plan in plans {
        follow_through_plan(&direct, &proxy, Transport::Sse, 200, plan).await;
    }
    // 1000 events take two chunks of events: cut between and inside them too.
    for plan in [
        &[Cut::MidChunkEnd(1)][..],
        &[Cut::MidChunkSize(2)],
        // Each resume starts mid-segment, so its stream holds the rest of the run only
        // (about 240, then 140 events).
        &[
            Cut::MidChunkSize(2),
            Cut::MidFrame(100),
            Cut::BetweenFrames(100),
        ],
    ] {
        follow_through_plan(&direct, &proxy, Transport::Sse, 1000, plan).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_follow_is_exactly_once_through_cuts_at_every_boundary() {
    let server = start_server().await;
    let direct = Client::new(&format!("http://{server}")).unwrap();
    let proxy = Proxy::start(server).await;
    // A long-poll answer: head with Content-Length, then one JSON array of every event.
    let plans: &[&[Cut]] = &[
        &[Cut::At(0)],
        &[Cut::At(5)],
        &[Cut::MidHeaders],
        &[Cut::IntoBody(0)],
        &[Cut::IntoBody(1)],
        &[Cut::IntoBody(1000)],
        &[Cut::IntoBody(10_000)],
        &[
            Cut::IntoBody(7000),
            Cut::MidHeaders,
            Cut::IntoBody(0),
            Cut::At(1),
            Cut::IntoBody(50),
        ],
    ];
    for plan in plans {
        follow_through_plan(&direct, &proxy, Transport::Poll, 200, plan).await;
    }
}

/// A connection that goes silent without closing (a dead peer, a stuck proxy) is dropped once
/// nothing arrives for the idle timeout, and the follow resumes on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_event_stream_is_resumed_after_the_idle_timeout() {
    const N: u64 = 200;
    let server = start_server().await;
    let direct = Client::new(&format!("http://{server}")).unwrap();
    let proxy = Proxy::start(server).await;
    let plan = [
        Cut::MidFrame(50),
        Cut::BetweenFrames(100),
        Cut::MidChunkSize(1),
    ];
    let run = ended_count(&direct, N).await;
    proxy.plan_stalls(plan);
    let client = Client::builder(proxy.url())
        .reconnect(reconnect_fast())
        .idle_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let events = follow_all(&client, &run, Transport::Sse).await;
    let context = format!("stalls at {plan:?}");
    assert_count_events(&events, N, &context);
    assert_eq!(proxy.cuts(), plan.len(), "{context}");
    assert_eq!(proxy.connections(), plan.len() + 1, "{context}");
}

/// The length of a whole uncut answer to a follow of an ended `count` run of `n`.
async fn answer_len(direct: &Client, proxy: &Proxy, transport: Transport, n: u64) -> usize {
    let run = ended_count(direct, n).await;
    proxy.plan([]);
    let events = follow_all(&proxied_client_over(proxy, transport), &run, transport).await;
    assert_count_events(&events, n, &format!("{transport:?} without cuts"));
    assert_eq!(proxy.connections(), 1);
    proxy.clean_bytes()
}

async fn random_cuts_on_ended_runs(transport: Transport) {
    const RUNS: usize = 60;
    const N: u64 = 200;
    let server = start_server().await;
    let direct = Client::new(&format!("http://{server}")).unwrap();
    let proxy = Proxy::start(server).await;
    // A later connection resumes, so its answer is shorter; drawing the first cut below the
    // whole answer's length (less a margin for header values) makes sure it lands.
    let whole = answer_len(&direct, &proxy, transport, N).await - 16;
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut total_cuts = 0;
    for i in 0..RUNS {
        let run = ended_count(&direct, N).await;
        let plan: Vec<Cut> = (0..rng.usize(1..=5))
            .map(|_| Cut::At(rng.usize(0..whole)))
            .collect();
        proxy.plan(plan.iter().copied());
        let client = proxied_client_over(&proxy, transport);
        let events = follow_all(&client, &run, transport).await;
        let context = format!("seed {seed}, run {i}, {transport:?} with cuts {plan:?}");
        assert_count_events(&events, N, &context);
        let cuts = proxy.cuts();
        assert!(cuts >= 1, "{context}: the first cut lands");
        // A cut exactly at the end of the final answer needs no reconnect.
        assert!(
            (cuts..=cuts + 1).contains(&proxy.connections()),
            "{context}: {cuts} cuts, {} connections",
            proxy.connections()
        );
        total_cuts += cuts;
    }
    assert!(total_cuts > RUNS, "seed {seed}: {total_cuts} cuts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_follow_is_exactly_once_through_cuts_at_random_points() {
    random_cuts_on_ended_runs(Transport::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_follow_is_exactly_once_through_cuts_at_random_points() {
    random_cuts_on_ended_runs(Transport::Poll).await;
}

/// The same over one WebSocket (spec §28): a cut anywhere in the socket's bytes (its
/// handshake, a packet, between packets) loses the socket; the follow resumes from its cursor
/// on a new one, every event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_follow_is_exactly_once_through_cuts_at_random_points() {
    random_cuts_on_ended_runs(Transport::WebSocket).await;
}

/// Runs still emitting while followed: SSE answers arrive event by event, long polls return
/// as soon as there is something new (so one connection carries many answers), and the cuts
/// fall wherever the offsets say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_runs_are_followed_exactly_once_through_cuts_at_random_points() {
    const N: u64 = 40;
    let server = start_server().await;
    let direct = Client::new(&format!("http://{server}")).unwrap();
    let proxy = Proxy::start(server).await;
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for transport in [Transport::Sse, Transport::Poll, Transport::WebSocket] {
        for (i, interval_ms) in [1, 2, 3].into_iter().enumerate() {
            // Each cut falls within the first 600 bytes of its connection: a head and a few
            // events, always less than the run's answer, so every cut lands.
            let plan: Vec<Cut> = (0..6).map(|_| Cut::At(rng.usize(0..600))).collect();
            proxy.plan(plan.iter().copied());
            let run = direct
                .submit("count", json!({"n": N, "interval_ms": interval_ms}))
                .await
                .unwrap();
            let client = proxied_client_over(&proxy, transport);
            let events = follow_all(&client, &run, transport).await;
            let context = format!("seed {seed}, live run {i}, {transport:?} with cuts {plan:?}");
            assert_count_events(&events, N, &context);
            // The first cut falls while the run is still going, so it forces a reconnect;
            // a later one may fall right after the terminal event and need none.
            let (cuts, connections) = (proxy.cuts(), proxy.connections());
            assert!(
                cuts >= 1 && connections >= 2 && connections >= cuts,
                "{context}: {cuts} cuts, {connections} connections"
            );
        }
    }
}

/// The blocking client resumes the same way: it drives the same follow on its own runtime.
#[test]
fn blocking_follow_is_exactly_once_through_cuts() {
    const N: u64 = 200;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, proxy) = rt.block_on(async {
        let server = start_server().await;
        (server, Proxy::start(server).await)
    });
    let direct = longrun::blocking::Client::new(&format!("http://{server}")).unwrap();
    for transport in [Transport::Sse, Transport::Poll] {
        let client = longrun::blocking::Client::from_builder(
            Client::builder(proxy.url()).reconnect(reconnect_fast()),
        )
        .unwrap();
        let run = direct.submit("count", json!({"n": N})).unwrap();
        direct.wait(&run, None).unwrap();
        let plan = [
            Cut::MidHeaders,
            Cut::IntoBody(0),
            Cut::IntoBody(2000),
            Cut::At(9000),
        ];
        proxy.plan(plan);
        let options = FollowOptions {
            transport: Some(transport),
            ..Default::default()
        };
        let run = client.run("count", &run.id().to_string()).unwrap();
        let events: Vec<Event> = client
            .follow_with(&run, options)
            .collect::<longrun::Result<_>>()
            .unwrap();
        let context = format!("blocking, {transport:?} with cuts {plan:?}");
        assert_count_events(&events, N, &context);
        assert_eq!(proxy.cuts(), plan.len(), "{context}");
        assert_eq!(proxy.connections(), plan.len() + 1, "{context}");
    }
}

/// Byte `i` of the `bytes` demo's stream (spec §18).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Read a run's byte stream to its end through `client` (rebuilt on the client's base URL).
async fn stream_all(client: &Client, run: &Run) -> Vec<u8> {
    let run = &client.run(run.object(), &run.id().to_string()).unwrap();
    let mut stream = client.stream(run);
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(e) => panic!(
                "the stream of {run} failed after {} bytes: {e}",
                bytes.len()
            ),
        }
    }
    bytes
}

/// A byte stream (spec §27) is resumed with `Range: bytes=<received>-` after each cut, in the
/// head, the body and the chunked encoding, of an ended stream and of a live one: every byte
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_stream_resumes_at_its_offset_after_every_cut() {
    const N: usize = 300_000;
    let server = start_server().await;
    let proxy = Proxy::start(server).await;
    let direct = Client::new(&format!("http://{server}")).unwrap();
    // Ended: one body with a Content-Length.
    let run = direct
        .submit("bytes", json!({"n": N, "chunk": 4096}))
        .await
        .unwrap();
    let result = direct.wait(&run, None).await.unwrap();
    assert_eq!(result["n"], N);
    let plan = [
        Cut::MidHeaders,
        Cut::IntoBody(0),
        Cut::IntoBody(1),
        Cut::IntoBody(5000),
        Cut::IntoBody(70_000),
        Cut::At(3),
    ];
    proxy.plan(plan);
    let bytes = stream_all(&proxied_client(&proxy), &run).await;
    assert!(bytes == pattern(N), "ended stream, cuts {plan:?}");
    assert_eq!(proxy.cuts(), plan.len());
    assert_eq!(proxy.connections(), plan.len() + 1);
    // Live: chunked, one chunk per write as the run writes them.
    let run = direct
        .submit("bytes", json!({"n": N, "chunk": 3000, "interval_ms": 1}))
        .await
        .unwrap();
    let plan = [
        Cut::IntoBody(0),
        Cut::MidChunkSize(2),
        Cut::MidChunkEnd(3),
        Cut::IntoBody(10_000),
    ];
    proxy.plan(plan);
    let bytes = stream_all(&proxied_client(&proxy), &run).await;
    assert!(bytes == pattern(N), "live stream, cuts {plan:?}");
    assert_eq!(proxy.cuts(), plan.len());
    assert_eq!(direct.wait(&run, None).await.unwrap()["n"], N);
    // Random cuts anywhere in the answers; eight of at most N/16 bytes each leave every
    // answer long enough to be cut.
    let mut rng = fastrand::Rng::with_seed(seed());
    let plan: Vec<Cut> = (0..8).map(|_| Cut::At(rng.usize(1..N / 16))).collect();
    proxy.plan(plan.clone());
    let bytes = stream_all(&proxied_client(&proxy), &run).await;
    assert!(bytes == pattern(N), "random cuts {plan:?}");
    assert_eq!(proxy.cuts(), plan.len());
}

/// The blocking client reads a byte stream as a `std::io::Read`, resumed after cuts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_byte_stream_is_a_read_that_resumes() {
    use std::io::Read;
    const N: usize = 100_000;
    let server = start_server().await;
    let proxy = Proxy::start(server).await;
    let plan = [Cut::MidHeaders, Cut::IntoBody(7), Cut::IntoBody(30_000)];
    proxy.plan(plan);
    let url = proxy.url();
    let bytes = tokio::task::spawn_blocking(move || {
        let direct = longrun::blocking::Client::new(&format!("http://{server}")).unwrap();
        let run = direct
            .submit("bytes", json!({"n": N, "chunk": 1000}))
            .unwrap();
        direct.wait(&run, None).unwrap();
        let client = longrun::blocking::Client::from_builder(
            Client::builder(url).reconnect(reconnect_fast()),
        )
        .unwrap();
        let run = client.run("bytes", &run.id().to_string()).unwrap();
        let mut bytes = Vec::new();
        client.stream(&run).read_to_end(&mut bytes).unwrap();
        bytes
    })
    .await
    .unwrap();
    assert!(bytes == pattern(N), "blocking, cuts {plan:?}");
    assert_eq!(proxy.cuts(), plan.len());
}

/// A run without a stream is `NotFound` (problem `no-stream`), not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_without_a_stream_is_not_found() {
    let server = start_server().await;
    let client = Client::new(&format!("http://{server}")).unwrap();
    let run = client.submit("echo", json!({})).await.unwrap();
    let err = client.stream(&run).next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), longrun::ErrorKind::NotFound, "{err}");
    assert_eq!(
        err.problem().and_then(|p| p.kind()),
        Some(longrun_proto::ProblemKind::NoStream)
    );
}
