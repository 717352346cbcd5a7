//! What a user of the client sees, against the reference server on a real socket: submit,
//! follow (SSE and long polling), resume from a run URL in another client, cancel, wait with
//! and without a time limit, the typed errors, base-URL checks, servers that refuse, hang,
//! strip `Accept` or buffer the event stream, batches, headers on the wire, and the blocking
//! client.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use longrun::blocking::Next;
use longrun::{
    CancelOutcome, Client, ErrorKind, Event, EventStream, FollowOptions, Progress, Reconnect, Run,
    State, SubmitOptions, Transport,
};
use longrun_server::{RunContext, Server, ServerBuilder};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TRANSPORTS: [Transport; 2] = [Transport::Sse, Transport::Poll];

/// An id no server has issued.
const UNKNOWN_ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

async fn start(builder: ServerBuilder) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(longrun_server::serve(
        listener,
        builder.build().expect("unique object names"),
        std::future::pending(),
    ));
    addr
}

/// The demo server; its base URL.
async fn demo() -> String {
    format!("http://{}", start(Server::builder().demo()).await)
}

fn fast_reconnect(max_attempts: u32) -> Reconnect {
    Reconnect {
        max_attempts,
        initial_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
    }
}

fn with(transport: Transport) -> FollowOptions {
    FollowOptions {
        transport: Some(transport),
        ..Default::default()
    }
}

async fn collect(mut stream: EventStream) -> longrun::Result<Vec<Event>> {
    let mut events = Vec::new();
    while let Some(ev) = stream.next().await {
        events.push(ev?);
    }
    Ok(events)
}

fn ids(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn submit_follow_and_wait_on_both_transports() {
    let client = Client::new(&demo().await).unwrap();
    for transport in TRANSPORTS {
        let run = client.submit("count", json!({"n": 3})).await.unwrap();
        assert_eq!(run.object(), "count");
        assert!(run.url().as_str().starts_with(client.base_url().as_str()));
        let events = collect(client.follow_with(&run, with(transport)))
            .await
            .unwrap();
        assert_eq!(ids(&events), [0, 1, 2, 3, 4], "{transport:?}");
        let states: Vec<State> = events.iter().map(|e| e.state).collect();
        assert_eq!(
            states,
            [
                State::Queued,
                State::Running,
                State::Running,
                State::Running,
                State::Success
            ]
        );
        assert_eq!(
            events[2].value,
            json!({"i": 2, "n": 3, "progress": 2.0 / 3.0, "message": "2/3"})
        );
        assert_eq!(events[4].value, json!({"n": 3}));
        assert_eq!(client.wait(&run, None).await.unwrap(), json!({"n": 3}));
        let status = client.status(&run).await.unwrap();
        assert_eq!((status.state, status.last_event_id), (State::Success, 4));
        assert!(client.exists(&run).await.unwrap());
    }
}

/// `wait_with` shows every event, in order, as read (progress from its JSON text), and answers
/// with the terminal event's value, for logs longer than one batch too.
#[tokio::test]
async fn wait_with_shows_every_event_and_answers_with_the_value() {
    let client = Client::new(&demo().await).unwrap();
    for n in [3, 2500] {
        let run = client.submit("count", json!({"n": n})).await.unwrap();
        let mut seen = Vec::new();
        let mut fractions = Vec::new();
        let value = client
            .wait_with(&run, None, |ev| {
                seen.push((ev.id, ev.state));
                fractions.extend(Progress::from_raw(&ev.value).and_then(|p| p.fraction));
            })
            .await
            .unwrap();
        assert_eq!(value, json!({"n": n}));
        assert_eq!(seen.len() as u64, n + 2);
        assert!(seen.iter().enumerate().all(|(i, (id, _))| *id == i as u64));
        assert_eq!(seen.last(), Some(&(n + 1, State::Success)));
        assert_eq!(fractions.len() as u64, n);
        assert_eq!(fractions.last(), Some(&1.0));
    }
}

/// The run URL is the resume token: another client, given only the URL and the id of the last
/// event it saw, gets exactly the events after it — including none after the terminal one.
#[tokio::test]
async fn a_run_url_resumes_in_another_client_from_any_cursor() {
    let base = demo().await;
    let first = Client::new(&base).unwrap();
    let run = first.submit("count", json!({"n": 5})).await.unwrap();
    first.wait(&run, None).await.unwrap();
    let second = Client::new(&base).unwrap();
    let resumed = Run::from_url(run.url().as_str()).unwrap();
    assert_eq!(resumed, run);
    for transport in TRANSPORTS {
        for k in [0, 1, 3, 5, 6] {
            let stream = second.follow_with(
                &resumed,
                FollowOptions {
                    since: Some(k),
                    transport: Some(transport),
                },
            );
            let events = collect(stream).await.unwrap();
            assert_eq!(
                ids(&events),
                (k + 1..=6).collect::<Vec<_>>(),
                "{transport:?} after {k}"
            );
        }
    }
    // `follow_from` is the same with the client's transport.
    let events = collect(second.follow_from(&resumed, 4)).await.unwrap();
    assert_eq!(ids(&events), [5, 6]);
    assert_eq!(events[1].state, State::Success);
}

/// A run that is still going: the resumed follow waits for what comes next.
#[tokio::test]
async fn a_resumed_follow_of_a_live_run_gets_the_rest() {
    let base = demo().await;
    let first = Client::new(&base).unwrap();
    for transport in TRANSPORTS {
        let run = first
            .submit("count", json!({"n": 20, "interval_ms": 5}))
            .await
            .unwrap();
        let mut stream = first.follow_with(&run, with(transport));
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(stream.next().await.unwrap().unwrap());
        }
        drop(stream);
        let second = Client::builder(&base).transport(transport).build().unwrap();
        let resumed = Run::from_url(run.url().as_str()).unwrap();
        let rest = collect(second.follow_from(&resumed, seen[2].id))
            .await
            .unwrap();
        assert_eq!(ids(&rest), (3..=21).collect::<Vec<_>>(), "{transport:?}");
    }
}

