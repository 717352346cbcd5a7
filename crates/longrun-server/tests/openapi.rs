//! `spec/openapi.yaml` against the server: the served JSON copy is current, and real
//! responses of every documented operation have a documented status, content type and a
//! body that validates against the documented schema.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::{RawResponse, TestServer, request};
use serde_json::{Value, json};

fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../spec")
}

fn openapi() -> Value {
    let yaml = std::fs::read_to_string(spec_dir().join("openapi.yaml")).unwrap();
    serde_yaml::from_str(&yaml).expect("spec/openapi.yaml parses")
}

/// `GET /_openapi.json` serves `spec/openapi.json`, generated from the YAML. When they
/// drift, this test rewrites the JSON and fails, so `cargo test` is the regeneration step.
#[test]
fn served_openapi_json_is_generated_from_the_yaml() {
    let path = spec_dir().join("openapi.json");
    let want = serde_json::to_string_pretty(&openapi()).unwrap() + "\n";
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have != want {
        std::fs::write(&path, &want).unwrap();
        panic!(
            "spec/openapi.json was out of date with spec/openapi.yaml; it has been regenerated: rebuild and commit it"
        );
    }
}

struct Doc {
    root: Value,
}

impl Doc {
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            v = self
                .root
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    /// The documented response for an operation and status; 404 `not-found` and 405 apply to
    /// every path and live in `components.responses`.
    fn response(&self, template: &str, method: &str, status: u16) -> Option<&Value> {
        // An operation's `default` stands for every status it does not list (OpenAPI 3.1).
        let documented = self.root["paths"][template].get(method).and_then(|op| {
            let responses = &op["responses"];
            responses
                .get(status.to_string())
                .or_else(|| responses.get("default"))
        });
        if let Some(r) = documented {
            return Some(self.resolve(r));
        }
        match status {
            404 => self.root["components"]["responses"].get("NotFound"),
            405 => self.root["components"]["responses"].get("MethodNotAllowed"),
            _ => None,
        }
        .map(|r| self.resolve(r))
    }

    /// Validate `body` against a schema of this document (refs resolve inside it).
    fn validate(&self, schema: &Value, body: &Value) -> Result<(), String> {
        let mut full = self.root.clone();
        let obj = full.as_object_mut().unwrap();
        obj.insert(
            "$schema".into(),
            json!("https://json-schema.org/draft/2020-12/schema"),
        );
        for (k, v) in schema.as_object().unwrap() {
            obj.insert(k.clone(), v.clone());
        }
        let validator = jsonschema::validator_for(&full).map_err(|e| e.to_string())?;
        let errors: Vec<String> = validator
            .iter_errors(body)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn check(&self, template: &str, method: &str, res: &RawResponse) {
        let what = format!("{} {template} → {}", method.to_uppercase(), res.status);
        let documented = self
            .response(template, method, res.status)
            .unwrap_or_else(|| panic!("{what}: status not documented"));
        let content = documented.get("content").and_then(Value::as_object);
        let Some(content) = content.filter(|c| !c.is_empty()) else {
            assert!(
                res.body.is_empty(),
                "{what}: documented without a body, got {:?}",
                res.text()
            );
            return;
        };
        let ct = res
            .header("content-type")
            .unwrap_or_else(|| panic!("{what}: no content type"));
        let media = ct.split(';').next().unwrap().trim();
        let entry = content
            .get(media)
            .unwrap_or_else(|| panic!("{what}: content type {ct} not documented"));
        if media.ends_with("json") {
            let schema = entry
                .get("schema")
                .unwrap_or_else(|| panic!("{what}: no schema"));
            if let Err(e) = self.validate(schema, &res.json()) {
                panic!(
                    "{what}: body {} does not match the documented schema: {e}",
                    res.text()
                );
            }
        }
    }
}

type Case<'a> = (
    &'a str,
    &'a str,
    String,
    &'a [(&'a str, &'a str)],
    &'a str,
    u16,
);

