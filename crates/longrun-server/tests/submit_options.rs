//! Submit options in request headers: `Prefer: wait` (spec §4.5) and `Longrun-Deadline`
//! (spec §4.4), against the demo objects.

mod common;

use common::TestServer;
use serde_json::{Value, json};

async fn submit(
    t: &TestServer,
    object: &str,
    args: Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(t.url(&format!("/{object}")))
        .json(&args);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header<'a>(res: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    res.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn problem(res: reqwest::Response, status: u16, slug: &str) -> Value {
    assert_eq!(res.status(), status);
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["type"], format!("urn:longrun:problem:{slug}"), "{p}");
    p
}

#[tokio::test]
async fn prefer_wait_answers_200_with_the_terminal_event_when_the_run_ends_in_time() {
    let t = TestServer::demo().await;
    let res = submit(&t, "count", json!({"n": 3}), &[("Prefer", "wait=30")]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "preference-applied"), Some("wait=30"));
    let location = header(&res, "location").unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["state"], "success");
    assert_eq!(body["object"], "count");
    assert_eq!(body["url"], location);
    assert_eq!(
        body["event"],
        json!({"id": 4, "state": "success", "value": {"n": 3}})
    );
    // The run is a run like any other.
    let events = t.events(&location).await;
    assert_eq!(events.last().unwrap(), &body["event"]);

    // wait=0 still answers 200 for a run that ends at once; an error is a terminal event too.
    let res = submit(
        &t,
        "echo",
        json!({"a": 1}),
        &[("Prefer", "respond-async, wait=0")],
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["event"]["value"],
        json!({"a": 1})
    );
    let res = submit(&t, "fail", json!({}), &[("Prefer", "wait=5")]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["state"], "error");
}

#[tokio::test]
async fn prefer_wait_falls_back_to_201_and_other_preferences_are_ignored() {
    let t = TestServer::demo().await;
    // Still sleeping when the wait is over.
    let res = submit(
        &t,
        "sleep",
        json!({"ms": 3_600_000}),
        &[("Prefer", "wait=0")],
    )
    .await;
    assert_eq!(res.status(), 201);
    assert_eq!(header(&res, "preference-applied"), Some("wait=0"));
    let sleeping: Value = res.json().await.unwrap();
    assert_eq!(sleeping["state"], "queued");
    let url = sleeping["url"].as_str().unwrap().to_owned();
    reqwest::Client::new()
        .delete(t.url(&url))
        .send()
        .await
        .unwrap();

    // Over the maximum: the maximum is applied. Unknown or malformed: ignored.
    let res = submit(&t, "echo", json!({}), &[("Prefer", "wait=3600")]).await;
    assert_eq!(header(&res, "preference-applied"), Some("wait=60"));
    assert_eq!(res.status(), 200);
    for prefer in ["respond-async", "wait=soon", "wait", "handling=strict"] {
        let res = submit(&t, "echo", json!({}), &[("Prefer", prefer)]).await;
        assert_eq!(res.status(), 201, "{prefer}");
        assert_eq!(header(&res, "preference-applied"), None, "{prefer}");
    }
    // Asking for the stream: the 303 comes at once.
    let res = submit(
        &t,
        "echo",
        json!({}),
        &[("Prefer", "wait=10"), ("Accept", "text/event-stream")],
    )
    .await;
    assert_eq!(res.status(), 200, "reqwest follows the 303 to the stream");
    assert_eq!(header(&res, "content-type"), Some("text/event-stream"));
}

#[tokio::test]
async fn a_replayed_submit_waits_too() {
    let t = TestServer::demo().await;
    let key = [("Idempotency-Key", "order-17")];
    let first = submit(&t, "echo", json!({"x": 1}), &key).await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let again = submit(
        &t,
        "echo",
        json!({"x": 1}),
        &[("Idempotency-Key", "order-17"), ("Prefer", "wait=10")],
    )
    .await;
    assert_eq!(again.status(), 200);
    assert_eq!(header(&again, "idempotent-replayed"), Some("true"));
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["id"], first["id"]);
    assert_eq!(body["event"]["state"], "success");
}

#[tokio::test]
async fn a_deadline_cancels_the_run_queued_or_running() {
    let t = TestServer::demo().await;
    // Queued: a sleep reports nothing while it sleeps.
    let res = submit(
        &t,
        "sleep",
        json!({"ms": 3_600_000}),
        &[("Longrun-Deadline", "0.2")],
    )
    .await;
    assert_eq!(res.status(), 201);
    let url = res.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = t.events(&url).await;
    assert_eq!(
        events.last().unwrap(),
        &json!({"id": 1, "state": "canceled", "value": {"reason": "deadline"}})
    );
    // Running, with the deadline as an RFC 3339 time.
    let at = humantime::format_rfc3339_millis(
        std::time::SystemTime::now() + std::time::Duration::from_millis(300),
    )
    .to_string();
    let res = submit(
        &t,
        "count",
        json!({"n": 1000, "interval_ms": 60000}),
        &[("Longrun-Deadline", &at)],
    )
    .await;
    assert_eq!(res.status(), 201, "{at}");
    let url = res.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let events = t.events(&url).await;
    assert_eq!(events[1]["state"], "running");
    let last = events.last().unwrap();
    assert_eq!(
        (&last["state"], &last["value"]),
        (&json!("canceled"), &json!({"reason": "deadline"}))
    );
    // A deadline further than the run takes changes nothing.
    let res = submit(&t, "echo", json!({"a": 1}), &[("Longrun-Deadline", "3600")]).await;
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn a_deadline_that_is_not_one_is_a_problem() {
    let t = TestServer::demo().await;
    let past = humantime::format_rfc3339(
        std::time::SystemTime::now() - std::time::Duration::from_secs(60),
    )
    .to_string();
    for bad in [
        "soon",
        "0",
        "-3",
        "NaN",
        "inf",
        "700000",
        past.as_str(),
        "2026-13-40T00:00:00Z",
    ] {
        let res = submit(&t, "echo", json!({}), &[("Longrun-Deadline", bad)]).await;
        let p = problem(res, 400, "invalid-deadline").await;
        assert!(p["detail"].as_str().unwrap().contains("RFC 3339"), "{p}");
    }
}
