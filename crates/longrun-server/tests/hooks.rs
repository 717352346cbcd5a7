//! Response hooks (spec §26): real receivers in the test process (an HTTP server on an
//! ephemeral port, a unix socket speaking acomm's framing) count what they get and verify
//! signatures with `longrun::webhook::verify`. Every wait is on a receiver's own count or on
//! the server's record of attempts, never on time.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::TestServer;
use longrun_server::{Config, Server, StoreConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver answers next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Ok,
    Status(u16),
    Hang,
}

#[derive(Clone, Debug)]
struct Got {
    headers: Vec<(String, String)>,
    body: Bytes,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    fn verified(&self) -> Result<(), longrun::webhook::VerifyError> {
        let headers = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        longrun::webhook::verify(SECRET, headers, &self.body, longrun::webhook::TOLERANCE)
    }
}

/// A receiver: every request it got, a count others wait on, and what it answers.
#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    count: watch::Sender<usize>,
    /// Answers for the next requests, in order; then `default`.
    script: Arc<Mutex<Vec<Mode>>>,
    default: Arc<Mutex<Mode>>,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            got: Arc::default(),
            count: watch::Sender::new(0),
            script: Arc::default(),
            default: Arc::new(Mutex::new(Mode::Ok)),
        }
    }

    fn answer(&self, mode: Mode) {
        *self.default.lock().unwrap() = mode;
    }

    fn script(&self, modes: &[Mode]) {
        *self.script.lock().unwrap() = modes.to_vec();
    }

    fn next_mode(&self) -> Mode {
        let mut script = self.script.lock().unwrap();
        if script.is_empty() {
            *self.default.lock().unwrap()
        } else {
            script.remove(0)
        }
    }

    fn record(&self, got: Got) {
        self.got.lock().unwrap().push(got);
        self.count.send_modify(|n| *n += 1);
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) {
        let mut rx = self.count.subscribe();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("the receiver did not get {n} requests"))
            .unwrap();
    }

    /// An HTTP receiver on an ephemeral loopback port; its hook URL.
    async fn http(&self) -> String {
        async fn hook(
            State(rx): State<Receiver>,
            headers: HeaderMap,
            body: Bytes,
        ) -> axum::response::Response {
            let headers = headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let mode = rx.next_mode();
            rx.record(Got { headers, body });
            match mode {
                Mode::Ok => StatusCode::NO_CONTENT.into_response(),
                Mode::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
                Mode::Hang => std::future::pending().await,
            }
        }
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/hook")
    }

    /// A unix socket receiver speaking acomm's framing; its hook URL.
    async fn unix(&self, path: &std::path::Path) -> String {
        let listener = tokio::net::UnixListener::bind(path).unwrap();
        let rx = self.clone();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                let rx = rx.clone();
                tokio::spawn(async move {
                    let len = stream.read_u32().await.unwrap();
                    let mut body = vec![0; len as usize];
                    stream.read_exact(&mut body).await.unwrap();
                    let mode = rx.next_mode();
                    rx.record(Got {
                        headers: Vec::new(),
                        body: body.into(),
                    });
                    let ack = match mode {
                        Mode::Ok => json!({"ok": true}),
                        Mode::Status(410) => json!({"ok": false, "retry": false}),
                        Mode::Status(_) => json!({"ok": false, "error": "not now"}),
                        Mode::Hang => std::future::pending().await,
                    };
                    let ack = ack.to_string();
                    stream.write_u32(ack.len() as u32).await.unwrap();
                    stream.write_all(ack.as_bytes()).await.unwrap();
                });
            }
        });
        format!("unix://{}", path.display())
    }
}

