//! Tenants and tokens: every verb, for every kind of caller, on every store. A run of another
//! tenant does not exist for the caller (404, its tombstone too); no token or an unknown one
//! is 401 with `WWW-Authenticate: Bearer`; a token without the scope is 403.

mod common;

use std::time::Duration;

use common::TestServer;
use longrun_proto::ProblemKind;
use longrun_server::auth::token_hash;
use longrun_server::{Auth, Config, Server, StoreConfig};
use serde_json::{Value, json};

const ACME: &str = "lrt_acme_full";
const ACME_READER: &str = "lrt_acme_read_only";
const BETA: &str = "lrt_beta";
const OPS: &str = "lrt_ops_admin";

fn auth() -> Auth {
    common::auth(&[
        ("acme", ACME, &["submit", "read", "cancel"]),
        ("acme", ACME_READER, &["read"]),
        (
            "beta",
            BETA,
            &["submit:sleep", "submit:echo", "read", "cancel"],
        ),
        ("ops", OPS, &["admin"]),
    ])
}

/// Who calls: a token, or none.
#[derive(Debug, Clone, Copy)]
enum Who {
    Own,
    OtherTenant,
    NoToken,
    WrongToken,
    MissingScope,
    Admin,
}

impl Who {
    const ALL: [Who; 6] = [
        Who::Own,
        Who::OtherTenant,
        Who::NoToken,
        Who::WrongToken,
        Who::MissingScope,
        Who::Admin,
    ];

    fn token(self) -> Option<&'static str> {
        match self {
            Who::Own => Some(ACME),
            Who::OtherTenant => Some(BETA),
            Who::NoToken => None,
            Who::WrongToken => Some("lrt_not_a_token_of_this_server"),
            Who::MissingScope => Some(ACME_READER),
            Who::Admin => Some(OPS),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Verb {
    Submit,
    FollowSse,
    FollowPoll,
    Head,
    Cancel,
}

/// The status each caller gets for each verb on a running run of `acme` (a submit makes a
/// run of the caller's own), in the order of `Who::ALL`.
const MATRIX: [(Verb, [u16; 6]); 5] = [
    (Verb::Submit, [201, 201, 401, 401, 403, 201]),
    (Verb::FollowSse, [200, 404, 401, 401, 200, 200]),
    (Verb::FollowPoll, [200, 404, 401, 401, 200, 200]),
    (Verb::Head, [200, 404, 401, 401, 200, 200]),
    (Verb::Cancel, [202, 404, 401, 401, 403, 202]),
];

fn request(
    http: &reqwest::Client,
    t: &TestServer,
    who: Who,
    verb: Verb,
    run: &str,
) -> reqwest::RequestBuilder {
    let req = match verb {
        Verb::Submit => http.post(t.url("/sleep")).json(&json!({"ms": 3_600_000})),
        Verb::FollowSse => http.get(t.url(run)).header("accept", "text/event-stream"),
        Verb::FollowPoll => http.get(t.url(&format!("{run}?wait=0"))),
        Verb::Head => http.head(t.url(run)),
        Verb::Cancel => http.delete(t.url(run)),
    };
    match who.token() {
        Some(token) => req.bearer_auth(token),
        None => req,
    }
}

async fn submit(
    http: &reqwest::Client,
    t: &TestServer,
    token: &str,
    object: &str,
    args: Value,
) -> String {
    let res = http
        .post(t.url(&format!("/{object}")))
        .bearer_auth(token)
        .json(&args)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let body: Value = res.json().await.unwrap();
    body["url"].as_str().unwrap().to_owned()
}

async fn problem_type(res: reqwest::Response) -> String {
    let body: Value = res.json().await.unwrap();
    body["type"].as_str().unwrap_or_default().to_owned()
}

fn builder(store: StoreConfig) -> longrun_server::ServerBuilder {
    Server::builder()
        .config(Config {
            // An echo run is dropped at its end: its tombstone is in the matrix too.
            retention: Duration::ZERO,
            ..Config::default()
        })
        .store(store)
        .auth(auth())
        .demo()
}

async fn matrix_on(store: StoreConfig) {
    let t = TestServer::start(builder(store)).await;
    let http = reqwest::Client::new();
    let run = submit(&http, &t, ACME, "sleep", json!({"ms": 3_600_000})).await;
    for (verb, want) in MATRIX {
        for (who, want) in Who::ALL.into_iter().zip(want) {
            // A cancel ends the run (and retention 0 drops it): each caller cancels its own.
            let run = match verb {
                Verb::Cancel => submit(&http, &t, ACME, "sleep", json!({"ms": 3_600_000})).await,
                _ => run.clone(),
            };
            let res = request(&http, &t, who, verb, &run).send().await.unwrap();
            let got = res.status().as_u16();
            assert_eq!(got, want, "{who:?} {verb:?}");
            if got == 401 {
                let challenge = res.headers()["www-authenticate"].to_str().unwrap();
                assert!(challenge.starts_with("Bearer"), "{challenge}");
                if !matches!(verb, Verb::Head) {
                    assert_eq!(
                        problem_type(res).await,
                        ProblemKind::Unauthorized.type_uri()
                    );
                }
            } else if got == 403 {
                assert_eq!(problem_type(res).await, ProblemKind::Forbidden.type_uri());
            } else if got == 404 && !matches!(verb, Verb::Head) {
                assert_eq!(problem_type(res).await, ProblemKind::RunNotFound.type_uri());
            }
        }
    }

    // A dropped run's tombstone is the tenant's own too.
    let echo = submit(&http, &t, ACME, "echo", json!({})).await;
    let ended = http
        .get(t.url(&echo))
        .bearer_auth(ACME)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut gone = ended.status().as_u16();
    if gone == 200 {
        // Followed to its end; with retention 0 it is then a tombstone.
        ended.text().await.unwrap();
        gone = http
            .get(t.url(&echo))
            .bearer_auth(ACME)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
    }
    assert_eq!(gone, 410);
    for (who, want) in [
        (Who::OtherTenant, 404),
        (Who::Admin, 410),
        (Who::MissingScope, 410),
    ] {
        let res = request(&http, &t, who, Verb::Head, &echo)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), want, "{who:?} on a tombstone");
    }

