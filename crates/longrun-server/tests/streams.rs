//! Byte streams (spec §27): `GET|HEAD /{object}/{id}/stream`, live tail, `Range` resume, 416,
//! lengths, the size limit, runs without a stream, durable stores.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::TestServer;
use longrun_server::{Config, ObjectOptions, RunContext, RunError, Server, ServerBuilder};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// An object `tail` whose runs write to their stream (`text/plain`) what the test sends on the
/// returned channel, and succeed when the channel is dropped: the test decides when each byte
/// is written, so no test waits on time.
fn tail(builder: ServerBuilder) -> (ServerBuilder, mpsc::UnboundedSender<Bytes>) {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let rx = Arc::new(Mutex::new(Some(rx)));
    let builder = builder.object_with(
        "tail",
        ObjectOptions {
            stream: Some("text/plain".into()),
            ..Default::default()
        },
        move |_args: Value, ctx: RunContext| {
            let rx = rx.lock().unwrap().take();
            async move {
                let mut rx = rx.ok_or_else(|| RunError::new("one run of tail per test"))?;
                let mut n = 0;
                while let Some(chunk) = rx.recv().await {
                    n += chunk.len();
                    ctx.write(chunk)?;
                }
                Ok(json!({ "n": n }))
            }
        },
    );
    (builder, tx)
}

/// A server with `tail`, and a run of it: the server, the run's writer, the run's path.
async fn tail_run() -> (TestServer, mpsc::UnboundedSender<Bytes>, String) {
    let (builder, tx) = tail(Server::builder().demo());
    let ts = TestServer::start(builder).await;
    let (run, reply) = submit(&ts, "tail", json!({})).await;
    assert_eq!(reply["stream_url"], format!("{run}/stream"));
    (ts, tx, run)
}

/// Write each piece through `tx` and read it from the open body `res` before the next one is
/// written: each reaches the reader while the run goes on. Returns all of them.
async fn live_pieces(
    tx: &mpsc::UnboundedSender<Bytes>,
    res: &mut reqwest::Response,
    pieces: Vec<Vec<u8>>,
) -> Vec<u8> {
    let mut got = Vec::new();
    for piece in pieces {
        tx.send(Bytes::from(piece.clone())).unwrap();
        let mut seen = Vec::new();
        while seen.len() < piece.len() {
            seen.extend_from_slice(&res.chunk().await.unwrap().expect("the body is open"));
        }
        assert_eq!(seen, piece);
        got.extend_from_slice(&seen);
    }
    got
}

async fn submit(ts: &TestServer, object: &str, args: Value) -> (String, Value) {
    let res = reqwest::Client::new()
        .post(ts.url(&format!("/{object}")))
        .json(&args)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    (body["url"].as_str().unwrap().to_owned(), body)
}

async fn get(ts: &TestServer, path: &str, range: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().get(ts.url(path));
    if let Some(range) = range {
        req = req.header("range", range);
    }
    req.send().await.unwrap()
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|i| (i % 251) as u8).collect()
}

async fn problem(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    assert_eq!(
        header(&res, "content-type"),
        Some("application/problem+json")
    );
    let body: Value = res.json().await.unwrap();
    let slug = body["type"].as_str().unwrap();
    (
        status,
        slug.trim_start_matches("urn:longrun:problem:").to_owned(),
    )
}

#[tokio::test]
async fn a_reader_started_before_the_bytes_gets_them_all_then_the_body_ends() {
    let (ts, tx, run) = tail_run().await;
    let mut res = get(&ts, &format!("{run}/stream"), None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-type"), Some("text/plain"));
    assert_eq!(header(&res, "content-length"), None, "live: no length yet");
    assert_eq!(header(&res, "longrun-stream-length"), Some("0"));
    let pieces: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'a' + i; 10 + i as usize]).collect();
    let got = live_pieces(&tx, &mut res, pieces).await;
    drop(tx);
    assert_eq!(
        res.chunk().await.unwrap(),
        None,
        "the body ends with the run"
    );
    let events = ts.events(&run).await;
    assert_eq!(events.last().unwrap()["value"]["n"], got.len());
}

