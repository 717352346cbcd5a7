//! The object catalogue (spec §13.6): what each object is, what it does, and the JSON Schema of
//! the arguments it takes — `GET /_objects`, `GET /_objects/{name}`, the check of every submit
//! against that schema, and the served `/_openapi.json` with one submit operation per object.
//!
//! A schema is compiled once, when its object is registered (a Rust handler or an exec object
//! at build, a node service at its registration), so a submit only runs the validator.

use std::sync::{Arc, LazyLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use longrun_proto::ProblemKind;
use serde_json::{Map, Value, json};

use crate::Server;
use crate::auth::Caller;
use crate::http::{ApiError, json_response};

/// Errors a refused submit lists at most: enough to fix a call, bounded for a huge body.
const MAX_ERRORS: usize = 10;
/// Longest message of one error (a message may quote the value it refuses).
const MAX_MESSAGE: usize = 300;

/// Where an object comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A demo object of the reference server (spec §18).
    Builtin,
    /// A program run per call (spec §19).
    Exec,
    /// A handler the embedding program registered.
    Handler,
    /// A worker node's service topic (spec §25).
    Service,
    /// The reserved `_compose` (spec §25.10).
    Composition,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Builtin => "builtin",
            Kind::Exec => "exec",
            Kind::Handler => "handler",
            Kind::Service => "service",
            Kind::Composition => "composition",
        }
    }
}

/// One object's catalogue entry.
#[derive(Debug)]
pub(crate) struct Entry {
    kind: Kind,
    description: Option<String>,
    /// As declared, or [`any_object`] for an object that declares none.
    schema: Value,
    /// `None` when no schema was declared: the body is an object already (spec §4.1), so
    /// there is nothing left to check.
    validator: Option<jsonschema::Validator>,
    stream: bool,
}

/// The schema of an object that declares none: any JSON object, which is what every submit
/// body must be anyway.
fn any_object() -> Value {
    json!({"type": "object"})
}

impl Entry {
    /// The entry, its schema compiled; `Err` says why the schema is not one (not an object
    /// or a boolean, not valid against its meta-schema, a `$ref` that does not resolve —
    /// nothing is fetched from elsewhere).
    pub fn new(
        kind: Kind,
        description: Option<String>,
        schema: Option<Value>,
        stream: bool,
    ) -> Result<Entry, String> {
        let validator = match &schema {
            None => None,
            Some(s) if !(s.is_object() || s.is_boolean()) => {
                return Err(format!(
                    "the arguments' schema must be a JSON Schema (an object or a boolean), not {s}"
                ));
            }
            Some(s) => Some(
                jsonschema::validator_for(s)
                    .map_err(|e| format!("the arguments' schema is not valid JSON Schema: {e}"))?,
            ),
        };
        Ok(Entry {
            kind,
            description,
            schema: schema.unwrap_or_else(any_object),
            validator,
            stream,
        })
    }

    /// An entry whose schema is known to be valid (the server's own).
    fn builtin(kind: Kind, description: &str, schema: Option<Value>, stream: bool) -> Entry {
        Entry::new(kind, Some(description.to_owned()), schema, stream)
            .expect("the server's own schemas are valid")
    }

