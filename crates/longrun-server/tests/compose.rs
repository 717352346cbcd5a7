//! Compositions (spec §25.10) with real worker processes (`examples/worker-python/worker.py`):
//! runs of the reserved object `_compose` and node-side requests with a `composition`. Which
//! steps ran is read from the worker's own `/_seen` list (every step of a run is dispatched
//! with the run's id as its sender); synchronisation is by events, never by sleeping.

mod common;

use common::TestServer;
use common::workers::*;
use longrun_server::{Config, Server};
use serde_json::{Value, json};

fn upper() -> Value {
    json!({"topic": "upper"})
}

fn failing() -> Value {
    json!({"topic": "upper", "with": {"fail": true}})
}

/// Submit a composition as a run; its path.
async fn compose(server: &TestServer, composition: Value, message: Value) -> String {
    server
        .submit(
            "_compose",
            json!({"composition": composition, "message": message}),
        )
        .await
}

/// Run a composition to its end: its terminal state and value.
async fn outcome(server: &TestServer, composition: Value, message: Value) -> (String, Value) {
    let run = compose(server, composition, message).await;
    let events = server.events(&run).await;
    let (state, value) = last(&events);
    (state.to_owned(), value.clone())
}

/// How many dispatches of the run at `path` the worker took.
async fn dispatched(w: &Worker, path: &str) -> usize {
    let id = path.rsplit('/').next().unwrap();
    w.seen().await.iter().filter(|s| *s == id).count()
}

async fn ran(
    server: &TestServer,
    w: &Worker,
    composition: Value,
    message: Value,
) -> (String, Value, usize) {
    let run = compose(server, composition, message).await;
    let events = server.events(&run).await;
    let (state, value) = last(&events);
    (state.to_owned(), value.clone(), dispatched(w, &run).await)
}

/// `POST /_nodes/{id}/request`: the HTTP status and the body.
async fn request(server: &TestServer, node: &str, body: Value) -> (u16, Value) {
    let res = post(server.url(&format!("/_nodes/{node}/request")), body).await;
    let status = res.status().as_u16();
    (status, res.json().await.unwrap())
}

async fn started() -> (TestServer, Worker) {
    let server = server_with(Config::default()).await;
    let w = Worker::start(Some(&server), &[]).await;
    (server, w)
}

#[tokio::test]
async fn pipe_feeds_each_output_to_the_next_and_stops_at_the_first_failure() {
    let (server, w) = started().await;
    let pipe = json!({"pipe": [upper(), {"lambda": {"set": {"seen": true}}}, upper()]});
    let (state, value, steps) = ran(&server, &w, pipe, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("success", 2));
    assert_eq!(value, json!({"text": "ABC"}));

    let pipe = json!({"pipe": [upper(), {"lambda": {"set": {"n": 1}}}]});
    let (state, value) = outcome(&server, pipe, json!({"text": "abc"})).await;
    assert_eq!(state, "success");
    assert_eq!(value, json!({"text": "ABC", "n": 1}));

    // The failing step's `with` is merged into its input; the step after it never runs.
    let pipe = json!({"pipe": [upper(), failing(), upper()]});
    let (state, value, steps) = ran(&server, &w, pipe, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("error", 2), "{value}");
    assert_eq!(value["message"], "asked to fail");
    assert_eq!(value["code"], 500);
    assert_eq!(value["data"]["input"], json!({"text": "ABC", "fail": true}));
}

#[tokio::test]
async fn andand_gives_every_step_the_original_input_and_stops_at_the_first_failure() {
    let (server, w) = started().await;
    let andand = json!({"andand": [upper(), {"lambda": {"pick": "/text"}}]});
    let (state, value, steps) = ran(&server, &w, andand, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("success", 1));
    assert_eq!(
        value, "abc",
        "the lambda saw the original input, not upper's output"
    );

    let andand = json!({"andand": [upper(), failing(), upper()]});
    let (state, value, steps) = ran(&server, &w, andand, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("error", 2));
    assert_eq!(value["data"]["input"], json!({"text": "abc", "fail": true}));
}