#[tokio::test]
async fn the_bytes_demo_hash_is_the_hash_of_what_was_read() {
    let ts = TestServer::demo().await;
    let (run, reply) = submit(&ts, "bytes", json!({"n": 300_001, "chunk": 977})).await;
    let stream = reply["stream_url"].as_str().unwrap().to_owned();
    let res = get(&ts, &stream, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "content-type"),
        Some("application/octet-stream")
    );
    let body = res.bytes().await.unwrap();
    let events = ts.events(&run).await;
    let end = events.last().unwrap();
    assert_eq!(end["state"], "success", "{end}");
    assert_eq!(end["value"]["n"], 300_001);
    assert_eq!(end["value"]["sha256"], sha256(&body));
    assert_eq!(&body[..], &pattern(0, 300_001)[..]);
}

#[tokio::test]
async fn a_range_resumes_at_its_offset_with_206() {
    let ts = TestServer::demo().await;
    let (run, _) = submit(&ts, "bytes", json!({"n": 100_000, "chunk": 4096})).await;
    ts.events(&run).await;
    let stream = format!("{run}/stream");
    for offset in [0usize, 1, 4095, 4096, 65_537, 99_999] {
        let res = get(&ts, &stream, Some(&format!("bytes={offset}-"))).await;
        assert_eq!(res.status(), 206);
        assert_eq!(
            header(&res, "content-range"),
            Some(format!("bytes {offset}-99999/100000").as_str())
        );
        assert_eq!(
            header(&res, "content-length"),
            Some((100_000 - offset).to_string().as_str())
        );
        let body = res.bytes().await.unwrap();
        assert_eq!(
            &body[..],
            &pattern(offset, 100_000 - offset)[..],
            "{offset}"
        );
    }
    // A Range the server does not take (an end, a suffix, several) is ignored: 200, all.
    for range in ["bytes=1-2", "bytes=-5", "bytes=0-,5-", "lines=3-"] {
        let res = get(&ts, &stream, Some(range)).await;
        assert_eq!(res.status(), 200, "{range}");
        assert_eq!(res.bytes().await.unwrap().len(), 100_000);
    }
}

#[tokio::test]
async fn a_range_on_a_live_stream_is_206_with_an_open_end() {
    let (ts, tx, run) = tail_run().await;
    let stream = format!("{run}/stream");
    tx.send(Bytes::from_static(b"0123456789")).unwrap();
    // A range from a byte not written yet is answered once it is.
    let later = tokio::spawn({
        let url = ts.url(&stream);
        async move {
            let res = reqwest::Client::new()
                .get(url)
                .header("range", "bytes=12-")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 206);
            assert_eq!(header(&res, "content-range"), Some("bytes 12-/*"));
            res
        }
    });
    let mut res = get(&ts, &stream, Some("bytes=4-")).await;
    assert_eq!(res.status(), 206);
    assert_eq!(header(&res, "content-range"), Some("bytes 4-/*"));
    assert_eq!(header(&res, "content-length"), None);
    let mut got = Vec::new();
    while got.len() < 6 {
        got.extend_from_slice(&res.chunk().await.unwrap().unwrap());
    }
    assert_eq!(got, b"456789");
    tx.send(Bytes::from_static(b"abcdef")).unwrap();
    // Answered (live) once byte 12 is written.
    let later = later.await.unwrap();
    drop(tx);
    while let Some(chunk) = res.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"456789abcdef");
    assert_eq!(&later.bytes().await.unwrap()[..], b"cdef");
}

