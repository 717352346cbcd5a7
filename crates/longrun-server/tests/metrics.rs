//! `GET /_metrics` (spec §13.5): the text is the Prometheus exposition format (checked line by
//! line), and between two scrapes each counter moved by exactly what happened; with tenants
//! it needs the admin scope.

mod common;

use std::collections::BTreeMap;

use common::TestServer;
use longrun_server::Server;
use serde_json::{Value, json};

/// A scrape's samples by `name{label="value",…}` (labels as written), checked strictly
/// against the text format 0.0.4: `# HELP` and `# TYPE` lines before their samples, metric
/// and label names of the allowed characters, quoted and escaped label values, numeric
/// values, no sample twice, a final newline.
fn parse(text: &str) -> BTreeMap<String, f64> {
    fn is_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }
    assert!(text.ends_with('\n'), "the text ends with a newline");
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(is_name(name, true), "{line}");
            match kind {
                "HELP" => assert!(parts.next().is_some_and(|h| !h.is_empty()), "{line}"),
                "TYPE" => {
                    let t = parts.next().unwrap();
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t),
                        "{line}"
                    );
                    assert!(
                        typed.insert(name.to_owned(), t.to_owned()).is_none(),
                        "{line}"
                    );
                }
                _ => panic!("not a HELP or TYPE line: {line}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "no blank lines");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, ""),
            Some((name, rest)) => (name, rest.strip_suffix('}').expect("labels end with }")),
        };
        assert!(is_name(name, true), "{line}");
        let mut rest = labels;
        while !rest.is_empty() {
            let (key, after) = rest.split_once("=\"").expect("label=\"value\"");
            assert!(is_name(key, false), "{line}");
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, '\\' | '"' | 'n') => escaped = false,
                    (true, _) => panic!("a bad escape: {line}"),
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    (false, '\n') => panic!("a raw newline: {line}"),
                    _ => {}
                }
            }
            let end = end.expect("a closing quote");
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
        let family = ["_bucket", "_sum", "_count", "_total"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        assert!(
            typed.contains_key(family) || typed.contains_key(name),
            "a sample before its TYPE: {line}"
        );
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "twice: {line}"
        );
    }
    samples
}