    pub fn schema(&self) -> &Value {
        &self.schema
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The entry as `GET /_objects` shows it.
    fn to_json(&self, name: &str) -> Value {
        json!({
            "name": name,
            "kind": self.kind.as_str(),
            "description": self.description,
            "args_schema": self.schema,
            "stream": self.stream,
        })
    }

    /// Check a submit's arguments: `Err` is the 422 to answer, with `errors`: a JSON pointer
    /// into the body and a message for each failure (at most [`MAX_ERRORS`]).
    pub fn check(&self, object: &str, args: &Value) -> Result<(), ApiError> {
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let errors: Vec<Value> = validator
            .iter_errors(args)
            .take(MAX_ERRORS)
            .map(|e| {
                let mut message = e.to_string();
                if message.len() > MAX_MESSAGE {
                    let mut end = MAX_MESSAGE;
                    while !message.is_char_boundary(end) {
                        end -= 1;
                    }
                    message.truncate(end);
                    message.push('…');
                }
                json!({"path": e.instance_path().to_string(), "message": message})
            })
            .collect();
        let Some(first) = errors.first() else {
            return Ok(());
        };
        let at = match first["path"].as_str() {
            Some("") | None => "the arguments".to_owned(),
            Some(path) => format!("at {path}"),
        };
        let detail = format!(
            "the arguments do not match {object}'s schema: {at}: {} (GET /_objects/{object} shows the schema)",
            first["message"].as_str().unwrap_or_default()
        );
        Err(
            ApiError::new(crate::compose::refused_arguments(object), detail)
                .with("errors", Value::Array(errors)),
        )
    }
}

/// The catalogue entry of `_compose`: its document's schema is the one `spec/openapi.yaml`
/// gives (`ComposeArguments`), with the schemas it refers to as its own `$defs`.
pub(crate) static COMPOSE: LazyLock<Arc<Entry>> = LazyLock::new(|| {
    let doc = base_openapi();
    let schemas = &doc["components"]["schemas"];
    let mut schema = schemas["ComposeArguments"].clone();
    let defs: Map<String, Value> = ["Composition", "Steps"]
        .iter()
        .map(|name| (name.to_string(), schemas[*name].clone()))
        .collect();
    schema["$defs"] = Value::Object(defs);
    rebase_refs(&mut schema, "#/components/schemas/", "#/$defs/");
    Arc::new(Entry::builtin(
        Kind::Composition,
        "Runs a composition of worker node services (spec §25.10): pipe, andand, oror, batch, \
         parallel, lambdas. At most 8 deep and 64 steps.",
        Some(schema),
        false,
    ))
});

/// Rewrite every `$ref` that starts with `from` to start with `to` instead (a schema moved
/// from one document into another).
fn rebase_refs(schema: &mut Value, from: &str, to: &str) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(r) if key == "$ref" => {
                        if let Some(rest) = r.strip_prefix(from) {
                            *r = format!("{to}{rest}");
                        } else if r == from.trim_end_matches('/') {
                            *r = to.trim_end_matches('/').to_owned();
                        }
                    }
                    // `properties` and `$defs` hold names, not keywords, but their values are
                    // schemas all the same.
                    _ => rebase_refs(value, from, to),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rebase_refs(v, from, to)),
        _ => {}
    }
}

/// Every object of the server, by name (sorted): registered ones, `_compose`, and the node
/// services served now.
fn entries(server: &Server) -> Vec<(String, Arc<Entry>)> {
    let mut all: std::collections::BTreeMap<String, Arc<Entry>> = server
        .objects
        .iter()
        .map(|(name, obj)| (name.clone(), obj.entry.clone()))
        .collect();
    all.insert(crate::compose::OBJECT.to_owned(), COMPOSE.clone());
    for (topic, entry) in server.nodes.catalogue() {
        all.entry(topic).or_insert(entry);
    }
    all.into_iter().collect()
}

/// `GET /_objects`: every object, sorted by name. Objects are the server's, not a tenant's:
/// any caller the server lets in sees them all.
pub(crate) async fn list(_caller: Caller, State(server): State<Server>) -> Response {
    let objects: Vec<Value> = entries(&server)
        .iter()
        .map(|(name, entry)| entry.to_json(name))
        .collect();
    json_response(StatusCode::OK, &json!({ "objects": objects }))
}

/// `GET /_objects/{name}`: one object, or 404 `unknown-object`.
pub(crate) async fn show(
    _caller: Caller,
    State(server): State<Server>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    match server.object(&name) {
        Some(obj) => Ok(json_response(StatusCode::OK, &obj.entry.to_json(&name))),
        None => Err(ApiError::new(
            ProblemKind::UnknownObject,
            format!("no object is named {name:?}; GET /_objects lists them"),
        )),
    }
}