#[tokio::test]
async fn canceling_while_following_ends_the_follow_with_canceled() {
    let client = Client::new(&demo().await).unwrap();
    for transport in TRANSPORTS {
        let run = client
            .submit("sleep", json!({"ms": 3_600_000}))
            .await
            .unwrap();
        let mut stream = client.follow_with(&run, with(transport));
        // The follower is attached and has seen the start of the run.
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!((first.id, first.state), (0, State::Queued));
        assert_eq!(client.cancel(&run).await.unwrap(), CancelOutcome::Accepted);
        let rest = collect(stream).await.unwrap();
        let last = rest.last().expect("the follow goes on to the end");
        assert_eq!(ids(&rest), [1], "{transport:?}");
        assert_eq!(
            (last.state, &last.value),
            (State::Canceled, &json!({"reason": "client"}))
        );
        let err = client.wait(&run, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Canceled, "{err}");
        assert_eq!(err.value(), Some(&json!({"reason": "client"})));
        // Canceling again changes nothing and is still accepted.
        assert_eq!(client.cancel(&run).await.unwrap(), CancelOutcome::Accepted);
    }
}

#[tokio::test]
async fn canceling_an_ended_run_says_how_it_ended() {
    let client = Client::new(&demo().await).unwrap();
    let run = client.submit("echo", json!({"x": 1})).await.unwrap();
    assert_eq!(client.wait(&run, None).await.unwrap(), json!({"x": 1}));
    assert_eq!(
        client.cancel(&run).await.unwrap(),
        CancelOutcome::AlreadyEnded(State::Success)
    );
    let run = client.submit("fail", json!({})).await.unwrap();
    client.wait(&run, None).await.unwrap_err();
    assert_eq!(
        client.cancel(&run).await.unwrap(),
        CancelOutcome::AlreadyEnded(State::Error)
    );
}

#[tokio::test]
async fn an_unknown_run_is_not_found_for_every_verb() {
    let client = Client::new(&demo().await).unwrap();
    let run = client.run("sleep", UNKNOWN_ID).unwrap();
    let err = client.cancel(&run).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert_eq!(err.status(), Some(404));
    assert_eq!(
        client.status(&run).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!client.exists(&run).await.unwrap());
    follow_and_wait_fail_with(&client, &run, ErrorKind::NotFound).await;
}

