//! A follower that stops reading, beside one that reads, against a real server on real sockets:
//! the reader gets every event, the stalled connection is reset after the stall timeout, and the
//! stalled follower, reading again from its cursor, gets the rest exactly once (spec §6.1).

use std::time::Duration;

use longrun::Client;
use longrun_proto::sse::{Decoder, SseItem, to_event};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const EVENTS: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_follower_is_cut_and_resumes_exactly_once_while_another_drains() {
    let server = longrun_server::Server::builder()
        .config(longrun_server::Config {
            retry: Duration::from_millis(1),
            stall_timeout: Duration::from_millis(200),
            ..Default::default()
        })
        .demo()
        .build()
        .expect("the demo objects have unique names");
    let mut stalled_count = server.stalled_connections();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(longrun_server::serve(
        listener,
        server,
        std::future::pending(),
    ));
    let client = Client::new(&format!("http://{addr}")).unwrap();
    let run = client.submit("count", json!({"n": EVENTS})).await.unwrap();
    client.wait(&run, None).await.unwrap();

    // The stalled follower: a socket with a small receive buffer that reads the head and the
    // first bytes of the stream, then nothing. Its run's stream (about 1.4 MB) cannot fit in
    // the two buffers, so the server's write stalls.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n",
        run.url().path()
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    let mut seen = vec![0u8; 1024];
    let n = stalled.read(&mut seen).await.unwrap();
    seen.truncate(n);
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&seen)
    );

    // Meanwhile another follower drains the run.
    let next = read_to_end(client.follow(&run), 0).await;
    assert_eq!(next, EVENTS + 2, "the reading follower got every event");

    // The server resets the stalled connection once it made no progress for 200 ms. (The
    // bound only turns a server that never cuts into a failure instead of a hang.)
    tokio::time::timeout(Duration::from_secs(60), stalled_count.wait_for(|n| *n >= 1))
        .await
        .expect("the server never cut the stalled connection")
        .unwrap();

    // Reading again, the stalled follower finds what was delivered before the cut, then the
    // end of the connection, and no terminal event: it resumes from its cursor.
    loop {
        let mut buf = [0u8; 64 * 1024];
        match stalled.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let head_end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = dechunk_prefix(&seen[head_end..]);
    let mut decoder = Decoder::new();
    let mut cursor = None;
    for item in decoder.feed(&body) {
        if let SseItem::Message(msg) = item {
            let event = to_event(&msg).unwrap();
            assert_eq!(event.id, cursor.map_or(0, |c: u64| c + 1));
            assert!(!event.state.is_terminal(), "the cut came before the end");
            cursor = Some(event.id);
        }
    }
    let cursor = cursor.expect("the first events arrived before the stall");
    assert!(
        cursor < EVENTS,
        "the stream was cut short, at event {cursor}"
    );
    let next = read_to_end(client.follow_from(&run, cursor), cursor + 1).await;
    assert_eq!(
        next,
        EVENTS + 2,
        "resumed with every event after the cursor"
    );
}

/// Read a follow to its end, checking that ids go up by one from `first`; the id after the last.
async fn read_to_end(mut events: longrun::EventStream, first: u64) -> u64 {
    let mut next = first;
    loop {
        let batch = events.next_raw_batch(4096).await.unwrap();
        if batch.is_empty() {
            return next;
        }
        for event in batch {
            assert_eq!(event.id, next, "in order, exactly once");
            next += 1;
        }
    }
}

/// The data of the complete chunks at the start of a chunked body (a cut body's last chunk
/// may be partial: its bytes count too, as SSE discards an unterminated event anyway).
fn dechunk_prefix(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol]).unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let data = &body[eol + 2..];
        if size == 0 {
            break;
        }
        if data.len() < size {
            out.extend_from_slice(data);
            break;
        }
        out.extend_from_slice(&data[..size]);
        body = data.get(size + 2..).unwrap_or_default();
    }
    out
}
