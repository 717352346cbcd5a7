//! The life of a run as clients see it: cancellation and the grace period, failures of
//! handlers, limits, retention and tombstones, shutdown, and many followers at once.
//!
//! Handlers are closures registered in the test, and they tell the test what they are doing
//! through channels, so every wait in here waits for something that happened, never for time.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, request};
use longrun_proto::sse::{Decoder, SseItem, to_event};
use longrun_proto::{Event, State};
use longrun_server::{Config, HandlerResult, RunContext, RunError, Server};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

/// A follower reading a run's SSE stream event by event.
struct Stream {
    res: reqwest::Response,
    decoder: Decoder,
    ready: VecDeque<Event>,
}

impl Stream {
    async fn open(ts: &TestServer, path: &str) -> Stream {
        let res = reqwest::Client::new()
            .get(ts.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Stream {
            res,
            decoder: Decoder::new(),
            ready: VecDeque::new(),
        }
    }

    /// The next event, or `None` once the response has ended. A stream that breaks off
    /// instead of ending fails the test.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let chunk = self.res.chunk().await.expect("the stream ends cleanly")?;
            for item in self.decoder.feed(&chunk) {
                if let SseItem::Message(msg) = item {
                    self.ready
                        .push_back(to_event(&msg).expect("every message is an event"));
                }
            }
        }
    }

    /// Read up to and including the first event that satisfies `until`.
    async fn until(&mut self, until: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut seen = Vec::new();
        loop {
            let event = self
                .next()
                .await
                .expect("the stream ended before the awaited event");
            let found = until(&event);
            seen.push(event);
            if found {
                return seen;
            }
        }
    }

    /// Everything up to the end of the response; asserts the terminal event comes last.
    async fn rest(mut self) -> Vec<Event> {
        let mut seen = Vec::new();
        while let Some(event) = self.next().await {
            assert!(
                !seen.last().is_some_and(|e: &Event| e.state.is_terminal()),
                "an event after the terminal one: {event:?}"
            );
            seen.push(event);
        }
        assert!(
            seen.last().is_some_and(|e| e.state.is_terminal()),
            "the stream ended without a terminal event: {seen:?}"
        );
        seen
    }
}

fn event(id: u64, state: State, value: Value) -> Event {
    Event { id, state, value }
}

/// Events from a long poll, as wire types.
fn parse_events(events: Vec<Value>) -> Vec<Event> {
    events
        .into_iter()
        .map(|e| serde_json::from_value(e).unwrap())
        .collect()
}

fn last_value(events: &[Value]) -> (&str, &Value) {
    let last = events.last().unwrap();
    (last["state"].as_str().unwrap(), &last["value"])
}

async fn delete(ts: &TestServer, path: &str) -> common::RawResponse {
    ts.raw(&request("DELETE", path, &[], "")).await
}

/// A handler that emits `"ready"` and then waits to be canceled.
async fn until_canceled(_args: Value, ctx: RunContext) -> HandlerResult {
    ctx.emit("ready");
    ctx.cancelled().await;
    Ok(json!("stopped"))
}

fn is_ready(e: &Event) -> bool {
    e.value == "ready"
}

#[tokio::test]
async fn a_handler_that_ignores_cancellation_is_dropped_after_the_grace_period() {
    let (dropped_tx, mut dropped) = oneshot::channel::<()>();
    let dropped_tx = std::sync::Mutex::new(Some(dropped_tx));
    let config = Config {
        grace: Duration::from_millis(100),
        ..Default::default()
    };
    let ts = TestServer::start(Server::builder().config(config).object(
        "stubborn",
        move |_args: Value, ctx: RunContext| {
            // Dropping the future drops the sender, which the test sees as a closed channel.
            let guard = dropped_tx.lock().unwrap().take();
            async move {
                let _guard = guard;
                ctx.emit("ready");
                std::future::pending::<()>().await;
                Ok(Value::Null)
            }
        },
    ))
    .await;
    let path = ts.submit("stubborn", json!({})).await;
    let mut stream = Stream::open(&ts, &path).await;
    stream.until(is_ready).await;
    assert_eq!(dropped.try_recv(), Err(oneshot::error::TryRecvError::Empty));

    assert_eq!(delete(&ts, &path).await.status, 202);
    assert_eq!(
        stream.rest().await,
        vec![event(2, State::Canceled, json!({"reason": "client"}))]
    );
    // The handler is dropped before the terminal event is appended.
    assert_eq!(
        dropped.try_recv(),
        Err(oneshot::error::TryRecvError::Closed)
    );
}