#[tokio::test]
async fn the_catalogue_lists_every_object_and_one_by_name() {
    let client = Client::new(&demo().await).unwrap();
    let objects = client.objects().await.unwrap();
    let names: Vec<&str> = objects.iter().map(|o| o.name.as_str()).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    let count = objects.iter().find(|o| o.name == "count").unwrap();
    assert_eq!(count.kind, "builtin");
    assert!(!count.stream);
    assert_eq!(count.args_schema["additionalProperties"], false);
    assert_eq!(&client.object("count").await.unwrap(), count);
    let err = client.object("nope").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let err = client.object("a/b").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

/// Following the run on either transport, and waiting for it, fail with `kind`.
async fn follow_and_wait_fail_with(client: &Client, run: &Run, kind: ErrorKind) {
    for transport in TRANSPORTS {
        let err = collect(client.follow_with(run, with(transport)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{transport:?}: {err}");
    }
    assert_eq!(client.wait(run, None).await.unwrap_err().kind(), kind);
}

#[tokio::test]
async fn a_wait_that_times_out_leaves_the_run_going_and_wait_or_cancel_cancels_it() {
    let client = Client::new(&demo().await).unwrap();
    let run = client
        .submit("sleep", json!({"ms": 3_600_000}))
        .await
        .unwrap();
    let err = client
        .wait(&run, Some(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let status = client.status(&run).await.unwrap();
    assert!(!status.state.is_terminal(), "{status:?}");

    let err = client
        .wait_or_cancel(&run, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let err = client.wait(&run, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Canceled, "{err}");
    assert_eq!(err.value(), Some(&json!({"reason": "client"})));
    assert_eq!(client.status(&run).await.unwrap().state, State::Canceled);
}

/// A server playing a run that ends between a wait's timeout and the cancel that follows: the
/// first event stream stops after `queued` and stays open (so the wait times out), the cancel
/// finds the run ended (409, `state: success`), and a later stream has the whole log.
async fn ends_before_the_cancel_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let streams = streams.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0; 4096];
                while head_end(&buf).is_none() {
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                const SSE: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
                                   id: 0\nevent: queued\ndata: null\n\n";
                if buf.starts_with(b"DELETE ") {
                    let body = json!({
                        "type": "urn:longrun:problem:run-ended", "title": "The run has already ended",
                        "status": 409, "state": "success",
                    })
                    .to_string();
                    let answer = format!(
                        "HTTP/1.1 409 Conflict\r\ncontent-type: application/problem+json\r\n\
                         content-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(answer.as_bytes()).await;
                } else if streams.fetch_add(1, Ordering::SeqCst) == 0 {
                    let _ = socket.write_all(SSE.as_bytes()).await;
                    // Held open: nothing more comes on this stream.
                    let _ = socket.read(&mut chunk).await;
                } else {
                    let rest = "id: 1\nevent: success\ndata: {\"x\":1}\n\n";
                    let _ = socket.write_all(format!("{SSE}{rest}").as_bytes()).await;
                    let _ = socket.shutdown().await;
                }
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn wait_or_cancel_answers_with_the_end_of_a_run_that_ended_before_its_cancel() {
    let base = ends_before_the_cancel_server().await;
    let client = Client::new(&base).unwrap();
    let run = client.run("echo", UNKNOWN_ID).unwrap();
    let value = client
        .wait_or_cancel(&run, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(value, json!({"x": 1}));
}

#[tokio::test]
async fn a_failed_run_is_run_failed_with_its_value() {
    let client = Client::new(&demo().await).unwrap();
    let run = client
        .submit("fail", json!({"message": "disk full"}))
        .await
        .unwrap();
    let err = client.wait(&run, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RunFailed, "{err}");
    assert_eq!(err.value(), Some(&json!({"message": "disk full"})));
    assert!(err.to_string().contains("disk full"), "{err}");
    let events = collect(client.follow(&run)).await.unwrap();
    assert_eq!(events.last().unwrap().state, State::Error);
}

#[tokio::test]
async fn an_ended_ephemeral_run_is_gone() {
    let client = Client::new(&demo().await).unwrap();
    let run = client.submit("ephemeral", json!({})).await.unwrap();
    // One SSE connection sees it through: a long poll could find it gone between two polls.
    let events = collect(client.follow_with(&run, with(Transport::Sse)))
        .await
        .unwrap();
    assert_eq!(events.last().unwrap().state, State::Success);

    let err = client.exists(&run).await.unwrap_err();
    assert_eq!((err.kind(), err.status()), (ErrorKind::Gone, Some(410)));
    assert_eq!(
        client.status(&run).await.unwrap_err().kind(),
        ErrorKind::Gone
    );
    follow_and_wait_fail_with(&client, &run, ErrorKind::Gone).await;
}

#[tokio::test]
async fn submits_the_server_refuses_are_typed_errors() {
    let client = Client::new(&demo().await).unwrap();
    let err = client
        .submit("no-such-object", json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let problem = err.problem().expect("the server's problem details");
    assert_eq!(
        problem.kind().map(|k| k.slug()),
        Some("unknown-object"),
        "{problem:?}"
    );

    let err = client.submit("count", json!({"n": "x"})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_eq!(err.status(), Some(422));
    assert!(err.problem().is_some());

    // Refused by the client before anything is sent.
    for (object, args) in [
        ("count", json!([1, 2])),
        ("count", json!(3)),
        ("_X", json!({})),
    ] {
        let err = client.submit(object, args).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{object}: {err}");
        assert_eq!(err.status(), None);
    }
}

#[test]
fn bad_base_urls_are_invalid_arguments_at_build_time() {
    for bad in [
        "",
        "nope",
        "ftp://x",
        "http://",
        "http://h:8080/?q=1",
        "http://h:8080/#top",
        "file:///tmp/x",
    ] {
        let err = Client::new(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}: {err}");
        let err = longrun::blocking::Client::new(bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad:?}: {err}");
    }
    for bad_header in [("bad name", "v"), ("x-ok", "line\nbreak")] {
        let err = Client::builder("http://h")
            .header(bad_header.0, bad_header.1)
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad_header:?}");
    }
    for good in ["http://h", "http://h:8080/", "https://h/api/v1"] {
        Client::new(good).unwrap();
    }
}

/// A port nothing listens on: bind one, then let it go.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

#[tokio::test]
async fn a_server_that_is_not_listening_is_a_transport_error() {
    let base = closed_port().await;
    for reconnect in [Reconnect::never(), fast_reconnect(3)] {
        let client = Client::builder(&base)
            .reconnect(reconnect.clone())
            .build()
            .unwrap();
        let err = client.submit("count", json!({})).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
        let run = client.run("count", UNKNOWN_ID).unwrap();
        assert_eq!(
            client.status(&run).await.unwrap_err().kind(),
            ErrorKind::Transport
        );
        assert_eq!(
            client.cancel(&run).await.unwrap_err().kind(),
            ErrorKind::Transport
        );
        for transport in TRANSPORTS {
            let mut stream = client.follow_with(&run, with(transport));
            let err = stream.next().await.unwrap().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Transport, "{reconnect:?}: {err}");
            assert!(stream.next().await.is_none(), "an error is final");
        }
        let err = client.wait(&run, None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    }
}

/// A listener that accepts connections and never answers (nor closes them).
async fn silent_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_request_timeout_ends_calls_to_a_server_that_never_answers() {
    let client = Client::builder(silent_server().await)
        .timeout(Duration::from_millis(100))
        .poll_wait(Duration::ZERO)
        .reconnect(Reconnect::never())
        .build()
        .unwrap();
    let err = client.submit("count", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let run = client.run("count", UNKNOWN_ID).unwrap();
    assert_eq!(
        client.status(&run).await.unwrap_err().kind(),
        ErrorKind::Timeout
    );
    assert_eq!(
        client.cancel(&run).await.unwrap_err().kind(),
        ErrorKind::Timeout
    );
    // A follow treats a silent server like a dropped connection (retried from the cursor), so
    // once its reconnect budget is spent it ends with a transport error, never hangs.
    for transport in TRANSPORTS {
        let err = collect(client.follow_with(&run, with(transport)))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Transport, "{transport:?}: {err}");
    }
}

/// A server that answers each request with a head and the first byte of a body it promised
/// in full, then stalls (201 to a submit, 409 to a cancel — an answer whose body is read).
async fn stalling_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0; 4096];
            let Ok(n) = socket.read(&mut buf).await else {
                continue;
            };
            let (status, media) = if buf[..n].starts_with(b"DELETE ") {
                ("409 Conflict", "application/problem+json")
            } else {
                ("201 Created", "application/json")
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {media}\r\ncontent-length: 100\r\n\r\n{{"
            );
            let _ = socket.write_all(head.as_bytes()).await;
            held.push(socket);
        }
    });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_request_timeout_covers_an_answer_body_that_stalls() {
    let client = Client::builder(stalling_server().await)
        .timeout(Duration::from_millis(100))
        .reconnect(Reconnect::never())
        .build()
        .unwrap();
    let err = client.submit("count", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let run = client.run("count", UNKNOWN_ID).unwrap();
    let err = client.cancel(&run).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
}

/// What the test proxy does to the traffic it carries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Meddle {
    /// Rewrite `Accept: text/event-stream` to `application/json`, as a proxy that strips
    /// `Accept` would make the server answer.
    StripAccept,
    /// Pass an event stream's head, hold its body until the server closes the connection.
    HoldSseBody,
    /// Hold an event-stream answer, head and all, until the server closes the connection.
    HoldSseAnswer,
}

/// A proxy for follows (bodyless requests) that meddles as told and counts what it saw.
struct Proxy {
    url: String,
    sse_requests: Arc<AtomicUsize>,
    json_requests: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: &str, meddle: Meddle) -> Proxy {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Proxy {
            url: format!("http://{}", listener.local_addr().unwrap()),
            sse_requests: Default::default(),
            json_requests: Default::default(),
            held: Default::default(),
        };
        let counters = (
            proxy.sse_requests.clone(),
            proxy.json_requests.clone(),
            proxy.held.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_rd, client_wr) = client.into_split();
                let (server_rd, server_wr) = server.into_split();
                let (sse, json, held) = counters.clone();
                tokio::spawn(requests(client_rd, server_wr, meddle, sse, json));
                tokio::spawn(answers(server_rd, client_wr, meddle, held));
            }
        });
        proxy
    }

    fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn contains_ignore_case(haystack: &[u8], needle: &str) -> bool {
    String::from_utf8_lossy(haystack)
        .to_ascii_lowercase()
        .contains(needle)
}

async fn requests(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    meddle: Meddle,
    sse: Arc<AtomicUsize>,
    json: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0; 4096];
    loop {
        while let Some(end) = head_end(&buf) {
            let head: Vec<u8> = buf.drain(..end).collect();
            let mut head = String::from_utf8_lossy(&head).into_owned();
            if contains_ignore_case(head.as_bytes(), "text/event-stream") {
                sse.fetch_add(1, Ordering::SeqCst);
                if meddle == Meddle::StripAccept {
                    head = head.replace("text/event-stream", "application/json");
                }
            } else {
                json.fetch_add(1, Ordering::SeqCst);
            }
            if to.write_all(head.as_bytes()).await.is_err() {
                return;
            }
        }
        match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = to.shutdown().await;
}

async fn answers(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    meddle: Meddle,
    held: Arc<AtomicUsize>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0; 16 * 1024];
    // Decide on the first answer of the connection: an event stream is held, anything else
    // passes (and so does the rest of the connection).
    let mut holding = None;
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if holding.is_none() {
            let Some(end) = head_end(&buf) else { continue };
            let sse = contains_ignore_case(&buf[..end], "content-type: text/event-stream");
            holding = Some(sse && meddle != Meddle::StripAccept);
            if holding == Some(true) {
                held.fetch_add(1, Ordering::SeqCst);
                if meddle == Meddle::HoldSseBody && to.write_all(&buf[..end]).await.is_err() {
                    return;
                }
                if meddle == Meddle::HoldSseBody {
                    buf.drain(..end);
                }
            }
        }
        if holding == Some(false) {
            if to.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    }
    let _ = to.write_all(&buf).await;
    let _ = to.shutdown().await;
}

/// Follow one ended and one live `count` run through `proxy` with the SSE transport, each
/// with a fresh client (so no pooled connection the proxy already let through is reused), and
/// check that each follow tried SSE, then long polled.
async fn follow_through(direct: &Client, proxy: &Proxy, client: impl Fn() -> Client) {
    for args in [json!({"n": 30}), json!({"n": 20, "interval_ms": 5})] {
        let before = (
            Proxy::count(&proxy.sse_requests),
            Proxy::count(&proxy.json_requests),
        );
        let client = client();
        let run = direct.submit("count", &args).await.unwrap();
        let run = client.run("count", &run.id().to_string()).unwrap();
        let events = collect(client.follow_with(&run, with(Transport::Sse)))
            .await
            .unwrap();
        let n = args["n"].as_u64().unwrap();
        assert_eq!(ids(&events), (0..=n + 1).collect::<Vec<_>>(), "{args}");
        assert_eq!(events.last().unwrap().value, json!({"n": n}));
        assert_eq!(
            Proxy::count(&proxy.sse_requests) - before.0,
            1,
            "{args}: SSE was tried once"
        );
        assert!(
            Proxy::count(&proxy.json_requests) > before.1,
            "{args}: then long polling was used"
        );
    }
}

#[tokio::test]
async fn an_event_stream_request_answered_with_json_falls_back_to_long_polling() {
    let base = demo().await;
    let direct = Client::new(&base).unwrap();
    let proxy = Proxy::start(&base, Meddle::StripAccept).await;
    follow_through(&direct, &proxy, || Client::new(&proxy.url).unwrap()).await;
}

#[tokio::test]
async fn a_buffering_proxy_makes_the_follow_switch_to_long_polling() {
    let base = demo().await;
    let direct = Client::new(&base).unwrap();
    for meddle in [Meddle::HoldSseBody, Meddle::HoldSseAnswer] {
        let proxy = Proxy::start(&base, meddle).await;
        let client = || {
            Client::builder(&proxy.url)
                .sse_fallback_after(Duration::from_millis(100))
                .build()
                .unwrap()
        };
        follow_through(&direct, &proxy, client).await;
        assert_eq!(
            Proxy::count(&proxy.held),
            2,
            "{meddle:?}: both event streams were held"
        );
    }
}

#[tokio::test]
async fn next_batch_hands_over_what_is_there_up_to_max() {
    let client = Client::new(&demo().await).unwrap();
    let run = client.submit("count", json!({"n": 40})).await.unwrap();
    client.wait(&run, None).await.unwrap();
    for transport in TRANSPORTS {
        for max in [1, 4, 100] {
            let mut stream = client.follow_with(&run, with(transport));
            let mut batches = Vec::new();
            loop {
                let batch = stream.next_batch(max).await.unwrap();
                if batch.is_empty() {
                    break;
                }
                assert!(batch.len() <= max, "{transport:?}: {} > {max}", batch.len());
                batches.push(batch);
            }
            let all: Vec<Event> = batches.iter().flatten().cloned().collect();
            assert_eq!(ids(&all), (0..=41).collect::<Vec<_>>(), "{transport:?}");
            if max > 1 {
                assert!(
                    batches.iter().any(|b| b.len() > 1),
                    "{transport:?}, max {max}: the events of an ended run come several at once"
                );
            }
            assert!(stream.next_batch(max).await.unwrap().is_empty());
        }
    }
}

#[tokio::test]
async fn raw_batches_and_parsed_events_are_one_stream() {
    let client = Client::new(&demo().await).unwrap();
    let run = client.submit("count", json!({"n": 30})).await.unwrap();
    client.wait(&run, None).await.unwrap();
    for transport in TRANSPORTS {
        let parsed: Vec<Event> = client
            .follow_with(&run, with(transport))
            .map(Result::unwrap)
            .collect()
            .await;
        // Alternate: one parsed event, then a raw batch (0 counts as 1, then 5), and so on.
        let mut stream = client.follow_with(&run, with(transport));
        let mut mixed = Vec::new();
        for round in 0.. {
            match stream.next().await {
                Some(ev) => mixed.push(ev.unwrap()),
                None => break,
            }
            let raw = stream
                .next_raw_batch(if round % 2 == 0 { 0 } else { 5 })
                .await
                .unwrap();
            assert!(
                raw.len() <= if round % 2 == 0 { 1 } else { 5 },
                "{transport:?}"
            );
            for ev in raw {
                let value: Value = serde_json::from_str(ev.value.get()).unwrap();
                assert_eq!(ev.value::<Value>().unwrap(), value);
                mixed.push(Event {
                    id: ev.id,
                    state: ev.state,
                    value,
                });
            }
        }
        assert_eq!(mixed, parsed, "{transport:?}");
        assert_eq!(ids(&parsed), (0..=31).collect::<Vec<_>>(), "{transport:?}");
        assert!(stream.next_raw_batch(10).await.unwrap().is_empty());
    }
}

/// A server that answers every request with a canned answer (201 with a run for POST, 204 to
/// an event stream request) and keeps the head of each request it got.
/// Read a request's head (up to the blank line); `None` if the connection ends first.
async fn read_head(socket: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0; 4096];
    loop {
        if let Some(end) = head_end(&buf) {
            return Some(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A 201 for a submit of `echo`, the run [`UNKNOWN_ID`], closing the connection.
fn submitted_answer() -> String {
    let body = json!({
        "id": UNKNOWN_ID, "object": "echo", "state": "queued",
        "url": format!("/echo/{UNKNOWN_ID}"),
    })
    .to_string();
    format!(
        "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn recording_server() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Some(head) = read_head(&mut socket).await else {
                    return;
                };
                record.lock().unwrap().push(head.clone());
                let answer = if head.starts_with("POST ") {
                    submitted_answer()
                } else {
                    "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned()
                };
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), heads)
}

#[tokio::test]
async fn the_token_and_custom_headers_reach_the_server() {
    let (base, heads) = recording_server().await;
    let client = Client::builder(&base)
        .token("s3cret")
        .header("X-Tenant", "blue")
        .user_agent("acme-tool/2")
        .build()
        .unwrap();
    let run = client.submit("echo", json!({})).await.unwrap();
    assert_eq!(run.url().as_str(), format!("{base}/echo/{UNKNOWN_ID}"));
    // 204 to the event stream request: the run ended with nothing after the cursor.
    let events = collect(client.follow(&run)).await.unwrap();
    assert!(events.is_empty());
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for head in &heads {
        let lower = head.to_ascii_lowercase();
        assert!(head.contains("Bearer s3cret"), "{head}");
        assert!(
            lower.contains("\r\nauthorization: bearer s3cret\r\n"),
            "{head}"
        );
        assert!(lower.contains("\r\nx-tenant: blue\r\n"), "{head}");
        assert!(lower.contains("\r\nuser-agent: acme-tool/2\r\n"), "{head}");
    }
    assert!(
        heads[0].starts_with("POST /echo HTTP/1.1\r\n"),
        "{}",
        heads[0]
    );
    assert!(
        heads[1].starts_with(&format!("GET /echo/{UNKNOWN_ID} HTTP/1.1\r\n")),
        "{}",
        heads[1]
    );
    assert!(
        heads[1]
            .to_ascii_lowercase()
            .contains("accept: text/event-stream")
    );
}

// ---- The blocking client ----
//
// Its own runtime must not be driven from inside another, so these are plain tests with the
// server on a runtime of its own.

fn blocking_server(builder: ServerBuilder) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(start(builder));
    (rt, format!("http://{addr}"))
}

#[test]
fn the_blocking_client_follows_with_an_iterator_and_waits() {
    let (_rt, base) = blocking_server(Server::builder().demo());
    let client = longrun::blocking::Client::new(&base).unwrap();
    for transport in TRANSPORTS {
        let run = client.submit("count", json!({"n": 10})).unwrap();
        let events: Vec<Event> = client
            .follow_with(&run, with(transport))
            .collect::<longrun::Result<_>>()
            .unwrap();
        assert_eq!(ids(&events), (0..=11).collect::<Vec<_>>(), "{transport:?}");
        assert_eq!(client.wait(&run, None).unwrap(), json!({"n": 10}));
        assert_eq!(client.status(&run).unwrap().state, State::Success);
        let rest: Vec<Event> = client
            .follow_from(&run, 9)
            .collect::<longrun::Result<_>>()
            .unwrap();
        assert_eq!(ids(&rest), [10, 11]);
    }
    let run = client.submit("fail", json!({"message": "no"})).unwrap();
    assert_eq!(
        client.wait(&run, None).unwrap_err().kind(),
        ErrorKind::RunFailed
    );
}

#[test]
fn dropping_a_blocking_follow_closes_its_connection_although_it_reads_ahead() {
    // A server that sends one event of a run that never ends, then waits for the client to
    // hang up: its read sees the end of the connection only if the read-ahead task stopped.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hung_up = rt.spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while head_end(&head).is_none() {
            let n = socket.read(&mut buf).await.unwrap();
            head.extend_from_slice(&buf[..n]);
        }
        socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
                  id: 0\nevent: queued\ndata: null\n\n",
            )
            .await
            .unwrap();
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    });
    // Idle far longer than the test waits: only the drop may end the connection.
    let client = longrun::blocking::Client::from_builder(
        longrun::ClientBuilder::new(&base).idle_timeout(Duration::from_secs(3600)),
    )
    .unwrap();
    let run = longrun::Run::from_url(&client_run_url(&base)).unwrap();
    let mut events = client.follow(&run);
    assert_eq!(events.next().unwrap().unwrap().id, 0);
    drop(events);
    // Waiting out the bound is the failure: the connection stayed open.
    let closed =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), hung_up).await });
    assert!(
        matches!(closed, Ok(Ok(true))),
        "the connection was not closed"
    );
}

