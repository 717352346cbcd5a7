//! Pubsub across replicas on one Postgres database (spec §28.5): a publication made through
//! any replica reaches subscribers on every replica, in one dense sequence of offsets per
//! topic; `since` replays the same history on every replica, also one started later; the run
//! feeds have each run's `queued`, start and end once; retention deletes rows; tenants stay apart.
//!
//! No sleeps: every wait is for a packet (with a generous timeout only as a hang guard).

mod common;

use std::collections::BTreeMap;

use common::ws::{Socket, connect, recv, send};
use common::{TestServer, auth};
use longrun_server::{Config, Server, StoreConfig};
use serde_json::{Value, json};

/// The next packet of `uid`.
async fn recv_of(ws: &mut Socket, uid: &str) -> Value {
    loop {
        let p = recv(ws).await;
        if p["uid"] == uid {
            return p;
        }
    }
}

/// Subscribe and return the ack's `d` (`{offset, recovered}`).
async fn subscribe(ws: &mut Socket, uid: &str, topic: &str, since: Option<u64>) -> Value {
    let mut packet = json!({"uid": uid, "m": "SUB", "r": topic});
    if let Some(s) = since {
        packet["d"] = json!({ "since": s });
    }
    send(ws, packet).await;
    let ack = recv_of(ws, uid).await;
    assert_eq!(ack["c"], 200, "{ack}");
    ack["d"].clone()
}

/// `n` publications of subscription `uid`: `(offset, data)` in the order they came.
async fn publications(ws: &mut Socket, uid: &str, n: usize) -> Vec<(u64, Value)> {
    let mut got = Vec::new();
    while got.len() < n {
        let p = recv_of(ws, uid).await;
        assert_eq!(p["m"], "PUB", "{p}");
        got.push((p["d"]["offset"].as_u64().unwrap(), p["d"]["data"].clone()));
    }
    got
}

async fn http_publish(server: &TestServer, topic: &str, data: Value) -> u64 {
    let res = reqwest::Client::new()
        .post(server.url(&format!("/_topics/{topic}")))
        .json(&data)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    res.json::<Value>().await.unwrap()["offset"]
        .as_u64()
        .unwrap()
}

async fn ws_publish(ws: &mut Socket, uid: &str, topic: &str, data: Value) -> u64 {
    send(ws, json!({"uid": uid, "m": "PUB", "r": topic, "d": data})).await;
    let reply = recv_of(ws, uid).await;
    assert_eq!(reply["c"], 202, "{reply}");
    reply["d"]["offset"].as_u64().unwrap()
}

async fn replica(store: &StoreConfig, config: Config) -> TestServer {
    TestServer::start(Server::builder().store(store.clone()).config(config).demo()).await
}

/// A replica of `store` with these tenants and tokens.
async fn tenant_replica(store: &StoreConfig, tokens: &[(&str, &str, &[&str])]) -> TestServer {
    TestServer::start(
        Server::builder()
            .store(store.clone())
            .demo()
            .auth(auth(tokens)),
    )
    .await
}