fn config(retry_ms: &[u64]) -> Config {
    Config {
        hook_secret: Some(SECRET.into()),
        hook_allow: vec![
            "127.0.0.1".into(),
            std::env::temp_dir().display().to_string() + "/",
        ],
        hook_retry: retry_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect(),
        hook_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

async fn submit(ts: &TestServer, object: &str, args: Value, hook: &str, events: &str) -> String {
    let res = reqwest::Client::new()
        .post(ts.url(&format!("/{object}")))
        .header("longrun-hook", hook)
        .header("longrun-hook-events", events)
        .json(&args)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let body: Value = res.json().await.unwrap();
    body["url"].as_str().unwrap().to_owned()
}

async fn deliveries(ts: &TestServer, run: &str) -> Vec<Value> {
    let res = reqwest::get(ts.url(&format!("{run}/hooks"))).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["deliveries"].as_array().unwrap().clone()
}

/// Wait until the run's deliveries satisfy `done`, looking again at each recorded attempt.
async fn until(ts: &TestServer, run: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    until_on(ts, &[ts], run, done).await
}

/// The same, reading on `ts` and waking on an attempt recorded by any of `senders` (replicas
/// of one store: any of them may make the attempt).
async fn until_on(
    ts: &TestServer,
    senders: &[&TestServer],
    run: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut attempts: Vec<_> = senders.iter().map(|s| s.server.hook_attempts()).collect();
    let wait = async {
        loop {
            for a in &mut attempts {
                a.mark_unchanged();
            }
            let now = deliveries(ts, run).await;
            if done(&now) {
                return now;
            }
            let changed = attempts.iter_mut().map(|a| Box::pin(a.changed()));
            let _ = futures::future::select_all(changed).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("deliveries of {run}: {:#?}", "never as expected"))
}

fn all_in(state: &'static str) -> impl Fn(&[Value]) -> bool {
    move |d| !d.is_empty() && d.iter().all(|d| d["state"] == state)
}

#[tokio::test]
async fn an_ended_hook_is_delivered_once_and_signed() {
    let rx = Receiver::new();
    let hook = rx.http().await;
    let ts = TestServer::with_config(config(&[0])).await;
    let run = submit(&ts, "echo", json!({"x": 1}), &hook, "ended").await;
    rx.wait_for(1).await;
    let list = until(&ts, &run, all_in("delivered")).await;
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0]["type"], "run.ended");
    assert_eq!(list[0]["attempts"][0]["status"], 204);
    let got = rx.got();
    assert_eq!(got.len(), 1);
    got[0].verified().unwrap();
    assert_eq!(got[0].header("webhook-id"), list[0]["id"]);
    let payload = got[0].json();
    assert_eq!(payload["type"], "run.ended");
    let data = &payload["data"];
    assert_eq!(data["url"], run.as_str());
    assert!(
        data.get("stream_url").is_none(),
        "echo has no stream: {data}"
    );
    assert_eq!(data["state"], "success");
    assert_eq!(data["result"], json!({"x": 1}));
    assert_eq!(data["event"]["state"], "success");
    assert!(data.get("error").is_none());
    // A run with a byte stream (§27) names it.
    let bytes = submit(&ts, "bytes", json!({"n": 10}), &hook, "ended").await;
    rx.wait_for(2).await;
    until(&ts, &bytes, all_in("delivered")).await;
    let got = rx.got();
    let data = &got[1].json()["data"];
    assert_eq!(data["stream_url"], format!("{bytes}/stream"));
    ts.stop().await.unwrap();
    assert_eq!(rx.got().len(), 2, "each delivered once");
}

#[tokio::test]
async fn a_signature_fails_for_a_tampered_body_an_old_timestamp_or_another_secret() {
    let rx = Receiver::new();
    let hook = rx.http().await;
    let ts = TestServer::with_config(config(&[0])).await;
    submit(&ts, "fail", json!({}), &hook, "ended").await;
    rx.wait_for(1).await;
    let got = rx.got().remove(0);
    got.verified().unwrap();
    assert_eq!(got.json()["data"]["state"], "error");
    assert!(got.json()["data"]["error"].is_object());
    let headers = || got.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let tolerance = longrun::webhook::TOLERANCE;
    use longrun::webhook::{VerifyError, verify, verify_at};
    let mut tampered = got.body.to_vec();
    tampered.push(b' ');
    assert_eq!(
        verify(SECRET, headers(), &tampered, tolerance),
        Err(VerifyError::Mismatch)
    );
    let other = "whsec_c2VjcmV0LW9mLWFub3RoZXItc2VydmVy";
    assert_eq!(
        verify(other, headers(), &got.body, tolerance),
        Err(VerifyError::Mismatch)
    );
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    assert!(matches!(
        verify_at(SECRET, headers(), &got.body, tolerance, later),
        Err(VerifyError::Expired(_))
    ));
    ts.stop().await.unwrap();
}

#[tokio::test]
async fn all_events_are_delivered_coalesced_and_the_end_once() {
    let rx = Receiver::new();
    let hook = rx.http().await;
    let ts = TestServer::with_config(config(&[0])).await;
    let run = submit(&ts, "count", json!({"n": 5}), &hook, "all").await;
    let list = until(&ts, &run, |d| {
        all_in("delivered")(d) && d.iter().any(|d| d["type"] == "run.ended")
    })
    .await;
    let mut got = rx.got();
    assert_eq!(got.len(), list.len(), "one request per delivery");
    for g in &got {
        g.verified().unwrap();
    }
    // Deliveries are independent: they may arrive in any order; the event id orders them.
    got.sort_by_key(|g| g.json()["data"]["event"]["id"].as_u64().unwrap());
    let first = got[0].json();
    assert_eq!(first["type"], "run.event");
    assert_eq!(first["data"]["event"]["id"], 0);
    assert_eq!(first["data"]["state"], "queued");
    let last = got.last().unwrap().json();
    assert_eq!(last["type"], "run.ended");
    assert_eq!(last["data"]["result"], json!({"n": 5}));
    let ended = got
        .iter()
        .filter(|g| g.json()["type"] == "run.ended")
        .count();
    assert_eq!(ended, 1);
    let ids: std::collections::HashSet<&str> = got.iter().map(|g| g.header("webhook-id")).collect();
    assert_eq!(ids.len(), got.len(), "each delivery has its own webhook-id");
    ts.stop().await.unwrap();
}

#[tokio::test]
async fn a_receiver_that_fails_then_answers_gets_the_delivery_once_after_retries() {
    let rx = Receiver::new();
    rx.script(&[Mode::Status(503), Mode::Status(500)]);
    let hook = rx.http().await;
    let ts = TestServer::with_config(config(&[0, 10, 10, 10])).await;
    let run = submit(&ts, "echo", json!({}), &hook, "ended").await;
    let list = until(&ts, &run, all_in("delivered")).await;
    let attempts = list[0]["attempts"].as_array().unwrap();
    let statuses: Vec<&Value> = attempts.iter().map(|a| &a["status"]).collect();
    assert_eq!(statuses, [&json!(503), &json!(500), &json!(204)]);
    assert_eq!(list[0]["attempt_count"], 3);
    assert!(list[0]["next_attempt_at"].is_null());
    let got = rx.got();
    assert_eq!(got.len(), 3);
    for g in &got {
        g.verified().expect("every attempt is signed");
        assert_eq!(
            g.header("webhook-id"),
            list[0]["id"],
            "the same id on every retry"
        );
        assert_eq!(g.body, got[0].body, "the same body on every retry");
    }
    ts.stop().await.unwrap();
    assert_eq!(rx.got().len(), 3);
}

#[tokio::test]
async fn a_receiver_that_is_down_fails_the_delivery_after_the_schedule() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    drop(listener);
    let ts = TestServer::with_config(config(&[0, 1, 1])).await;
    let run = submit(&ts, "echo", json!({}), &hook, "ended").await;
    let list = until(&ts, &run, all_in("failed")).await;
    let attempts = list[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{list:#?}");
    assert!(
        attempts
            .iter()
            .all(|a| a["error"].is_string() && a.get("status").is_none())
    );
    ts.stop().await.unwrap();
}

#[tokio::test]
async fn gone_stops_the_retries() {
    let rx = Receiver::new();
    rx.answer(Mode::Status(410));
    let hook = rx.http().await;
    let ts = TestServer::with_config(config(&[0, 1, 1, 1])).await;
    let run = submit(&ts, "echo", json!({}), &hook, "ended").await;
    let list = until(&ts, &run, all_in("gave_up")).await;
    assert_eq!(list[0]["attempt_count"], 1);
    ts.stop().await.unwrap();
    assert_eq!(rx.got().len(), 1);
}

#[tokio::test]
async fn a_hanging_receiver_slows_no_run_and_no_cancel() {
    let rx = Receiver::new();
    rx.answer(Mode::Hang);
    let hook = rx.http().await;
    let mut config = config(&[0, 10]);
    config.hook_timeout = Duration::from_millis(300);
    let ts = TestServer::with_config(config).await;
    let run = submit(&ts, "sleep", json!({"ms": 600_000}), &hook, "all").await;
    // The receiver holds the `queued` delivery; the run and its cancel go on.
    rx.wait_for(1).await;
    let res = reqwest::Client::new()
        .delete(ts.url(&run))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let events = ts.events(&run).await;
    assert_eq!(events.last().unwrap()["state"], "canceled");
    let list = until(&ts, &run, |d| {
        d.iter().any(|d| {
            d["attempts"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|a| a["error"].as_str().is_some_and(|e| e.contains("no answer")))
            })
        })
    })
    .await;
    assert!(list.iter().any(|d| d["type"] == "run.ended"), "{list:#?}");
    ts.stop().await.unwrap();
}