#[tokio::test]
async fn events_emitted_after_the_cancel_request_are_dropped_and_the_result_discarded() {
    let (late_tx, mut late) = mpsc::unbounded_channel();
    let ts = TestServer::start(Server::builder().object(
        "chatty",
        move |_args: Value, ctx: RunContext| {
            let late_tx = late_tx.clone();
            async move {
                ctx.emit("ready");
                ctx.cancelled().await;
                let accepted = [ctx.emit("late"), ctx.progress(1.0, "done anyway")];
                late_tx.send((accepted, ctx.is_cancelled())).unwrap();
                Ok(json!("a result nobody asked for"))
            }
        },
    ))
    .await;
    let path = ts.submit("chatty", json!({})).await;
    let mut stream = Stream::open(&ts, &path).await;
    stream.until(is_ready).await;

    assert_eq!(delete(&ts, &path).await.status, 202);
    assert_eq!(late.recv().await.unwrap(), ([false, false], true));
    assert_eq!(
        stream.rest().await,
        vec![event(2, State::Canceled, json!({"reason": "client"}))]
    );
    assert_eq!(
        parse_events(ts.events(&path).await),
        vec![
            event(0, State::Queued, Value::Null),
            event(1, State::Running, json!("ready")),
            event(2, State::Canceled, json!({"reason": "client"})),
        ]
    );
}

#[tokio::test]
async fn delete_is_idempotent_and_answers_409_for_runs_that_succeeded_or_failed() {
    let ts = TestServer::start(
        Server::builder()
            .object("wait", until_canceled)
            .object("ok", |_args: Value, _ctx: RunContext| async {
                Ok::<_, RunError>(json!("fine"))
            })
            .object("broken", |_args: Value, _ctx: RunContext| async {
                Err::<Value, _>(RunError::new("broken"))
            }),
    )
    .await;

    let path = ts.submit("wait", json!({})).await;
    for _ in 0..2 {
        let res = delete(&ts, &path).await;
        assert_eq!(res.status, 202, "{}", res.text());
        assert_eq!(res.header("content-type"), Some("application/json"));
    }
    let events = ts.events(&path).await;
    assert_eq!(
        last_value(&events),
        ("canceled", &json!({"reason": "client"}))
    );
    let res = delete(&ts, &path).await;
    assert_eq!(res.status, 202, "{}", res.text());
    let id = path.rsplit('/').next().unwrap();
    assert_eq!(
        res.json(),
        json!({"id": id, "object": "wait", "state": "canceled", "url": path})
    );
    assert_eq!(
        ts.events(&path).await,
        events,
        "one canceled event, reason unchanged"
    );

    for (object, state) in [("ok", "success"), ("broken", "error")] {
        let path = ts.submit(object, json!({})).await;
        let events = ts.events(&path).await;
        assert_eq!(last_value(&events).0, state);
        let res = delete(&ts, &path).await;
        res.assert_problem(409, "run-ended");
        assert_eq!(res.json()["state"], state);
        assert_eq!(ts.events(&path).await, events, "the run is unchanged");
    }
}

#[tokio::test]
async fn a_panicking_handler_ends_the_run_as_error_and_the_stream_still_ends() {
    let ts = TestServer::start(Server::builder().object(
        "panics",
        |_args: Value, ctx: RunContext| async move {
            ctx.followed().await;
            ctx.emit("about to panic");
            if ctx.object() == "panics" {
                panic!("a bug in the handler (this panic is expected by the test)");
            }
            Ok(Value::Null)
        },
    ))
    .await;
    let path = ts.submit("panics", json!({})).await;
    let stream = Stream::open(&ts, &path).await;
    assert_eq!(
        stream.rest().await,
        vec![
            event(0, State::Queued, Value::Null),
            event(1, State::Running, json!("about to panic")),
            event(2, State::Error, json!({"message": "the handler panicked"})),
        ]
    );
    // The server goes on serving.
    let res = ts.raw(&request("HEAD", &path, &[], "")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("longrun-state"), Some("error"));
}