#[tokio::test]
async fn oror_stops_at_the_first_success_and_fails_when_all_fail() {
    let (server, w) = started().await;
    let oror = json!({"oror": [failing(), upper(), failing()]});
    let (state, value, steps) = ran(&server, &w, oror, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("success", 2));
    assert_eq!(value, json!({"text": "ABC"}));

    let oror = json!({"oror": [failing(), failing()]});
    let (state, value, steps) = ran(&server, &w, oror, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("error", 2));
    assert_eq!(value["code"], 500);
    assert_eq!(value["message"], "asked to fail");
}

#[tokio::test]
async fn batch_runs_every_step_ignoring_failures_and_returns_the_last_or_all() {
    let (server, w) = started().await;
    let batch = json!({"batch": [failing(), upper()]});
    let (state, value, steps) = ran(&server, &w, batch, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("success", 2));
    assert_eq!(value, json!({"text": "ABC"}));

    let batch = json!({"batch": [upper(), {"lambda": {"const": 1}}], "all": true});
    let (state, value) = outcome(&server, batch, json!({"text": "abc"})).await;
    assert_eq!(state, "success");
    assert_eq!(
        value,
        json!([{"data": {"text": "ABC"}, "code": 200}, {"data": 1, "code": 200}])
    );

    // With a failure among all the results, the highest code is the composition's.
    let batch = json!({"batch": [upper(), failing(), upper()], "all": true});
    let (status, body) = request(
        &server,
        w.id(),
        json!({"composition": batch, "message": {"text": "abc"}}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(
        (body["code"].clone(), body["length"].clone()),
        (json!(500), json!(3))
    );
    let codes: Vec<&Value> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["code"])
        .collect();
    assert_eq!(codes, [200, 500, 200]);
    // As a run, it ends `error` with every message.
    let (state, value, steps) = ran(&server, &w, batch, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("error", 3));
    assert_eq!(value["code"], 500);
    assert_eq!(value["data"].as_array().unwrap().len(), 3);
    assert_eq!(
        value["message"],
        "1 of 3 messages failed; the highest code is 500"
    );
}

#[tokio::test]
async fn parallel_runs_every_step_and_its_code_is_the_highest() {
    let (server, w) = started().await;
    let parallel = json!({"parallel": [
        upper(),
        {"topic": "upper", "with": {"text": "xyz"}},
        failing(),
    ]});
    let (status, body) = request(
        &server,
        w.id(),
        json!({"composition": parallel, "message": {"text": "abc"}}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["code"], 500);
    assert_eq!(body["length"], 3);
    assert_eq!(
        body["messages"][0],
        json!({"data": {"text": "ABC"}, "code": 200})
    );
    assert_eq!(
        body["messages"][1],
        json!({"data": {"text": "XYZ"}, "code": 200})
    );
    assert_eq!(body["messages"][2]["code"], 500);
    assert_eq!(w.seen().await.len(), 3);

    let parallel = json!({"parallel": [upper(), {"lambda": {"wrap": "in"}}]});
    let (state, value, steps) = ran(&server, &w, parallel, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("success", 1));
    assert_eq!(
        value,
        json!([{"data": {"text": "ABC"}, "code": 200}, {"data": {"in": {"text": "abc"}}, "code": 200}])
    );
}

#[tokio::test]
async fn with_merges_into_an_object_input_and_fails_the_step_on_any_other() {
    let (server, w) = started().await;
    // Its members win; a `null` input counts as `{}`.
    let step = json!({"lambda": {"pick": ""}, "with": {"b": 2, "c": 3}});
    let (state, value) = outcome(&server, step.clone(), json!({"a": 1, "b": 1})).await;
    assert_eq!(
        (state.as_str(), value),
        ("success", json!({"a": 1, "b": 2, "c": 3}))
    );
    let (state, value) = outcome(&server, step.clone(), Value::Null).await;
    assert_eq!(
        (state.as_str(), value),
        ("success", json!({"b": 2, "c": 3}))
    );
    // A list is not merged into: the step fails with 422, and a topic step is not dispatched.
    let step = json!({"topic": "upper", "with": {"text": "x"}});
    let (state, value, steps) = ran(&server, &w, step, json!([1])).await;
    assert_eq!((state.as_str(), steps), ("error", 0));
    assert_eq!(value["code"], 422);
    assert_eq!(value["message"], "with: the input is [1], not an object");
}

#[tokio::test]
async fn each_lambda_form_transforms_its_input() {
    let server = TestServer::start(Server::builder()).await;
    let pipe = json!({"pipe": [
        {"lambda": {"const": {"a": {"b": [1, 2]}}}},
        {"lambda": {"pick": "/a/b/1"}},
        {"lambda": {"wrap": "n"}},
        {"lambda": {"set": {"m": true}}},
    ]});
    let (state, value) = outcome(&server, pipe, json!("ignored")).await;
    assert_eq!(
        (state.as_str(), value),
        ("success", json!({"n": 2, "m": true}))
    );

    let (state, value) = outcome(&server, json!({"lambda": {"pick": "/x"}}), json!({"y": 1})).await;
    assert_eq!(state, "error");
    assert_eq!(value["code"], 422);
    assert_eq!(
        value["message"],
        "lambda pick: the input has no value at \"/x\""
    );
    let (state, value) = outcome(&server, json!({"lambda": {"set": {"a": 1}}}), json!("s")).await;
    assert_eq!(state, "error");
    assert_eq!(
        value["message"],
        "lambda set: the input is \"s\", not an object"
    );
}

#[tokio::test]
async fn compositions_nest() {
    let (server, w) = started().await;
    let nested = json!({"pipe": [
        {"andand": [upper(), {"lambda": {"pick": "/text"}}]},
        {"lambda": {"wrap": "text"}},
        {"oror": [failing(), upper()]},
    ]});
    let (state, value, steps) = ran(&server, &w, nested, json!({"text": "abc"})).await;
    assert_eq!((state.as_str(), steps), ("success", 3));
    assert_eq!(value, json!({"text": "ABC"}));
    // Several messages inside another composition are one: the list, and the highest code.
    let nested = json!({"pipe": [
        {"parallel": [{"lambda": {"const": 1}}, {"lambda": {"const": 2}}]},
        {"lambda": {"pick": "/1/data"}},
    ]});
    let (state, value) = outcome(&server, nested, Value::Null).await;
    assert_eq!((state.as_str(), value), ("success", json!(2)));
}

/// `depth` compositions nested, the innermost holding `width` lambdas.
fn deep(depth: usize, width: usize) -> Value {
    let mut c = json!({"batch": vec![json!({"lambda": {"const": 0}}); width]});
    for _ in 1..depth {
        c = json!({"pipe": [c]});
    }
    c
}

#[tokio::test]
async fn a_composition_that_is_not_valid_is_422_and_nothing_runs() {
    let (server, w) = started().await;
    let bad = [
        json!({"loop": [upper()]}),
        json!({"pipe": []}),
        json!({"pipe": upper()}),
        json!({"pipe": [upper(), {"topic": "a b"}]}),
        json!({"topic": "_compose"}),
        json!({"topic": 3}),
        json!({"topic": "upper", "pipe": [upper()]}),
        json!({"topic": "upper", "with": [1]}),
        json!({"pipe": [upper()], "all": true}),
        json!({"lambda": {"run": "rm -rf /"}}),
        json!({"lambda": {"pick": "x"}}),
        json!({"lambda": {"wrap": "a", "const": 1}}),
        deep(9, 1),
        deep(1, 65),
        json!({"pipe": [deep(1, 40), deep(1, 25)]}),
        json!([upper()]),
    ];
    let check = |p: &Value, what: &Value| {
        assert_eq!(
            p["type"], "urn:longrun:problem:invalid-composition",
            "{what}: {p}"
        );
        assert_eq!(p["status"], 422);
        assert!(p["detail"].as_str().is_some_and(|d| !d.is_empty()));
    };
    for composition in bad {
        let body = json!({"composition": composition, "message": {}});
        let res = post(server.url("/_compose"), body.clone()).await;
        assert_eq!(res.status(), 422, "{composition}");
        check(&res.json().await.unwrap(), &composition);
        let (status, p) = request(&server, w.id(), body).await;
        assert_eq!(status, 422, "{composition}");
        check(&p, &composition);
    }
    // The arguments of a run are {composition, message}.
    for body in [
        json!({"message": {}}),
        json!({"composition": upper(), "extra": 1}),
    ] {
        let res = post(server.url("/_compose"), body.clone()).await;
        assert_eq!(res.status(), 422, "{body}");
        check(&res.json().await.unwrap(), &body);
    }
    assert_eq!(
        w.seen().await,
        Vec::<String>::new(),
        "nothing was dispatched"
    );
    // At the bounds, fine.
    for composition in [deep(8, 1), deep(1, 64)] {
        let (state, _) = outcome(&server, composition, Value::Null).await;
        assert_eq!(state, "success");
    }
}

#[tokio::test]
async fn a_node_side_request_answers_the_composition_s_messages_with_the_highest_code() {
    let (server, w) = started().await;
    let pipe = json!({"pipe": [upper(), {"lambda": {"set": {"n": 1}}}]});
    let (status, body) = request(
        &server,
        w.id(),
        json!({"composition": pipe, "message": {"text": "hi"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"messages": [{"data": {"text": "HI", "n": 1}, "code": 200}], "code": 200, "length": 1})
    );
    let (status, body) = request(
        &server,
        w.id(),
        json!({"composition": {"pipe": [failing(), upper()]}, "message": {"text": "hi"}}),
    )
    .await;
    assert_eq!(status, 500);
    assert_eq!(body["length"], 1);
    assert_eq!(body["messages"][0]["data"]["message"], "asked to fail");
    // The timeout bounds the whole composition: gilmour's 499, and what was left never runs.
    let hang = json!({"topic": "slow", "with": {"steps": 0, "hang": true}});
    let before = w.seen().await.len();
    let (status, body) = request(
        &server,
        w.id(),
        json!({"composition": {"pipe": [upper(), hang, upper()]}, "message": {}, "timeout": 0.3}),
    )
    .await;
    assert_eq!(status, 499);
    assert_eq!(
        body,
        json!({"messages": [{"data": {"message": "the request's timeout passed"}, "code": 499}],
               "code": 499, "length": 1})
    );
    // (The last step was never dispatched: at most upper and slow were.)
    assert!(w.seen().await.len() <= before + 2);
    let (status, body) = request(&server, "nope", json!({"composition": upper()})).await;
    assert_eq!(status, 404);
    assert_eq!(body["type"], "urn:longrun:problem:node-not-found");
}

#[tokio::test]
async fn a_composition_run_reports_each_step_and_its_delete_cancels_the_running_step() {
    let (server, w) = started().await;
    let pipe = json!({"pipe": [upper(), {"topic": "slow", "with": {"steps": 2}}]});
    let run = compose(&server, pipe, json!({"text": "abc"})).await;
    let events = server.events(&run).await;
    assert_eq!(
        running(&events),
        [
            &json!({"step": 1, "steps": 2, "topic": "upper", "message": "step 1/2 started: upper"}),
            &json!({"step": 1, "steps": 2, "topic": "upper", "code": 200, "progress": 0.5,
                    "message": "step 1/2 ended: upper, code 200"}),
            &json!({"step": 2, "steps": 2, "topic": "slow", "message": "step 2/2 started: slow"}),
            // The node's own progress of the step.
            &json!({"progress": 0.5, "message": "step 1"}),
            &json!({"progress": 1.0, "message": "step 2"}),
            &json!({"step": 2, "steps": 2, "topic": "slow", "code": 200, "progress": 1.0,
                    "message": "step 2/2 ended: slow, code 200"}),
        ]
    );
    assert_eq!(last(&events), ("success", &json!({"steps": 2})));

    let pipe = json!({"pipe": [{"topic": "slow", "with": {"steps": 0, "hang": true}}, upper()]});
    let run = compose(&server, pipe, json!({})).await;
    cancel_hanging(&server, &w, &run).await;
    assert_eq!(dispatched(&w, &run).await, 1, "the next step never ran");
}

#[tokio::test]
async fn compose_is_an_object_with_both_paths_that_the_client_core_follows() {
    let server = TestServer::start(Server::builder()).await;
    let body = json!({"composition": {"lambda": {"const": "done"}}});
    for path in ["/_compose", "/_compose/"] {
        let res = post(server.url(path), body.clone()).await;
        assert_eq!(res.status(), 201, "{path}");
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let run: Value = res.json().await.unwrap();
        assert_eq!(run["object"], "_compose");
        assert_eq!(run["url"], location);
        assert!(location.starts_with("/_compose/"));
        let head = reqwest::Client::new()
            .head(server.url(&location))
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200);
    }
    // The Rust client core follows a run by its URL, and submits to `_compose` too.
    let path = compose(&server, json!({"lambda": {"const": [1, 2]}}), Value::Null).await;
    let run = longrun::Run::from_url(&server.url(&path)).unwrap();
    assert_eq!(run.object(), "_compose");
    let client = longrun::Client::new(&server.base).unwrap();
    assert_eq!(client.wait(&run, None).await.unwrap(), json!([1, 2]));
    let run = client
        .submit(
            "_compose",
            json!({"composition": {"lambda": {"wrap": "x"}}, "message": 1}),
        )
        .await
        .unwrap();
    assert_eq!(client.wait(&run, None).await.unwrap(), json!({"x": 1}));
    // Other reserved names are no objects.
    let res = post(server.url("/_other"), json!({})).await;
    assert_problem(res, 404, "unknown-object").await;
}

#[test]
#[should_panic(expected = "reserved")]
fn a_server_refuses_user_objects_with_a_reserved_name() {
    let _ = Server::builder().object("_mine", |_: Value, _: longrun_server::RunContext| async {
        Ok::<_, longrun_server::RunError>(Value::Null)
    });
}

#[tokio::test]
async fn submitting_a_composition_needs_the_submit_scope_for_compose_and_its_topics() {
    let auth = common::auth(&[
        ("a", "plain", &["submit"]),
        ("b", "named", &["submit:_compose"]),
        ("c", "both", &["submit:_compose", "submit:upper"]),
        ("d", "topic", &["submit:upper"]),
    ]);
    let server = TestServer::start(Server::builder().auth(auth)).await;
    let lambda = json!({"composition": {"lambda": {"const": 1}}});
    let topics = json!({"composition": {"pipe": [upper(), {"lambda": {"const": 1}}]}});
    let cases = [
        ("plain", &lambda, 201),
        ("plain", &topics, 201),
        ("named", &lambda, 201),
        ("named", &topics, 403),
        ("both", &topics, 201),
        ("topic", &lambda, 403),
    ];
    for (token, body, status) in cases {
        let res = reqwest::Client::new()
            .post(server.url("/_compose"))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), status, "{token} {body}");
    }
}

/// Parallel steps held by one node share the run's id as their sender: each one's progress
/// callbacks must reach the run while any of them is held.
#[tokio::test]
async fn parallel_steps_on_one_node_all_report_progress() {
    let (server, w) = started().await;
    let slow = json!({"topic": "slow", "with": {"steps": 3}});
    let parallel = json!({"parallel": [slow.clone(), slow.clone(), slow]});
    let (state, value, steps) = ran(&server, &w, parallel, json!({})).await;
    assert_eq!((state.as_str(), steps), ("success", 3), "{value}");
}