#[tokio::test]
async fn a_unix_socket_hook_gets_the_payload_framed_and_acks() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let rx = Receiver::new();
    rx.script(&[Mode::Status(500)]);
    let hook = rx.unix(&dir.path().join("hook.sock")).await;
    let ts = TestServer::with_config(config(&[0, 1, 1])).await;
    let run = submit(&ts, "echo", json!({"via": "unix"}), &hook, "ended").await;
    let list = until(&ts, &run, all_in("delivered")).await;
    assert_eq!(list[0]["attempts"][0]["error"], "not now");
    let got = rx.got();
    assert_eq!(got.len(), 2);
    let payload = got[1].json();
    assert_eq!(payload["type"], "run.ended");
    assert_eq!(payload["data"]["result"], json!({"via": "unix"}));
    assert_eq!(got[0].body, got[1].body);
    ts.stop().await.unwrap();
}

#[tokio::test]
async fn pending_deliveries_are_sent_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreConfig::Sqlite {
        path: dir.path().join("hooks.db"),
        full_sync: false,
    };
    let rx = Receiver::new();
    rx.answer(Mode::Status(503));
    let hook = rx.http().await;
    let start = |retry: &[u64]| {
        let builder = Server::builder()
            .config(config(retry))
            .store(store.clone())
            .demo();
        TestServer::start(builder)
    };
    let ts = start(&[0; 1000]).await;
    let run = submit(&ts, "echo", json!({"n": 1}), &hook, "ended").await;
    rx.wait_for(1).await;
    let before = deliveries(&ts, &run).await;
    ts.stop().await.unwrap();
    let seen = rx.got().len();
    rx.answer(Mode::Ok);
    let ts = start(&[0; 1000]).await;
    let list = until(&ts, &run, all_in("delivered")).await;
    assert_eq!(list[0]["id"], before[0]["id"], "the same delivery");
    let got = rx.got();
    let delivered: Vec<&Got> = got
        .iter()
        .filter(|g| g.header("webhook-id") == list[0]["id"])
        .collect();
    assert_eq!(delivered.len(), got.len());
    assert!(got.len() > seen, "an attempt after the restart");
    delivered.last().unwrap().verified().unwrap();
    let count = got.len();
    ts.stop().await.unwrap();
    assert_eq!(rx.got().len(), count, "nothing after it was delivered");
}