/// `spec/openapi.yaml` as JSON (a test keeps the two in step); `openapi.json` here links to
/// `spec/openapi.json` so that `cargo package` takes it along.
static OPENAPI_JSON: &str = include_str!("../openapi.json");

fn base_openapi() -> &'static Value {
    static PARSED: LazyLock<Value> =
        LazyLock::new(|| serde_json::from_str(OPENAPI_JSON).expect("spec/openapi.json parses"));
    &PARSED
}

/// The generic submit operations, which the served document replaces by one per object.
const GENERIC_SUBMITS: [&str; 2] = ["/{object}", "/{object}/"];

/// The served OpenAPI document: `spec/openapi.yaml` with its generic submit operations
/// (`POST /{object}`, any object body) replaced by one `POST /{name}` per object of this
/// server, whose request body is that object's schema (`components.schemas.args.{name}`) and
/// whose replies are the generic submit's. Objects that have an operation of their own in
/// the document (`_compose`) keep it.
pub(crate) fn openapi(server: &Server) -> Value {
    let mut doc = base_openapi().clone();
    let generic = doc["paths"]["/{object}"]["post"].clone();
    let paths = doc["paths"]
        .as_object_mut()
        .expect("the document has paths");
    for path in GENERIC_SUBMITS {
        paths.remove(path);
    }
    let mut added = Vec::new();
    for (name, entry) in entries(server) {
        let path = format!("/{name}");
        if paths.contains_key(&path) {
            continue;
        }
        let component = format!("args.{name}");
        let mut op = generic.clone();
        op["operationId"] = json!(format!("submit_{name}"));
        op["summary"] = json!(format!("Submit a run of {name}"));
        op["description"] = json!(match entry.description() {
            Some(d) => format!("{d}\n\nThe body is checked against `{component}` (spec §4.1)."),
            None => format!("The body is checked against `{component}` (spec §4.1)."),
        });
        op["requestBody"] = json!({
            "required": false,
            "description": "The run's arguments (an empty body means `{}`).",
            "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{component}")}}},
        });
        paths.insert(path, json!({ "post": op }));
        let mut schema = entry.schema().clone();
        rebase_refs(
            &mut schema,
            "#/",
            &format!("#/components/schemas/{component}/"),
        );
        added.push((component, schema));
    }
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .expect("the document has component schemas");
    schemas.extend(added);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A schema is compiled from itself alone: a reference elsewhere (the web, a file) is an
    /// error at registration, never a fetch.
    #[test]
    fn references_outside_the_schema_are_refused() {
        for r in [
            "http://127.0.0.1:9/schema.json",
            "file:///etc/passwd",
            "#/$defs/missing",
        ] {
            let schema = json!({"$ref": r});
            let entry = Entry::new(Kind::Service, None, Some(schema), false);
            assert!(entry.is_err(), "{r} compiled");
        }
        let inside = json!({"$defs": {"n": {"type": "integer"}}, "properties": {"n": {"$ref": "#/$defs/n"}}});
        let entry = Entry::new(Kind::Service, None, Some(inside), false).unwrap();
        assert!(entry.check("x", &json!({"n": 1})).is_ok());
        assert!(entry.check("x", &json!({"n": "1"})).is_err());
    }

    #[test]
    fn moved_schemas_keep_their_references() {
        let mut schema =
            json!({"$ref": "#", "items": {"$ref": "#/$defs/a"}, "x": {"$ref": "http://a/b"}});
        rebase_refs(&mut schema, "#/", "#/components/schemas/args.o/");
        assert_eq!(schema["$ref"], "#/components/schemas/args.o");
        assert_eq!(
            schema["items"]["$ref"],
            "#/components/schemas/args.o/$defs/a"
        );
        assert_eq!(schema["x"]["$ref"], "http://a/b");
    }
}
