//! `Idempotency-Key` on submit: the same key gets the first reply again, marked as a replay;
//! other arguments with it are refused; racing duplicates make one run; on every store, across
//! a restart and across replicas; keys are per tenant.

mod common;

use std::collections::BTreeSet;

use common::TestServer;
use longrun_proto::ProblemKind;
use longrun_server::{Server, StoreConfig};
use serde_json::{Value, json};

struct Reply {
    status: u16,
    replayed: bool,
    body: Value,
}

async fn post(base: &str, key: &str, object: &str, args: Value, token: Option<&str>) -> Reply {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/{object}"))
        .header("idempotency-key", key)
        .json(&args);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    Reply {
        status: res.status().as_u16(),
        replayed: res
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true"),
        body: res.json().await.unwrap(),
    }
}

/// Many submits with one key at once, spread over `bases`: every reply names the same run,
/// and exactly one of them is not a replay.
async fn racing(bases: &[String], key: &str) -> String {
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let base = bases[i % bases.len()].clone();
            let key = key.to_owned();
            tokio::spawn(
                async move { post(&base, &key, "sleep", json!({"ms": 3_600_000}), None).await },
            )
        })
        .collect();
    let mut ids = BTreeSet::new();
    let mut first = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 201, "{}", reply.body);
        ids.insert(reply.body["id"].as_str().unwrap().to_owned());
        first += usize::from(!reply.replayed);
    }
    assert_eq!(ids.len(), 1, "one run for one key: {ids:?}");
    assert_eq!(first, 1, "one reply is the first, the others replays");
    ids.into_iter().next().unwrap()
}

async fn behaviour_on(store: StoreConfig) -> TestServer {
    let t = TestServer::start(Server::builder().store(store).demo()).await;
    let first = post(&t.base, "order-1", "echo", json!({"a": 1, "b": [2]}), None).await;
    assert_eq!((first.status, first.replayed), (201, false));
    // The same arguments, members in another order: the same request.
    let again = post(&t.base, "order-1", "echo", json!({"b": [2], "a": 1}), None).await;
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.body, first.body, "the first reply again");
    for (object, args) in [("echo", json!({"a": 2})), ("count", json!({"n": 1}))] {
        let reused = post(&t.base, "order-1", object, args, None).await;
        assert_eq!(reused.status, 422);
        assert_eq!(
            reused.body["type"],
            ProblemKind::IdempotencyKeyReused.type_uri()
        );
    }
    for bad in ["", &"k".repeat(256)] {
        let res = post(&t.base, bad, "echo", json!({}), None).await;
        assert_eq!(res.status, 400, "{bad:?}");
        assert_eq!(
            res.body["type"],
            ProblemKind::InvalidIdempotencyKey.type_uri()
        );
    }
    racing(std::slice::from_ref(&t.base), "race-1").await;
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submits_on_memory() {
    behaviour_on(StoreConfig::Memory)
        .await
        .stop()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submits_on_sqlite_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Sqlite {
        path: dir.path().join("longrun.db"),
        full_sync: false,
    };
    let t = behaviour_on(store.clone()).await;
    let first = post(&t.base, "order-2", "echo", json!({"x": 1}), None).await;
    t.stop().await.unwrap();
    let t = TestServer::start(Server::builder().store(store).demo()).await;
    let again = post(&t.base, "order-2", "echo", json!({"x": 1}), None).await;
    assert_eq!((again.status, again.replayed), (201, true));
    assert_eq!(again.body, first.body);
    let reused = post(&t.base, "order-2", "echo", json!({"x": 2}), None).await;
    assert_eq!(
        reused.status, 422,
        "a key read back still guards its arguments"
    );
    t.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submits_across_postgres_replicas() {
    let Some(url) = common::postgres::database("idempotency on postgres").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = behaviour_on(store.clone()).await;
    let b = TestServer::start(Server::builder().store(store).demo()).await;
    let first = post(&a.base, "order-3", "echo", json!({"x": 1}), None).await;
    let on_b = post(&b.base, "order-3", "echo", json!({"x": 1}), None).await;
    assert_eq!(
        (on_b.status, on_b.replayed),
        (201, true),
        "a key stored by another replica"
    );
    assert_eq!(on_b.body, first.body);
    assert_eq!(
        post(&b.base, "order-3", "echo", json!({"x": 9}), None)
            .await
            .status,
        422
    );
    racing(&[a.base.clone(), b.base.clone()], "race-2").await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

/// Keys are per tenant: another tenant's same key is its own, and never sees the first reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_per_tenant() {
    let scopes: &[&str] = &["submit", "read"];
    let auth = common::auth(&[("acme", "lrt_acme", scopes), ("beta", "lrt_beta", scopes)]);
    let t = TestServer::start(Server::builder().auth(auth).demo()).await;
    let acme = post(&t.base, "k", "echo", json!({"x": 1}), Some("lrt_acme")).await;
    let beta = post(&t.base, "k", "echo", json!({"y": 2}), Some("lrt_beta")).await;
    assert_eq!((acme.status, beta.status), (201, 201));
    assert!(!beta.replayed, "another tenant's key is its own");
    assert_ne!(acme.body["id"], beta.body["id"]);
    let again = post(&t.base, "k", "echo", json!({"x": 1}), Some("lrt_acme")).await;
    assert_eq!((again.replayed, &again.body), (true, &acme.body));
    t.stop().await.unwrap();
}
