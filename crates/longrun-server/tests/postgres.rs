//! The Postgres store when its connections are cut (a database restart, a failover): each
//! replica connects again by itself, and runs go on: nothing acknowledged is lost, followers
//! on another replica complete.

mod common;

use common::TestServer;
use longrun_proto::Event;
use longrun_server::{Server, StoreConfig};
use serde_json::{Value, json};

/// Send until the store answers (503 with Retry-After while it reconnects), as a client would.
async fn until_stored(req: impl Fn() -> reqwest::RequestBuilder) -> reqwest::Response {
    for _ in 0..60 {
        let res = req().send().await.unwrap();
        if res.status() != 503 {
            return res;
        }
        let wait: u64 = res.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    }
    panic!("the store did not come back");
}

async fn events(http: &reqwest::Client, url: &str) -> Vec<Event> {
    let mut all: Vec<Event> = Vec::new();
    loop {
        let mut req = http.get(url).query(&[("wait", "30")]);
        if let Some(last) = all.last() {
            req = req.header("last-event-id", last.id.to_string());
        }
        let res = until_stored(|| req.try_clone().unwrap()).await;
        assert_eq!(res.status(), 200);
        all.extend(res.json::<Vec<Event>>().await.unwrap());
        if all.last().is_some_and(|e| e.state.is_terminal()) {
            return all;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_connect_again_when_postgres_drops_them() {
    let Some(url) = common::postgres::database("postgres reconnect").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = TestServer::start(Server::builder().store(store.clone()).demo()).await;
    let b = TestServer::start(Server::builder().store(store).demo()).await;
    let http = reqwest::Client::new();
    let before: Value = http
        .post(a.url("/echo"))
        .json(&json!({"x": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // Every connection to this test's database but ours goes, as in a database restart.
    let (admin, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(cut.len() >= 4, "two connections per replica: {}", cut.len());

    let submitted = until_stored(|| {
        http.post(a.url("/count"))
            .json(&json!({"n": 5, "interval_ms": 10}))
    })
    .await;
    assert_eq!(submitted.status(), 201);
    let run: Value = submitted.json().await.unwrap();
    let path = run["url"].as_str().unwrap();
    let (url_a, url_b) = (a.url(path), b.url(path));
    let (on_a, on_b) = tokio::join!(events(&http, &url_a), events(&http, &url_b));
    assert_eq!(on_a.len(), 7, "{on_a:?}");
    assert_eq!(on_a, on_b, "B follows A's run through its new connection");
    // What was committed before the cut is served as before.
    let echoed = events(&http, &b.url(before["url"].as_str().unwrap())).await;
    assert_eq!(echoed.last().unwrap().value, json!({"x": 1}));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