async fn scrape(http: &reqwest::Client, t: &TestServer) -> BTreeMap<String, f64> {
    let res = http.get(t.url("/_metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    parse(&res.text().await.unwrap())
}

fn get(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_what_happened() {
    let t = TestServer::demo().await;
    let http = reqwest::Client::new();
    let before = scrape(&http, &t).await;
    for name in [
        "longrun_active_runs",
        "longrun_events_appended_total",
        "longrun_long_poll_waits_total",
        "longrun_hook_deliveries_total",
        "longrun_hook_delivery_failures_total",
        "longrun_nodes{status=\"ok\"}",
        "longrun_nodes{status=\"unavailable\"}",
        "longrun_nodes{status=\"dirty\"}",
    ] {
        assert_eq!(
            before.get(name),
            Some(&0.0),
            "{name} from the start: {before:?}"
        );
    }

    // A run that succeeds, followed by long polls.
    let url = t.submit("count", json!({"n": 3, "interval_ms": 1})).await;
    let counted = t.events(&url).await;
    // (Those polls may have waited too, as the events came.)
    let mid = scrape(&http, &t).await;
    // A run that is queued until canceled: a held poll, an SSE follower.
    let sleep = t.url(&t.submit("sleep", json!({"ms": 3_600_000})).await);
    let held: Vec<Value> = http
        .get(&sleep)
        .query(&[("wait", "1")])
        .header("last-event-id", "0")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(held.is_empty(), "nothing came: the poll waited its second");
    let stream = http
        .get(&sleep)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let during = scrape(&http, &t).await;
    assert_eq!(get(&during, "longrun_active_runs"), 1.0);
    assert_eq!(get(&during, "longrun_followers{transport=\"sse\"}"), 1.0);
    let waits = "longrun_long_poll_waits_total";
    assert_eq!(get(&during, waits) - get(&mid, waits), 1.0);

    let res = http.delete(&sleep).send().await.unwrap();
    assert_eq!(res.status(), 202);
    let canceled = t.events(&sleep[t.base.len()..]).await;
    drop(stream);
    let after = scrape(&http, &t).await;
    let moved = |series: &str| get(&after, series) - get(&before, series);
    assert_eq!(moved("longrun_runs_submitted_total{object=\"count\"}"), 1.0);
    assert_eq!(moved("longrun_runs_submitted_total{object=\"sleep\"}"), 1.0);
    assert_eq!(
        moved("longrun_runs_ended_total{object=\"count\",state=\"success\"}"),
        1.0
    );
    assert_eq!(
        moved("longrun_runs_ended_total{object=\"sleep\",state=\"canceled\"}"),
        1.0
    );
    assert_eq!(
        moved("longrun_events_appended_total"),
        (counted.len() + canceled.len()) as f64
    );
    assert_eq!(get(&after, "longrun_active_runs"), 0.0);
    let requests = |method: &str, route: &str, status: &str| {
        moved(&format!(
            "longrun_http_request_duration_seconds_count{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
        ))
    };
    assert_eq!(requests("POST", "/{object}", "2xx"), 2.0);
    assert_eq!(requests("DELETE", "/{object}/{id}", "2xx"), 1.0);
    // The scrapes before this one (this one is counted once it answered).
    assert_eq!(requests("GET", "/_metrics", "2xx"), 3.0);
    // Histograms are consistent: the +Inf bucket is the count.
    for (series, count) in &after {
        if let Some(labels) = series
            .strip_prefix("longrun_http_request_duration_seconds_count{")
            .and_then(|l| l.strip_suffix('}'))
        {
            let inf =
                format!("longrun_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}}");
            assert_eq!(after.get(&inf), Some(count), "{series}");
        }
    }
    assert!(
        after.keys().all(|k| !k.contains(&url[url.len() - 36..])),
        "no label holds a run id"
    );
    t.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_count_apart() {
    let a = TestServer::demo().await;
    let b = TestServer::demo().await;
    let http = reqwest::Client::new();
    a.submit("echo", json!({})).await;
    let on_a = scrape(&http, &a).await;
    let on_b = scrape(&http, &b).await;
    let echo = "longrun_runs_submitted_total{object=\"echo\"}";
    assert_eq!(get(&on_a, echo), 1.0);
    assert_eq!(get(&on_b, echo), 0.0);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_admin_scope_with_tenants() {
    let auth = common::auth(&[
        ("acme", "lrt_acme", &["submit", "read", "cancel"]),
        ("ops", "lrt_ops", &["admin"]),
    ]);
    let t = TestServer::start(Server::builder().auth(auth).demo()).await;
    let http = reqwest::Client::new();
    for (token, status) in [
        (None, 401),
        (Some("lrt_unknown"), 401),
        (Some("lrt_acme"), 403),
        (Some("lrt_ops"), 200),
    ] {
        let mut req = http.get(t.url("/_metrics"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), status, "{token:?}");
        if status != 200 {
            assert_eq!(res.headers()["content-type"], "application/problem+json");
        } else {
            parse(&res.text().await.unwrap());
        }
    }
    t.stop().await.unwrap();
}

/// Hook attempts (delivered, failed) and nodes by health, each moved by what happened: the
/// server is its own hook receiver (`POST /echo` answers 201, `/_nothing` 404) and its own
/// worker node (its `/_health` is the node's health path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_attempts_and_nodes_are_counted() {
    let t = TestServer::with_config(longrun_server::Config {
        hook_secret: Some("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()),
        hook_allow: vec!["127.0.0.1".into()],
        // One attempt each: a failed delivery is not tried again.
        hook_retry: vec![std::time::Duration::ZERO],
        ..longrun_server::Config::default()
    })
    .await;
    let http = reqwest::Client::new();
    let mut attempts = t.server.hook_attempts();
    for (path, recorded) in [("/echo", 1), ("/_nothing", 2)] {
        let res = http
            .post(t.url("/echo"))
            .header("longrun-hook", t.url(path))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        attempts.wait_for(|n| *n >= recorded).await.unwrap();
    }
    let registration = json!({"port": t.addr.port(), "health_check": "/_health",
        "services": [{"topic": "selfsvc", "group": "g", "path": "/echo", "timeout": 5}]});
    let res = http
        .post(t.url("/_nodes"))
        .json(&registration)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let samples = scrape(&http, &t).await;
    assert_eq!(get(&samples, "longrun_hook_deliveries_total"), 1.0);
    assert_eq!(get(&samples, "longrun_hook_delivery_failures_total"), 1.0);
    assert_eq!(get(&samples, "longrun_nodes{status=\"ok\"}"), 1.0);
    assert_eq!(get(&samples, "longrun_nodes{status=\"unavailable\"}"), 0.0);
    t.stop().await.unwrap();
}
