//! The WebSocket (spec §28) against a real server over real sockets: every route through the
//! same router, streams as packets, STOP, uid correlation, pubsub with offsets, history and
//! the run feeds, tenants, and the bounds (slow subscriber, message size, binary frames).

mod common;

use common::ws::{Socket, connect, recv, send};
use common::{TestServer, auth};
use futures::{SinkExt, StreamExt};
use longrun_server::{Config, Server};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The close code the server ended the socket with, after any packets still in flight.
async fn close_code(ws: &mut Socket) -> (u16, Vec<Value>) {
    let mut packets = Vec::new();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => packets.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(Some(frame)))) => return (frame.code.into(), packets),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Every packet of a stream (or the one reply) of `uid`, in order, skipping other uids.
async fn replies(ws: &mut Socket, uid: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let p = recv(ws).await;
        if p["uid"] != uid {
            continue;
        }
        let more = p["more"] == true;
        out.push(p);
        if !more {
            return out;
        }
    }
}

fn events(packets: &[Value]) -> Vec<Value> {
    packets
        .iter()
        .flat_map(|p| p["d"].as_array().cloned().unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn every_route_answers_over_the_socket_through_the_same_router() {
    let server = TestServer::demo().await;
    let mut ws = connect(&server, None).await;
    send(
        &mut ws,
        json!({"uid": "s", "m": "POST", "r": "/count/", "d": {"n": 3}}),
    )
    .await;
    let submitted = recv(&mut ws).await;
    assert_eq!(submitted["c"], 201, "{submitted}");
    let location = submitted["h"]["location"].as_str().unwrap().to_owned();
    assert!(location.starts_with("/count/"), "{location}");
    assert_eq!(submitted["d"]["object"], "count");

    // Follow as a stream: every event once, in order, the last packet without `more`.
    send(
        &mut ws,
        json!({"uid": 7, "m": "GET", "r": location, "h": {"accept": "text/event-stream"}}),
    )
    .await;
    let mut stream = Vec::new();
    loop {
        let p = recv(&mut ws).await;
        assert_eq!(p["uid"], 7, "{p}");
        assert_eq!(p["c"], 200);
        let more = p["more"] == true;
        stream.push(p);
        if !more {
            break;
        }
    }
    assert_eq!(stream[0]["h"]["content-type"], "text/event-stream");
    let ids: Vec<u64> = events(&stream)
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [0, 1, 2, 3, 4]);
    let last = events(&stream).pop().unwrap();
    assert_eq!(last["state"], "success");

    // The same over HTTP long polling: one reply, the same events.
    let over_http = server.events(&location).await;
    send(
        &mut ws,
        json!({"uid": "poll", "m": "GET", "r": format!("{location}?wait=0")}),
    )
    .await;
    let poll = recv(&mut ws).await;
    assert_eq!(poll["d"].as_array().unwrap().len(), over_http.len());
    assert_eq!(poll["h"]["longrun-state"], "success");

    // HEAD, a cancel of an ended run, an unknown route, a bad body: statuses as over HTTP.
    send(&mut ws, json!({"uid": "h", "m": "HEAD", "r": location})).await;
    let head = recv(&mut ws).await;
    assert_eq!(head["c"], 200);
    assert_eq!(head["d"], Value::Null);
    assert_eq!(head["h"]["longrun-state"], "success");
    send(&mut ws, json!({"uid": "d", "m": "DELETE", "r": location})).await;
    assert_eq!(recv(&mut ws).await["c"], 409);
    send(
        &mut ws,
        json!({"uid": "x", "m": "GET", "r": "/no/such/route/here"}),
    )
    .await;
    let missing = recv(&mut ws).await;
    assert_eq!(missing["c"], 404);
    assert!(
        missing["d"]["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:longrun:problem:")
    );
    send(
        &mut ws,
        json!({"uid": "b", "m": "POST", "r": "/count/", "d": [1]}),
    )
    .await;
    let bad = recv(&mut ws).await;
    assert_eq!(bad["c"], 400);
    assert_eq!(bad["d"]["type"], "urn:longrun:problem:args-not-object");
    // A route of the control API too (no WebSocket code for it).
    send(&mut ws, json!({"uid": "n", "m": "GET", "r": "/_nodes"})).await;
    assert_eq!(recv(&mut ws).await["c"], 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_packets_get_problems_and_the_socket_goes_on() {
    let server = TestServer::demo().await;
    let mut ws = connect(&server, None).await;
    ws.send(Message::Text("not json".into())).await.unwrap();
    let p = recv(&mut ws).await;
    assert_eq!(p["c"], 400);
    assert_eq!(p["d"]["type"], "urn:longrun:problem:invalid-packet");
    for bad in [
        json!({"m": "GET", "r": "/_health"}),
        json!({"uid": {"a": 1}, "m": "GET", "r": "/_health"}),
        json!({"uid": 1, "m": "FETCH", "r": "/_health"}),
        json!({"uid": 1, "m": "GET", "r": "http://elsewhere/"}),
        json!({"uid": 1, "m": "GET", "r": "/_ws"}),
        json!({"uid": 1, "m": "GET", "r": "/_health", "h": {"bad header": "x"}}),
    ] {
        send(&mut ws, bad.clone()).await;
        let p = recv(&mut ws).await;
        assert_eq!(p["c"], 400, "{bad} → {p}");
        assert_eq!(p["d"]["type"], "urn:longrun:problem:invalid-packet");
    }
    send(&mut ws, json!({"uid": 2, "m": "GET", "r": "/_health"})).await;
    assert_eq!(recv(&mut ws).await["c"], 200);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn streams_and_requests_interleave_by_uid_and_stop_ends_one() {
    let server = TestServer::demo().await;
    let mut ws = connect(&server, None).await;
    let sleep = server.submit("sleep", json!({"ms": 60_000})).await;
    let quick = server.submit("count", json!({"n": 2})).await;
    let sse = json!({"accept": "text/event-stream"});
    send(
        &mut ws,
        json!({"uid": "long", "m": "GET", "r": sleep, "h": sse}),
    )
    .await;
    // Its first packet (event 0, and the head) is out before anything else is asked.
    let first = recv(&mut ws).await;
    assert_eq!(first["uid"], "long");
    assert_eq!(first["more"], true);
    // A uid in flight cannot be reused.
    send(&mut ws, json!({"uid": "long", "m": "GET", "r": "/_health"})).await;
    let reused = recv(&mut ws).await;
    assert_eq!(reused["c"], 409);
    assert_eq!(reused["d"]["type"], "urn:longrun:problem:uid-in-use");
    // Another stream and a request answer while the first stays open.
    send(
        &mut ws,
        json!({"uid": "quick", "m": "GET", "r": quick, "h": sse}),
    )
    .await;
    let quick_events = events(&replies(&mut ws, "quick").await);
    assert_eq!(quick_events.last().unwrap()["state"], "success");
    // STOP: the stream's last packet says stopped, then the STOP is acknowledged.
    send(&mut ws, json!({"uid": "halt", "m": "STOP", "d": "long"})).await;
    let last = recv(&mut ws).await;
    assert_eq!(last["uid"], "long");
    assert_eq!(last["stopped"], true);
    assert!(last.get("more").is_none());
    let ack = recv(&mut ws).await;
    assert_eq!(
        (ack["uid"].as_str(), ack["c"].as_u64()),
        (Some("halt"), Some(200))
    );
    // Nothing is in flight under that uid any more: it may be used again, and STOP of it 404s.
    send(&mut ws, json!({"uid": "again", "m": "STOP", "d": "long"})).await;
    assert_eq!(recv(&mut ws).await["c"], 404);
    send(&mut ws, json!({"uid": "long", "m": "DELETE", "r": sleep})).await;
    assert_eq!(recv(&mut ws).await["c"], 202);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn pubsub_delivers_in_order_and_unsubscribe_loses_nothing_before_it() {
    let server = TestServer::demo().await;
    let mut sub = connect(&server, None).await;
    let mut publisher = connect(&server, None).await;
    send(&mut sub, json!({"uid": "s1", "m": "SUB", "r": "chat.room"})).await;
    let ack = recv(&mut sub).await;
    assert_eq!(ack["c"], 200);
    assert_eq!(ack["d"], json!({"offset": 0, "recovered": true}));
    for i in 0..50 {
        send(
            &mut publisher,
            json!({"uid": i, "m": "PUB", "r": "chat.room", "d": {"i": i}}),
        )
        .await;
        let p = recv(&mut publisher).await;
        assert_eq!(
            (p["c"].as_u64(), p["d"]["offset"].as_u64()),
            (Some(202), Some(i))
        );
    }
    // Over HTTP too: the same topic, the next offset.
    let res = reqwest::Client::new()
        .post(server.url("/_topics/chat.room"))
        .json(&json!({"i": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.json::<Value>().await.unwrap()["offset"], 50);
    // UNSUB right away: its ack comes after every publication before it.
    send(
        &mut sub,
        json!({"uid": "u", "m": "UNSUB", "r": "chat.room"}),
    )
    .await;
    let mut got = Vec::new();
    loop {
        let p = recv(&mut sub).await;
        if p["m"] == "UNSUB" {
            assert_eq!(p["c"], 200);
            break;
        }
        assert_eq!(
            (p["uid"].as_str(), p["r"].as_str()),
            (Some("s1"), Some("chat.room"))
        );
        got.push(p["d"]["offset"].as_u64().unwrap());
        assert_eq!(p["d"]["data"]["i"], p["d"]["offset"]);
    }
    assert_eq!(got, (0..=50).collect::<Vec<_>>());
    send(
        &mut publisher,
        json!({"uid": "after", "m": "PUB", "r": "chat.room", "d": 1}),
    )
    .await;
    recv(&mut publisher).await;
    // Nothing more reaches the unsubscribed socket: the next thing it gets is this reply.
    send(
        &mut sub,
        json!({"uid": "ping", "m": "GET", "r": "/_health"}),
    )
    .await;
    assert_eq!(recv(&mut sub).await["uid"], "ping");
    send(
        &mut sub,
        json!({"uid": "u2", "m": "UNSUB", "r": "chat.room"}),
    )
    .await;
    assert_eq!(recv(&mut sub).await["c"], 404);
    // Reserved and malformed topics.
    send(
        &mut sub,
        json!({"uid": 1, "m": "PUB", "r": "_runs", "d": 1}),
    )
    .await;
    assert_eq!(
        recv(&mut sub).await["d"]["type"],
        "urn:longrun:problem:invalid-topic"
    );
    send(&mut sub, json!({"uid": 2, "m": "SUB", "r": "a..b"})).await;
    assert_eq!(recv(&mut sub).await["c"], 400);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn since_replays_the_history_and_says_when_it_cannot() {
    let server = TestServer::with_config(Config {
        topic_history: 5,
        ..Config::default()
    })
    .await;
    let mut ws = connect(&server, None).await;
    for i in 0..8 {
        send(&mut ws, json!({"uid": i, "m": "PUB", "r": "feed", "d": i})).await;
        recv(&mut ws).await;
    }
    send(
        &mut ws,
        json!({"uid": "a", "m": "SUB", "r": "feed", "d": {"since": 6}}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["d"], json!({"offset": 8, "recovered": true}));
    let replayed: Vec<Value> = vec![recv(&mut ws).await, recv(&mut ws).await];
    assert_eq!(replayed[0]["d"], json!({"offset": 6, "data": 6}));
    assert_eq!(replayed[1]["d"], json!({"offset": 7, "data": 7}));
    // Offsets 0..2 left the history (5 kept).
    send(
        &mut ws,
        json!({"uid": "b", "m": "SUB", "r": "feed", "d": {"since": 1}}),
    )
    .await;
    let ack = recv(&mut ws).await;
    assert_eq!(ack["d"], json!({"offset": 8, "recovered": false}));
    let first = recv(&mut ws).await;
    assert_eq!(first["d"]["offset"], 3);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn wildcards_and_the_run_feeds() {
    let server = TestServer::demo().await;
    let mut ws = connect(&server, None).await;
    send(&mut ws, json!({"uid": "w", "m": "SUB", "r": "chat.*"})).await;
    assert_eq!(recv(&mut ws).await["c"], 200);
    send(&mut ws, json!({"uid": "f", "m": "SUB", "r": "_runs.echo"})).await;
    assert_eq!(recv(&mut ws).await["c"], 200);
    send(
        &mut ws,
        json!({"uid": 1, "m": "PUB", "r": "chat.one", "d": "hi"}),
    )
    .await;
    send(
        &mut ws,
        json!({"uid": 2, "m": "PUB", "r": "news", "d": "no"}),
    )
    .await;
    let mut saw_pub = None;
    let mut acks = 0;
    while acks < 2 || saw_pub.is_none() {
        let p = recv(&mut ws).await;
        if p["m"] == "PUB" && p["c"].is_null() {
            saw_pub = Some(p);
        } else {
            acks += 1;
        }
    }
    let p = saw_pub.unwrap();
    assert_eq!(
        (p["uid"].as_str(), p["r"].as_str()),
        (Some("w"), Some("chat.one"))
    );
    let id = server.submit("echo", json!({"x": 1})).await;
    server.submit("count", json!({"n": 1})).await;
    let created = recv(&mut ws).await;
    let ended = recv(&mut ws).await;
    for (p, state) in [(&created, "queued"), (&ended, "success")] {
        assert_eq!(p["uid"], "f");
        assert_eq!(p["r"], "_runs.echo");
        assert_eq!(p["d"]["data"]["state"], state);
        assert_eq!(
            format!("/echo/{}", p["d"]["data"]["id"].as_str().unwrap()),
            id
        );
    }
    assert_eq!(
        ended["d"]["offset"],
        created["d"]["offset"].as_u64().unwrap() + 1
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_runs_start_is_on_the_feeds_between_its_queued_and_its_end() {
    let server = TestServer::demo().await;
    let mut ws = connect(&server, None).await;
    send(&mut ws, json!({"uid": "f", "m": "SUB", "r": "_runs"})).await;
    assert_eq!(recv(&mut ws).await["c"], 200);
    let mut states_of = async |path: String, n: usize| {
        let id = path.rsplit('/').next().unwrap().to_owned();
        let mut states = Vec::new();
        for _ in 0..n {
            let p = recv(&mut ws).await;
            assert_eq!(p["d"]["data"]["id"], id, "{p}");
            states.push(p["d"]["data"]["state"].as_str().unwrap().to_owned());
        }
        states
    };
    // `count` writes `running` events: its event 1 is its start.
    let counted = server.submit("count", json!({"n": 3})).await;
    assert_eq!(
        states_of(counted, 3).await,
        ["queued", "running", "success"]
    );
    // `echo` writes none: it has no start.
    let echoed = server.submit("echo", json!({})).await;
    assert_eq!(states_of(echoed, 2).await, ["queued", "success"]);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tenants_see_only_their_topics_and_runs() {
    let server = TestServer::start(Server::builder().demo().auth(auth(&[
        ("a", "token-a", &["submit", "read", "cancel"]),
        ("b", "token-b", &["submit", "read", "cancel"]),
        ("ops", "token-admin", &["admin", "read"]),
    ])))
    .await;
    let mut a = connect(&server, Some("token-a")).await;
    // A browser cannot set headers on a WebSocket: it sends AUTH first.
    let mut b = connect(&server, None).await;
    send(&mut b, json!({"uid": 0, "m": "GET", "r": "/_nodes"})).await;
    assert_eq!(recv(&mut b).await["c"], 401);
    send(
        &mut b,
        json!({"uid": 1, "m": "AUTH", "d": {"token": "wrong"}}),
    )
    .await;
    assert_eq!(recv(&mut b).await["c"], 401);
    send(
        &mut b,
        json!({"uid": 2, "m": "AUTH", "d": {"token": "token-b"}}),
    )
    .await;
    assert_eq!(recv(&mut b).await["c"], 200);
    let mut admin = connect(&server, Some("token-admin")).await;
    for (ws, uid) in [(&mut a, "sa"), (&mut b, "sb"), (&mut admin, "sx")] {
        send(ws, json!({"uid": uid, "m": "SUB", "r": "_runs"})).await;
        assert_eq!(recv(ws).await["c"], 200);
    }
    send(&mut a, json!({"uid": "t", "m": "SUB", "r": "room"})).await;
    assert_eq!(recv(&mut a).await["c"], 200);
    // b publishes to its own "room": a never hears of it.
    send(
        &mut b,
        json!({"uid": 3, "m": "PUB", "r": "room", "d": "from b"}),
    )
    .await;
    assert_eq!(recv(&mut b).await["c"], 202);
    // b submits over the socket; b's feed and the admin's have it, a's does not.
    send(
        &mut b,
        json!({"uid": 4, "m": "POST", "r": "/echo/", "d": {}}),
    )
    .await;
    let mut b_saw = Vec::new();
    while b_saw.len() < 3 {
        b_saw.push(recv(&mut b).await);
    }
    assert!(
        b_saw.iter().any(|p| p["uid"] == 4 && p["c"] == 201),
        "{b_saw:?}"
    );
    let admin_saw = [recv(&mut admin).await, recv(&mut admin).await];
    assert_eq!(admin_saw[0]["d"]["data"]["object"], "echo");
    // a's next packet is the answer to its own request: nothing of b's arrived before it.
    send(&mut a, json!({"uid": "h", "m": "GET", "r": "/_health"})).await;
    let next = recv(&mut a).await;
    assert_eq!(next["uid"], "h", "{next}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_slow_subscriber_is_closed_as_slow_and_no_one_else_waits_for_it() {
    let server = TestServer::with_config(Config {
        ws_queue_bytes: 64 * 1024,
        send_buffer: 16 * 1024,
        ..Config::default()
    })
    .await;
    let mut slow = connect(&server, None).await;
    let mut fast = connect(&server, None).await;
    let mut publisher = connect(&server, None).await;
    for (ws, uid) in [(&mut slow, "s"), (&mut fast, "f")] {
        send(ws, json!({"uid": uid, "m": "SUB", "r": "bulk"})).await;
        assert_eq!(recv(ws).await["c"], 200);
    }
    // `slow` reads nothing now. 400 publications of 32 KiB: far more than its queue, the
    // kernel's buffers and tungstenite's together.
    let blob = "x".repeat(32 * 1024);
    let n = 400u64;
    for i in 0..n {
        send(
            &mut publisher,
            json!({"uid": i, "m": "PUB", "r": "bulk", "d": blob}),
        )
        .await;
        assert_eq!(recv(&mut publisher).await["c"], 202);
        let p = recv(&mut fast).await;
        assert_eq!(p["d"]["offset"], i);
    }
    let (code, packets) = close_code(&mut slow).await;
    assert_eq!(code, 4008);
    // What it got before the close is a prefix of the topic, in order: it resumes from there.
    let offsets: Vec<u64> = packets
        .iter()
        .map(|p| p["d"]["offset"].as_u64().unwrap())
        .collect();
    assert!((offsets.len() as u64) < n);
    assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_and_binary_messages_close_the_socket_with_their_codes() {
    let server = TestServer::with_config(Config {
        ws_max_message: 4 * 1024,
        ..Config::default()
    })
    .await;
    let mut ws = connect(&server, None).await;
    let big = json!({"uid": 1, "m": "PUB", "r": "t", "d": "y".repeat(8 * 1024)});
    // The server may close while the frame is still being written.
    let _ = ws.send(Message::Text(big.to_string().into())).await;
    assert_eq!(close_code(&mut ws).await.0, 1009);
    let mut ws = connect(&server, None).await;
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut ws).await.0, 1003);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_sockets_as_going_away() {
    let server = TestServer::demo().await;
    let mut ws = connect(&server, None).await;
    send(&mut ws, json!({"uid": 1, "m": "GET", "r": "/_health"})).await;
    recv(&mut ws).await;
    let stopped = tokio::spawn(server.stop());
    assert_eq!(close_code(&mut ws).await.0, 1001);
    stopped.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_plain_get_of_the_socket_path_is_a_problem() {
    let server = TestServer::demo().await;
    let res = reqwest::get(server.url("/_ws")).await.unwrap();
    assert!(res.status().is_client_error(), "{}", res.status());
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn unsubscribe_by_uid_ends_only_that_subscription() {
    let server = TestServer::demo().await;
    let mut ws = connect(&server, None).await;
    for uid in ["one", "two"] {
        send(&mut ws, json!({"uid": uid, "m": "SUB", "r": "t"})).await;
        assert_eq!(recv(&mut ws).await["c"], 200);
    }
    send(
        &mut ws,
        json!({"uid": "u", "m": "UNSUB", "r": "t", "d": "one"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["c"], 200);
    send(&mut ws, json!({"uid": "p", "m": "PUB", "r": "t", "d": 1})).await;
    let (a, b) = (recv(&mut ws).await, recv(&mut ws).await);
    let delivered: Vec<&Value> = [&a, &b].into_iter().filter(|p| p["c"].is_null()).collect();
    assert_eq!(delivered.len(), 1, "{a} {b}");
    assert_eq!(delivered[0]["uid"], "two");
    send(
        &mut ws,
        json!({"uid": "u2", "m": "UNSUB", "r": "t", "d": "one"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["c"], 404);
    server.stop().await.unwrap();
}

/// The packet cases of `spec/conformance/ws/` (valid by its schema), each on a socket of its
/// own, one after another against one server (spec/conformance/README.md, "WebSocket packets").
#[tokio::test]
async fn the_packet_cases_of_the_spec_hold() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../spec/conformance/ws");
    let read = |name: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"))
    };
    let schema = read("schema.json");
    jsonschema::draft202012::meta::validate(&schema).expect("a draft 2020-12 schema");
    let validator = jsonschema::draft202012::new(&schema).expect("the schema compiles");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".json") && n != "schema.json")
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no packet cases in {}", dir.display());
    let server = TestServer::demo().await;
    let mut ran = 0;
    for file in files {
        let doc = read(&file);
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("at {}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{file}: {errors:#?}");
        for case in doc["cases"].as_array().unwrap() {
            let what = format!("{file}: {}", case["description"].as_str().unwrap());
            PacketCase::run(&server, &what, case["steps"].as_array().unwrap()).await;
            ran += 1;
        }
    }
    assert!(ran >= 10, "only {ran} packet cases ran");
}

/// One case's socket, what arrived on it and is not taken yet, and the values it saved.
struct PacketCase<'a> {
    what: &'a str,
    ws: Socket,
    arrived: Vec<(usize, Value)>,
    count: usize,
    saved: std::collections::HashMap<String, Value>,
}

impl<'a> PacketCase<'a> {
    async fn run(server: &TestServer, what: &'a str, steps: &[Value]) {
        let mut case = PacketCase {
            what,
            ws: connect(server, None).await,
            arrived: Vec::new(),
            count: 0,
            saved: [(
                "unique".to_owned(),
                json!(uuid::Uuid::new_v4().simple().to_string()),
            )]
            .into(),
        };
        for (i, step) in steps.iter().enumerate() {
            case.step(i, step).await;
        }
    }

    /// `{name}` in every string replaced by the value saved under that name.
    fn fill(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => {
                // A string that is one placeholder takes the saved value whole.
                if let Some(saved) = s
                    .strip_prefix('{')
                    .and_then(|s| s.strip_suffix('}'))
                    .and_then(|name| self.saved.get(name))
                {
                    return saved.clone();
                }
                let mut out = s.clone();
                for (name, value) in &self.saved {
                    let text = value
                        .as_str()
                        .map_or_else(|| value.to_string(), str::to_owned);
                    out = out.replace(&format!("{{{name}}}"), &text);
                }
                Value::String(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(|v| self.fill(v)).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), self.fill(v))).collect())
            }
            other => other.clone(),
        }
    }

    /// The first packet of `uid` not taken yet, and when it arrived.
    async fn take(&mut self, uid: &Value, step: usize) -> (usize, Value) {
        loop {
            if let Some(i) = self.arrived.iter().position(|(_, p)| &p["uid"] == uid) {
                return self.arrived.remove(i);
            }
            let next = tokio::time::timeout(std::time::Duration::from_secs(30), recv(&mut self.ws))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} steps[{step}]: no packet of uid {uid} in 30 s (unmatched: {:?})",
                        self.what, self.arrived
                    )
                });
            self.arrived.push((self.count, next));
            self.count += 1;
        }
    }

    async fn step(&mut self, i: usize, step: &Value) {
        let what = self.what;
        if let Some(p) = step.get("send") {
            let p = self.fill(p);
            send(&mut self.ws, p).await;
        } else if let Some(text) = step.get("send_text").and_then(Value::as_str) {
            self.ws.send(Message::Text(text.into())).await.unwrap();
        } else if let Some(text) = step.get("send_binary").and_then(Value::as_str) {
            let bytes = text.as_bytes().to_vec();
            self.ws.send(Message::Binary(bytes.into())).await.unwrap();
        } else if let Some(n) = step.get("send_large").and_then(Value::as_u64) {
            let head = r#"{"uid":1,"m":"GET","r":"/_health""#;
            let text = format!("{head}{}}}", " ".repeat(n as usize - head.len() - 1));
            assert_eq!(text.len() as u64, n);
            // The server may close before the whole message is written.
            let _ = self.ws.send(Message::Text(text.into())).await;
        } else if let Some(expected) = step.get("expect").and_then(Value::as_array) {
            let mut last_arrival = None;
            let mut matched = Value::Null;
            for want in expected {
                let want = self.fill(want);
                let (at, got) = self.take(&want["uid"], i).await;
                assert!(
                    last_arrival.is_none_or(|l| at > l),
                    "{what} steps[{i}]: {got} arrived before the packet listed ahead of it"
                );
                last_arrival = Some(at);
                if let Err(path) = contains(&want, &got, String::new()) {
                    panic!("{what} steps[{i}]: at {path:?}: expected {want}, got {got}");
                }
                matched = got;
            }
            for (name, pointer) in step
                .get("save")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let value = matched
                    .pointer(pointer.as_str().unwrap())
                    .unwrap_or_else(|| {
                        panic!("{what} steps[{i}]: nothing at {pointer} of {matched}")
                    });
                self.saved.insert(name.clone(), value.clone());
            }
        } else if let Some(stream) = step.get("expect_stream") {
            let uid = self.fill(&stream["uid"]);
            let mut id = stream.get("from").and_then(Value::as_u64).unwrap_or(0);
            let mut states = Vec::new();
            let mut first = true;
            loop {
                let (_, p) = self.take(&uid, i).await;
                if first {
                    assert_eq!(p["c"], 200, "{what} steps[{i}]: {p}");
                    first = false;
                }
                for e in p["d"]
                    .as_array()
                    .unwrap_or_else(|| panic!("{what} steps[{i}]: {p}"))
                {
                    assert_eq!(e["id"], id, "{what} steps[{i}]: ids are dense: {p}");
                    id += 1;
                    states.push(e["state"].clone());
                }
                if p["more"] != true {
                    break;
                }
            }
            assert_eq!(Value::Array(states), stream["states"], "{what} steps[{i}]");
        } else if let Some(code) = step.get("expect_close").and_then(Value::as_u64) {
            let (got, _) = close_code(&mut self.ws).await;
            assert_eq!(u64::from(got), code, "{what} steps[{i}]: the close code");
        } else {
            panic!("{what} steps[{i}]: no step the runner knows: {step}");
        }
    }
}

/// Does `got` have everything `want` has (objects: these members, a missing one counting as
/// null; arrays: as many items, each containing the wanted one)? Else the path that differs.
fn contains(want: &Value, got: &Value, path: String) -> Result<(), String> {
    match (want, got) {
        (Value::Object(w), _) => {
            for (k, v) in w {
                contains(v, got.get(k).unwrap_or(&Value::Null), format!("{path}/{k}"))?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) if w.len() == g.len() => w
            .iter()
            .zip(g)
            .enumerate()
            .try_for_each(|(i, (w, g))| contains(w, g, format!("{path}/{i}"))),
        _ if want == got => Ok(()),
        _ => Err(path),
    }
}