#[tokio::test]
async fn the_guard_refuses_internal_addresses_and_sockets_not_allowed() {
    let ts = TestServer::with_config(Config {
        hook_secret: Some(SECRET.into()),
        ..Config::default()
    })
    .await;
    let client = reqwest::Client::new();
    for hook in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/",
        "http://[::ffff:127.0.0.1]:9/",
        "http://localhost:9/",
        "unix:///tmp/not-allowed.sock",
    ] {
        let res = client
            .post(ts.url("/echo"))
            .header("longrun-hook", hook)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{hook}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(
            problem["type"], "urn:longrun:problem:hook-refused",
            "{hook}"
        );
    }
    ts.stop().await.unwrap();
    // No secret: no hooks at all.
    let ts = TestServer::demo().await;
    let res = client
        .post(ts.url("/echo"))
        .header("longrun-hook", "http://example.com/hook")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    ts.stop().await.unwrap();
}

#[tokio::test]
async fn bad_hook_headers_are_400() {
    let ts = TestServer::with_config(config(&[0])).await;
    let client = reqwest::Client::new();
    for (hook, events) in [
        (Some("ftp://example.com/"), None),
        (Some("http://"), None),
        (Some("http://user:pw@example.com/"), None),
        (Some("example.com/hook"), None),
        (Some("unix://relative.sock"), None),
        (Some("http://127.0.0.1:9/hook"), Some("some")),
        (None, Some("all")),
    ] {
        let mut req = client.post(ts.url("/echo"));
        if let Some(hook) = hook {
            req = req.header("longrun-hook", hook);
        }
        if let Some(events) = events {
            req = req.header("longrun-hook-events", events);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 400, "{hook:?} {events:?}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["type"], "urn:longrun:problem:invalid-hook");
    }
    ts.stop().await.unwrap();
}

/// Two replicas on one database: a hook is delivered once, by one of them.
#[tokio::test]
async fn postgres_replicas_deliver_a_hook_exactly_once() {
    let Some(url) = common::postgres::database("postgres hook replicas").await else {
        return;
    };
    let store = StoreConfig::parse(&url).unwrap();
    let rx = Receiver::new();
    rx.script(&[Mode::Status(503)]);
    let hook = rx.http().await;
    let start = || {
        TestServer::start(
            Server::builder()
                .config(config(&[0, 1, 1, 1]))
                .store(store.clone())
                .demo(),
        )
    };
    let (a, b) = (start().await, start().await);
    let mut runs = Vec::new();
    for i in 0..10 {
        let ts = if i % 2 == 0 { &a } else { &b };
        runs.push(submit(ts, "echo", json!({"i": i}), &hook, "ended").await);
    }
    for run in &runs {
        // Read back on the other replica too: the outbox is shared.
        until_on(&b, &[&a, &b], run, all_in("delivered")).await;
        until_on(&a, &[&a, &b], run, all_in("delivered")).await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let got = rx.got();
    let mut ids: Vec<&str> = got.iter().map(|g| g.header("webhook-id")).collect();
    assert_eq!(got.len(), 11, "10 deliveries and one retry");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);
}

/// The Python example receiver verifies what the server signs.
#[tokio::test]
async fn the_python_example_receiver_verifies_deliveries() {
    use tokio::io::AsyncBufReadExt;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/hook-receiver-python/receiver.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .args(["--secret", SECRET, "--port", "0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the receiver prints a line")
            .unwrap()
            .expect("the receiver is running");
        serde_json::from_str(&line).unwrap()
    };
    let hook = next().await["listening"].as_str().unwrap().to_owned();
    let ts = TestServer::with_config(config(&[0])).await;
    let run = submit(&ts, "echo", json!({"py": true}), &hook, "ended").await;
    let line = next().await;
    assert_eq!(line["delivery"], "verified", "{line}");
    assert_eq!(line["type"], "run.ended");
    assert_eq!(run, format!("/echo/{}", line["run"].as_str().unwrap()));
    until(&ts, &run, all_in("delivered")).await;
    ts.stop().await.unwrap();
}

/// A run's deliveries are read with the run's own rules: its tenant sees them, another
/// tenant gets 404, no token 401.
#[tokio::test]
async fn deliveries_are_read_back_by_the_run_s_tenant_only() {
    let rx = Receiver::new();
    let hook = rx.http().await;
    let auth = common::auth(&[
        ("acme", "lrt_acme", &["submit", "read"]),
        ("beta", "lrt_beta", &["submit", "read"]),
    ]);
    let ts = TestServer::start(Server::builder().config(config(&[0])).auth(auth).demo()).await;
    let client = reqwest::Client::new();
    let res = client
        .post(ts.url("/echo"))
        .bearer_auth("lrt_acme")
        .header("longrun-hook", &hook)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let run = res.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    rx.wait_for(1).await;
    let read = |token: Option<&'static str>| {
        let mut req = client.get(ts.url(&format!("{run}/hooks")));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        req.send()
    };
    let own = read(Some("lrt_acme")).await.unwrap();
    assert_eq!(own.status(), 200);
    let body: Value = own.json().await.unwrap();
    assert_eq!(body["deliveries"][0]["type"], "run.ended");
    assert_eq!(read(Some("lrt_beta")).await.unwrap().status(), 404);
    assert_eq!(read(None).await.unwrap().status(), 401);
    ts.stop().await.unwrap();
}