/// A run URL on `base` (the run itself need not exist).
fn client_run_url(base: &str) -> String {
    format!("{base}/echo/0b7e1c7e-3a4c-4c55-9a59-1d1f7f1e2a3b")
}

/// Read with `next_timeout` in short slices until the follow ends, noting whether any slice
/// came back empty.
fn drain_in_slices(events: &mut longrun::blocking::Events) -> (Vec<Event>, usize) {
    let mut got = Vec::new();
    let mut pending = 0;
    loop {
        match events.next_timeout(Duration::from_millis(5)) {
            Next::Item(ev) => got.push(ev.unwrap()),
            Next::Pending => pending += 1,
            Next::End => return (got, pending),
        }
    }
}

#[test]
fn next_timeout_is_pending_on_an_idle_run_and_then_goes_on_without_losing_events() {
    // `steps` emits one event per permit the test hands out, so the test decides when the run
    // is idle.
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = permits.clone();
    let builder = Server::builder()
        .demo()
        .object("steps", move |_args: Value, ctx: RunContext| {
            let gate = gate.clone();
            async move {
                for step in 1..=3 {
                    gate.acquire().await?.forget();
                    ctx.emit(json!({"step": step}));
                }
                Ok(json!({"steps": 3}))
            }
        });
    let (_rt, base) = blocking_server(builder);
    let client = longrun::blocking::Client::new(&base).unwrap();

    for transport in TRANSPORTS {
        // An idle `sleep` run: nothing after `queued` until it is canceled.
        let run = client.submit("sleep", json!({"ms": 3_600_000})).unwrap();
        let mut events = client.follow_with(&run, with(transport));
        let first = loop {
            if let Next::Item(ev) = events.next_timeout(Duration::from_millis(5)) {
                break ev.unwrap();
            }
        };
        assert_eq!((first.id, first.state), (0, State::Queued));
        for _ in 0..3 {
            assert!(
                matches!(events.next_timeout(Duration::from_millis(5)), Next::Pending),
                "{transport:?}: an idle run has nothing to hand out"
            );
        }
        assert_eq!(client.cancel(&run).unwrap(), CancelOutcome::Accepted);
        let (rest, _) = drain_in_slices(&mut events);
        assert_eq!(ids(&rest), [1], "{transport:?}");
        assert_eq!(rest[0].state, State::Canceled);

        // A run that goes idle between events: every slice that runs out empty-handed leaves
        // the follow where it was.
        let run = client.submit("steps", json!({})).unwrap();
        let mut events = client.follow_with(&run, with(transport));
        let mut got = Vec::new();
        for step in 0..3 {
            while got.len() <= step {
                match events.next_timeout(Duration::from_millis(5)) {
                    Next::Item(ev) => got.push(ev.unwrap()),
                    Next::Pending => {}
                    Next::End => panic!("{transport:?}: ended early"),
                }
            }
            assert!(
                matches!(events.next_timeout(Duration::from_millis(5)), Next::Pending),
                "{transport:?}: idle after event {step}"
            );
            permits.add_permits(1);
        }
        let (rest, _) = drain_in_slices(&mut events);
        got.extend(rest);
        assert_eq!(ids(&got), [0, 1, 2, 3, 4], "{transport:?}");
        let values: Vec<&Value> = got.iter().map(|e| &e.value).collect();
        assert_eq!(
            values,
            [
                &Value::Null,
                &json!({"step": 1}),
                &json!({"step": 2}),
                &json!({"step": 3}),
                &json!({"steps": 3})
            ]
        );
    }
}

