//! Routes of longrun/1 and the problem+json error responses.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::BodyExt;
use longrun_proto::header as h;
use longrun_proto::{Problem, ProblemKind, State as RunState, Submitted};
use serde_json::Value;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::Server;
use crate::registry::{Lookup, SubmitError};
use crate::run::{CancelOutcome, Run};

/// The router of a server: the protocol's routes, `/_health`, `/_openapi.json`, and
/// problem+json for everything that does not match.
pub fn app(server: Server) -> Router {
    let cors = cors(&server.config.cors_origins);
    let router = Router::new()
        .route("/_health", get(health))
        .route("/_openapi.json", get(openapi))
        .route("/{object}", post(submit))
        .route("/{object}/", post(submit))
        .route(
            "/{object}/{id}",
            get(crate::follow::follow).head(exists).delete(cancel),
        )
        .fallback(|| async { problem(ProblemKind::NotFound, "no route has this path") })
        .layer(middleware::from_fn(bare_errors_to_problems))
        .with_state(server);
    // Outermost, so it answers preflights before routing (which knows no OPTIONS).
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// CORS for browser callers from `origins` (`*`: any): the methods and request headers a
/// client sends, and the response headers it must read (`Location`, `Longrun-*`).
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    let name = |n: &'static str| header::HeaderName::from_static(n);
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([Method::GET, Method::HEAD, Method::POST, Method::DELETE])
            .allow_headers([
                name(h::LAST_EVENT_ID),
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
            ])
            .expose_headers([
                header::LOCATION,
                name(h::LONGRUN_STATE),
                name(h::LONGRUN_LAST_EVENT_ID),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// Build a problem+json response.
pub(crate) fn problem(kind: ProblemKind, detail: impl Into<String>) -> Response {
    problem_response(Problem::new(kind, detail))
}

pub(crate) fn problem_response(p: Problem) -> Response {
    let status = StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(&p).expect("a problem always serializes");
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(h::PROBLEM_JSON),
        )],
        body,
    )
        .into_response()
}

/// axum answers some errors itself with an empty or plain-text body (405 from the method
/// router, rejections of extractors). The protocol promises problem+json for every error, so
/// rewrite those, keeping their headers (e.g. `Allow`).
async fn bare_errors_to_problems(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == h::PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let kind = match status {
        StatusCode::METHOD_NOT_ALLOWED => ProblemKind::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ProblemKind::BodyTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ProblemKind::UnsupportedMediaType,
        _ => ProblemKind::NotFound,
    };
    let (mut parts, _) = res.into_parts();
    let mut fresh = problem(kind, format!("{status}"));
    parts.status = fresh.status();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(fresh.headers_mut().drain());
    let body = fresh.into_body();
    Response::from_parts(parts, body)
}

async fn health(State(server): State<Server>) -> Response {
    if server.registry.is_shutting_down() {
        return problem(ProblemKind::ShuttingDown, "the server is draining its runs");
    }
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "protocol": longrun_proto::PROTOCOL,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )
}

/// The OpenAPI document, converted from `spec/openapi.yaml` (a test keeps the two in step).
static OPENAPI_JSON: &str = include_str!("../../../spec/openapi.json");

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(h::JSON))],
        OPENAPI_JSON,
    )
        .into_response()
}

fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("wire types always serialize");
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(h::JSON))],
        body,
    )
        .into_response()
}