/// A redirect is not followed (it is retried like any other non-2xx), and `Retry-After`
/// puts the next attempt off at least that long.
#[tokio::test]
async fn redirects_are_not_followed_and_retry_after_is_honoured() {
    let rx = Receiver::new();
    rx.answer(Mode::Status(307));
    let hook = rx.http().await;
    let ts = TestServer::with_config(config(&[0, 1, 1])).await;
    let run = submit(&ts, "echo", json!({}), &hook, "ended").await;
    let list = until(&ts, &run, all_in("failed")).await;
    let statuses: Vec<&Value> = list[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| &a["status"])
        .collect();
    assert_eq!(statuses, [&json!(307); 3]);
    assert_eq!(rx.got().len(), 3, "the redirect's target was never asked");
    ts.stop().await.unwrap();

    async fn busy() -> impl IntoResponse {
        (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "7200")])
    }
    let app = axum::Router::new().route("/hook", axum::routing::post(busy));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let ts = TestServer::with_config(config(&[0, 1, 1])).await;
    let run = submit(&ts, "echo", json!({}), &hook, "ended").await;
    let list = until(&ts, &run, |d| {
        d.first().is_some_and(|d| d["attempt_count"] == 1)
    })
    .await;
    assert_eq!(list[0]["state"], "pending");
    let next = list[0]["next_attempt_at"].as_str().unwrap();
    let next = humantime::parse_rfc3339(next).unwrap();
    let wait = next.duration_since(std::time::SystemTime::now()).unwrap();
    assert!(wait > Duration::from_secs(3600), "{wait:?}");
    ts.stop().await.unwrap();
}

/// A burst of events makes a few `run.event` deliveries (at most one per 500 ms), never one
/// per event; the end is always delivered.
#[tokio::test]
async fn a_burst_of_events_is_coalesced() {
    let rx = Receiver::new();
    let hook = rx.http().await;
    let ts = TestServer::with_config(config(&[0])).await;
    let events: Vec<u32> = (0..200).collect();
    let run = submit(&ts, "emit", json!({"events": events}), &hook, "all").await;
    let list = until(&ts, &run, |d| {
        all_in("delivered")(d) && d.iter().any(|d| d["type"] == "run.ended")
    })
    .await;
    assert!(list.len() < 50, "{} deliveries for 202 events", list.len());
    assert_eq!(list.last().unwrap()["event"], 201, "{list:#?}");
    ts.stop().await.unwrap();
}
