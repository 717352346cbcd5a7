//! Wire-level tests: exact status lines, headers and SSE bytes, read off a raw TCP socket
//! from a real server on an ephemeral port.

mod common;

use std::time::Duration;

use common::{TestServer, request};
use longrun_server::Config;
use serde_json::json;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn submit_answers_201_with_location_and_run_body() {
    let t = TestServer::demo().await;
    let res = t
        .raw(&request(
            "POST",
            "/echo/",
            &[("Content-Type", "application/json")],
            r#"{"a":1}"#,
        ))
        .await;
    assert_eq!(res.status, 201);
    assert_eq!(res.header("content-type"), Some("application/json"));
    let body = res.json();
    let id = body["id"].as_str().unwrap();
    assert_eq!(res.header("location"), Some(format!("/echo/{id}").as_str()));
    assert_eq!(
        body,
        json!({"id": id, "object": "echo", "state": "queued", "url": format!("/echo/{id}")})
    );
    // UUID v4: 36 chars, lowercase, version nibble 4, RFC 4122 variant.
    assert_eq!(id.len(), 36);
    assert_eq!(id, id.to_ascii_lowercase());
    assert_eq!(&id[14..15], "4");
    assert!("89ab".contains(&id[19..20]));
}

#[tokio::test]
async fn submit_with_event_stream_accept_answers_303_to_the_stream() {
    let t = TestServer::demo().await;
    for accept in [
        "text/event-stream",
        "application/json, text/event-stream;q=0.9",
        "TEXT/EVENT-STREAM",
    ] {
        let res = t
            .raw(&request("POST", "/echo", &[("Accept", accept)], ""))
            .await;
        assert_eq!(res.status, 303, "{accept}");
        let loc = res.header("location").unwrap().to_owned();
        assert_eq!(res.json()["url"], loc.as_str());
        // Following the redirect with the same Accept lands on the stream.
        let stream = t
            .raw(&request("GET", &loc, &[("Accept", accept)], ""))
            .await;
        assert_eq!(stream.status, 200);
        assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    }
}

#[tokio::test]
async fn sse_of_an_ended_run_is_exact() {
    let t = TestServer::demo().await;
    let run = t.submit("echo", json!({"a": [1, "x\ny"]})).await;
    t.events(&run).await; // wait until it ended
    let res = t
        .raw(&request(
            "GET",
            &run,
            &[("Accept", "text/event-stream")],
            "",
        ))
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/event-stream"));
    assert_eq!(res.header("cache-control"), Some("no-cache"));
    assert_eq!(res.header("longrun-state"), Some("success"));
    assert_eq!(res.header("longrun-last-event-id"), Some("1"));
    assert_eq!(
        res.text(),
        "retry: 1000\n\
         id: 0\nevent: queued\ndata: null\n\n\
         id: 1\nevent: success\ndata: {\"a\":[1,\"x\\ny\"]}\n\n"
    );
    // Resuming after the terminal event: 204, the WHATWG "stop reconnecting".
    let res = t
        .raw(&request(
            "GET",
            &run,
            &[("Accept", "text/event-stream"), ("Last-Event-ID", "1")],
            "",
        ))
        .await;
    assert_eq!(res.status, 204);
    assert!(res.body.is_empty());
}

#[tokio::test]
async fn sse_resume_sends_only_events_after_the_cursor() {
    let t = TestServer::demo().await;
    let run = t.submit("count", json!({"n": 3})).await;
    t.events(&run).await;
    let res = t
        .raw(&request(
            "GET",
            &run,
            &[("Accept", "text/event-stream"), ("last-event-id", "2")],
            "",
        ))
        .await;
    assert_eq!(
        res.text(),
        "retry: 1000\n\
         id: 3\nevent: running\ndata: {\"i\":3,\"message\":\"3/3\",\"n\":3,\"progress\":1.0}\n\n\
         id: 4\nevent: success\ndata: {\"n\":3}\n\n"
    );
}

