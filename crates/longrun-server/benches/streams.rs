//! `cargo xtask bench streams`: reading runs' byte streams (spec §27) against the same bytes
//! from a plain route that answers one `Bytes` body (the most any HTTP server can do with it),
//! in one run: an ended stream in memory and in SQLite, a live stream read while the `bytes`
//! demo writes it, many readers of one stream at once, and the Rust client's `stream`.
//!
//! Server and readers share the machine's cores, the same way for every row: read the ratios.

use std::time::{Duration, Instant};

use futures::StreamExt;
use longrun_server::{Config, Server, StoreConfig};
use serde_json::{Value, json};

/// The bytes of one stream.
const N: usize = 64 * 1024 * 1024;
/// The demo's write size.
const CHUNK: usize = 64 * 1024;
/// Readers of one stream at once.
const FAN_OUT: usize = 32;

/// The allocator `longrun serve` ships with, so the server measured here is what it runs.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench());
}

/// A server on a loopback port, with the demo objects and a plain route `/_plain` beside it.
async fn start(store: StoreConfig) -> String {
    let server = Server::builder()
        .config(Config {
            max_stream_bytes: 2 * N as u64,
            ..Config::default()
        })
        .store(store)
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
    base
}

async fn plain_server() -> String {
    let body = bytes::Bytes::from(vec![7u8; N]);
    let app = axum::Router::new().route(
        "/_plain",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn submit(http: &reqwest::Client, base: &str, args: Value) -> String {
    let reply: Value = http
        .post(format!("{base}/bytes"))
        .json(&args)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    reply["stream_url"].as_str().unwrap().to_owned()
}

/// Read `url` to its end; the bytes read.
async fn drain(http: &reqwest::Client, url: &str) -> usize {
    let mut body = http.get(url).send().await.unwrap().bytes_stream();
    let mut n = 0;
    while let Some(chunk) = body.next().await {
        n += chunk.unwrap().len();
    }
    n
}

/// Wait until the stream at `url` has ended (its HEAD has a Content-Length).
async fn ended(http: &reqwest::Client, url: &str) {
    while http
        .head(url)
        .send()
        .await
        .unwrap()
        .headers()
        .get("content-length")
        .is_none()
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn row(name: &str, bytes: usize, took: Duration) {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "{name:<44} {mib:>8.0} MiB {:>9.1} ms {:>9.0} MiB/s",
        took.as_secs_f64() * 1000.0,
        mib / took.as_secs_f64()
    );
}

async fn bench() {
    let http = reqwest::Client::new();
    println!(
        "byte streams: {} MiB each, written in {} KiB writes",
        N >> 20,
        CHUNK >> 10
    );
    let plain = plain_server().await;
    let start_at = Instant::now();
    let n = drain(&http, &format!("{plain}/_plain")).await;
    row(
        "plain route (one Bytes body, the peer)",
        n,
        start_at.elapsed(),
    );

    let dir = tempfile::tempdir().unwrap();
    let stores = [
        ("memory", StoreConfig::Memory),
        (
            "sqlite",
            StoreConfig::Sqlite {
                path: dir.path().join("bench.db"),
                full_sync: false,
            },
        ),
    ];
    for (store_name, store) in stores {
        let base = start(store).await;
        // Live: the reader starts with the run and gets each write as it is committed.
        let at = Instant::now();
        let stream = submit(&http, &base, json!({"n": N, "chunk": CHUNK})).await;
        let n = drain(&http, &format!("{base}{stream}")).await;
        row(
            &format!("{store_name}: live, from submit to the end"),
            n,
            at.elapsed(),
        );
        // Ended: served from the run's chunks.
        let url = format!("{base}{stream}");
        ended(&http, &url).await;
        let at = Instant::now();
        let n = drain(&http, &url).await;
        row(&format!("{store_name}: ended, one reader"), n, at.elapsed());
        let at = Instant::now();
        let readers = (0..FAN_OUT).map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { drain(&http, &url).await })
        });
        let mut total = 0;
        for reader in readers.collect::<Vec<_>>() {
            total += reader.await.unwrap();
        }
        row(
            &format!("{store_name}: ended, {FAN_OUT} readers at once (sum)"),
            total,
            at.elapsed(),
        );
        let client = longrun::Client::new(&base).unwrap();
        let run = longrun::Run::from_url(url.trim_end_matches("/stream")).unwrap();
        let at = Instant::now();
        let mut bytes = client.stream(&run);
        let mut n = 0;
        while let Some(chunk) = bytes.next().await {
            n += chunk.unwrap().len();
        }
        row(
            &format!("{store_name}: ended, longrun::Client::stream"),
            n,
            at.elapsed(),
        );
    }
}