#[tokio::test]
async fn responses_match_the_documented_operations() {
    let doc = Doc { root: openapi() };
    let t = TestServer::demo().await;
    let run = t.submit("count", json!({"n": 2})).await;
    t.events(&run).await;
    let sleeping = t.submit("sleep", json!({"ms": 3_600_000})).await;
    // `ephemeral` ends once followed and is dropped at once: one held poll sees its end.
    let gone = t.submit("ephemeral", json!({})).await;
    let last = t
        .raw(&request("GET", &gone, &[("Last-Event-ID", "0")], ""))
        .await;
    assert_eq!(last.json()[0]["state"], "success");
    // A run with a byte stream (spec §27), ended.
    let bytes = t.submit("bytes", json!({"n": 10})).await;
    t.events(&bytes).await;
    let stream = format!("{bytes}/stream");
    let unknown = "/echo/00000000-0000-4000-8000-000000000000";
    let sse = [("Accept", "text/event-stream")];
    // A worker node (spec §25): the server itself answers the health path.
    let port = t.addr.port();
    let registration = |topic: &str, health: &str| {
        json!({"port": port, "health_check": health,
               "services": [{"topic": topic, "group": "g", "path": "/echo", "timeout": 5}]})
        .to_string()
    };
    let node_body = registration("selfsvc", "/_health");
    let node = t.raw(&request("POST", "/_nodes", &[], &node_body)).await;
    let node = format!("/_nodes/{}", node.json()["id"].as_str().unwrap());
    let unreachable = registration("other", "/nope");
    let local = registration("echo", "/_health");
    // (method, documented path, request path, headers, body, expected status)
    let cases: Vec<Case> = vec![
        ("post", "/{object}", "/echo".into(), &[], r#"{"a":1}"#, 201),
        ("post", "/{object}/", "/echo/".into(), &[], "", 201),
        ("post", "/{object}", "/echo".into(), &sse, "{}", 303),
        (
            "post",
            "/{object}",
            "/echo".into(),
            &[("Prefer", "wait=5")],
            "{}",
            200,
        ),
        (
            "post",
            "/{object}",
            "/echo".into(),
            &[("Longrun-Deadline", "soon")],
            "{}",
            400,
        ),
        ("post", "/{object}", "/echo".into(), &[], "{", 400),
        ("post", "/{object}", "/echo".into(), &[], "[]", 400),
        ("post", "/{object}", "/nope".into(), &[], "{}", 404),
        // The object's schema refuses it (spec §4.1): `errors` names the paths.
        (
            "post",
            "/{object}",
            "/count".into(),
            &[],
            r#"{"n":"x"}"#,
            422,
        ),
        ("get", "/_objects", "/_objects".into(), &[], "", 200),
        (
            "get",
            "/_objects/{name}",
            "/_objects/count".into(),
            &[],
            "",
            200,
        ),
        (
            "get",
            "/_objects/{name}",
            "/_objects/nope".into(),
            &[],
            "",
            404,
        ),
        (
            "post",
            "/{object}",
            "/echo".into(),
            &[("Content-Type", "text/plain")],
            "{}",
            415,
        ),
        (
            "post",
            "/{object}",
            "/echo".into(),
            &[],
            &*Box::leak("x".repeat(1_100_000).into_boxed_str()),
            413,
        ),
        (
            "post",
            "/{object}",
            "/count".into(),
            &[],
            r#"{"n":true}"#,
            422,
        ),
        ("get", "/{object}/{id}", run.clone(), &[], "", 200),
        ("get", "/{object}/{id}", run.clone(), &sse, "", 200),
        (
            "get",
            "/{object}/{id}",
            run.clone(),
            &[("Accept", "text/event-stream"), ("Last-Event-ID", "3")],
            "",
            204,
        ),
        (
            "get",
            "/{object}/{id}",
            format!("{run}?last_event_id=x"),
            &[],
            "",
            400,
        ),
        (
            "get",
            "/{object}/{id}",
            format!("{sleeping}?wait=0"),
            &[],
            "",
            200,
        ),
        ("get", "/{object}/{id}", unknown.into(), &[], "", 404),
        ("get", "/{object}/{id}", gone.clone(), &[], "", 410),
        ("get", "/{object}", "/echo".into(), &[], "", 405),
        ("head", "/{object}/{id}", run.clone(), &[], "", 200),
        ("head", "/{object}/{id}", unknown.into(), &[], "", 404),
        ("head", "/{object}/{id}", gone.clone(), &[], "", 410),
        ("delete", "/{object}/{id}", run.clone(), &[], "", 409),
        ("delete", "/{object}/{id}", sleeping.clone(), &[], "", 202),
        ("delete", "/{object}/{id}", unknown.into(), &[], "", 404),
        ("delete", "/{object}/{id}", gone.clone(), &[], "", 410),
        (
            "post",
            "/{object}/{id}/read-token",
            format!("{run}/read-token"),
            &[],
            "",
            200,
        ),
        (
            "post",
            "/{object}/{id}/read-token",
            format!("{unknown}/read-token"),
            &[],
            "",
            404,
        ),
        (
            "post",
            "/{object}/{id}/read-token",
            format!("{gone}/read-token"),
            &[],
            "",
            410,
        ),
        (
            "get",
            "/{object}/{id}/hooks",
            format!("{run}/hooks"),
            &[],
            "",
            200,
        ),
        (
            "get",
            "/{object}/{id}/hooks",
            format!("{unknown}/hooks"),
            &[],
            "",
            404,
        ),
        (
            "get",
            "/{object}/{id}/hooks",
            format!("{gone}/hooks"),
            &[],
            "",
            410,
        ),
        (
            "post",
            "/{object}",
            "/echo".into(),
            &[("Longrun-Hook", "ftp://example.com/")],
            "{}",
            400,
        ),
        (
            "post",
            "/{object}",
            "/echo".into(),
            &[("Longrun-Hook", "https://example.com/hook")],
            "{}",
            422,
        ),
        (
            "post",
            "/_compose",
            "/_compose".into(),
            &[],
            r#"{"composition":{"lambda":{"const":1}}}"#,
            201,
        ),
        (
            "post",
            "/_compose",
            "/_compose/".into(),
            &[],
            r#"{"composition":{"pipe":[]}}"#,
            422,
        ),
        ("post", "/_nodes", "/_nodes".into(), &[], &node_body, 201),
        ("post", "/_nodes", "/_nodes".into(), &[], "{", 400),
        (
            "post",
            "/_nodes",
            "/_nodes".into(),
            &[],
            r#"{"port":0}"#,
            422,
        ),
        ("post", "/_nodes", "/_nodes".into(), &[], &unreachable, 422),
        ("post", "/_nodes", "/_nodes".into(), &[], &local, 409),
        ("get", "/_nodes", "/_nodes".into(), &[], "", 200),
        ("get", "/_nodes/{node}", node.clone(), &[], "", 200),
        ("get", "/_nodes/{node}", "/_nodes/nope".into(), &[], "", 404),
        (
            "post",
            "/_nodes/{node}/runs/{id}/events",
            format!("{node}/runs/00000000-0000-4000-8000-000000000000/events"),
            &[],
            "{}",
            404,
        ),
        (
            "get",
            "/_nodes/{node}/services",
            format!("{node}/services"),
            &[],
            "",
            200,
        ),
        (
            "get",
            "/_nodes/{node}/slots",
            format!("{node}/slots"),
            &[],
            "",
            200,
        ),
        (
            "get",
            "/_nodes/{node}/slots",
            "/_nodes/nope/slots".into(),
            &[],
            "",
            404,
        ),
        (
            "post",
            "/_nodes/{node}/services",
            format!("{node}/services"),
            &[],
            r#"{"topic":"selfsvc2","group":"g","path":"/echo","timeout":5}"#,
            201,
        ),
        (
            "post",
            "/_nodes/{node}/services",
            format!("{node}/services"),
            &[],
            r#"{"topic":"selfsvc2","group":"g","path":"/echo","timeout":5}"#,
            409,
        ),
        (
            "post",
            "/_nodes/{node}/services",
            format!("{node}/services"),
            &[],
            r#"{"topic":"x","path":"/echo","timeout":5}"#,
            422,
        ),
        (
            "post",
            "/_nodes/{node}/services",
            format!("{node}/services"),
            &[],
            "{",
            400,
        ),
        (
            "delete",
            "/_nodes/{node}/services",
            format!("{node}/services?topic=selfsvc2"),
            &[],
            "",
            200,
        ),
        (
            "delete",
            "/_nodes/{node}/services",
            format!("{node}/services?topic=selfsvc2"),
            &[],
            "",
            404,
        ),
        (
            "delete",
            "/_nodes/{node}/services",
            format!("{node}/services"),
            &[],
            "",
            422,
        ),
        (
            "post",
            "/_nodes/{node}/slots",
            format!("{node}/slots"),
            &[],
            r#"{"topic":"audit.*","path":"/echo","timeout":5}"#,
            201,
        ),
        (
            "post",
            "/_nodes/{node}/slots",
            format!("{node}/slots"),
            &[],
            r#"{"topic":"audit.*","path":"/echo","timeout":5}"#,
            200,
        ),
        (
            "post",
            "/_nodes/{node}/slots",
            format!("{node}/slots"),
            &[],
            r#"{"topic":"a b","path":"/echo","timeout":5}"#,
            422,
        ),
        (
            "delete",
            "/_nodes/{node}/slots",
            format!("{node}/slots?topic=audit.*&path=/echo"),
            &[],
            "",
            200,
        ),
        (
            "post",
            "/_signals/{topic}",
            "/_signals/nobody".into(),
            &[],
            "{}",
            202,
        ),
        (
            "post",
            "/_signals/{topic}",
            "/_signals/a*".into(),
            &[],
            "{}",
            422,
        ),
        (
            "post",
            "/_signals/{topic}",
            "/_signals/a".into(),
            &[],
            "{",
            400,
        ),
        (
            "post",
            "/_nodes/{node}/signal",
            format!("{node}/signal"),
            &[],
            r#"{"topic":"nobody","message":1}"#,
            202,
        ),
        (
            "post",
            "/_nodes/{node}/signal",
            format!("{node}/signal"),
            &[],
            "{}",
            400,
        ),
        (
            "post",
            "/_nodes/{node}/signal",
            "/_nodes/nope/signal".into(),
            &[],
            r#"{"topic":"a"}"#,
            404,
        ),
        (
            "post",
            "/_nodes/{node}/request",
            format!("{node}/request"),
            &[],
            // The node is this server: its /echo answers a submit, 201.
            r#"{"topic":"selfsvc","message":{"a":1}}"#,
            201,
        ),
        (
            "post",
            "/_nodes/{node}/request",
            format!("{node}/request"),
            &[],
            r#"{"message":1}"#,
            422,
        ),
        (
            "post",
            "/_nodes/{node}/request",
            "/_nodes/nope/request".into(),
            &[],
            r#"{"topic":"a"}"#,
            404,
        ),
        ("delete", "/_nodes/{node}", node.clone(), &[], "", 200),
        (
            "delete",
            "/_nodes/{node}",
            "/_nodes/nope".into(),
            &[],
            "",
            404,
        ),
        ("post", "/{object}", "/bytes".into(), &[], "{}", 201),
        ("get", "/{object}/{id}/stream", stream.clone(), &[], "", 200),
        (
            "get",
            "/{object}/{id}/stream",
            stream.clone(),
            &[("Range", "bytes=4-")],
            "",
            206,
        ),
        (
            "get",
            "/{object}/{id}/stream",
            stream.clone(),
            &[("Range", "bytes=10-")],
            "",
            416,
        ),
        (
            "head",
            "/{object}/{id}/stream",
            stream.clone(),
            &[],
            "",
            200,
        ),
        ("head", "/{object}/{id}", bytes.clone(), &[], "", 200),
        (
            "get",
            "/{object}/{id}/stream",
            format!("{run}/stream"),
            &[],
            "",
            404,
        ),
        (
            "post",
            "/_topics/{topic}",
            "/_topics/chat.room".into(),
            &[],
            r#"{"text":"hi"}"#,
            202,
        ),
        (
            "post",
            "/_topics/{topic}",
            "/_topics/_runs".into(),
            &[],
            "1",
            400,
        ),
        (
            "post",
            "/_topics/{topic}",
            "/_topics/t".into(),
            &[],
            "{nope",
            400,
        ),
        ("get", "/_runs", "/_runs?limit=2".into(), &[], "", 200),
        ("get", "/_runs", "/_runs?state=nope".into(), &[], "", 400),
        (
            "get",
            "/_runs",
            "/_runs?page_token=nope".into(),
            &[],
            "",
            400,
        ),
        ("get", "/_metrics", "/_metrics".into(), &[], "", 200),
        ("get", "/_ws", "/_ws".into(), &[], "", 426),
        ("get", "/_health", "/_health".into(), &[], "", 200),
        ("head", "/_health", "/_health".into(), &[], "", 200),
        ("get", "/_dashboard", "/_dashboard".into(), &[], "", 200),
        (
            "get",
            "/_openapi.json",
            "/_openapi.json".into(),
            &[],
            "",
            200,
        ),
        (
            "head",
            "/_openapi.json",
            "/_openapi.json".into(),
            &[],
            "",
            200,
        ),
        (
            "get",
            "/_health",
            "/_nothing/here/at/all".into(),
            &[],
            "",
            404,
        ),
    ];
    let mut exercised = BTreeSet::new();
    for (method, template, path, headers, body, status) in cases {
        let res = t
            .raw(&request(&method.to_uppercase(), &path, headers, body))
            .await;
        assert_eq!(res.status, status, "{method} {path}: {}", res.text());
        doc.check(template, method, &res);
        if res.status != 405 {
            exercised.insert((template.to_owned(), method.to_owned()));
        }
    }
    // Every documented operation was exercised above.
    for (template, ops) in doc.root["paths"].as_object().unwrap() {
        for method in ops
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "parameters")
        {
            assert!(
                exercised.contains(&(template.clone(), method.clone())),
                "{method} {template} is documented but not exercised here"
            );
        }
    }
}

/// The schema check above can fail: a body that breaks the documented shape is rejected.
#[test]
fn the_schema_check_rejects_wrong_bodies() {
    let doc = Doc { root: openapi() };
    let created = doc.response("/{object}", "post", 201).unwrap();
    let schema = &created["content"]["application/json"]["schema"];
    let ok = json!({"id": "0f8fad5b-d9cb-469f-a165-70867728950e", "object": "echo", "state": "queued", "url": "/echo/0f8fad5b-d9cb-469f-a165-70867728950e"});
    assert!(doc.validate(schema, &ok).is_ok());
    assert!(doc.validate(schema, &json!({"id": 1})).is_err());
    let problem = doc.response("/{object}/{id}", "get", 400).unwrap();
    let schema = &problem["content"]["application/problem+json"]["schema"];
    assert!(doc.validate(schema, &json!({"type": "x"})).is_err());
}
