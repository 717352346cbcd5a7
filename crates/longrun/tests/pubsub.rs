//! Pubsub through the client core (spec §28.5) against the real server: order, `since`,
//! resume from the next offset after the socket is cut, and a reader that falls behind.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use longrun::{Client, ErrorKind, Reconnect, Transport};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

fn fast() -> Reconnect {
    Reconnect {
        max_attempts: 50,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

/// A TCP proxy whose open connections can all be cut at once.
struct Proxy {
    url: String,
    pipes: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let pipes: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let held = pipes.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    let mut server = TcpStream::connect(upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                held.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { url, pipes }
    }

    fn cut(&self) {
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_arrive_in_order_from_http_and_websocket_publishers() {
    let base = common::demo_server().await;
    let http = Client::new(&base).unwrap();
    let ws = Client::builder(base.clone())
        .transport(Transport::WebSocket)
        .build()
        .unwrap();
    // From offset 0: whether the subscription is up before the first publication or not,
    // each arrives once (replayed from the history, or live).
    let mut sub = http.subscribe("orders.eu", Some(0));
    for i in 0..10 {
        let publisher = if i % 2 == 0 { &http } else { &ws };
        let offset = publisher
            .publish("orders.eu", &json!({"i": i}))
            .await
            .unwrap();
        assert_eq!(offset, i, "offsets are dense per topic");
    }
    let mut got = Vec::new();
    for _ in 0..10 {
        let p = sub.next().await.unwrap().unwrap();
        assert_eq!(p.topic, "orders.eu");
        got.push((p.offset, p.data["i"].as_u64().unwrap()));
    }
    let expected: Vec<(u64, u64)> = (0..10).map(|i| (i, i)).collect();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_and_a_cut_socket_resumes_from_the_next_offset() {
    let base = common::demo_server().await;
    let direct = Client::new(&base).unwrap();
    for i in 0..5 {
        assert_eq!(direct.publish("log", &json!(i)).await.unwrap(), i);
    }
    let proxy = Proxy::start(&base).await;
    let client = Client::builder(proxy.url.clone())
        .reconnect(fast())
        .build()
        .unwrap();
    let mut sub = client.subscribe("log", Some(2));
    let mut offsets = Vec::new();
    for _ in 0..3 {
        offsets.push(sub.next().await.unwrap().unwrap().offset);
    }
    assert_eq!(offsets, [2, 3, 4]);
    // The socket dies; meanwhile more is published. The subscription comes back from 5.
    proxy.cut();
    for i in 5..10 {
        assert_eq!(direct.publish("log", &json!(i)).await.unwrap(), i);
    }
    for _ in 5..10 {
        let p = sub.next().await.unwrap().unwrap();
        assert_eq!(p.data, json!(p.offset));
        offsets.push(p.offset);
    }
    assert_eq!(offsets, (2..10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_falls_behind_is_resumed_not_buffered_for() {
    let base = common::demo_server().await;
    let client = Client::builder(base.clone())
        .reconnect(fast())
        .build()
        .unwrap();
    let mut sub = client.subscribe("bulk", Some(0));
    // 500 publications while nobody reads: far more than the subscription's queue (64).
    let publisher = Client::new(&base).unwrap();
    for i in 0..500 {
        publisher.publish("bulk", &json!(i)).await.unwrap();
    }
    let mut offsets = Vec::new();
    while offsets.len() < 500 {
        offsets.push(sub.next().await.unwrap().unwrap().offset);
    }
    assert_eq!(offsets, (0..500).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_topics_are_typed_errors() {
    let base = common::demo_server().await;
    let client = Client::new(&base).unwrap();
    let err = client.publish("_runs", &json!(1)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let mut sub = client.subscribe("a..b", None);
    let err = sub.next().await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(sub.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_returns_once_the_server_holds_the_subscription() {
    let base = common::demo_server().await;
    let client = Client::new(&base).unwrap();
    client.publish("ready.t", &json!("before")).await.unwrap();
    // Without `since`: from now. Once `ready` returns, nothing published is missed.
    let mut sub = client.subscribe("ready.t", None);
    let acked = sub.ready().await.unwrap();
    assert_eq!(
        acked,
        longrun::Subscribed {
            offset: 1,
            recovered: true
        }
    );
    // A second call answers the same, without a packet.
    assert_eq!(sub.ready().await.unwrap(), acked);
    client.publish("ready.t", &json!("after")).await.unwrap();
    let p = sub.next().await.unwrap().unwrap();
    assert_eq!((p.offset, p.data), (1, json!("after")));

    // `since` on a topic the server does not hold: acknowledged, but not recovered.
    let mut gone = client.subscribe("ready.never-published", Some(3));
    assert!(!gone.ready().await.unwrap().recovered);
    // A refused subscription is its error.
    let mut bad = client.subscribe("_nodes.x", None);
    assert_eq!(
        bad.ready().await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}