    // A scope that names objects allows those only.
    let res = http
        .post(t.url("/count"))
        .bearer_auth(BETA)
        .json(&json!({"n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    // Health and the OpenAPI document stay open.
    for path in ["/_health", "/_openapi.json"] {
        assert_eq!(
            http.get(t.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    t.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_memory() {
    matrix_on(StoreConfig::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_sqlite_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Sqlite {
        path: dir.path().join("longrun.db"),
        full_sync: false,
    };
    matrix_on(store.clone()).await;
    // Read back: a run keeps its tenant. (The sleep is interrupted by the stop and, with
    // retention 0, is a tombstone after the restart: its tenant's, 404 for anyone else.)
    let t = TestServer::start(builder(store.clone())).await;
    let http = reqwest::Client::new();
    let run = submit(&http, &t, BETA, "sleep", json!({"ms": 3_600_000})).await;
    t.stop().await.unwrap();
    let t = TestServer::start(builder(store)).await;
    for (token, want) in [(BETA, 410), (ACME, 404), (OPS, 410)] {
        let res = http
            .head(t.url(&run))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), want, "{token} after a restart");
    }
    t.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_isolated_on_postgres() {
    let Some(url) = common::postgres::database("tenants on postgres").await else {
        return;
    };
    matrix_on(StoreConfig::parse(&url).unwrap()).await;
}

/// A replaced auth file is in force for the next request: a removed token stops working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_auth_file_drops_a_removed_token() {
    let t = TestServer::start(builder(StoreConfig::Memory)).await;
    let http = reqwest::Client::new();
    let run = submit(&http, &t, BETA, "sleep", json!({"ms": 3_600_000})).await;
    let stream = http
        .get(t.url(&run))
        .bearer_auth(BETA)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    t.server.set_auth(common::auth(&[(
        "acme",
        ACME,
        &["submit", "read", "cancel"],
    )]));
    let res = http
        .head(t.url(&run))
        .bearer_auth(BETA)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "the removed token");
    // The stream opened before goes on to the run's end.
    let res = http.delete(t.url(&run)).send().await.unwrap();
    assert_eq!(res.status(), 401);
    t.server.set_auth(auth());
    let res = http
        .delete(t.url(&run))
        .bearer_auth(BETA)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let body = stream.text().await.unwrap();
    assert!(body.contains("event: canceled"), "{body}");
    t.stop().await.unwrap();
}

#[test]
fn auth_files_are_checked() {
    let bad = [
        ("", "no [[tenant]]"),
        ("[[tenant]]\nname = \"a\"\ntoken = []\n", "at least one"),
        (
            "[[tenant]]\nname = \"a\"\n[[tenant.token]]\nhash = \"lrt_plain_token\"\nscopes = [\"read\"]\n",
            "never holds tokens",
        ),
        (
            &format!(
                "[[tenant]]\nname = \"a\"\n[[tenant.token]]\nhash = \"{}\"\nscopes = [\"write\"]\n",
                token_hash("x")
            ),
            "unknown scope",
        ),
        (
            &format!(
                "[[tenant]]\nname = \"a\"\n[[tenant.token]]\nhash = \"{h}\"\nscopes = [\"read\"]\n[[tenant]]\nname = \"b\"\n[[tenant.token]]\nhash = \"{h}\"\nscopes = [\"read\"]\n",
                h = token_hash("x")
            ),
            "listed twice",
        ),
        ("[[tenant]]\nname = \"a\"\nsecret = 1\n", "unknown field"),
        (
            &format!(
                "[[tenant]]\nname = \"a\"\nlimits = {{ submits_per_second = 0 }}\n[[tenant.token]]\nhash = \"{}\"\nscopes = [\"read\"]\n",
                token_hash("x")
            ),
            "more than 0",
        ),
    ];
    for (text, why) in bad {
        let e = Auth::from_toml(text).unwrap_err();
        assert!(e.contains(why), "{text:?}: {e}");
    }
    let (token, hash) = longrun_server::auth::new_token().unwrap();
    assert!(token.starts_with("lrt_") && token.len() == 68, "{token}");
    assert_eq!(hash, token_hash(&token));
}

/// A tenant's limits: submits beyond its burst get 429 with `Retry-After`, followers beyond
/// its count too; another tenant is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_beyond_its_limits_gets_429_and_others_do_not() {
    let text = format!(
        r#"
        [[tenant]]
        name = "small"
        # One submit per 1000 s, two at once: the third in a row is refused.
        limits = {{ submits_per_second = 0.001, submit_burst = 2, max_followers = 1 }}
        [[tenant.token]]
        hash = "{}"
        scopes = ["submit", "read"]

        [[tenant]]
        name = "big"
        [[tenant.token]]
        hash = "{}"
        scopes = ["submit", "read"]
        "#,
        token_hash("lrt_small"),
        token_hash("lrt_big")
    );
    let t = TestServer::start(
        Server::builder()
            .auth(Auth::from_toml(&text).unwrap())
            .demo(),
    )
    .await;
    let http = reqwest::Client::new();
    let first = submit(&http, &t, "lrt_small", "sleep", json!({"ms": 3_600_000})).await;
    submit(&http, &t, "lrt_small", "echo", json!({})).await;
    let refused = http
        .post(t.url("/echo"))
        .bearer_auth("lrt_small")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(
        problem_type(refused).await,
        ProblemKind::RateLimited.type_uri()
    );
    for _ in 0..3 {
        submit(&http, &t, "lrt_big", "echo", json!({})).await;
    }

    let stream = http
        .get(t.url(&first))
        .bearer_auth("lrt_small")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let second = http
        .get(t.url(&format!("{first}?wait=0")))
        .bearer_auth("lrt_small")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 429, "one follower at a time");
    assert!(second.headers().contains_key("retry-after"));
    drop(stream);
    t.stop().await.unwrap();
}

/// A read token lets a page's native EventSource (no headers) follow one run: that run only,
/// GET and HEAD only, for its tenant only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_follows_one_run_without_a_header() {
    // Default retention: the run is still there when its token is minted and after its end.
    let t = TestServer::start(Server::builder().auth(auth()).demo()).await;
    let http = reqwest::Client::new();
    let run = submit(&http, &t, ACME, "count", json!({"n": 3})).await;
    let other = submit(&http, &t, ACME, "sleep", json!({"ms": 3_600_000})).await;
    let minted = http
        .post(t.url(&format!("{run}/read-token")))
        .bearer_auth(ACME_READER)
        .send()
        .await
        .unwrap();
    assert_eq!(minted.status(), 200);
    let minted: Value = minted.json().await.unwrap();
    let (url, token) = (
        minted["url"].as_str().unwrap().to_owned(),
        minted["token"].as_str().unwrap().to_owned(),
    );
    assert!(
        url.starts_with(&format!("{run}?access_token=lrr_")),
        "{url}"
    );
    assert!(minted["expires"].as_u64().is_some());
    let body = http
        .get(t.url(&url))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("event: success"), "{body}");
    assert_eq!(http.head(t.url(&url)).send().await.unwrap().status(), 200);
    let cancel = http.delete(t.url(&format!("{other}?access_token={token}")));
    assert_eq!(
        cancel.send().await.unwrap().status(),
        401,
        "read tokens only read"
    );
    let elsewhere = http.get(t.url(&format!("{other}?access_token={token}&wait=0")));
    assert_eq!(
        elsewhere.send().await.unwrap().status(),
        401,
        "bound to its run"
    );
    // The signature's last digit changed (to another digit, whatever it was).
    let last = if token.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    let forged = http.get(t.url(&format!("{run}?access_token={forged}&wait=0")));
    assert_eq!(forged.send().await.unwrap().status(), 401);
    let beta = http
        .post(t.url(&format!("{run}/read-token")))
        .bearer_auth(BETA)
        .send()
        .await
        .unwrap();
    assert_eq!(beta.status(), 404, "another tenant's run");
    t.stop().await.unwrap();
}
