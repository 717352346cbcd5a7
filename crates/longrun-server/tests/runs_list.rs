//! `GET /_runs` (spec §13.4): newest first, filtered, in pages that cover every run exactly
//! once while runs keep being created, tenant-scoped, the same from every Postgres replica
//! and after a SQLite restart; bad parameters are 400 problems.

mod common;

use std::collections::HashSet;

use common::TestServer;
use longrun_server::{Config, Server, StoreConfig};
use serde_json::{Value, json};

/// Submit and answer the run's id.
async fn submit(http: &reqwest::Client, base: &str, object: &str, args: Value) -> String {
    submit_as(http, base, None, object, args).await
}

async fn submit_as(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    object: &str,
    args: Value,
) -> String {
    let mut req = http.post(format!("{base}/{object}")).json(&args);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// One page: its runs and its next token.
async fn page(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    query: &str,
) -> (Vec<Value>, Option<String>) {
    let mut req = http.get(format!("{base}/_runs?{query}"));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "{query}: {}", res.text().await.unwrap());
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.unwrap();
    let runs = body["runs"].as_array().unwrap().clone();
    let next = body
        .get("next_page_token")
        .map(|t| t.as_str().unwrap().to_owned());
    (runs, next)
}

/// Every page of a listing, following its tokens.
async fn all_pages(
    http: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    query: &str,
) -> Vec<Value> {
    let mut runs = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let q = match &next {
            Some(t) => format!("{query}&page_token={t}"),
            None => query.to_owned(),
        };
        let (page, token_next) = page(http, base, token, &q).await;
        runs.extend(page);
        match token_next {
            Some(t) => next = Some(t),
            None => return runs,
        }
    }
}