#[test]
fn the_blocking_client_serves_several_threads_at_once() {
    let (_rt, base) = blocking_server(Server::builder().demo());
    let client = longrun::blocking::Client::new(&base).unwrap();
    let sleeper = client.submit("sleep", json!({"ms": 3_600_000})).unwrap();
    std::thread::scope(|s| {
        let followers: Vec<_> = (0..4u64)
            .map(|i| {
                let client = &client;
                s.spawn(move || {
                    let n = 30 + i;
                    let run = client
                        .submit("count", json!({"n": n, "interval_ms": 1}))
                        .unwrap();
                    let transport = TRANSPORTS[i as usize % 2];
                    let events: Vec<Event> = client
                        .follow_with(&run, with(transport))
                        .collect::<longrun::Result<_>>()
                        .unwrap();
                    assert_eq!(ids(&events), (0..=n + 1).collect::<Vec<_>>());
                    assert_eq!(client.wait(&run, None).unwrap(), json!({"n": n}));
                })
            })
            .collect();
        // Meanwhile one thread waits on a run that another cancels.
        let waiter = s.spawn(|| client.wait(&sleeper, None));
        for follower in followers {
            follower.join().unwrap();
        }
        assert_eq!(client.cancel(&sleeper).unwrap(), CancelOutcome::Accepted);
        let err = waiter.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Canceled, "{err}");
    });
}