#[tokio::test]
async fn a_run_over_the_event_limit_ends_as_error() {
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
    let config = Config {
        max_events_per_run: 5,
        ..Default::default()
    };
    let ts = TestServer::start(Server::builder().config(config).object(
        "flood",
        move |_args: Value, ctx: RunContext| {
            let accepted_tx = accepted_tx.clone();
            async move {
                // Ignores what `emit` says and claims success: the limit wins.
                let accepted: Vec<bool> = (0..6).map(|i| ctx.emit(i)).collect();
                accepted_tx.send((accepted, ctx.is_cancelled())).unwrap();
                Ok(json!("all sent"))
            }
        },
    ))
    .await;
    let path = ts.submit("flood", json!({})).await;
    let events = parse_events(ts.events(&path).await);
    // `max_events_per_run` counts every event of the run, `queued` and the terminal one
    // included (`Config::max_events_per_run`).
    assert_eq!(
        events,
        vec![
            event(0, State::Queued, Value::Null),
            event(1, State::Running, json!(0)),
            event(2, State::Running, json!(1)),
            event(3, State::Running, json!(2)),
            event(
                4,
                State::Error,
                json!({"message": "run exceeded the limit of 5 events"})
            ),
        ]
    );
    assert_eq!(
        accepted.recv().await.unwrap(),
        (vec![true, true, true, false, false, false], true),
        "emit reports the drop, and the handler is told to stop"
    );
    let stream = Stream::open(&ts, &path).await;
    assert_eq!(stream.rest().await, events);
}

#[tokio::test]
async fn run_error_details_become_members_of_the_error_value() {
    let ts = TestServer::start(
        Server::builder()
            .object("quota", |_args: Value, _ctx: RunContext| async {
                Err::<Value, _>(
                    RunError::new("quota exceeded")
                        .with("limit", 10)
                        .with("used", json!([4, 7]))
                        .with("retry", true),
                )
            })
            .object("io", |_args: Value, _ctx: RunContext| async {
                let failed: Result<(), std::io::Error> = Err(std::io::Error::other("disk on fire"));
                failed?;
                Ok(Value::Null)
            }),
    )
    .await;
    let events = ts.events(&ts.submit("quota", json!({})).await).await;
    assert_eq!(
        last_value(&events),
        (
            "error",
            &json!({"message": "quota exceeded", "limit": 10, "used": [4, 7], "retry": true})
        )
    );
    let events = ts.events(&ts.submit("io", json!({})).await).await;
    assert_eq!(
        last_value(&events),
        ("error", &json!({"message": "disk on fire"}))
    );
}

/// GET, HEAD and DELETE on a run all answer `status` (a problem of type `slug` where there
/// is a body).
async fn assert_all_answer(ts: &TestServer, path: &str, status: u16, slug: &str) {
    ts.raw(&request("GET", path, &[], ""))
        .await
        .assert_problem(status, slug);
    delete(ts, path).await.assert_problem(status, slug);
    let head = ts.raw(&request("HEAD", path, &[], "")).await;
    assert_eq!(head.status, status, "HEAD {path}");
    assert!(head.body.is_empty());
}

#[tokio::test]
async fn retention_by_count_drops_the_earliest_ended_runs_then_forgets_them() {
    let config = Config {
        max_retained: 1,
        max_tombstones: 1,
        ..Default::default()
    };
    let done = |_args: Value, _ctx: RunContext| async { Ok::<_, RunError>(json!("done")) };
    let ts = TestServer::start(
        Server::builder()
            .config(config)
            .object("done", done)
            .object("other", done),
    )
    .await;

    let first = ts.submit("done", json!({})).await;
    ts.events(&first).await;
    let second = ts.submit("done", json!({})).await;
    ts.events(&second).await;
    // Two ended runs, one may be kept: the first is dropped and leaves a tombstone.
    assert_all_answer(&ts, &first, 410, "run-gone").await;
    assert_eq!(ts.raw(&request("HEAD", &second, &[], "")).await.status, 200);
    // A tombstone answers only under its own object.
    let elsewhere = first.replace("/done/", "/other/");
    ts.raw(&request("GET", &elsewhere, &[], ""))
        .await
        .assert_problem(404, "run-not-found");

    let third = ts.submit("done", json!({})).await;
    ts.events(&third).await;
    // The second is dropped too; one tombstone may be kept, so the first is forgotten.
    assert_all_answer(&ts, &first, 404, "run-not-found").await;
    assert_all_answer(&ts, &second, 410, "run-gone").await;
    assert_eq!(ts.raw(&request("HEAD", &third, &[], "")).await.status, 200);
}

/// Submit to `object` over a fresh connection and wait (long poll) until the run ended;
/// returns its path. No client timers, so it is safe under a paused clock.
async fn run_to_end(ts: &TestServer, object: &str) -> String {
    let res = ts
        .raw(&request("POST", &format!("/{object}"), &[], "{}"))
        .await;
    assert_eq!(res.status, 201, "{}", res.text());
    let path = res.json()["url"].as_str().unwrap().to_owned();
    let res = ts
        .raw(&request(
            "GET",
            &format!("{path}?last_event_id=0&wait=60"),
            &[],
            "",
        ))
        .await;
    assert_eq!(res.json()[0]["state"], "success");
    path
}