async fn submit(
    State(server): State<Server>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(obj) = server.objects.get(&object) else {
        return unread_body(problem(
            ProblemKind::UnknownObject,
            format!("no object is named {object:?}"),
        ));
    };
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        if !ct.to_str().is_ok_and(h::is_json_content_type) {
            let mut res = problem(
                ProblemKind::UnsupportedMediaType,
                "send the arguments as application/json (or with no Content-Type)",
            );
            res.headers_mut()
                .insert("accept-post", HeaderValue::from_static(h::JSON));
            return unread_body(res);
        }
    }
    let args = match read_args(&server, &headers, body).await {
        Ok(args) => args,
        Err(res) => return unread_body(res),
    };
    let Value::Object(map) = &args else {
        return problem(
            ProblemKind::ArgsNotObject,
            "the body must be a JSON object of arguments, e.g. {\"n\": 3}",
        );
    };
    if let Err(detail) = obj.handler.validate(map) {
        return problem(ProblemKind::InvalidArguments, detail);
    }
    let run = match server.registry.submit(&server.config, &object, obj, args) {
        Ok(run) => run,
        Err(SubmitError::ShuttingDown) => {
            return problem(
                ProblemKind::ShuttingDown,
                "the server no longer accepts runs",
            );
        }
        Err(SubmitError::TooManyRuns) => {
            let mut res = problem(
                ProblemKind::TooManyRuns,
                format!(
                    "the server already runs {} runs; retry later",
                    server.config.max_active_runs
                ),
            );
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return res;
        }
    };
    let submitted = Submitted::new(&object, run.id, RunState::Queued);
    let status = if wants_event_stream(&headers) {
        StatusCode::SEE_OTHER
    } else {
        StatusCode::CREATED
    };
    let mut res = json_response(status, &submitted);
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&submitted.url).expect("object names and ids are header-safe"),
    );
    res
}

/// An error answered before the request body was read to its end: the connection cannot
/// carry another request (its next bytes are the rest of this body), so say that it closes
/// rather than let a pooling client reuse a dead connection.
fn unread_body(mut res: Response) -> Response {
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// Read the body within the limit and parse it; an empty (or blank) body means `{}`.
async fn read_args(server: &Server, headers: &HeaderMap, body: Body) -> Result<Value, Response> {
    let limit = server.config.body_limit;
    let too_large = || {
        problem(
            ProblemKind::BodyTooLarge,
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let bytes: Bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(problem(
                ProblemKind::InvalidJson,
                format!("the body could not be read: {e}"),
            ));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        problem(
            ProblemKind::InvalidJson,
            format!("the body is not valid JSON: {e}"),
        )
    })
}

pub(crate) fn wants_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(h::accepts_event_stream))
}

/// Find a run or answer 404/410.
pub(crate) fn lookup(
    server: &Server,
    object: &str,
    id: &str,
) -> Result<std::sync::Arc<Run>, Response> {
    if !server.objects.contains_key(object) {
        return Err(problem(
            ProblemKind::UnknownObject,
            format!("no object is named {object:?}"),
        ));
    }
    match server.registry.lookup(&server.config, object, id) {
        Lookup::Found(run) => Ok(run),
        Lookup::NotFound => Err(problem(
            ProblemKind::RunNotFound,
            format!("no run {id:?} of object {object:?}"),
        )),
        Lookup::Gone => Err(problem(
            ProblemKind::RunGone,
            format!("run {id} ended and its retention has passed"),
        )),
    }
}

/// `Longrun-State` and `Longrun-Last-Event-Id` as of now.
pub(crate) fn status_headers(run: &Run, headers: &mut HeaderMap) {
    let (state, last) = run.status();
    put_status_headers(state, last, headers);
}

pub(crate) fn put_status_headers(state: RunState, last: u64, headers: &mut HeaderMap) {
    headers.insert(h::LONGRUN_STATE, HeaderValue::from_static(state.as_str()));
    headers.insert(h::LONGRUN_LAST_EVENT_ID, HeaderValue::from(last));
}

async fn exists(
    State(server): State<Server>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    match lookup(&server, &object, &id) {
        Ok(run) => {
            let mut res = StatusCode::OK.into_response();
            status_headers(&run, res.headers_mut());
            res
        }
        Err(res) => res,
    }
}

async fn cancel(
    State(server): State<Server>,
    Path((object, id)): Path<(String, String)>,
) -> Response {
    let run = match lookup(&server, &object, &id) {
        Ok(run) => run,
        Err(res) => return res,
    };
    match run.request_cancel(longrun_proto::CancelReason::Client) {
        CancelOutcome::Accepted(state) => json_response(
            StatusCode::ACCEPTED,
            &Submitted::new(&object, run.id, state),
        ),
        CancelOutcome::Ended(state) => problem_response(
            Problem::new(
                ProblemKind::RunEnded,
                format!("run {} already ended in {state}; nothing to cancel", run.id),
            )
            .with("state", state.as_str()),
        ),
    }
}