async fn db(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_through_any_replica_reach_every_replica_once_in_one_dense_sequence() {
    let Some(url) = common::postgres::database("pubsub across replicas").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = replica(&store, Config::default()).await;
    let b = replica(&store, Config::default()).await;
    let mut on_a = connect(&a, None).await;
    let mut on_b = connect(&b, None).await;
    assert_eq!(
        subscribe(&mut on_a, "sa", "chat", None).await,
        json!({"offset": 0, "recovered": true})
    );
    subscribe(&mut on_b, "sb", "chat", None).await;
    // A pattern subscriber on A hears the topic too.
    let mut pattern_a = connect(&a, None).await;
    subscribe(&mut pattern_a, "pa", "ch*", None).await;

    // Through both replicas at once, over HTTP and over the socket.
    let mut pub_a = connect(&a, None).await;
    let mut pub_b = connect(&b, None).await;
    let http = futures::future::join_all((0..10).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        async move {
            (
                http_publish(server, "chat", json!({"http": i})).await,
                json!({"http": i}),
            )
        }
    }));
    let over_ws = async {
        let mut made = Vec::new();
        for i in 0..5 {
            let on_a = ws_publish(&mut pub_a, &format!("a{i}"), "chat", json!({"ws_a": i})).await;
            made.push((on_a, json!({"ws_a": i})));
            let on_b = ws_publish(&mut pub_b, &format!("b{i}"), "chat", json!({"ws_b": i})).await;
            made.push((on_b, json!({"ws_b": i})));
        }
        made
    };
    let (mut made, ws_made) = tokio::join!(http, over_ws);
    made.extend(ws_made);
    let by_offset: BTreeMap<u64, Value> = made.iter().cloned().collect();
    assert_eq!(by_offset.len(), 20, "no offset twice: {made:?}");
    assert_eq!(
        by_offset.keys().copied().collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>(),
        "dense from 0"
    );
    let want: Vec<(u64, Value)> = by_offset.into_iter().collect();
    assert_eq!(publications(&mut on_a, "sa", 20).await, want);
    assert_eq!(publications(&mut on_b, "sb", 20).await, want);
    assert_eq!(publications(&mut pattern_a, "pa", 20).await, want);

    // Once each: the next packet of each subscription is the next publication.
    let last = http_publish(&b, "chat", json!("last")).await;
    assert_eq!(last, 20);
    let next = vec![(20, json!("last"))];
    assert_eq!(publications(&mut on_a, "sa", 1).await, next);
    assert_eq!(publications(&mut on_b, "sb", 1).await, next);
    assert_eq!(publications(&mut pattern_a, "pa", 1).await, next);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replays_the_same_history_on_a_replica_that_started_after() {
    let Some(url) = common::postgres::database("pubsub since across replicas").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = replica(&store, Config::default()).await;
    let mut made = Vec::new();
    for i in 0..6 {
        made.push((
            http_publish(&a, "news", json!({"n": i})).await,
            json!({"n": i}),
        ));
    }
    // B did not exist when they were published.
    let b = replica(&store, Config::default()).await;
    let mut on_b = connect(&b, None).await;
    assert_eq!(
        subscribe(&mut on_b, "s", "news", Some(2)).await,
        json!({"offset": 6, "recovered": true})
    );
    assert_eq!(publications(&mut on_b, "s", 4).await, made[2..]);
    // The same on A, which saw them published.
    let mut on_a = connect(&a, None).await;
    subscribe(&mut on_a, "s", "news", Some(2)).await;
    assert_eq!(publications(&mut on_a, "s", 4).await, made[2..]);
    // Then live, with no gap and nothing twice, on both.
    let mut pub_b = connect(&b, None).await;
    assert_eq!(ws_publish(&mut pub_b, "p", "news", json!("live")).await, 6);
    assert_eq!(publications(&mut on_b, "s", 1).await, [(6, json!("live"))]);
    assert_eq!(publications(&mut on_a, "s", 1).await, [(6, json!("live"))]);
    // A third subscriber from 0, on B again (the history it holds now is the database's).
    let mut again = connect(&b, None).await;
    subscribe(&mut again, "t", "news", Some(0)).await;
    let mut all = made.clone();
    all.push((6, json!("live")));
    assert_eq!(publications(&mut again, "t", 7).await, all);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// The `_runs` feed entries of `uid` until `n` came: `(offset, id, state)`.
async fn feed(ws: &mut Socket, uid: &str, n: usize) -> Vec<(u64, String, String)> {
    publications(ws, uid, n)
        .await
        .into_iter()
        .map(|(o, d)| {
            (
                o,
                d["id"].as_str().unwrap().to_owned(),
                d["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_feeds_on_one_replica_have_the_runs_of_every_replica_once_each() {
    let Some(url) = common::postgres::database("run feeds across replicas").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = replica(&store, Config::default()).await;
    let b = replica(&store, Config::default()).await;
    let mut on_a = connect(&a, None).await;
    subscribe(&mut on_a, "all", "_runs", None).await;
    let mut echo_a = connect(&a, None).await;
    subscribe(&mut echo_a, "echo", "_runs.echo", None).await;
    let id_of = |path: String| path.rsplit('/').next().unwrap().to_owned();
    let first = id_of(b.submit("echo", json!({"x": 1})).await);
    let second = id_of(b.submit("echo", json!({"x": 2})).await);
    let third = id_of(a.submit("echo", json!({"x": 3})).await);
    let got = feed(&mut on_a, "all", 6).await;
    let offsets: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(offsets, (0..6).collect::<Vec<_>>(), "{got:?}");
    for id in [&first, &second, &third] {
        let states: Vec<&str> = got
            .iter()
            .filter(|g| &g.1 == id)
            .map(|g| g.2.as_str())
            .collect();
        assert_eq!(states, ["queued", "success"], "run {id}: {got:?}");
    }
    let per_object = feed(&mut echo_a, "echo", 6).await;
    assert_eq!(
        per_object.iter().map(|g| (&g.1, &g.2)).collect::<Vec<_>>(),
        got.iter().map(|g| (&g.1, &g.2)).collect::<Vec<_>>()
    );
    // Nothing twice: the next entries are a new run's, on both feeds.
    let fourth = id_of(b.submit("echo", json!({"x": 4})).await);
    let next = feed(&mut on_a, "all", 2).await;
    assert_eq!(
        next,
        [
            (6, fourth.clone(), "queued".to_owned()),
            (7, fourth.clone(), "success".to_owned())
        ]
    );
    assert_eq!(feed(&mut echo_a, "echo", 2).await[0].1, fourth);
    // One row per run event and feed in the database, whichever replica ran it.
    let rows: i64 = db(&url)
        .await
        .query_one(
            "SELECT count(*) FROM longrun.publications WHERE topic = '_runs'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 8);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runs_start_is_on_the_feeds_once_between_its_queued_and_its_end() {
    let Some(url) = common::postgres::database("run starts across replicas").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = replica(&store, Config::default()).await;
    let b = replica(&store, Config::default()).await;
    let mut on_a = connect(&a, None).await;
    subscribe(&mut on_a, "all", "_runs", None).await;
    let id_of = |path: String| path.rsplit('/').next().unwrap().to_owned();
    // `count` writes `running` events: its event 1 is its start, committed by B.
    let counted = id_of(b.submit("count", json!({"n": 3})).await);
    assert_eq!(
        feed(&mut on_a, "all", 3).await,
        [
            (0, counted.clone(), "queued".to_owned()),
            (1, counted.clone(), "running".to_owned()),
            (2, counted.clone(), "success".to_owned())
        ]
    );
    // `echo` writes none: it has no start.
    let echoed = id_of(b.submit("echo", json!({})).await);
    assert_eq!(
        feed(&mut on_a, "all", 2).await,
        [
            (3, echoed.clone(), "queued".to_owned()),
            (4, echoed.clone(), "success".to_owned())
        ]
    );
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_the_rows_past_the_history() {
    let Some(url) = common::postgres::database("pubsub retention").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let config = Config {
        topic_history: 3,
        ..Config::default()
    };
    let a = replica(&store, config.clone()).await;
    for i in 0..10 {
        assert_eq!(http_publish(&a, "t", json!(i)).await, i);
    }
    let client = db(&url).await;
    let kept: Vec<i64> = client
        .query(
            "SELECT n FROM longrun.publications WHERE topic = 't' ORDER BY n",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, [7, 8, 9]);
    // A replica started now has only those to replay, and says the rest are gone.
    let b = replica(&store, config).await;
    let mut on_b = connect(&b, None).await;
    assert_eq!(
        subscribe(&mut on_b, "s", "t", Some(0)).await,
        json!({"offset": 10, "recovered": false})
    );
    assert_eq!(
        publications(&mut on_b, "s", 3).await,
        [(7, json!(7)), (8, json!(8)), (9, json!(9))]
    );
    // The run feeds are bounded the same way.
    for i in 0..3 {
        // Followed to its end: committed, and so published, before the subscription below.
        let run = a.submit("echo", json!({ "i": i })).await;
        a.events(&run).await;
    }
    let mut on_a = connect(&a, None).await;
    subscribe(&mut on_a, "f", "_runs", None).await;
    a.submit("echo", json!({"i": 3})).await;
    // Its `queued` and end: offsets 6 and 7, so 5 to 7 are what the table keeps.
    let got = publications(&mut on_a, "f", 2).await;
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [6, 7]);
    let feed_rows: Vec<i64> = client
        .query(
            "SELECT n FROM longrun.publications WHERE ns = '' AND topic = '_runs' ORDER BY n",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(feed_rows, [5, 6, 7]);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_topics_stay_apart_across_replicas() {
    let Some(url) = common::postgres::database("pubsub tenants across replicas").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let tokens = [
        ("a", "token-a", &["submit", "read"][..]),
        ("b", "token-b", &["submit", "read"][..]),
    ];
    let (one, two) = (
        tenant_replica(&store, &tokens).await,
        tenant_replica(&store, &tokens).await,
    );
    let mut a_on_one = connect(&one, Some("token-a")).await;
    subscribe(&mut a_on_one, "room", "room", None).await;
    let mut a_runs = connect(&one, Some("token-a")).await;
    subscribe(&mut a_runs, "runs", "_runs", None).await;
    // b's publication and run, on the other replica: a hears of neither.
    let mut b_on_two = connect(&two, Some("token-b")).await;
    assert_eq!(
        ws_publish(&mut b_on_two, "p", "room", json!("b's")).await,
        0
    );
    send(
        &mut b_on_two,
        json!({"uid": "r", "m": "POST", "r": "/echo/", "d": {}}),
    )
    .await;
    assert_eq!(recv_of(&mut b_on_two, "r").await["c"], 201);
    // a's own, on the other replica too: offset 0 of a's "room", and a's run.
    let mut a_on_two = connect(&two, Some("token-a")).await;
    assert_eq!(
        ws_publish(&mut a_on_two, "p", "room", json!("a's")).await,
        0
    );
    send(
        &mut a_on_two,
        json!({"uid": "r", "m": "POST", "r": "/echo/", "d": {}}),
    )
    .await;
    let submitted = recv_of(&mut a_on_two, "r").await;
    assert_eq!(submitted["c"], 201);
    assert_eq!(
        publications(&mut a_on_one, "room", 1).await,
        [(0, json!("a's"))]
    );
    let runs = feed(&mut a_runs, "runs", 2).await;
    assert_eq!(
        runs[0].1,
        submitted["d"]["id"].as_str().unwrap(),
        "{runs:?}"
    );
    assert_eq!((runs[0].0, runs[1].0), (0, 1), "a's feed has a's runs only");
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_postgres_delivers_what_was_published_meanwhile() {
    let Some(url) = common::postgres::database("pubsub reconnect").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = replica(&store, Config::default()).await;
    let admin = db(&url).await;
    let before: std::time::SystemTime = admin.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let b = replica(&store, Config::default()).await;
    let mut on_b = connect(&b, None).await;
    subscribe(&mut on_b, "s", "room", None).await;
    assert_eq!(http_publish(&a, "room", json!(0)).await, 0);
    assert_eq!(publications(&mut on_b, "s", 1).await, [(0, json!(0))]);

    // B's connections only (opened after `before`): its notifications of what A publishes
    // now are lost, and it reads them once it is connected again.
    let cut = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND backend_start >= $1",
            &[&before],
        )
        .await
        .unwrap();
    assert_eq!(cut.len(), 2, "B's journal and reading connections");
    for i in 1..4 {
        assert_eq!(http_publish(&a, "room", json!(i)).await, i);
    }
    assert_eq!(
        publications(&mut on_b, "s", 3).await,
        [(1, json!(1)), (2, json!(2)), (3, json!(3))]
    );
    // And live again, once each.
    assert_eq!(http_publish(&a, "room", json!(4)).await, 4);
    assert_eq!(publications(&mut on_b, "s", 1).await, [(4, json!(4))]);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_topics_is_one_limit_over_the_replicas() {
    let Some(url) = common::postgres::database("pubsub max topics").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let config = Config {
        max_topics: 2,
        ..Config::default()
    };
    let a = replica(&store, config.clone()).await;
    let b = replica(&store, config).await;
    assert_eq!(http_publish(&a, "one", json!(1)).await, 0);
    assert_eq!(http_publish(&b, "two", json!(2)).await, 0);
    let refused = reqwest::Client::new()
        .post(a.url("/_topics/three"))
        .json(&json!(3))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    let problem: Value = refused.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("too-many-topics"),
        "{problem}"
    );
    // A topic it holds takes publications still, through either replica.
    assert_eq!(http_publish(&a, "two", json!(2)).await, 1);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscriber_hears_topics_only_other_replicas_use() {
    let Some(url) = common::postgres::database("pubsub patterns across replicas").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = replica(&store, Config::default()).await;
    let b = replica(&store, Config::default()).await;
    let mut on_a = connect(&a, None).await;
    subscribe(&mut on_a, "p", "news.*", None).await;
    let mut pub_b = connect(&b, None).await;
    for i in 0..3 {
        assert_eq!(
            ws_publish(&mut pub_b, &format!("x{i}"), "news.x", json!(i)).await,
            i
        );
        assert_eq!(
            ws_publish(&mut pub_b, &format!("y{i}"), "news.y", json!(i)).await,
            i
        );
    }
    ws_publish(&mut pub_b, "other", "sports", json!("no")).await;
    let mut by_topic: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for _ in 0..6 {
        let p = recv_of(&mut on_a, "p").await;
        let topic = p["r"].as_str().unwrap().to_owned();
        assert_eq!(p["d"]["data"], p["d"]["offset"], "{p}");
        by_topic
            .entry(topic)
            .or_default()
            .push(p["d"]["offset"].as_u64().unwrap());
    }
    let want = BTreeMap::from([
        ("news.x".to_owned(), vec![0, 1, 2]),
        ("news.y".to_owned(), vec![0, 1, 2]),
    ]);
    assert_eq!(by_topic, want);
    // Nothing else came before A's answer to its own next request.
    send(&mut on_a, json!({"uid": "h", "m": "GET", "r": "/_health"})).await;
    assert_eq!(recv(&mut on_a).await["uid"], "h");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_of_any_name_length_is_heard_across_replicas() {
    let Some(url) = common::postgres::database("pubsub long tenant names").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    // 6000 bytes: longer than a notification could carry whole.
    let long = "é".repeat(3000);
    let tokens = [(long.as_str(), "token-long", &["submit", "read"][..])];
    let (one, two) = (
        tenant_replica(&store, &tokens).await,
        tenant_replica(&store, &tokens).await,
    );
    let mut room = connect(&one, Some("token-long")).await;
    subscribe(&mut room, "room", "room", None).await;
    let mut runs = connect(&one, Some("token-long")).await;
    subscribe(&mut runs, "runs", "_runs", None).await;
    let mut on_two = connect(&two, Some("token-long")).await;
    assert_eq!(ws_publish(&mut on_two, "p", "room", json!("hi")).await, 0);
    assert_eq!(publications(&mut room, "room", 1).await, [(0, json!("hi"))]);
    send(
        &mut on_two,
        json!({"uid": "r", "m": "POST", "r": "/echo/", "d": {}}),
    )
    .await;
    assert_eq!(recv_of(&mut on_two, "r").await["c"], 201);
    let got = feed(&mut runs, "runs", 2).await;
    assert_eq!(
        (got[0].2.as_str(), got[1].2.as_str()),
        ("queued", "success")
    );
    one.stop().await.unwrap();
    two.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_loses_nothing_published_before_it_through_another_replica() {
    let Some(url) = common::postgres::database("pubsub unsubscribe across replicas").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = replica(&store, Config::default()).await;
    let b = replica(&store, Config::default()).await;
    let mut on_a = connect(&a, None).await;
    subscribe(&mut on_a, "s", "room", None).await;
    let mut pub_b = connect(&b, None).await;
    for i in 0..20 {
        ws_publish(&mut pub_b, &format!("p{i}"), "room", json!(i)).await;
    }
    // Sent once B acknowledged all of them, whatever A delivered so far.
    send(&mut on_a, json!({"uid": "u", "m": "UNSUB", "r": "room"})).await;
    let mut got = Vec::new();
    loop {
        let p = recv(&mut on_a).await;
        if p["uid"] == "u" {
            assert_eq!(p["c"], 200, "{p}");
            break;
        }
        got.push(p["d"]["offset"].as_u64().unwrap());
    }
    assert_eq!(
        got,
        (0..20).collect::<Vec<_>>(),
        "every one before the UNSUB's answer"
    );
    // Nothing after it: A's next packet is the answer to its next request.
    ws_publish(&mut pub_b, "late", "room", json!("late")).await;
    send(&mut on_a, json!({"uid": "h", "m": "GET", "r": "/_health"})).await;
    assert_eq!(recv(&mut on_a).await["uid"], "h");
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_history_nothing_is_replayed_and_live_goes_on() {
    let Some(url) = common::postgres::database("pubsub no history").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let config = Config {
        topic_history: 0,
        ..Config::default()
    };
    let a = replica(&store, config.clone()).await;
    let b = replica(&store, config).await;
    for i in 0..2 {
        assert_eq!(http_publish(&a, "t", json!(i)).await, i);
    }
    let mut on_b = connect(&b, None).await;
    assert_eq!(
        subscribe(&mut on_b, "s", "t", Some(0)).await,
        json!({"offset": 2, "recovered": false})
    );
    assert_eq!(http_publish(&a, "t", json!(2)).await, 2);
    assert_eq!(publications(&mut on_b, "s", 1).await, [(2, json!(2))]);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