async fn head_status(ts: &TestServer, path: &str) -> u16 {
    ts.raw(&request("HEAD", path, &[], "")).await.status
}

/// Retention by time, on tokio's paused clock: `advance` moves the server's clock, no test
/// waits for real time. (The clock may also auto-advance to the next timer while every task
/// waits for the loopback socket; those steps are the janitor's 1 s ticks, so the margins
/// below are minutes.)
#[tokio::test(start_paused = true)]
async fn retention_by_time_then_tombstone_lifetime_on_a_paused_clock() {
    let config = Config {
        retention: Duration::from_secs(3600),
        tombstone_ttl: Duration::from_secs(24 * 3600),
        ..Default::default()
    };
    let done = |_args: Value, _ctx: RunContext| async { Ok::<_, RunError>(json!("done")) };
    let short = longrun_server::ObjectOptions {
        retention: Some(Duration::from_secs(600)),
        ..Default::default()
    };
    let ts = TestServer::start(
        Server::builder()
            .config(config)
            .object("long", done)
            .object_with("short", short, done),
    )
    .await;
    let long = run_to_end(&ts, "long").await;
    let short = run_to_end(&ts, "short").await;
    assert_eq!(head_status(&ts, &long).await, 200);
    assert_eq!(head_status(&ts, &short).await, 200);

    // The object's own retention is shorter than the server's.
    tokio::time::advance(Duration::from_secs(700)).await;
    assert_eq!(head_status(&ts, &short).await, 410);
    assert_eq!(head_status(&ts, &long).await, 200);

    tokio::time::advance(Duration::from_secs(2400)).await;
    assert_eq!(
        head_status(&ts, &long).await,
        200,
        "still within the server's 1 h"
    );

    tokio::time::advance(Duration::from_secs(600)).await;
    assert_all_answer(&ts, &long, 410, "run-gone").await;
    assert_all_answer(&ts, &short, 410, "run-gone").await;

    tokio::time::advance(Duration::from_secs(24 * 3600 + 60)).await;
    assert_all_answer(&ts, &long, 404, "run-not-found").await;
    assert_all_answer(&ts, &short, 404, "run-not-found").await;
    ts.stop().await.unwrap();
}

#[tokio::test]
async fn submits_beyond_max_active_runs_answer_503_with_retry_after() {
    let config = Config {
        max_active_runs: 1,
        ..Default::default()
    };
    let ts = TestServer::start(
        Server::builder()
            .config(config)
            .object("wait", until_canceled),
    )
    .await;
    let first = ts.submit("wait", json!({})).await;

    let res = ts.raw(&request("POST", "/wait", &[], "{}")).await;
    res.assert_problem(503, "too-many-runs");
    assert_eq!(res.header("retry-after"), Some("1"));

    // Once the active run has ended, there is room again.
    assert_eq!(delete(&ts, &first).await.status, 202);
    ts.events(&first).await;
    let res = ts.raw(&request("POST", "/wait", &[], "{}")).await;
    assert_eq!(res.status, 201, "{}", res.text());
}

#[tokio::test]
async fn server_shutdown_cancels_active_runs_and_refuses_new_work_while_draining() {
    let (saw_cancel_tx, mut saw_cancel) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let handler_release = release.clone();
    // Long enough never to run out: the handler stops when the test releases it.
    let config = Config {
        grace: Duration::from_secs(3600),
        ..Default::default()
    };
    let ts = TestServer::start(Server::builder().config(config).object(
        "slow",
        move |_args: Value, ctx: RunContext| {
            let saw_cancel_tx = saw_cancel_tx.clone();
            let release = handler_release.clone();
            async move {
                ctx.emit("ready");
                ctx.cancelled().await;
                saw_cancel_tx.send(()).unwrap();
                release.notified().await;
                Ok(json!("finished anyway"))
            }
        },
    ))
    .await;
    let path = ts.submit("slow", json!({})).await;
    let mut stream = Stream::open(&ts, &path).await;
    stream.until(is_ready).await;

    let server = ts.server.clone();
    let shutdown = tokio::spawn(async move { server.shutdown().await });
    saw_cancel.recv().await.unwrap();

    // Draining: the run is still active, new work is refused, the run can still be read.
    let health = ts.raw(&request("GET", "/_health", &[], "")).await;
    health.assert_problem(503, "shutting-down");
    let submit = ts.raw(&request("POST", "/slow", &[], "{}")).await;
    submit.assert_problem(503, "shutting-down");
    assert_eq!(submit.header("retry-after"), None);
    let head = ts.raw(&request("HEAD", &path, &[], "")).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("longrun-state"), Some("running"));
    // A later DELETE is accepted but the first reason stays.
    assert_eq!(delete(&ts, &path).await.status, 202);
    assert!(!shutdown.is_finished(), "shutdown waits for the active run");

    release.notify_one();
    shutdown.await.unwrap();
    assert_eq!(
        stream.rest().await,
        vec![event(2, State::Canceled, json!({"reason": "shutdown"}))]
    );
    ts.stop().await.unwrap();
}