#[tokio::test]
async fn sse_stream_is_live_sends_keep_alives_and_ends_after_the_terminal_event() {
    let t = TestServer::with_config(Config {
        keep_alive: Duration::from_millis(20),
        ..Config::default()
    })
    .await;
    let run = t.submit("sleep", json!({"ms": 3_600_000})).await;
    let (head, mut stream) = t
        .open(&request(
            "GET",
            &run,
            &[("Accept", "text/event-stream")],
            "",
        ))
        .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("longrun-state"), Some("queued"));
    // Read until a keep-alive comment shows up after the queued event.
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: null\n\n")
        || !String::from_utf8_lossy(&seen).contains(": keep-alive\n")
    {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "stream ended early: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    let del = t.raw(&request("DELETE", &run, &[], "")).await;
    assert_eq!(del.status, 202);
    // The rest of the stream: the canceled event, then the end of the chunked body.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    seen.extend_from_slice(&rest);
    let raw = String::from_utf8_lossy(&seen);
    assert!(
        raw.ends_with("0\r\n\r\n"),
        "the chunked body is terminated: {raw:?}"
    );
    // The body, de-chunked: the retry line, queued, one or more keep-alive lines, canceled.
    // Neither the retry nor a keep-alive is followed by a blank line of its own (§7.1): a
    // parser that returns an event at every blank line must see exactly two here.
    let body = String::from_utf8(common::dechunk(&seen)).unwrap();
    let middle = body
        .strip_prefix("retry: 1000\nid: 0\nevent: queued\ndata: null\n\n")
        .and_then(|rest| {
            rest.strip_suffix("id: 1\nevent: canceled\ndata: {\"reason\":\"client\"}\n\n")
        })
        .unwrap_or_else(|| panic!("unexpected stream body: {body:?}"));
    assert!(
        !middle.is_empty() && middle.split_terminator('\n').all(|l| l == ": keep-alive"),
        "only keep-alive lines, each without a blank line after it, between the events: {middle:?}"
    );
    assert_eq!(body.matches("\n\n").count(), 2, "{body:?}");
}

#[tokio::test]
async fn long_poll_holds_until_an_event_arrives() {
    let t = TestServer::demo().await;
    let run = t.submit("sleep", json!({"ms": 3_600_000})).await;
    let url = t.url(&format!("{run}?last_event_id=0&wait=60"));
    let poll = tokio::spawn(async move { reqwest::get(url).await.unwrap() });
    // The poll is parked on the run; the cancel's event wakes it.
    let del = t.raw(&request("DELETE", &run, &[], "")).await;
    assert_eq!(del.status, 202);
    let res = poll.await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["cache-control"], "no-store");
    let events: serde_json::Value = res.json().await.unwrap();
    assert_eq!(
        events,
        json!([{"id": 1, "state": "canceled", "value": {"reason": "client"}}])
    );
}

#[tokio::test]
async fn long_poll_with_wait_zero_answers_at_once() {
    let t = TestServer::demo().await;
    let run = t.submit("sleep", json!({"ms": 3_600_000})).await;
    let res = t
        .raw(&request(
            "GET",
            &format!("{run}?last_event_id=0&wait=0"),
            &[],
            "",
        ))
        .await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json(), json!([]));
    assert_eq!(res.header("longrun-state"), Some("queued"));
    assert_eq!(res.header("longrun-last-event-id"), Some("0"));
    t.raw(&request("DELETE", &run, &[], "")).await;
}

#[tokio::test]
async fn cursor_header_wins_over_query_and_both_query_spellings_work() {
    let t = TestServer::demo().await;
    let run = t.submit("count", json!({"n": 3})).await;
    t.events(&run).await;
    let ids = |res: common::RawResponse| -> Vec<u64> {
        res.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect()
    };
    let r = t
        .raw(&request(
            "GET",
            &format!("{run}?last_event_id=1"),
            &[("Last-Event-ID", "3")],
            "",
        ))
        .await;
    assert_eq!(ids(r), vec![4]);
    let r = t
        .raw(&request("GET", &format!("{run}?last-event-id=2"), &[], ""))
        .await;
    assert_eq!(ids(r), vec![3, 4]);
    let r = t
        .raw(&request(
            "GET",
            &format!("{run}?last_event_id=1&last-event-id=3"),
            &[],
            "",
        ))
        .await;
    assert_eq!(ids(r), vec![2, 3, 4]);
    // An empty header means "no cursor", as an EventSource with an empty last id sends none.
    let r = t
        .raw(&request(
            "GET",
            &format!("{run}?last_event_id=3"),
            &[("Last-Event-ID", "")],
            "",
        ))
        .await;
    assert_eq!(ids(r), vec![4]);
}

#[tokio::test]
async fn head_reports_state_and_last_event_id_without_a_body() {
    let t = TestServer::demo().await;
    let run = t.submit("fail", json!({"message": "boom"})).await;
    t.events(&run).await;
    let res = t.raw(&request("HEAD", &run, &[], "")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("longrun-state"), Some("error"));
    assert_eq!(res.header("longrun-last-event-id"), Some("1"));
    assert!(res.body.is_empty());
}