fn ids(runs: &[Value]) -> Vec<String> {
    runs.iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Wait until a run has ended (a long poll to its terminal event).
async fn ended(http: &reqwest::Client, base: &str, object: &str, id: &str) {
    let mut cursor = None::<u64>;
    loop {
        let mut req = http.get(format!("{base}/{object}/{id}?wait=30"));
        if let Some(c) = cursor {
            req = req.header("last-event-id", c.to_string());
        }
        let events: Vec<Value> = req.send().await.unwrap().json().await.unwrap();
        if let Some(last) = events.last() {
            if ["success", "error", "canceled"].contains(&last["state"].as_str().unwrap()) {
                return;
            }
            cursor = last["id"].as_u64();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_newest_first_and_filtered() {
    let t = TestServer::demo().await;
    let http = reqwest::Client::new();
    let base = t.base.as_str();
    let echo1 = submit(&http, base, "echo", json!({"a": 1})).await;
    let sleeping = submit(&http, base, "sleep", json!({"ms": 3_600_000})).await;
    let echo2 = submit(&http, base, "echo", json!({"a": 2})).await;
    let failed = submit(&http, base, "fail", json!({})).await;
    ended(&http, base, "fail", &failed).await;

    let (runs, next) = page(&http, base, None, "").await;
    assert_eq!(next, None, "one page holds them all");
    assert_eq!(
        ids(&runs),
        [
            failed.as_str(),
            echo2.as_str(),
            sleeping.as_str(),
            echo1.as_str()
        ]
    );
    let sleep = &runs[2];
    assert_eq!(sleep["object"], "sleep");
    assert_eq!(sleep["url"], format!("/sleep/{sleeping}"));
    assert_eq!(sleep["state"], "queued", "the demo sleep emits nothing");
    assert_eq!(sleep["ended"], Value::Null);
    assert!(
        sleep.get("tenant").is_none(),
        "an open server has no tenants"
    );
    let created = sleep["created"].as_str().unwrap();
    assert!(
        humantime::parse_rfc3339(created).is_ok() && created.ends_with('Z'),
        "{created}"
    );
    let echo = &runs[3];
    assert_eq!(echo["state"], "success");
    let ended_at = humantime::parse_rfc3339(echo["ended"].as_str().unwrap()).unwrap();
    assert!(ended_at >= humantime::parse_rfc3339(echo["created"].as_str().unwrap()).unwrap());

    let listed = |query: &'static str| {
        let http = http.clone();
        async move { ids(&page(&http, base, None, query).await.0) }
    };
    assert_eq!(
        listed("object=echo").await,
        [echo2.as_str(), echo1.as_str()]
    );
    assert_eq!(
        listed("state=success").await,
        [echo2.as_str(), echo1.as_str()]
    );
    assert_eq!(listed("state=error").await, [failed.as_str()]);
    assert_eq!(listed("state=queued").await, [sleeping.as_str()]);
    assert_eq!(listed("state=running").await, Vec::<String>::new());
    assert_eq!(listed("state=active").await, [sleeping.as_str()]);
    assert_eq!(
        listed("state=ended").await,
        [failed.as_str(), echo2.as_str(), echo1.as_str()]
    );
    assert_eq!(
        listed("object=echo&state=error").await,
        Vec::<String>::new()
    );
    assert_eq!(listed("object=count").await, Vec::<String>::new());
    assert_eq!(
        listed("unknown=1&limit=1").await,
        [failed.as_str()],
        "unknown parameters are ignored"
    );

    // A canceled run is listed as canceled.
    let res = http
        .delete(t.url(&format!("/sleep/{sleeping}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    ended(&http, base, "sleep", &sleeping).await;
    assert_eq!(listed("state=canceled").await, [sleeping.as_str()]);
    t.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_runs_are_not_listed() {
    let t = TestServer::with_config(Config {
        retention: std::time::Duration::ZERO,
        ..Config::default()
    })
    .await;
    let http = reqwest::Client::new();
    let sleeping = submit(&http, &t.base, "sleep", json!({"ms": 3_600_000})).await;
    let echo = submit(&http, &t.base, "echo", json!({})).await;
    let res = http
        .head(t.url(&format!("/echo/{echo}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        410,
        "retention 0: the ended run is a tombstone"
    );
    assert_eq!(
        ids(&page(&http, &t.base, None, "").await.0),
        [sleeping.as_str()]
    );
    t.stop().await.unwrap();
}

/// Pages of 4 while two runs are created before every page: the runs that existed when the
/// listing began are each listed once, and none created meanwhile comes on a later page.
async fn pages_cover_every_run_once(submit_to: &[&str], list_from: &[&str]) {
    let http = reqwest::Client::new();
    let mut before = Vec::new();
    for i in 0..21 {
        let base = submit_to[i % submit_to.len()];
        before.push(submit(&http, base, "echo", json!({"i": i})).await);
    }
    before.reverse();
    let mut seen = Vec::new();
    let mut created_meanwhile = HashSet::new();
    let mut next: Option<String> = None;
    let mut pages = 0;
    loop {
        for i in 0..2 {
            let base = submit_to[(pages + i) % submit_to.len()];
            created_meanwhile.insert(submit(&http, base, "echo", json!({"late": pages})).await);
        }
        let base = list_from[pages % list_from.len()];
        let query = match &next {
            Some(token) => format!("limit=4&page_token={token}"),
            None => "limit=4".to_owned(),
        };
        let (runs, token) = page(&http, base, None, &query).await;
        assert!(runs.len() <= 4);
        let page_ids = ids(&runs);
        if pages > 0 {
            assert!(
                page_ids.iter().all(|id| !created_meanwhile.contains(id)),
                "page {pages} holds a run created after the listing began: {page_ids:?}"
            );
        }
        seen.extend(page_ids);
        pages += 1;
        match token {
            Some(token) => next = Some(token),
            None => break,
        }
    }
    // Page 1 came after the first two late runs: they are on it, newest first.
    let late_first: Vec<&String> = seen.iter().take_while(|id| !before.contains(id)).collect();
    assert_eq!(late_first.len(), 2, "{seen:?}");
    let rest: Vec<String> = seen[2..].to_vec();
    assert_eq!(rest, before, "every run once, newest first");
    assert_eq!(pages, (2 + before.len()).div_ceil(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_cover_every_run_exactly_once_while_runs_are_created() {
    let t = TestServer::demo().await;
    pages_cover_every_run_once(&[&t.base], &[&t.base]).await;
    t.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_and_tokens_are_400_problems() {
    let t = TestServer::demo().await;
    let http = reqwest::Client::new();
    for _ in 0..3 {
        submit(&http, &t.base, "echo", json!({})).await;
    }
    let (_, token) = page(&http, &t.base, None, "object=echo&limit=1").await;
    let token = token.expect("three runs, pages of one");
    // The same token with another limit is fine (AIP-158); with another filter it is not.
    page(
        &http,
        &t.base,
        None,
        &format!("object=echo&limit=2&page_token={token}"),
    )
    .await;
    let cases = [
        ("limit=0", "invalid-query"),
        ("limit=-1", "invalid-query"),
        ("limit=abc", "invalid-query"),
        ("limit=", "invalid-query"),
        ("limit=1&limit=2", "invalid-query"),
        ("state=done", "invalid-query"),
        ("state=", "invalid-query"),
        ("object=_bad%20name", "invalid-query"),
        ("page_token=garbage!", "invalid-page-token"),
        ("page_token=AAAA", "invalid-page-token"),
        (&*format!("page_token={token}"), "invalid-page-token"),
        (
            &*format!("object=count&page_token={token}"),
            "invalid-page-token",
        ),
        (
            &*format!("object=echo&state=success&page_token={token}"),
            "invalid-page-token",
        ),
    ];
    for (query, slug) in cases {
        let res = http
            .get(t.url(&format!("/_runs?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{query}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{query}"
        );
        let problem: Value = res.json().await.unwrap();
        assert_eq!(
            problem["type"],
            format!("urn:longrun:problem:{slug}"),
            "{query}"
        );
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
    }
    let res = http.post(t.url("/_runs")).send().await.unwrap();
    assert_eq!(res.status(), 405);
    t.stop().await.unwrap();
}

const ACME: &str = "lrt_acme_full";
const ACME_SUBMIT_ONLY: &str = "lrt_acme_submit_only";
const BETA: &str = "lrt_beta";
const OPS: &str = "lrt_ops_admin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_lists_its_own_runs_and_an_admin_every_run() {
    let auth = common::auth(&[
        ("acme", ACME, &["submit", "read", "cancel"]),
        ("acme", ACME_SUBMIT_ONLY, &["submit"]),
        ("beta", BETA, &["submit", "read"]),
        ("ops", OPS, &["admin"]),
    ]);
    let t = TestServer::start(Server::builder().auth(auth).demo()).await;
    let http = reqwest::Client::new();
    let base = t.base.as_str();
    let a1 = submit_as(&http, base, Some(ACME), "echo", json!({})).await;
    let b1 = submit_as(&http, base, Some(BETA), "echo", json!({})).await;
    let a2 = submit_as(&http, base, Some(ACME_SUBMIT_ONLY), "echo", json!({})).await;
    let o1 = submit_as(&http, base, Some(OPS), "echo", json!({})).await;

    let acme = all_pages(&http, base, Some(ACME), "limit=1").await;
    assert_eq!(ids(&acme), [a2.as_str(), a1.as_str()]);
    assert!(acme.iter().all(|r| r.get("tenant").is_none()), "{acme:?}");
    assert_eq!(
        ids(&all_pages(&http, base, Some(BETA), "").await),
        [b1.as_str()]
    );
    let all = all_pages(&http, base, Some(OPS), "limit=2").await;
    assert_eq!(
        ids(&all),
        [o1.as_str(), a2.as_str(), b1.as_str(), a1.as_str()]
    );
    let tenants: Vec<&str> = all.iter().map(|r| r["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["ops", "acme", "beta", "acme"]);

    // A token is bound to its caller's runs: beta cannot page through acme's listing.
    let (_, token) = page(&http, base, Some(ACME), "limit=1").await;
    let res = http
        .get(t.url(&format!("/_runs?limit=1&page_token={}", token.unwrap())))
        .bearer_auth(BETA)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    for (token, status) in [
        (None, 401),
        (Some("lrt_not_known"), 401),
        (Some(ACME_SUBMIT_ONLY), 403),
    ] {
        let mut req = http.get(t.url("/_runs"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{token:?}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
    t.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_lists_the_runs_it_had_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Sqlite {
        path: dir.path().join("runs.db"),
        full_sync: false,
    };
    let start = || TestServer::start(Server::builder().store(store.clone()).demo());
    let t = start().await;
    let http = reqwest::Client::new();
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(submit(&http, &t.base, "echo", json!({"i": i})).await);
    }
    let sleeping = submit(&http, &t.base, "sleep", json!({"ms": 3_600_000})).await;
    let before = all_pages(&http, &t.base, None, "limit=2").await;
    t.stop().await.unwrap();

    let t = start().await;
    let after = all_pages(&http, &t.base, None, "limit=2").await;
    assert_eq!(ids(&after), ids(&before), "the same runs in the same order");
    assert_eq!(after[0]["id"], sleeping);
    // The sleep was stopped by the shutdown; the others are as they were.
    assert_eq!(after[0]["state"], "canceled");
    for (b, a) in before.iter().zip(&after).skip(1) {
        assert_eq!(a, b);
    }
    // Runs made after the restart come first.
    let fresh = submit(&http, &t.base, "echo", json!({})).await;
    assert_eq!(
        ids(&page(&http, &t.base, None, "limit=1").await.0),
        [fresh.as_str()]
    );
    t.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_list_the_same_runs() {
    let Some(url) = common::postgres::database("runs list on postgres").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let a = TestServer::start(Server::builder().store(store.clone()).demo()).await;
    let b = TestServer::start(Server::builder().store(store).demo()).await;
    let http = reqwest::Client::new();
    pages_cover_every_run_once(&[&a.base, &b.base], &[&b.base, &a.base]).await;
    let sleeping = submit(&http, &a.base, "sleep", json!({"ms": 3_600_000})).await;
    let from_a = all_pages(&http, &a.base, None, "limit=7").await;
    let from_b = all_pages(&http, &b.base, None, "limit=3").await;
    assert_eq!(from_a, from_b);
    assert_eq!(from_a[0]["id"], sleeping);
    assert_eq!(from_a[0]["state"], "queued");
    let running = all_pages(&http, &b.base, None, "state=active").await;
    assert_eq!(ids(&running), [sleeping.as_str()]);
    assert_eq!(
        ids(&all_pages(&http, &b.base, None, "object=sleep").await),
        [sleeping.as_str()]
    );
    let ended = all_pages(&http, &b.base, None, "state=ended&limit=100").await;
    assert_eq!(ended.len(), from_a.len() - 1);
    assert!(ended.iter().all(|r| r["ended"].is_string()));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