#[tokio::test]
async fn a_range_at_or_past_the_end_of_an_ended_stream_is_416() {
    let ts = TestServer::demo().await;
    let (run, _) = submit(&ts, "bytes", json!({"n": 10})).await;
    ts.events(&run).await;
    let stream = format!("{run}/stream");
    for range in ["bytes=10-", "bytes=11-", "bytes=99999999999-"] {
        let res = get(&ts, &stream, Some(range)).await;
        assert_eq!(header(&res, "content-range"), Some("bytes */10"), "{range}");
        assert_eq!(header(&res, "longrun-stream-length"), Some("10"));
        assert_eq!(problem(res).await, (416, "range-not-satisfiable".into()));
    }
    // An empty stream that ended: every range is past its end (RFC 9110 §14.1.1).
    let (run, _) = submit(&ts, "bytes", json!({"n": 0})).await;
    ts.events(&run).await;
    let res = get(&ts, &format!("{run}/stream"), Some("bytes=0-")).await;
    assert_eq!(header(&res, "content-range"), Some("bytes */0"));
    assert_eq!(problem(res).await.0, 416);
    let res = get(&ts, &format!("{run}/stream"), None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-length"), Some("0"));
}

#[tokio::test]
async fn head_gives_the_current_length_and_the_final_one_once_ended() {
    let (ts, tx, run) = tail_run().await;
    let stream = format!("{run}/stream");
    let client = reqwest::Client::new();
    let head = |path: String| {
        let client = client.clone();
        let url = ts.url(&path);
        async move { client.head(url).send().await.unwrap() }
    };
    let res = head(run.clone()).await;
    assert_eq!(header(&res, "longrun-stream-url"), Some(stream.as_str()));
    // Its reader wakes when bytes are visible: read them before asking HEAD.
    let mut reader = get(&ts, &stream, None).await;
    tx.send(Bytes::from_static(b"hello")).unwrap();
    let mut seen = 0;
    while seen < 5 {
        seen += reader.chunk().await.unwrap().unwrap().len();
    }
    let res = head(stream.clone()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "longrun-stream-length"), Some("5"));
    assert_eq!(
        header(&res, "content-length"),
        None,
        "live: no final length"
    );
    assert_eq!(header(&res, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&res, "content-type"), Some("text/plain"));
    assert_eq!(header(&res, "longrun-state"), Some("queued"));
    drop(tx);
    assert_eq!(reader.chunk().await.unwrap(), None);
    ts.events(&run).await;
    let res = head(stream.clone()).await;
    assert_eq!(header(&res, "longrun-stream-length"), Some("5"));
    assert_eq!(header(&res, "content-length"), Some("5"));
    assert_eq!(header(&res, "longrun-state"), Some("success"));
}

#[tokio::test]
async fn a_write_past_the_limit_is_refused_and_ends_the_run_as_error() {
    let ts = TestServer::with_config(Config {
        max_stream_bytes: 1000,
        ..Config::default()
    })
    .await;
    let (run, _) = submit(&ts, "bytes", json!({"n": 5000, "chunk": 400})).await;
    let events = ts.events(&run).await;
    let end = events.last().unwrap();
    assert_eq!(end["state"], "error");
    assert_eq!(end["value"]["limit"], 1000);
    assert_eq!(
        end["value"]["message"],
        "run exceeded the limit of 1000 stream bytes"
    );
    // The writes before the refused one are kept, whole.
    let res = get(&ts, &format!("{run}/stream"), None).await;
    assert_eq!(header(&res, "content-length"), Some("800"));
    assert_eq!(&res.bytes().await.unwrap()[..], &pattern(0, 800)[..]);
}

#[tokio::test]
async fn a_run_without_a_stream_answers_404_no_stream() {
    let ts = TestServer::demo().await;
    let (run, reply) = submit(&ts, "echo", json!({})).await;
    assert!(reply.get("stream_url").is_none(), "{reply}");
    let res = reqwest::Client::new()
        .head(ts.url(&run))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "longrun-stream-url"), None);
    let res = get(&ts, &format!("{run}/stream"), None).await;
    assert_eq!(problem(res).await, (404, "no-stream".into()));
    let res = get(
        &ts,
        "/bytes/00000000-0000-4000-8000-000000000000/stream",
        None,
    )
    .await;
    assert_eq!(problem(res).await, (404, "run-not-found".into()));
}