#[tokio::test]
async fn stop_ends_open_streams_and_held_polls_with_the_shutdown_event() {
    let (followed_tx, mut followed) = mpsc::unbounded_channel();
    let ts = TestServer::start(Server::builder().object("wait", until_canceled).object(
        "watched",
        move |_args: Value, ctx: RunContext| {
            let followed_tx = followed_tx.clone();
            async move {
                ctx.followed().await;
                followed_tx.send(()).unwrap();
                ctx.cancelled().await;
                Ok(Value::Null)
            }
        },
    ))
    .await;
    let addr = ts.addr;

    let streamed = ts.submit("wait", json!({})).await;
    let mut stream = Stream::open(&ts, &streamed).await;
    stream.until(is_ready).await;

    // A long poll held on a run with nothing new; the handler tells us it arrived.
    let polled = ts.submit("watched", json!({})).await;
    let poll = tokio::spawn(
        reqwest::Client::new()
            .get(ts.url(&format!("{polled}?last_event_id=0&wait=60")))
            .send(),
    );
    followed.recv().await.unwrap();

    ts.stop().await.unwrap();

    assert_eq!(
        stream.rest().await,
        vec![event(2, State::Canceled, json!({"reason": "shutdown"}))]
    );
    let poll = poll.await.unwrap().unwrap();
    assert_eq!(poll.status(), 200);
    assert_eq!(
        parse_events(poll.json().await.unwrap()),
        vec![event(1, State::Canceled, json!({"reason": "shutdown"}))]
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the server stopped listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_followers_of_one_run_all_receive_the_same_full_log() {
    const N: u64 = 2000;
    const FOLLOWERS: usize = 50;
    let gate = Arc::new(Notify::new());
    let handler_gate = gate.clone();
    // Like the demo `count`, but it starts counting only once the test has every follower
    // attached, so all of them follow the run live.
    let ts = TestServer::start(Server::builder().object(
        "count",
        move |_args: Value, ctx: RunContext| {
            let gate = handler_gate.clone();
            async move {
                gate.notified().await;
                for i in 1..=N {
                    ctx.emit(json!({"i": i, "n": N, "message": format!("{i}/{N}")}));
                    if i % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                Ok(json!({"n": N}))
            }
        },
    ))
    .await;
    let path = ts.submit("count", json!({})).await;
    let mut expected = vec![event(0, State::Queued, Value::Null)];
    expected.extend((1..=N).map(|i| {
        event(
            i,
            State::Running,
            json!({"i": i, "n": N, "message": format!("{i}/{N}")}),
        )
    }));
    expected.push(event(N + 1, State::Success, json!({"n": N})));

    let (attached_tx, mut attached) = mpsc::unbounded_channel();
    let mut followers = Vec::new();
    for f in 0..FOLLOWERS {
        let url = ts.url(&path);
        let attached_tx = attached_tx.clone();
        if f % 2 == 0 {
            let mut stream = Stream::open(&ts, &path).await;
            followers.push(tokio::spawn(async move {
                let first = stream.next().await.unwrap();
                attached_tx.send(()).unwrap();
                let mut all = vec![first];
                all.extend(stream.rest().await);
                all
            }));
        } else {
            followers.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut all: Vec<Event> = Vec::new();
                loop {
                    let mut req = client.get(&url).query(&[("wait", "60")]);
                    if let Some(last) = all.last() {
                        req = req.header("last-event-id", last.id.to_string());
                    }
                    let batch: Vec<Event> = req.send().await.unwrap().json().await.unwrap();
                    if all.is_empty() {
                        attached_tx.send(()).unwrap();
                    }
                    all.extend(batch);
                    if all.last().is_some_and(|e| e.state.is_terminal()) {
                        return all;
                    }
                }
            }));
        }
    }
    for _ in 0..FOLLOWERS {
        attached.recv().await.unwrap();
    }
    gate.notify_one();
    for (f, follower) in followers.into_iter().enumerate() {
        let events = follower.await.unwrap();
        assert!(
            events == expected,
            "follower {f} got a different log ({} events)",
            events.len()
        );
    }
}
