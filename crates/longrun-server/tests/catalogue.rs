//! The object catalogue (spec §13.6) on a real server: `GET /_objects` for every kind of
//! object (demo, exec from TOML, a Rust handler with a schemars schema, a worker node's
//! service), submits refused by the schema before any run exists, and the served OpenAPI
//! document with one submit operation per object.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::TestServer;
use common::workers::{Worker, assert_problem, get_json, post};
use longrun_server::exec::ExecSpec;
use longrun_server::schemars::JsonSchema;
use longrun_server::{
    BuildError, Config, ObjectOptions, RunContext, RunError, Server, StoreConfig,
};
use serde::Deserialize;
use serde_json::{Value, json};

async fn objects(t: &TestServer) -> Vec<Value> {
    let list = get_json(t.url("/_objects")).await;
    list["objects"].as_array().unwrap().clone()
}

fn named<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("{name} is not listed: {list:?}"))
}

/// A 422 `invalid-arguments` whose `errors` name `paths` (JSON pointers into the body).
async fn assert_refused(res: reqwest::Response, paths: &[&str]) -> Value {
    assert_eq!(res.status(), 422);
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["type"], "urn:longrun:problem:invalid-arguments", "{p}");
    let errors = p["errors"].as_array().unwrap_or_else(|| panic!("{p}"));
    let seen: Vec<&str> = errors.iter().map(|e| e["path"].as_str().unwrap()).collect();
    for path in paths {
        assert!(seen.contains(path), "{path} not among {seen:?}: {p}");
    }
    assert!(errors.iter().all(|e| e["message"].is_string()), "{p}");
    p
}