#[tokio::test]
async fn another_tenant_does_not_see_the_stream() {
    let auth = common::auth(&[
        ("a", "token-a", &["submit", "read"]),
        ("b", "token-b", &["submit", "read"]),
    ]);
    let ts = TestServer::start(Server::builder().demo().auth(auth)).await;
    let client = reqwest::Client::new();
    let reply: Value = client
        .post(ts.url("/bytes"))
        .bearer_auth("token-a")
        .json(&json!({"n": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let stream = reply["stream_url"].as_str().unwrap();
    let res = client
        .get(ts.url(stream))
        .bearer_auth("token-b")
        .send()
        .await
        .unwrap();
    assert_eq!(problem(res).await, (404, "run-not-found".into()));
    let res = client.get(ts.url(stream)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let res = client
        .get(ts.url(stream))
        .bearer_auth("token-a")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(&res.bytes().await.unwrap()[..], &pattern(0, 10)[..]);
}

fn sqlite(path: &std::path::Path, config: Config) -> ServerBuilder {
    Server::builder()
        .config(config)
        .store(longrun_server::StoreConfig::Sqlite {
            path: path.to_owned(),
            full_sync: false,
        })
        .demo()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_the_bytes_over_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("longrun.db");
    let ts = TestServer::start(sqlite(&path, Config::default())).await;
    let (run, reply) = submit(&ts, "bytes", json!({"n": 200_000, "chunk": 3000})).await;
    let stream = reply["stream_url"].as_str().unwrap().to_owned();
    // A live reader on a durable store gets every committed byte, then the end.
    let live = get(&ts, &stream, None).await.bytes().await.unwrap();
    let events = ts.events(&run).await;
    let sha = events.last().unwrap()["value"]["sha256"].clone();
    assert_eq!(sha256(&live), sha);
    ts.stop().await.unwrap();

    let ts = TestServer::start(sqlite(&path, Config::default())).await;
    let res = reqwest::Client::new()
        .head(ts.url(&run))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "longrun-stream-url"), Some(stream.as_str()));
    let res = get(&ts, &stream, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-length"), Some("200000"));
    let body = res.bytes().await.unwrap();
    assert_eq!(sha256(&body), sha);
    let res = get(&ts, &stream, Some("bytes=123456-")).await;
    assert_eq!(res.status(), 206);
    assert_eq!(&res.bytes().await.unwrap()[..], &body[123_456..]);
    ts.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_deletes_the_bytes_with_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("longrun.db");
    let config = Config {
        retention: std::time::Duration::ZERO,
        ..Config::default()
    };
    let ts = TestServer::start(sqlite(&path, config)).await;
    let (run, _) = submit(&ts, "bytes", json!({"n": 50_000})).await;
    // A held poll sees the end (or, ended already, the run is gone): retention 0 drops the
    // run with its end.
    let res = reqwest::Client::new()
        .get(ts.url(&run))
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap();
    if res.status() == 200 {
        let events: Vec<Value> = res.json().await.unwrap();
        assert_eq!(events.last().unwrap()["state"], "success");
    } else {
        assert_eq!(problem(res).await, (410, "run-gone".into()));
    }
    let res = get(&ts, &format!("{run}/stream"), None).await;
    assert_eq!(problem(res).await, (410, "run-gone".into()));
    ts.stop().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let chunks: i64 = conn
        .query_row("SELECT count(*) FROM stream_chunks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(chunks, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_reader_on_another_replica_gets_every_byte() {
    let Some(url) = common::postgres::database("streams on postgres").await else {
        return;
    };
    let store = longrun_server::StoreConfig::parse(&url).unwrap();
    let (builder, tx) = tail(Server::builder().store(store.clone()).demo());
    let a = TestServer::start(builder).await;
    // B knows the object too (its own runs of it are never made here).
    let (builder, _unused) = tail(Server::builder().store(store).demo());
    let b = TestServer::start(builder).await;
    let (run, _) = submit(&a, "tail", json!({})).await;
    let stream = format!("{run}/stream");
    let res = reqwest::Client::new()
        .head(b.url(&run))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&res, "longrun-stream-url"), Some(stream.as_str()));
    // Started on B before A wrote anything: each piece A writes reaches it.
    let mut res = get(&b, &stream, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-type"), Some("text/plain"));
    let pieces: Vec<Vec<u8>> = (0..4u8)
        .map(|i| vec![b'k' + i; 1000 * (i as usize + 1)])
        .collect();
    let got = live_pieces(&tx, &mut res, pieces).await;
    drop(tx);
    assert_eq!(
        res.chunk().await.unwrap(),
        None,
        "the body ends with the run"
    );
    let head = reqwest::Client::new()
        .head(b.url(&stream))
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&head, "content-length"),
        Some(got.len().to_string().as_str())
    );

    // The bytes demo, run on A, read on B once ended: the same hash, and a Range.
    let (run, reply) = submit(&a, "bytes", json!({"n": 150_000, "chunk": 7000})).await;
    let events = a.events(&run).await;
    let sha = events.last().unwrap()["value"]["sha256"].clone();
    let stream = reply["stream_url"].as_str().unwrap();
    let body = get(&b, stream, None).await.bytes().await.unwrap();
    assert_eq!(sha256(&body), sha);
    let res = get(&b, stream, Some("bytes=100000-")).await;
    assert_eq!(res.status(), 206);
    assert_eq!(
        header(&res, "content-range"),
        Some("bytes 100000-149999/150000")
    );
    assert_eq!(&res.bytes().await.unwrap()[..], &body[100_000..]);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// An exec object with `stream = true` (spec §19.4): its raw stdout is the stream, its events
/// are the lines it writes to `$LONGRUN_EVENTS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_object_streams_its_stdout_and_takes_events_from_the_fifo() {
    let script = r#"echo '{"progress": 0.5}' > "$LONGRUN_EVENTS"
printf 'hello\n'
printf 'wor'; printf 'ld'
echo '"second"' > "$LONGRUN_EVENTS"
head -c 100000 /dev/zero
echo '{"done": true}' > "$LONGRUN_RESULT""#;
    let spec: longrun_server::exec::ExecSpec = serde_json::from_value(json!({
        "command": script, "shell": true, "stream": true, "content_type": "text/plain",
    }))
    .unwrap();
    let builder =
        Server::builder().object_with("script", spec.options().unwrap(), spec.handler().unwrap());
    let ts = TestServer::start(builder).await;
    let (run, reply) = submit(&ts, "script", json!({})).await;
    let stream = reply["stream_url"].as_str().unwrap().to_owned();
    let res = get(&ts, &stream, None).await;
    assert_eq!(header(&res, "content-type"), Some("text/plain"));
    let body = res.bytes().await.unwrap();
    let mut want = b"hello\nworld".to_vec();
    want.extend_from_slice(&[0; 100_000]);
    assert!(body == want, "{} bytes", body.len());
    let events = ts.events(&run).await;
    let values: Vec<&Value> = events[1..].iter().map(|e| &e["value"]).collect();
    assert_eq!(
        values,
        [
            &json!({"progress": 0.5}),
            &json!("second"),
            &json!({"done": true})
        ]
    );
    assert_eq!(events.last().unwrap()["state"], "success");

    // Past the limit: the run ends error, the program is stopped.
    let limited = TestServer::start(
        Server::builder()
            .config(Config {
                max_stream_bytes: 1000,
                ..Config::default()
            })
            .object_with("script", spec.options().unwrap(), spec.handler().unwrap()),
    )
    .await;
    let (run, _) = submit(&limited, "script", json!({})).await;
    let events = limited.events(&run).await;
    let end = events.last().unwrap();
    assert_eq!(end["state"], "error", "{end}");
    assert_eq!(end["value"]["limit"], 1000);
}

/// A reader is a follower (§6.1): past `max_followers_per_run` a reader is refused, also one
/// whose range would wait for a byte not written yet (it is counted before it waits).
#[tokio::test]
async fn stream_readers_count_as_followers() {
    let (builder, tx) = tail(Server::builder().config(Config {
        max_followers_per_run: 1,
        ..Config::default()
    }));
    let ts = TestServer::start(builder).await;
    let (run, _) = submit(&ts, "tail", json!({})).await;
    let stream = format!("{run}/stream");
    // Its headers came: it holds the run's one slot.
    let mut first = get(&ts, &stream, None).await;
    assert_eq!(first.status(), 200);
    for range in [None, Some("bytes=3-")] {
        let res = get(&ts, &stream, range).await;
        assert_eq!(
            problem(res).await,
            (503, "too-many-followers".into()),
            "{range:?}"
        );
    }
    tx.send(Bytes::from_static(b"abcdef")).unwrap();
    drop(tx);
    let mut got = Vec::new();
    while let Some(chunk) = first.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"abcdef");
}