/// A client sends its token to its own server only: a run URL naming another server is
/// refused before anything is sent.
#[tokio::test]
async fn runs_on_another_server_are_refused_not_contacted() {
    let client = longrun::Client::builder("http://127.0.0.1:9")
        .token("secret")
        .build()
        .unwrap();
    let elsewhere = longrun::Run::from_url(
        "http://198.51.100.7:8080/count/0f8fad5b-d9cb-469f-a165-70867728950e",
    )
    .unwrap();
    let err = client.status(&elsewhere).await.unwrap_err();
    assert_eq!(err.kind(), longrun::ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains("another server"), "{err}");
    let err = client.cancel(&elsewhere).await.unwrap_err();
    assert_eq!(err.kind(), longrun::ErrorKind::InvalidArgument);
    let mut events = client.follow(&elsewhere);
    let first = futures::StreamExt::next(&mut events)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(first.kind(), longrun::ErrorKind::InvalidArgument);
    assert!(futures::StreamExt::next(&mut events).await.is_none());
}

// ---- Tenants: the token, 401 and 403, idempotency keys ----

const ACME: &str = "lrt_acme_all";
const ACME_READ: &str = "lrt_acme_read";
const GLOBEX: &str = "lrt_globex_all";

/// A demo server with two tenants: acme (one token for everything, one that only reads) and
/// globex.
async fn tenants() -> String {
    use longrun_server::auth::token_hash;
    let toml = format!(
        "[[tenant]]\nname = \"acme\"\n\
         [[tenant.token]]\nhash = \"{}\"\nscopes = [\"submit\", \"read\", \"cancel\"]\n\
         [[tenant.token]]\nhash = \"{}\"\nscopes = [\"read\"]\n\
         [[tenant]]\nname = \"globex\"\n\
         [[tenant.token]]\nhash = \"{}\"\nscopes = [\"submit\", \"read\", \"cancel\"]\n",
        token_hash(ACME),
        token_hash(ACME_READ),
        token_hash(GLOBEX),
    );
    let auth = longrun_server::Auth::from_toml(&toml).unwrap();
    format!(
        "http://{}",
        start(Server::builder().demo().auth(auth)).await
    )
}

fn with_token(base: &str, token: &str) -> Client {
    Client::builder(base).token(token).build().unwrap()
}

#[tokio::test]
async fn a_token_lets_a_tenant_in_and_its_runs_are_its_own() {
    let base = tenants().await;
    let acme = with_token(&base, ACME);
    let run = acme.submit("echo", json!({"a": 1})).await.unwrap();
    assert_eq!(acme.wait(&run, None).await.unwrap(), json!({"a": 1}));
    assert!(acme.exists(&run).await.unwrap());
    // Another tenant's run does not exist for globex, on every verb.
    let globex = with_token(&base, GLOBEX);
    assert!(!globex.exists(&run).await.unwrap());
    follow_and_wait_fail_with(&globex, &run, ErrorKind::NotFound).await;
    let err = globex.cancel(&run).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
}

