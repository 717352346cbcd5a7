//! Worker nodes (spec §25) with real worker processes: `examples/worker-python/worker.py` on
//! ephemeral ports. Synchronisation is by observable events (the worker's stdout, a run's
//! events, the worker's own `/_seen` and `/_closed/…` answers, a node's status), never by
//! sleeping.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::TestServer;
use common::workers::*;
use longrun_server::{Config, Server};
use serde_json::{Value, json};

#[tokio::test]
async fn registration_answers_201_and_the_record_shows_the_node() {
    let server = server_with(Config::default()).await;
    let w = Worker::start(None, &[]).await;
    let res = post(
        server.url("/_nodes"),
        json!({
            "port": w.port,
            "services": [{"topic": "up", "group": "g", "path": "/upper", "timeout": 5}],
            "slots": [{"topic": "news", "path": "/upper", "timeout": 5}],
            "concurrency": 4,
        }),
    )
    .await;
    assert_eq!(res.status(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    let id = body["id"].as_str().unwrap();
    assert_eq!(location, format!("/_nodes/{id}"));

    let record = node(&server, id).await;
    assert_eq!(record["id"], id);
    // No host given: the peer's address.
    assert_eq!(record["host"], "127.0.0.1");
    assert_eq!(record["port"], w.port);
    assert_eq!(record["health_check"], "/health");
    assert_eq!(record["concurrency"], 4);
    assert_eq!(record["status"], "ok");
    assert_eq!(record["services"][0]["topic"], "up");
    assert_eq!(record["services"][0]["group"], "g");
    assert_eq!(record["slots"][0]["topic"], "news");
    assert_eq!(record["health"]["last"][0]["ok"], true);

    let list: Value = get_json(server.url("/_nodes")).await;
    assert_eq!(list["nodes"].as_array().unwrap().len(), 1);
    assert_eq!(list["nodes"][0]["id"], id);

    // The service is an object now.
    let run = server.submit("up", json!({"text": "abc"})).await;
    let events = server.events(&run).await;
    assert_eq!(events[0]["state"], "queued");
    assert_eq!(last(&events), ("success", &json!({"text": "ABC"})));

    let res = delete(server.url(&location)).await;
    assert_eq!(res.status(), 200);
    let res = reqwest::get(server.url(&location)).await.unwrap();
    assert_problem(res, 404, "node-not-found").await;
    // Gone from dispatch: the topic is no object any more, but its runs stay readable.
    let res = post(server.url("/up"), json!({})).await;
    assert_problem(res, 404, "unknown-object").await;
    let res = reqwest::get(server.url(&run)).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_node_that_does_not_answer_its_health_path_is_not_registered() {
    let server = server_with(Config::default()).await;
    let w = Worker::start(None, &[]).await;
    // A health path that answers 404, and a port where nothing listens.
    let unused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for (port, health) in [(w.port, "/nope"), (unused, "/health")] {
        let res = post(
            server.url("/_nodes"),
            json!({"port": port, "health_check": health,
                   "services": [{"topic": "up", "group": "g", "path": "/upper", "timeout": 5}]}),
        )
        .await;
        assert_problem(res, 422, "node-unreachable").await;
    }
    let list: Value = get_json(server.url("/_nodes")).await;
    assert_eq!(list["nodes"], json!([]));
    let res = post(server.url("/up"), json!({})).await;
    assert_problem(res, 404, "unknown-object").await;
}

#[tokio::test]
async fn bad_registrations_are_problems() {
    let server = server_with(Config::default()).await;
    let w = Worker::start(None, &[]).await;
    let svc = |topic: &str| json!({"topic": topic, "group": "g", "path": "/upper", "timeout": 5});
    let cases = [
        (json!("not an object"), 400, "invalid-json"),
        (json!({"services": []}), 400, "invalid-json"),
        (
            json!({"port": 0, "services": [svc("a")]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": 70000, "services": [svc("a")]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": -1, "services": [svc("a")]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": w.port, "services": [{"topic": "a", "path": "/upper", "timeout": 5}]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": w.port, "services": [{"topic": "a", "group": "g", "path": "/upper", "timeout": 0}]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": w.port, "services": [{"topic": "a", "group": "g", "path": "/upper", "timeout": -3}]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": w.port, "services": [svc("a.*")]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": w.port, "services": [svc("_nodes")]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": w.port, "services": [svc("a"), svc("a")]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": w.port, "services": [{"topic": "a", "group": "g", "path": "upper", "timeout": 5}]}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": w.port, "health_check": "health", "services": []}),
            422,
            "invalid-node",
        ),
        (
            json!({"port": w.port, "concurrency": 0, "services": []}),
            422,
            "invalid-node",
        ),
        // A local object.
        (
            json!({"port": w.port, "services": [svc("echo")]}),
            409,
            "topic-taken",
        ),
    ];
    for (body, status, slug) in cases {
        let res = post(server.url("/_nodes"), body.clone()).await;
        assert_eq!(res.status(), status, "{body}");
        assert_problem(res, status, slug).await;
    }
    // A topic served by one group cannot be served by another.
    let ok = post(
        server.url("/_nodes"),
        json!({"port": w.port, "services": [svc("a")]}),
    )
    .await;
    assert_eq!(ok.status(), 201);
    let other = json!({"port": w.port, "services": [{"topic": "a", "group": "h", "path": "/upper", "timeout": 5}]});
    assert_problem(post(server.url("/_nodes"), other).await, 409, "topic-taken").await;
    let list: Value = get_json(server.url("/_nodes")).await;
    assert_eq!(list["nodes"].as_array().unwrap().len(), 1);
    // Unknown nodes.
    let res = delete(server.url("/_nodes/nope")).await;
    assert_problem(res, 404, "node-not-found").await;
}

#[tokio::test]
async fn an_exclusion_group_of_three_handles_each_run_exactly_once() {
    const RUNS: usize = 300;
    let server = server_with(Config::default()).await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Worker::start(Some(&server), &[]).await);
    }
    // Submitted all at once, so the nodes hold several runs each at a time.
    let runs: Vec<String> = futures::future::join_all(
        (0..RUNS).map(|i| server.submit("upper", json!({"text": format!("r{i}")}))),
    )
    .await;
    let mut expected = BTreeSet::new();
    for (i, run) in runs.iter().enumerate() {
        let events = server.events(run).await;
        assert_eq!(
            last(&events),
            ("success", &json!({"text": format!("R{i}")}))
        );
        expected.insert(run.rsplit('/').next().unwrap().to_owned());
    }
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for w in &workers {
        let seen = w.seen().await;
        per_worker.push(seen.len());
        all.extend(seen);
    }
    assert_eq!(all.len(), RUNS, "each run dispatched once: {per_worker:?}");
    let distinct: BTreeSet<String> = all.into_iter().collect();
    assert_eq!(distinct, expected);
}

#[tokio::test]
async fn success_error_and_progress_map_to_events() {
    let server = server_with(Config::default()).await;
    let _w = Worker::start(Some(&server), &[]).await;

    let run = server.submit("upper", json!({"fail": true})).await;
    let events = server.events(&run).await;
    let (state, value) = last(&events);
    assert_eq!(state, "error");
    assert_eq!(value["message"], "asked to fail");
    assert_eq!(value["code"], 500);
    assert_eq!(value["data"]["input"], json!({"fail": true}));

    let run = server.submit("slow", json!({"steps": 3})).await;
    let events = server.events(&run).await;
    let running: Vec<&Value> = events
        .iter()
        .filter(|e| e["state"] == "running")
        .map(|e| &e["value"])
        .collect();
    assert_eq!(
        running,
        vec![
            &json!({"progress": 1.0 / 3.0, "message": "step 1"}),
            &json!({"progress": 2.0 / 3.0, "message": "step 2"}),
            &json!({"progress": 1.0, "message": "step 3"}),
        ]
    );
    assert_eq!(last(&events), ("success", &json!({"steps": 3})));

    // A callback for a run the node does not hold, or from an unknown node.
    let id = run.rsplit('/').next().unwrap();
    let res = post(
        server.url(&format!("/_nodes/{}/runs/{id}/events", _w.id())),
        json!({}),
    )
    .await;
    assert_problem(res, 404, "run-not-found").await;
    let res = post(
        server.url(&format!("/_nodes/nope/runs/{id}/events")),
        json!({}),
    )
    .await;
    assert_problem(res, 404, "node-not-found").await;
}

#[tokio::test]
async fn the_service_timeout_closes_the_connection_and_cancels_with_deadline() {
    let server = server_with(Config::default()).await;
    let w = Worker::start(Some(&server), &["--timeout", "0.5"]).await;
    let run = server
        .submit("slow", json!({"steps": 0, "hang": true}))
        .await;
    let events = server.events(&run).await;
    assert_eq!(last(&events), ("canceled", &json!({"reason": "deadline"})));
    let id = run.rsplit('/').next().unwrap();
    let res = reqwest::get(w.url(&format!("/_closed/{id}")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the worker saw its connection close");
}

#[tokio::test]
async fn cancel_closes_the_connection() {
    let server = server_with(Config::default()).await;
    let w = Worker::start(Some(&server), &[]).await;
    let run = server
        .submit("slow", json!({"steps": 0, "hang": true}))
        .await;
    wait_event(&server, &run, "hanging").await;
    let res = delete(server.url(&run)).await;
    assert_eq!(res.status(), 202);
    let events = server.events(&run).await;
    assert_eq!(last(&events), ("canceled", &json!({"reason": "client"})));
    let id = run.rsplit('/').next().unwrap();
    let res = reqwest::get(w.url(&format!("/_closed/{id}")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // Nothing in flight any more.
    assert_eq!(node(&server, w.id()).await["in_flight"], 0);
}

#[tokio::test]
async fn a_worker_killed_mid_run_ends_the_run_as_error() {
    let server = server_with(Config::default()).await;
    let mut w = Worker::start(Some(&server), &[]).await;
    let run = server
        .submit("slow", json!({"steps": 0, "hang": true}))
        .await;
    wait_event(&server, &run, "hanging").await;
    w.kill().await;
    let events = server.events(&run).await;
    let (state, value) = last(&events);
    assert_eq!(state, "error", "{events:?}");
    assert_eq!(value["node"], w.id());
    assert!(
        value["message"].as_str().unwrap().contains(w.id()),
        "{value}"
    );
}

#[tokio::test]
async fn a_reply_larger_than_the_body_limit_fails_the_run_and_the_node_stays_usable() {
    let limit = 4096;
    let server = server_with(Config {
        body_limit: limit,
        ..Config::default()
    })
    .await;
    let w = Worker::start(Some(&server), &[]).await;
    // Python's json writes each `É` as `\u00c9`: the reply is three times the request, so a
    // request within the limit gets a reply past it.
    let text = "é".repeat(1500);
    let run = server.submit("upper", json!({ "text": text })).await;
    let events = server.events(&run).await;
    let (state, value) = last(&events);
    assert_eq!(state, "error", "{events:?}");
    assert_eq!(value["node"], w.id());
    assert_eq!(
        value["message"],
        format!(
            "the node {} failed while holding the run: its reply is larger than {limit} bytes (the body limit)",
            w.id()
        )
    );
    // The node is still fine and a reply within the limit still succeeds.
    let run = server.submit("upper", json!({"text": "é"})).await;
    let events = server.events(&run).await;
    assert_eq!(last(&events), ("success", &json!({"text": "É"})));
}

#[tokio::test]
async fn health_failures_make_a_node_unavailable_and_runs_wait_for_it() {
    let server = server_with(fast()).await;
    let w = Worker::start(Some(&server), &[]).await;
    let id = w.id().to_owned();
    post(w.url("/_sick"), json!({})).await;
    let record = wait_status(&server, &id, "unavailable").await;
    assert!(record["health"]["consecutive_failures"].as_u64().unwrap() >= 2);
    assert_eq!(
        record["health"]["last"].as_array().unwrap().last().unwrap()["ok"],
        false
    );

    // Queued while no node is ok; dispatched once the node answers again.
    let run = server.submit("upper", json!({"text": "later"})).await;
    let res = reqwest::get(server.url(&run)).await.unwrap();
    let events: Vec<Value> = res.json().await.unwrap();
    assert_eq!(events.last().unwrap()["state"], "queued");
    assert!(w.seen().await.is_empty());
    post(w.url("/_well"), json!({})).await;
    wait_status(&server, &id, "ok").await;
    let events = server.events(&run).await;
    assert_eq!(last(&events), ("success", &json!({"text": "LATER"})));
}

#[tokio::test]
async fn with_no_ok_node_a_run_fails_with_the_gilmour_message() {
    let server = server_with(Config {
        dispatch_timeout: Duration::from_millis(100),
        ..fast()
    })
    .await;
    let mut w = Worker::start(Some(&server), &[]).await;
    let id = w.id().to_owned();
    w.kill().await;
    wait_status(&server, &id, "unavailable").await;
    let run = server.submit("upper", json!({"text": "x"})).await;
    let events = server.events(&run).await;
    assert_eq!(
        last(&events),
        (
            "error",
            &json!({"message": "No active listeners for: upper"})
        )
    );
}

#[tokio::test]
async fn node_routes_need_the_admin_scope() {
    const USER: &str = "lrt_user";
    const OPS: &str = "lrt_ops";
    let auth = common::auth(&[
        ("acme", USER, &["submit", "read", "cancel"]),
        ("ops", OPS, &["admin"]),
    ]);
    let server = TestServer::start(Server::builder().demo().auth(auth)).await;
    let w = Worker::start(None, &[]).await;
    let body = json!({"port": w.port, "services": [{"topic": "up", "group": "g", "path": "/upper", "timeout": 5}]});
    let client = reqwest::Client::new();
    let res = client
        .post(server.url("/_nodes"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(res, 401, "unauthorized").await;
    for req in [
        client.post(server.url("/_nodes")).json(&body),
        client.get(server.url("/_nodes")),
        client.get(server.url("/_nodes/x")),
        client.delete(server.url("/_nodes/x")),
    ] {
        let res = req.bearer_auth(USER).send().await.unwrap();
        assert_problem(res, 403, "forbidden").await;
    }
    let res = client
        .post(server.url("/_nodes"))
        .bearer_auth(OPS)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A tenant with the submit scope calls the service; the node's callback needs no token.
    let res = client
        .post(server.url("/up"))
        .bearer_auth(USER)
        .json(&json!({"text": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let run: Value = res.json().await.unwrap();
    let res = client
        .get(server.url(run["url"].as_str().unwrap()))
        .bearer_auth(USER)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = client
        .get(server.url(&format!("/_nodes/{id}")))
        .bearer_auth(OPS)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn a_node_holds_at_most_its_concurrency_and_unregistering_spares_its_runs() {
    let server = server_with(Config::default()).await;
    let w = Worker::start(Some(&server), &["--concurrency", "1"]).await;
    let first = server
        .submit("slow", json!({"steps": 0, "hang": true}))
        .await;
    wait_event(&server, &first, "hanging").await;
    // The node is full: the second run waits queued.
    let second = server.submit("slow", json!({"steps": 1})).await;
    let events: Vec<Value> = get_json(server.url(&second))
        .await
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(events.last().unwrap()["state"], "queued");
    assert_eq!(w.seen().await.len(), 1);
    assert_eq!(node(&server, w.id()).await["in_flight"], 1);
    // Once the first ends, the second goes to the node.
    assert_eq!(delete(server.url(&first)).await.status(), 202);
    let events = server.events(&second).await;
    assert_eq!(last(&events), ("success", &json!({"steps": 1})));

    // A run the node holds goes on after the node is unregistered.
    let third = server
        .submit("slow", json!({"steps": 1, "hang": true}))
        .await;
    wait_event(&server, &third, "hanging").await;
    assert_eq!(
        delete(server.url(&format!("/_nodes/{}", w.id())))
            .await
            .status(),
        200
    );
    let res = reqwest::Client::new()
        .head(server.url(&third))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["longrun-state"], "running");
    // …and can still be canceled.
    assert_eq!(delete(server.url(&third)).await.status(), 202);
    let events = server.events(&third).await;
    assert_eq!(last(&events), ("canceled", &json!({"reason": "client"})));
}

/// The signals a worker's slots received, once there are at least `count`.
async fn signals(w: &Worker, count: usize) -> Vec<Value> {
    let res = reqwest::get(w.url(&format!("/_signals?count={count}")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "fewer than {count} signals arrived");
    let v: Value = res.json().await.unwrap();
    v["signals"].as_array().unwrap().clone()
}

/// Wait until `workers` received `count` signals between them (deliveries run apart from
/// the reply that counted them), polling their lists.
async fn signals_between(workers: &[&Worker], count: usize) -> Vec<Vec<Value>> {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut lists = Vec::new();
        for w in workers {
            lists.push(signals(w, 0).await);
        }
        let total: usize = lists.iter().map(Vec::len).sum();
        if total >= count {
            return lists;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "only {total} of {count} signals arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_signal_reaches_one_slot_per_group_and_every_ungrouped_slot() {
    let server = server_with(Config::default()).await;
    let pager_a = Worker::start(Some(&server), &["--slot", "alerts.*@pager"]).await;
    let pager_b = Worker::start(Some(&server), &["--slot", "alerts.*@pager"]).await;
    let ops = Worker::start(Some(&server), &["--slot", "alerts.d?sk@ops"]).await;
    let all = Worker::start(Some(&server), &["--slot", "*"]).await;
    let other = Worker::start(Some(&server), &["--slot", "billing.*"]).await;

    let rounds = 20;
    for i in 0..rounds {
        let res = post(server.url("/_signals/alerts.disk"), json!({"n": i})).await;
        assert_eq!(res.status(), 202);
        let reply: Value = res.json().await.unwrap();
        // pager (one of two), ops, and the ungrouped `*`.
        assert_eq!(reply, json!({"delivered": 3, "dropped": 0}));
    }
    for w in [&ops, &all] {
        let got = signals(w, rounds).await;
        let ns: Vec<&Value> = got.iter().map(|s| &s["data"]["n"]).collect();
        let mut sorted = ns.clone();
        sorted.sort_by_key(|n| n.as_u64());
        assert_eq!(sorted.len(), rounds, "{got:?}");
        assert!(got.iter().all(|s| s["topic"] == "alerts.disk"));
    }
    let pager = signals_between(&[&pager_a, &pager_b], rounds).await;
    let mut ns: Vec<u64> = pager
        .iter()
        .flatten()
        .map(|s| s["data"]["n"].as_u64().unwrap())
        .collect();
    ns.sort();
    assert_eq!(
        ns,
        (0..rounds as u64).collect::<Vec<_>>(),
        "each signal to one pager"
    );

    // A topic that only the wildcard `*` and billing.* match; a node's own signal route.
    let res = post(
        server.url(&format!("/_nodes/{}/signal", other.id())),
        json!({"topic": "billing.paid", "message": {"amount": 3}}),
    )
    .await;
    assert_eq!(res.status(), 202);
    assert_eq!(res.json::<Value>().await.unwrap()["delivered"], 2);
    let got = signals(&other, 1).await;
    assert_eq!(got[0]["data"], json!({"amount": 3}));
    assert_eq!(
        signals(&all, rounds + 1).await[rounds]["topic"],
        "billing.paid"
    );
    assert!(signals(&ops, 0).await.len() == rounds);

    // No slot matches: nothing delivered, still 202. Bad topics and bodies are problems.
    let res = post(server.url("/_signals/nobody.listens"), json!({})).await;
    let reply: Value = res.json().await.unwrap();
    assert_eq!(reply["delivered"], 1, "only `*`: {reply}");
    let res = post(server.url("/_signals/alerts.*"), json!({})).await;
    assert_problem(res, 422, "invalid-arguments").await;
    let res = post(
        server.url(&format!("/_nodes/{}/signal", other.id())),
        json!({"message": 1}),
    )
    .await;
    assert_problem(res, 400, "invalid-json").await;
    let res = post(server.url("/_nodes/nope/signal"), json!({"topic": "a"})).await;
    assert_problem(res, 404, "node-not-found").await;
}

#[tokio::test]
async fn services_and_slots_are_sub_resources_of_a_node() {
    let server = server_with(Config::default()).await;
    let w = Worker::start(Some(&server), &[]).await;
    let base = format!("/_nodes/{}", w.id());

    let list: Value = get_json(server.url(&format!("{base}/services"))).await;
    let topics: Vec<&str> = list["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["upper", "slow"]);

    // A new service is an object at once.
    let res = post(
        server.url(&format!("{base}/services")),
        json!({"topic": "shout", "group": "workers", "path": "/upper", "timeout": 5}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let run = server.submit("shout", json!({"text": "hey"})).await;
    assert_eq!(
        last(&server.events(&run).await),
        ("success", &json!({"text": "HEY"}))
    );
    // Twice, in another group, local objects, and bad entries are problems.
    for (body, status, slug) in [
        (
            json!({"topic": "shout", "group": "workers", "path": "/upper", "timeout": 5}),
            409,
            "topic-taken",
        ),
        (
            json!({"topic": "echo", "group": "workers", "path": "/upper", "timeout": 5}),
            409,
            "topic-taken",
        ),
        (
            json!({"topic": "x*", "group": "workers", "path": "/upper", "timeout": 5}),
            422,
            "invalid-node",
        ),
        (
            json!({"topic": "nogroup", "path": "/upper", "timeout": 5}),
            422,
            "invalid-node",
        ),
        (
            json!({"topic": "t", "group": "g", "path": "/upper", "timeout": 0}),
            422,
            "invalid-node",
        ),
        (
            json!({"topic": "t", "group": "g", "path": "/upper"}),
            400,
            "invalid-json",
        ),
    ] {
        let res = post(server.url(&format!("{base}/services")), body.clone()).await;
        assert_problem(res, status, slug).await;
    }
    let other = Worker::start(Some(&server), &["--prefix", "o."]).await;
    let res = post(
        server.url(&format!("/_nodes/{}/services", other.id())),
        json!({"topic": "shout", "group": "elsewhere", "path": "/upper", "timeout": 5}),
    )
    .await;
    assert_problem(res, 409, "topic-taken").await;

    let res = delete(server.url(&format!("{base}/services?topic=shout"))).await;
    assert_eq!(res.status(), 200);
    let res = post(server.url("/shout"), json!({})).await;
    assert_problem(res, 404, "unknown-object").await;
    let res = delete(server.url(&format!("{base}/services?topic=shout"))).await;
    assert_problem(res, 404, "subscription-not-found").await;
    let res = delete(server.url(&format!("{base}/services"))).await;
    assert_problem(res, 422, "invalid-node").await;

    // Slots: one topic at two paths; DELETE with a path takes one, without every one.
    for path in ["/slot", "/elsewhere"] {
        let res = post(
            server.url(&format!("{base}/slots")),
            json!({"topic": "audit.*", "path": path, "timeout": 5}),
        )
        .await;
        assert_eq!(res.status(), 201);
    }
    let slots = |v: Value| -> Vec<(String, String)> {
        v["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["topic"].as_str().unwrap().to_owned(),
                    s["path"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let now = slots(get_json(server.url(&format!("{base}/slots"))).await);
    assert_eq!(now.len(), 3, "notes.* and audit.* twice: {now:?}");
    let res = delete(server.url(&format!("{base}/slots?topic=audit.*&path=/elsewhere"))).await;
    assert_eq!(res.status(), 200);
    let res = post(server.url("/_signals/audit.login"), json!({"who": "ann"})).await;
    assert_eq!(res.json::<Value>().await.unwrap()["delivered"], 1);
    assert_eq!(signals(&w, 1).await[0]["data"], json!({"who": "ann"}));
    let res = delete(server.url(&format!("{base}/slots?topic=audit.*"))).await;
    assert_eq!(res.status(), 200);
    let now = slots(get_json(server.url(&format!("{base}/slots"))).await);
    assert_eq!(now, [("notes.*".to_owned(), "/slot".to_owned())]);
    let res = post(
        server.url(&format!("{base}/slots")),
        json!({"topic": "a", "path": "/slot", "timeout": 5, "retry": 2}),
    )
    .await;
    assert_problem(res, 422, "invalid-node").await;

    let res = reqwest::get(server.url(&format!("{base}/nothing")))
        .await
        .unwrap();
    assert_problem(res, 404, "not-found").await;
    let res = reqwest::get(server.url("/_nodes/nope/slots"))
        .await
        .unwrap();
    assert_problem(res, 404, "node-not-found").await;
}

#[tokio::test]
async fn a_health_path_that_is_not_there_makes_the_node_dirty() {
    let server = server_with(fast()).await;
    let mut w = Worker::start(Some(&server), &[]).await;
    let id = w.id().to_owned();
    w.kill().await;
    // Another program on the same port: its /health is 404.
    let port = w.port.to_string();
    let _impostor = Worker::start(None, &["--port", &port, "--health", "/other"]).await;
    let record = wait_status(&server, &id, "dirty").await;
    assert!(
        record["dirty"].as_str().unwrap().contains("HTTP 404"),
        "{record}"
    );
    // No work for it, and it stays dirty (no more pings) until it registers again.
    let res = post(server.url("/upper"), json!({"text": "x"})).await;
    assert_eq!(res.status(), 201, "the topic is still an object");
    let fresh = Worker::start(Some(&server), &["--prefix", "f."]).await;
    assert_eq!(node(&server, fresh.id()).await["status"], "ok");
    assert_eq!(node(&server, &id).await["status"], "dirty");
}

#[tokio::test]
async fn a_dispatch_that_the_port_does_not_take_makes_the_node_dirty_and_goes_elsewhere() {
    let server = server_with(Config::default()).await;
    // Python's file server: GET / answers 200, a POST answers 501.
    let mut files = tokio::process::Command::new("python3")
        .args(["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"])
        .current_dir(std::env::temp_dir())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out =
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(files.stdout.take().unwrap()));
    let line = out.next_line().await.unwrap().unwrap();
    let port: u16 = line
        .split(" port ")
        .nth(1)
        .and_then(|p| p.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"));
    let res = post(
        server.url("/_nodes"),
        json!({"port": port, "health_check": "/", "concurrency": 1,
               "services": [{"topic": "upper", "group": "workers", "path": "/upper", "timeout": 5}]}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let dirty_id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let real = Worker::start(Some(&server), &["--concurrency", "1"]).await;

    // Two runs at once: one node each (concurrency 1), so the file server gets one.
    let runs = [
        server.submit("upper", json!({"text": "a"})).await,
        server.submit("upper", json!({"text": "b"})).await,
    ];
    for (run, text) in runs.iter().zip(["A", "B"]) {
        let events = server.events(run).await;
        assert_eq!(
            last(&events),
            ("success", &json!({"text": text})),
            "{events:?}"
        );
    }
    let record = node(&server, &dirty_id).await;
    assert_eq!(record["status"], "dirty");
    assert!(
        record["dirty"].as_str().unwrap().contains("501"),
        "{record}"
    );
    assert_eq!(real.seen().await.len(), 2);
}

#[tokio::test]
async fn a_service_with_retry_is_dispatched_again_when_its_node_dies() {
    let server = server_with(Config::default()).await;
    let mut workers = Vec::new();
    for _ in 0..2 {
        let w = Worker::start(None, &[]).await;
        let res = post(
            server.url("/_nodes"),
            json!({"port": w.port,
                   "services": [{"topic": "job", "group": "g", "path": "/slow", "timeout": 60, "retry": 1}]}),
        )
        .await;
        assert_eq!(res.status(), 201);
        workers.push(w);
    }
    let run = server
        .submit("job", json!({"steps": 0, "hang": true}))
        .await;
    let id = run.rsplit('/').next().unwrap().to_owned();
    wait_event(&server, &run, "hanging").await;
    let first = if workers[0].seen().await.contains(&id) {
        0
    } else {
        1
    };
    workers[first].kill().await;
    // Handed to the other node, which hangs too.
    let events = wait_events(&server, &run, "hanging", 2).await;
    let again = events
        .iter()
        .find(|e| {
            e["value"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("dispatching again (retry 1 of 1)"))
        })
        .unwrap_or_else(|| panic!("no retry event: {events:?}"));
    assert!(again["value"]["node"].is_string());
    assert_eq!(workers[1 - first].seen().await, std::slice::from_ref(&id));
    // Killed again: no retry left, the run ends error.
    workers[1 - first].kill().await;
    let events = server.events(&run).await;
    assert_eq!(last(&events).0, "error", "{events:?}");
}

#[tokio::test]
async fn a_node_side_request_answers_gilmour_messages_with_the_code_as_status() {
    let server = server_with(Config {
        dispatch_timeout: Duration::from_millis(100),
        ..Config::default()
    })
    .await;
    let w = Worker::start(Some(&server), &[]).await;
    let url = server.url(&format!("/_nodes/{}/request", w.id()));

    let res = post(
        url.clone(),
        json!({"topic": "upper", "message": {"text": "hi"}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body,
        json!({"messages": [{"data": {"text": "HI"}, "code": 200}], "code": 200, "length": 1})
    );
    let res = post(
        url.clone(),
        json!({"topic": "upper", "message": {"fail": true}}),
    )
    .await;
    assert_eq!(res.status(), 500);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], 500);
    assert_eq!(body["messages"][0]["data"]["message"], "asked to fail");
    // gilmour's timeout code, and no listeners.
    let res = post(
        url.clone(),
        json!({"topic": "slow", "message": {"steps": 0, "hang": true}, "timeout": 0.2}),
    )
    .await;
    assert_eq!(res.status(), 499);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], 499);
    let res = post(url.clone(), json!({"topic": "nobody", "message": {}})).await;
    assert_eq!(res.status(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["messages"][0]["data"]["message"],
        "No active listeners for: nobody"
    );

    for body in [
        json!({"message": 1}),
        json!({"topic": "a", "timeout": -1}),
        json!({"topic": "a b"}),
    ] {
        let res = post(url.clone(), body).await;
        assert_problem(res, 422, "invalid-arguments").await;
    }
    let res = post(url.clone(), json!({"topic": "upper", "extra": 1})).await;
    assert_problem(res, 400, "invalid-json").await;
    let res = post(
        server.url("/_nodes/nope/request"),
        json!({"topic": "upper"}),
    )
    .await;
    assert_problem(res, 404, "node-not-found").await;
}

#[tokio::test]
async fn registrations_survive_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = longrun_server::StoreConfig::parse(&format!(
        "sqlite:{}",
        dir.path().join("nodes.db").display()
    ))
    .unwrap();
    let first =
        TestServer::start(Server::builder().config(fast()).store(store.clone()).demo()).await;
    let w = Worker::start(Some(&first), &[]).await;
    let res = post(
        first.url(&format!("/_nodes/{}/services", w.id())),
        json!({"topic": "shout", "group": "workers", "path": "/upper", "timeout": 5, "retry": 2}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let before = node(&first, w.id()).await;
    first.stop().await.unwrap();

    let second = TestServer::start(Server::builder().config(fast()).store(store).demo()).await;
    let after = node(&second, w.id()).await;
    for key in [
        "host",
        "port",
        "health_check",
        "services",
        "slots",
        "status",
    ] {
        assert_eq!(after[key], before[key], "{key}");
    }
    assert_eq!(after["services"][2]["retry"], 2);
    // Dispatched to at once, and still health-checked.
    let run = second.submit("shout", json!({"text": "back"})).await;
    assert_eq!(
        last(&second.events(&run).await),
        ("success", &json!({"text": "BACK"}))
    );
    post(w.url("/_sick"), json!({})).await;
    wait_status(&second, w.id(), "unavailable").await;
    // A deleted node stays deleted.
    assert_eq!(
        delete(second.url(&format!("/_nodes/{}", w.id())))
            .await
            .status(),
        200
    );
    second.stop().await.unwrap();
    let store = longrun_server::StoreConfig::parse(&format!(
        "sqlite:{}",
        dir.path().join("nodes.db").display()
    ))
    .unwrap();
    let third = TestServer::start(Server::builder().store(store).demo()).await;
    let res = reqwest::get(third.url(&format!("/_nodes/{}", w.id())))
        .await
        .unwrap();
    assert_problem(res, 404, "node-not-found").await;
}

/// Wait until `server` answers `path` with `status` (another replica learns by notification).
async fn wait_http(server: &TestServer, path: &str, status: u16) -> reqwest::Response {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let res = reqwest::get(server.url(path)).await.unwrap();
        if res.status() == status {
            return res;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{path} never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_nodes_and_one_of_them_checks_health() {
    let Some(url) = common::postgres::database("nodes replicas").await else {
        return;
    };
    let store = longrun_server::StoreConfig::parse(&url).unwrap();
    let replica = || Server::builder().config(fast()).store(store.clone()).demo();
    let a = TestServer::start(replica()).await;
    let b = TestServer::start(replica()).await;
    // Registered through a: its callbacks go to a.
    let w = Worker::start(Some(&a), &[]).await;
    let path = format!("/_nodes/{}", w.id());
    let seen_by_b: Value = wait_http(&b, &path, 200).await.json().await.unwrap();
    assert_eq!(seen_by_b["port"], w.port);

    // A run submitted to b is dispatched by b; its progress, reported to a, reaches it.
    let run = b.submit("slow", json!({"steps": 3})).await;
    let events = b.events(&run).await;
    // Handed on by NOTIFY after a's 202 (spec §25.7): the first reports arrive; the last may
    // race the node's reply, and a report for a run that has ended is dropped.
    let running: Vec<&Value> = events.iter().filter(|e| e["state"] == "running").collect();
    assert!(!running.is_empty(), "{events:?}");
    assert_eq!(running[0]["value"]["message"], "step 1", "{events:?}");
    assert_eq!(last(&events), ("success", &json!({"steps": 3})));

    // Health: after the registration's own ping (by a), every ping comes from one replica,
    // and both see the node turn unavailable.
    let pings: Value = get_json(w.url("/_pings?count=6")).await;
    let senders: BTreeSet<&str> = pings["pings"].as_array().unwrap()[1..]
        .iter()
        .map(|p| p.as_str().expect("pings name their replica"))
        .collect();
    assert_eq!(senders.len(), 1, "{pings}");
    post(w.url("/_sick"), json!({})).await;
    wait_status(&a, w.id(), "unavailable").await;
    wait_status(&b, w.id(), "unavailable").await;
    post(w.url("/_well"), json!({})).await;
    wait_status(&b, w.id(), "ok").await;

    // A service added on b is an object on a; a node deleted on b is gone from a.
    let res = post(
        b.url(&format!("{path}/services")),
        json!({"topic": "shout", "group": "workers", "path": "/upper", "timeout": 5,
               "args_schema": {"type": "object", "required": ["text"]}}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let run = loop {
        let res = post(a.url("/shout"), json!({"text": "both"})).await;
        if res.status() == 201 {
            break res.headers()["location"].to_str().unwrap().to_owned();
        }
        assert!(tokio::time::Instant::now() < until, "a never served shout");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        last(&a.events(&run).await),
        ("success", &json!({"text": "BOTH"}))
    );
    // Its schema came along (spec §13.6): a checks submits against it too.
    let res = post(a.url("/shout"), json!({})).await;
    assert_problem(res, 422, "invalid-arguments").await;
    assert_eq!(delete(b.url(&path)).await.status(), 200);
    let res = wait_http(&a, &path, 404).await;
    assert_problem(res, 404, "node-not-found").await;
}
