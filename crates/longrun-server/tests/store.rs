//! The SQLite store on disk: retention really deletes, so a server that has run 10,000 runs
//! through retention keeps a small file and WAL however long it runs.

mod common;

use std::time::Duration;

use common::TestServer;
use longrun_server::{Config, Server, StoreConfig};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_through_retention_leave_the_file_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("longrun.db");
    let t = TestServer::start(
        Server::builder()
            .config(Config {
                retention: Duration::ZERO,
                max_tombstones: 100,
                ..Config::default()
            })
            .store(StoreConfig::Sqlite {
                path: path.clone(),
                full_sync: false,
            })
            .demo(),
    )
    .await;
    let size = || {
        let len = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        (len(&path), len(&path.with_extension("db-wal")))
    };
    let http = reqwest::Client::new();
    let submit = |from: usize| {
        let (http, url) = (http.clone(), t.url("/echo"));
        async move {
            // Eight at a time: each submit waits for its commit, and the writer groups them.
            let tasks = (0..8).map(|k| {
                let (http, url) = (http.clone(), url.clone());
                tokio::spawn(async move {
                    for i in (from + k..from + 1000).step_by(8) {
                        let body = json!({"i": i, "padding": "x".repeat(200)});
                        let res = http.post(&url).json(&body).send().await.unwrap();
                        assert_eq!(res.status(), 201);
                    }
                })
            });
            for task in tasks.collect::<Vec<_>>() {
                task.await.unwrap();
            }
        }
    };
    submit(0).await;
    let after_first = size();
    for from in (1000..10_000).step_by(1000) {
        submit(from).await;
    }
    // Every run has ended and gone (retention 0); the last commits are on disk.
    t.server.shutdown().await;
    let at_end = size();
    // Kept, the 10,000 runs would take some 3 MB; deleted, their pages are reused. The WAL
    // is checkpointed and cut back as the server goes, and emptied at shutdown.
    let (db, wal) = at_end;
    assert!(
        db <= 1024 * 1024 && wal <= 1024 * 1024,
        "10,000 runs through retention left a {db}-byte file and a {wal}-byte WAL \
         (after 1,000 runs: {after_first:?})"
    );
}

/// A file written by the first schema (runs indexed by id) is migrated at start, and what it
/// held is served as before; a file from a newer schema is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_migrate_forward_and_never_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let id = "0f8fad5b-d9cb-469f-a165-70867728950e";
    let events = [
        r#"{"id":0,"state":"queued","value":null}"#,
        r#"{"id":1,"state":"success","value":{"a":1}}"#,
    ];
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE runs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
                 object TEXT NOT NULL, created_ms INTEGER NOT NULL,
                 retention_ms INTEGER NOT NULL, ended_ms INTEGER);
             CREATE TABLE events (run INTEGER NOT NULL, id INTEGER NOT NULL,
                 event TEXT NOT NULL, PRIMARY KEY (run, id)) WITHOUT ROWID;
             CREATE TABLE tombstones (id TEXT PRIMARY KEY, object TEXT NOT NULL,
                 dropped_ms INTEGER NOT NULL);
             PRAGMA user_version = 1;",
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        conn.execute(
            "INSERT INTO runs VALUES (1, ?1, 'echo', ?2, 600000, ?2)",
            rusqlite::params![id, now],
        )
        .unwrap();
        for (i, e) in events.iter().enumerate() {
            conn.execute(
                "INSERT INTO events VALUES (1, ?1, ?2)",
                rusqlite::params![i as i64, e],
            )
            .unwrap();
        }
    }
    let store = || StoreConfig::Sqlite {
        path: path.clone(),
        full_sync: false,
    };
    let t = TestServer::start(Server::builder().store(store()).demo()).await;
    let body = reqwest::get(t.url(&format!("/echo/{id}?wait=0")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, format!("[{}]", events.join(",")));
    t.server.shutdown().await;
    drop(t);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 8, "migrated to the current schema");
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let Err(e) = Server::builder().store(store()).demo().build() else {
        panic!("a newer schema must be refused");
    };
    assert!(
        e.to_string().contains("newer than this longrun knows"),
        "{e}"
    );
}