#[tokio::test]
async fn a_subscription_with_an_unknown_token_fails_at_once_whatever_the_reconnect_policy() {
    let base = tenants().await;
    // A policy that never gives up: only not retrying a refusal lets this return.
    let never_give_up = longrun::Reconnect {
        max_attempts: u32::MAX,
        initial_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    };
    for transport in [Transport::Sse, Transport::WebSocket] {
        let client = Client::builder(&base)
            .token("lrt_nobody")
            .transport(transport)
            .reconnect(never_give_up.clone())
            .build()
            .unwrap();
        let mut sub = client.subscribe("_runs", None);
        // A hang guard, not a timing check.
        let err = tokio::time::timeout(Duration::from_secs(120), sub.ready())
            .await
            .expect("a refused subscription is not retried")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{transport:?}: {err}");
    }
}

#[tokio::test]
async fn no_token_or_an_unknown_one_is_unauthorized_and_a_missing_scope_forbidden() {
    let base = tenants().await;
    let run = with_token(&base, ACME)
        .submit("sleep", json!({"ms": 60000}))
        .await
        .unwrap();
    for client in [Client::new(&base).unwrap(), with_token(&base, "lrt_nobody")] {
        let err = client.submit("echo", json!({})).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        assert_eq!(err.status(), Some(401));
        assert_eq!(
            err.problem().map(|p| p.type_uri.as_str()),
            Some("urn:longrun:problem:unauthorized")
        );
        assert_eq!(ErrorKind::Unauthorized.as_str(), "Unauthorized");
        for err in [
            client.status(&run).await.unwrap_err(),
            client.cancel(&run).await.unwrap_err(),
        ] {
            assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
        }
        // Not retried: a follow fails at once.
        follow_and_wait_fail_with(&client, &run, ErrorKind::Unauthorized).await;
    }
    let reader = with_token(&base, ACME_READ);
    assert!(reader.exists(&run).await.unwrap());
    for err in [
        reader.submit("echo", json!({})).await.unwrap_err(),
        reader.cancel(&run).await.map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Forbidden, "{err}");
        assert_eq!(err.status(), Some(403));
        assert_eq!(
            err.problem().map(|p| p.type_uri.as_str()),
            Some("urn:longrun:problem:forbidden")
        );
    }
    with_token(&base, ACME).cancel(&run).await.unwrap();
}

#[test]
fn the_token_is_never_shown() {
    let secret = "lrt_s3cret_never_shown";
    let builder = Client::builder("http://127.0.0.1:1")
        .token(secret)
        .header("X-Api-Key", secret);
    let shown = format!("{builder:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(
        shown.contains("x-api-key") || shown.contains("X-Api-Key"),
        "{shown}"
    );
    let options = longrun::ClientOptions::from_json(&format!(
        r#"{{"token": "{secret}", "headers": {{"X-Api-Key": "{secret}"}}}}"#
    ))
    .unwrap();
    let shown = format!("{options:?}");
    assert!(!shown.contains(secret), "{shown}");
    let client = builder.build().unwrap();
    assert!(!format!("{client:?}").contains(secret));
    // A token a header cannot carry: the error does not repeat it.
    let bad = "lrt_line\nbreak";
    let err = Client::builder("http://h").token(bad).build().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    assert!(!err.to_string().contains("lrt_line"), "{err}");
}

#[tokio::test]
async fn the_token_is_not_in_the_errors_of_a_refused_call() {
    let base = tenants().await;
    let client = with_token(&base, ACME_READ);
    let err = client.submit("echo", json!({})).await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains(ACME_READ), "{err:?}");
}

fn keyed(key: &str) -> SubmitOptions {
    SubmitOptions {
        idempotency_key: Some(key.to_owned()),
        ..Default::default()
    }
}

/// Needs the server's `Idempotency-Key` (spec §4.3).
#[tokio::test]
async fn the_same_idempotency_key_answers_the_same_run_and_other_arguments_are_refused() {
    let base = tenants().await;
    let acme = with_token(&base, ACME);
    let first = acme
        .submit_with("echo", json!({"a": 1}), keyed("order-17"))
        .await
        .unwrap();
    let again = acme
        .submit_with("echo", json!({"a": 1}), keyed("order-17"))
        .await
        .unwrap();
    assert_eq!(first.id(), again.id());
    let other = acme
        .submit_with("echo", json!({"a": 2}), keyed("order-17"))
        .await
        .unwrap_err();
    assert_eq!(other.kind(), ErrorKind::InvalidArgument, "{other}");
    assert_eq!(other.status(), Some(422));
    assert_eq!(
        other.problem().map(|p| p.type_uri.as_str()),
        Some("urn:longrun:problem:idempotency-key-reused")
    );
    // Keys are per tenant: globex's order-17 is a run of its own.
    let globex = with_token(&base, GLOBEX)
        .submit_with("echo", json!({"a": 1}), keyed("order-17"))
        .await
        .unwrap();
    assert_ne!(globex.id(), first.id());
    // Without a key every submit is a new run.
    let a = acme.submit("echo", json!({"a": 1})).await.unwrap();
    let b = acme.submit("echo", json!({"a": 1})).await.unwrap();
    assert_ne!(a.id(), b.id());
}

#[tokio::test]
async fn bad_idempotency_keys_are_invalid_arguments_before_anything_is_sent() {
    let long = "k".repeat(256);
    let client = Client::new(&closed_port().await).unwrap();
    for key in [
        "",
        "has space",
        "tab\tkey",
        "naïve",
        "line\nbreak",
        long.as_str(),
    ] {
        let err = client
            .submit_with("echo", json!({}), keyed(key))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{key:?}: {err}");
    }
}