#[tokio::test]
async fn demo_objects_are_listed_sorted_with_their_schemas() {
    let t = TestServer::demo().await;
    let list = objects(&t).await;
    let names: Vec<&str> = list.iter().map(|o| o["name"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for name in [
        "_compose",
        "bytes",
        "count",
        "echo",
        "emit",
        "ephemeral",
        "fail",
        "sleep",
    ] {
        let o = named(&list, name);
        assert!(o["description"].is_string(), "{o}");
        assert!(o["args_schema"].is_object(), "{o}");
        let want = if name == "_compose" {
            "composition"
        } else {
            "builtin"
        };
        assert_eq!(o["kind"], want, "{o}");
        assert_eq!(o["stream"], name == "bytes", "{o}");
    }
    let count = &named(&list, "count")["args_schema"];
    assert_eq!(count["type"], "object");
    assert_eq!(count["additionalProperties"], false, "{count}");
    assert_eq!(count["properties"]["n"]["maximum"], 100_000, "{count}");
    assert_eq!(count["properties"]["n"]["default"], 3, "{count}");
    // Without a declared schema: any object.
    assert_eq!(
        named(&list, "echo")["args_schema"],
        json!({"type": "object"})
    );

    let one = get_json(t.url("/_objects/count")).await;
    assert_eq!(&one, named(&list, "count"));
    let res = reqwest::get(t.url("/_objects/nope")).await.unwrap();
    assert_problem(res, 404, "unknown-object").await;
}

#[tokio::test]
async fn a_submit_the_schema_refuses_is_422_naming_the_paths_and_creates_no_run() {
    // One active run at most: a refused submit that had created a run would take the place.
    let t = TestServer::with_config(Config {
        max_active_runs: 1,
        ..Config::default()
    })
    .await;
    let res = post(t.url("/sleep"), json!({"ms": "long", "extra": 1})).await;
    let p = assert_refused(res, &["/ms", ""]).await;
    assert!(
        p["detail"].as_str().unwrap().contains("/_objects/sleep"),
        "{p}"
    );
    // A range the handler checks too, now said by the schema.
    let res = post(t.url("/count"), json!({"n": 100_001})).await;
    assert_refused(res, &["/n"]).await;
    let run = t.submit("sleep", json!({"ms": 3_600_000})).await;
    assert!(run.starts_with("/sleep/"));
}

#[derive(Deserialize, JsonSchema)]
#[schemars(crate = "longrun_server::schemars")]
#[serde(deny_unknown_fields)]
struct ResizeArgs {
    /// Width in pixels.
    #[schemars(range(min = 1, max = 10_000))]
    width: u32,
    /// Keep the aspect ratio.
    #[serde(default)]
    keep_aspect: bool,
}

#[tokio::test]
async fn a_rust_handler_declares_its_schema_with_schemars_and_is_checked_before_it_runs() {
    let started = Arc::new(AtomicUsize::new(0));
    let seen = started.clone();
    let options = ObjectOptions::default()
        .describe("Resizes an image.")
        .args::<ResizeArgs>();
    let builder = Server::builder()
        .object_with("resize", options, move |args: Value, _ctx: RunContext| {
            seen.fetch_add(1, Ordering::SeqCst);
            async move {
                let a: ResizeArgs = serde_json::from_value(args)?;
                Ok::<_, RunError>(json!({"width": a.width, "keep_aspect": a.keep_aspect}))
            }
        })
        .object("plain", |args: Value, _ctx: RunContext| async move {
            Ok::<_, RunError>(args)
        });
    let t = TestServer::start(builder).await;
    let list = objects(&t).await;
    let resize = named(&list, "resize");
    assert_eq!(resize["kind"], "handler");
    assert_eq!(resize["description"], "Resizes an image.");
    let schema = &resize["args_schema"];
    assert_eq!(schema["required"], json!(["width"]), "{schema}");
    assert_eq!(
        schema["properties"]["width"]["description"],
        "Width in pixels."
    );
    let plain = named(&list, "plain");
    assert_eq!(plain["description"], Value::Null);
    assert_eq!(plain["args_schema"], json!({"type": "object"}));

    let res = post(t.url("/resize"), json!({"width": 0, "keep_aspect": "yes"})).await;
    assert_refused(res, &["/width", "/keep_aspect"]).await;
    let res = post(t.url("/resize"), json!({})).await;
    assert_refused(res, &[""]).await;
    assert_eq!(started.load(Ordering::SeqCst), 0, "a refused submit ran");
    let run = t.submit("resize", json!({"width": 640})).await;
    assert_eq!(t.events(&run).await.last().unwrap()["state"], "success");
    assert_eq!(started.load(Ordering::SeqCst), 1);
}

#[test]
fn a_schema_that_is_not_json_schema_stops_the_build() {
    let options = ObjectOptions {
        args_schema: Some(json!({"type": "integer-ish"})),
        ..Default::default()
    };
    let built = Server::builder()
        .object_with("bad", options, |args: Value, _ctx: RunContext| async move {
            Ok::<_, RunError>(args)
        })
        .build();
    match built {
        Err(BuildError::InvalidSchema { object, why }) => {
            assert_eq!(object, "bad");
            assert!(why.contains("not valid JSON Schema"), "{why}");
        }
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("built with an invalid schema"),
    }
}

#[tokio::test]
async fn exec_objects_take_a_description_and_a_schema_from_toml_inline_or_in_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("greet.json");
    std::fs::write(
        &file,
        json!({"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}})
            .to_string(),
    )
    .unwrap();
    let toml = format!(
        r#"
[upper]
command = "tr a-z A-Z"
description = "Upper-cases its arguments."
[upper.args_schema]
type = "object"
additionalProperties = false
required = ["text"]
[upper.args_schema.properties.text]
type = "string"
maxLength = 100

[greet]
command = "cat"
args_schema = {file:?}
"#,
        file = file.display().to_string()
    );
    let specs: std::collections::BTreeMap<String, ExecSpec> = toml::from_str(&toml).unwrap();
    let mut builder = Server::builder();
    for (name, spec) in &specs {
        builder = builder.object_with(name, spec.options().unwrap(), spec.handler().unwrap());
    }
    let t = TestServer::start(builder).await;
    let list = objects(&t).await;
    let upper = named(&list, "upper");
    assert_eq!(upper["kind"], "exec");
    assert_eq!(upper["description"], "Upper-cases its arguments.");
    assert_eq!(upper["args_schema"]["properties"]["text"]["maxLength"], 100);
    assert_eq!(
        named(&list, "greet")["args_schema"]["required"],
        json!(["name"])
    );

    let res = post(t.url("/upper"), json!({"text": 5, "other": true})).await;
    assert_refused(res, &["/text", ""]).await;
    let res = post(t.url("/greet"), json!({})).await;
    assert_refused(res, &[""]).await;
    let run = t.submit("upper", json!({"text": "hi"})).await;
    assert_eq!(t.events(&run).await.last().unwrap()["state"], "success");

    // A file that is not there, and a table that is no schema, stop the start.
    let missing: ExecSpec =
        toml::from_str("command = \"cat\"\nargs_schema = \"/nonexistent.json\"").unwrap();
    let err = missing.options().unwrap_err();
    assert!(err.contains("/nonexistent.json"), "{err}");
    let bad: ExecSpec = toml::from_str("command = \"cat\"\nargs_schema = { type = 12 }").unwrap();
    let built = Server::builder()
        .object_with("bad", bad.options().unwrap(), bad.handler().unwrap())
        .build();
    assert!(matches!(built, Err(BuildError::InvalidSchema { .. })));
}

#[tokio::test]
async fn a_worker_service_declares_its_schema_at_registration() {
    let t = TestServer::demo().await;
    let w = Worker::start(None, &[]).await;
    let schema = json!({
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string"}, "fail": {"type": "boolean"}},
        "additionalProperties": false,
    });
    let registration = |schema: Value| {
        json!({
            "port": w.port,
            "services": [{"topic": "up", "group": "g", "path": "/upper", "timeout": 5,
                          "description": "Upper-cases text.", "args_schema": schema}],
        })
    };
    // Not a schema: 422, and nothing registered.
    let res = post(t.url("/_nodes"), registration(json!({"type": "text"}))).await;
    assert_problem(res, 422, "invalid-node").await;
    assert_eq!(get_json(t.url("/_nodes")).await["nodes"], json!([]));
    assert!(!objects(&t).await.iter().any(|o| o["name"] == "up"));

    let res = post(t.url("/_nodes"), registration(schema.clone())).await;
    assert_eq!(res.status(), 201);
    let up = get_json(t.url("/_objects/up")).await;
    assert_eq!(
        up,
        json!({"name": "up", "kind": "service", "description": "Upper-cases text.",
               "args_schema": schema, "stream": false})
    );
    let res = post(t.url("/up"), json!({"text": 1})).await;
    assert_refused(res, &["/text"]).await;
    assert!(w.seen().await.is_empty(), "a refused submit was dispatched");
    let run = t.submit("up", json!({"text": "hi"})).await;
    let events = t.events(&run).await;
    assert_eq!(events.last().unwrap()["value"], json!({"text": "HI"}));

    // Another node of the topic with another schema would make the topic two objects.
    let res = post(
        t.url("/_nodes"),
        registration(json!({"type": "object", "maxProperties": 1})),
    )
    .await;
    assert_problem(res, 409, "topic-taken").await;
}

/// A registration read back from the store (a restart on SQLite) keeps its schema, compiled
/// again on first use, and submits are still checked against it.
#[tokio::test]
async fn a_service_schema_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = || StoreConfig::Sqlite {
        path: dir.path().join("longrun.db"),
        full_sync: false,
    };
    let w = Worker::start(None, &[]).await;
    let schema = json!({"type": "object", "required": ["text"]});
    let t = TestServer::start(Server::builder().store(store())).await;
    let res = post(
        t.url("/_nodes"),
        json!({"port": w.port, "services": [{"topic": "up", "group": "g", "path": "/upper",
               "timeout": 5, "description": "Upper-cases text.", "args_schema": schema}]}),
    )
    .await;
    assert_eq!(res.status(), 201);
    t.stop().await.unwrap();

    let t = TestServer::start(Server::builder().store(store())).await;
    let up = get_json(t.url("/_objects/up")).await;
    assert_eq!(up["args_schema"], schema, "{up}");
    assert_eq!(up["description"], "Upper-cases text.");
    let res = post(t.url("/up"), json!({})).await;
    assert_refused(res, &[""]).await;
    assert!(w.seen().await.is_empty(), "a refused submit was dispatched");
}

#[tokio::test]
async fn with_tenants_any_valid_token_reads_the_catalogue() {
    let auth = common::auth(&[("acme", "lrt_reader", &["read"])]);
    let t = TestServer::start(Server::builder().demo().auth(auth)).await;
    let res = reqwest::get(t.url("/_objects")).await.unwrap();
    assert_problem(res, 401, "unauthorized").await;
    let res = reqwest::Client::new()
        .get(t.url("/_objects/count"))
        .bearer_auth("lrt_reader")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn the_served_openapi_has_one_submit_operation_per_object() {
    let builder = Server::builder().demo().object_with(
        "resize",
        ObjectOptions::default().args::<ResizeArgs>(),
        |args: Value, _ctx: RunContext| async move { Ok::<_, RunError>(args) },
    );
    let t = TestServer::start(builder).await;
    let doc = get_json(t.url("/_openapi.json")).await;
    let paths = doc["paths"].as_object().unwrap();
    assert!(!paths.contains_key("/{object}") && !paths.contains_key("/{object}/"));
    for o in objects(&t).await {
        let name = o["name"].as_str().unwrap();
        let op = &paths[&format!("/{name}")]["post"];
        if name == "_compose" {
            assert_eq!(op["operationId"], "compose");
            continue;
        }
        assert_eq!(op["operationId"], format!("submit_{name}"));
        let created = &op["responses"]["201"]["content"]["application/json"]["schema"];
        assert_eq!(
            created["$ref"], "#/components/schemas/SubmittedQueued",
            "{op}"
        );
        let body = &op["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(body["$ref"], format!("#/components/schemas/args.{name}"));
    }
    // Each body schema works inside the document: its refs resolve there.
    let validate = |name: &str, body: Value| {
        let mut root = doc.clone();
        root["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        root["$ref"] = json!(format!("#/components/schemas/args.{name}"));
        jsonschema::validator_for(&root).unwrap().is_valid(&body)
    };
    assert!(validate("count", json!({"n": 3})));
    assert!(!validate("count", json!({"n": 3, "m": 1})));
    assert!(validate("resize", json!({"width": 3})));
    assert!(!validate("resize", json!({"width": "3"})));
}