#[tokio::test]
async fn body_limit_is_enforced_by_declared_length_and_by_chunked_bodies() {
    let t = TestServer::with_config(Config {
        body_limit: 64,
        ..Config::default()
    })
    .await;
    let big = format!("{{\"x\":\"{}\"}}", "a".repeat(100));
    t.raw(&request("POST", "/echo", &[], &big))
        .await
        .assert_problem(413, "body-too-large");
    // Chunked: no Content-Length, the limit must still hold while reading.
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    t.raw(&chunked).await.assert_problem(413, "body-too-large");
    // Exactly at the limit is fine.
    let at = format!("{{\"x\":\"{}\"}}", "a".repeat(64 - 8));
    assert_eq!(at.len(), 64);
    assert_eq!(t.raw(&request("POST", "/echo", &[], &at)).await.status, 201);
}

#[tokio::test]
async fn every_error_is_problem_json_never_5xx() {
    let t = TestServer::demo().await;
    let run = t.submit("echo", json!({})).await;
    let id = run.rsplit('/').next().unwrap().to_owned();
    let cases: Vec<(String, u16, &str)> = vec![
        (
            request(
                "POST",
                "/echo",
                &[("Content-Type", "application/json")],
                "{",
            ),
            400,
            "invalid-json",
        ),
        (request("POST", "/echo", &[], "[1]"), 400, "args-not-object"),
        (
            request("POST", "/echo", &[("Content-Type", "text/plain")], "{}"),
            415,
            "unsupported-media-type",
        ),
        (
            request("POST", "/echo", &[], "\u{0}\u{1}"),
            400,
            "invalid-json",
        ),
        (request("POST", "/nope", &[], "{}"), 404, "unknown-object"),
        (
            request("POST", "/_private", &[], "{}"),
            404,
            "unknown-object",
        ),
        (
            request("POST", "/count", &[], r#"{"n":"three"}"#),
            422,
            "invalid-arguments",
        ),
        (
            request("POST", "/count", &[], r#"{"bogus":1}"#),
            422,
            "invalid-arguments",
        ),
        (
            request("GET", "/echo/not-a-uuid", &[], ""),
            404,
            "run-not-found",
        ),
        (
            request("GET", &format!("/count/{id}"), &[], ""),
            404,
            "run-not-found",
        ),
        (
            request("GET", &format!("/echo/{{{id}}}"), &[], ""),
            404,
            "run-not-found",
        ),
        (
            request("GET", &format!("/echo/{}", id.replace('-', "")), &[], ""),
            404,
            "run-not-found",
        ),
        (
            request("GET", &run, &[("Last-Event-ID", "-1")], ""),
            400,
            "invalid-cursor",
        ),
        (
            request("GET", &format!("{run}?last_event_id=abc"), &[], ""),
            400,
            "invalid-cursor",
        ),
        (
            request(
                "GET",
                &format!("{run}?last-event-id=99999999999999999999"),
                &[],
                "",
            ),
            400,
            "invalid-cursor",
        ),
        (
            request("GET", &format!("{run}?wait=-1"), &[], ""),
            400,
            "invalid-wait",
        ),
        (
            request("GET", &format!("{run}?wait=soon"), &[], ""),
            400,
            "invalid-wait",
        ),
        (request("GET", "/", &[], ""), 404, "not-found"),
        (request("GET", "/a/b/c", &[], ""), 404, "not-found"),
        (request("PUT", &run, &[], "{}"), 405, "method-not-allowed"),
        (request("GET", "/echo", &[], ""), 405, "method-not-allowed"),
        (
            request("POST", "/_health", &[], ""),
            405,
            "method-not-allowed",
        ),
    ];
    for (req, status, slug) in cases {
        let res = t.raw(&req).await;
        assert!(res.status < 500, "{req}");
        res.assert_problem(status, slug);
    }
    let res = t.raw(&request("PUT", &run, &[], "{}")).await;
    let allow = res.header("allow").unwrap();
    for m in ["GET", "HEAD", "DELETE"] {
        assert!(allow.contains(m), "{allow}");
    }
}

#[tokio::test]
async fn a_non_utf8_cursor_header_is_a_400() {
    let t = TestServer::demo().await;
    let run = t.submit("echo", json!({})).await;
    let mut req = format!("GET {run} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nLast-Event-ID: ")
        .into_bytes();
    req.extend_from_slice(&[0xff, 0xfe]);
    req.extend_from_slice(b"\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(t.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &req)
        .await
        .unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let head = String::from_utf8_lossy(&out);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("invalid-cursor"), "{head}");
}

#[tokio::test]
async fn health_and_openapi() {
    let t = TestServer::demo().await;
    let res = t.raw(&request("GET", "/_health", &[], "")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.json()["protocol"], "longrun/1");
    let res = t.raw(&request("GET", "/_openapi.json", &[], "")).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("application/json"));
    assert!(res.json()["openapi"].as_str().unwrap().starts_with("3.1"));
}

/// A client that writes its whole body before it reads the reply (Python's `http.client`,
/// requests, httpx): a refused 4 MiB body is read and discarded, so the client finishes
/// writing and reads the problem instead of a reset connection. With a declared length, with
/// a chunked body, and for an unknown object.
#[test]
fn refused_large_bodies_are_read_so_the_client_gets_the_problem() {
    use std::io::{Read, Write};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let t = rt.block_on(TestServer::demo());
    let addr = t.url("").trim_start_matches("http://").to_owned();
    let body = vec![b' '; 4 * 1024 * 1024];
    let chunked = {
        let mut chunked = Vec::new();
        for chunk in body.chunks(64 * 1024) {
            chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            chunked.extend_from_slice(chunk);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        chunked
    };
    let cases: [(&str, String, &[u8], u16, &str); 3] = [
        (
            "declared length",
            format!("Content-Length: {}\r\n", body.len()),
            &body,
            413,
            "body-too-large",
        ),
        (
            "chunked",
            "Transfer-Encoding: chunked\r\n".into(),
            &chunked,
            413,
            "body-too-large",
        ),
        (
            "unknown object",
            format!("Content-Length: {}\r\n", body.len()),
            &body,
            404,
            "unknown-object",
        ),
    ];
    for (case, framing, payload, status, slug) in cases {
        let object = if slug == "unknown-object" {
            "nope"
        } else {
            "echo"
        };
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        let head = format!(
            "POST /{object} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{framing}Connection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream
            .write_all(payload)
            .unwrap_or_else(|e| panic!("{case}: writing the body failed: {e}"));
        let mut reply = Vec::new();
        stream
            .read_to_end(&mut reply)
            .unwrap_or_else(|e| panic!("{case}: reading the reply failed: {e}"));
        let text = String::from_utf8_lossy(&reply);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{case}: {text}"
        );
        assert!(
            text.contains(&format!("urn:longrun:problem:{slug}")),
            "{case}: {text}"
        );
    }
}

#[tokio::test]
async fn an_object_name_registered_twice_is_refused_with_its_name() {
    let twice = longrun_server::Server::builder()
        .object(
            "x",
            |_: serde_json::Value, _: longrun_server::RunContext| async { Ok(json!(1)) },
        )
        .object(
            "x",
            |_: serde_json::Value, _: longrun_server::RunContext| async { Ok(json!(2)) },
        )
        .build();
    assert!(
        matches!(&twice, Err(longrun_server::BuildError::DuplicateObject(name)) if name == "x"),
        "{:?}",
        twice.err()
    );
    let over_demo = longrun_server::Server::builder()
        .demo()
        .object(
            "echo",
            |_: serde_json::Value, _: longrun_server::RunContext| async { Ok(json!(1)) },
        )
        .build();
    let err = over_demo.err().expect("echo is a demo object");
    assert!(err.to_string().contains("\"echo\""), "{err}");
}

/// Followers of one run are counted, SSE streams and held long polls alike: past the limit a
/// follower gets 503 `too-many-followers` with `Retry-After`, and a follower whose stream ended
/// gives its place back.
#[tokio::test]
async fn followers_beyond_the_per_run_limit_get_503_until_a_place_is_free() {
    let t = TestServer::with_config(Config {
        max_followers_per_run: 1,
        ..Config::default()
    })
    .await;
    let run = t.submit("sleep", json!({"ms": 3_600_000})).await;
    let (head, mut first) = t
        .open(&request(
            "GET",
            &run,
            &[("Accept", "text/event-stream")],
            "",
        ))
        .await;
    assert_eq!(head.status, 200);
    let refused = t
        .raw(&request(
            "GET",
            &run,
            &[("Accept", "text/event-stream")],
            "",
        ))
        .await;
    refused.assert_problem(503, "too-many-followers");
    assert_eq!(refused.header("retry-after"), Some("1"));
    let poll = t
        .raw(&request("GET", &format!("{run}?wait=0"), &[], ""))
        .await;
    poll.assert_problem(503, "too-many-followers");
    // Another run has places of its own.
    let other = t.submit("echo", json!({})).await;
    let res = t
        .raw(&request("GET", &format!("{other}?wait=0"), &[], ""))
        .await;
    assert_eq!(res.status, 200);
    // The first stream ends with the run; then its place is free again.
    assert_eq!(t.raw(&request("DELETE", &run, &[], "")).await.status, 202);
    let mut rest = Vec::new();
    first.read_to_end(&mut rest).await.unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("event: canceled"));
    let again = t
        .raw(&request("GET", &format!("{run}?wait=0"), &[], ""))
        .await;
    assert_eq!(again.status, 200, "{}", again.text());
}
