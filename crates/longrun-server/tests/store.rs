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