/// A server whose first `cuts` connections are closed once a request's head has arrived, with
/// no answer (a reply lost on the way); then it answers 201. It records every request's head.
async fn cutting_server(cuts: usize) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = heads.clone();
    tokio::spawn(async move {
        let mut accepted = 0;
        while let Ok((mut socket, _)) = listener.accept().await {
            accepted += 1;
            let Some(head) = read_head(&mut socket).await else {
                continue;
            };
            record.lock().unwrap().push(head);
            if accepted <= cuts {
                // Reset, not a clean close: SO_LINGER 0.
                let _ = socket2::SockRef::from(&socket).set_linger(Some(Duration::ZERO));
                drop(socket);
                continue;
            }
            let answer = submitted_answer();
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (format!("http://{addr}"), heads)
}

#[tokio::test]
async fn a_keyed_submit_whose_connection_is_cut_is_sent_again_with_the_same_key() {
    let (base, heads) = cutting_server(2).await;
    let client = Client::builder(&base)
        .reconnect(fast_reconnect(3))
        .build()
        .unwrap();
    let run = client
        .submit_with("echo", json!({"a": 1}), keyed("order-17"))
        .await
        .unwrap();
    assert_eq!(run.id().to_string(), UNKNOWN_ID);
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    for head in &heads {
        assert!(head.starts_with("POST /echo HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nidempotency-key: order-17\r\n"),
            "{head}"
        );
    }
}

#[tokio::test]
async fn a_keyed_submit_gives_up_after_the_reconnect_attempts() {
    let (base, heads) = cutting_server(usize::MAX).await;
    let client = Client::builder(&base)
        .reconnect(fast_reconnect(2))
        .build()
        .unwrap();
    let err = client
        .submit_with("echo", json!({}), keyed("k"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    assert_eq!(heads.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn a_submit_without_a_key_is_never_sent_twice() {
    let (base, heads) = cutting_server(1).await;
    let client = Client::builder(&base)
        .reconnect(fast_reconnect(3))
        .build()
        .unwrap();
    let err = client.submit("echo", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport, "{err}");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(!heads[0].to_ascii_lowercase().contains("idempotency-key"));
}

// ---- Submit options: a deadline, and the answer in the submit's reply (`Prefer: wait`) ----

#[tokio::test]
async fn call_answers_with_the_outcome_of_the_run() {
    let client = Client::new(&demo().await).unwrap();
    let value = client
        .call("count", json!({"n": 3}), SubmitOptions::default(), None)
        .await
        .unwrap();
    assert_eq!(value, json!({"n": 3}));
    let err = client
        .call(
            "fail",
            json!({}),
            SubmitOptions::default(),
            Some(Duration::from_secs(30)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RunFailed, "{err}");
    // Still going when the timeout passes: Timeout, and the run goes on.
    let err = client
        .call(
            "sleep",
            json!({"ms": 3_600_000}),
            SubmitOptions::default(),
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let base = demo().await;
    let value = tokio::task::spawn_blocking(move || {
        let blocking = longrun::blocking::Client::new(&base).unwrap();
        blocking.call("echo", json!({"b": 2}), SubmitOptions::default(), None)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(value, json!({"b": 2}));
}

#[tokio::test]
async fn a_deadline_ends_the_run_canceled() {
    let client = Client::new(&demo().await).unwrap();
    let options = SubmitOptions {
        deadline: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let run = client
        .submit_with("sleep", json!({"ms": 3_600_000}), options.clone())
        .await
        .unwrap();
    let err = client.wait(&run, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Canceled, "{err}");
    assert!(format!("{err:?}").contains("deadline"), "{err:?}");
    // The same through call, and a deadline of nothing is refused before sending.
    let err = client
        .call("sleep", json!({"ms": 3_600_000}), options, None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Canceled, "{err}");
    let zero = SubmitOptions {
        deadline: Some(Duration::ZERO),
        ..Default::default()
    };
    let err = client
        .submit_with("echo", json!({}), zero)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    let far = SubmitOptions {
        deadline: Some(Duration::from_secs(365 * 86400)),
        ..Default::default()
    };
    let err = client
        .submit_with("echo", json!({}), far)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
}

/// `SubmitOptions::wait` sends `Prefer: wait`: the submit returns once the run has ended.
/// A hook the server cannot send (no `--hook-secret`) is refused at submit, which shows the
/// header was sent; hook events without a hook are refused by the server too.
#[tokio::test]
async fn a_submit_with_wait_returns_the_ended_run_and_hooks_reach_the_server() {
    let client = Client::new(&demo().await).unwrap();
    let options = SubmitOptions::from_json(r#"{"wait": 30}"#).unwrap();
    let run = client
        .submit_with("echo", json!({"a": 1}), options)
        .await
        .unwrap();
    assert_eq!(client.status(&run).await.unwrap().state, State::Success);
    let hooked = SubmitOptions::from_json(r#"{"hook": "http://127.0.0.1:9/x"}"#).unwrap();
    let err = client
        .submit_with("echo", json!({}), hooked)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert_eq!(err.status(), Some(422), "{err}");
    let events_only = SubmitOptions::from_json(r#"{"hook_events": "all"}"#).unwrap();
    let err = client
        .submit_with("echo", json!({}), events_only)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
}

/// `list_runs` pages through `GET /_runs`, over HTTP and over the WebSocket (the same route,
/// served by the same router), and on a unix socket; a bad filter is an `InvalidArgument`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_runs_pages_newest_first_on_every_transport() {
    let (unix, _dir) = common::unix_demo_server().await;
    for (base, transport) in [
        (common::demo_server().await, longrun::Transport::Sse),
        (common::demo_server().await, longrun::Transport::WebSocket),
        (unix, longrun::Transport::Sse),
    ] {
        let client = longrun::Client::builder(&base)
            .transport(transport)
            .build()
            .unwrap();
        let mut made = Vec::new();
        for i in 0..3 {
            let run = client.submit("echo", json!({"i": i})).await.unwrap();
            client.wait(&run, None).await.unwrap();
            made.push(run);
        }
        made.reverse();
        let mut query = longrun::ListRuns {
            object: Some("echo".into()),
            limit: Some(2),
            ..Default::default()
        };
        let mut listed = Vec::new();
        loop {
            let page = client.list_runs(&query).await.unwrap();
            assert!(page.runs.len() <= 2);
            listed.extend(page.runs);
            match page.next_page_token {
                Some(token) => query.page_token = Some(token),
                None => break,
            }
        }
        let urls: Vec<&str> = listed.iter().map(|l| l.run.url().as_str()).collect();
        let want: Vec<&str> = made.iter().map(|r| r.url().as_str()).collect();
        assert_eq!(urls, want, "{base} {transport:?}");
        assert!(listed.iter().all(|l| l.state == longrun::State::Success));
        assert!(
            listed
                .iter()
                .all(|l| l.ended.is_some() && l.tenant.is_none())
        );
        // A listed run is a handle of this client.
        assert!(client.exists(&listed[0].run).await.unwrap());
        let bad = longrun::ListRuns {
            state: Some("done".into()),
            ..Default::default()
        };
        let err = client.list_runs(&bad).await.unwrap_err();
        assert_eq!(err.kind(), longrun::ErrorKind::InvalidArgument, "{err}");
        assert_eq!(
            err.problem().unwrap().type_uri,
            "urn:longrun:problem:invalid-query"
        );
    }
}
