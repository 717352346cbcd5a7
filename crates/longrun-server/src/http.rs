//! Routes of longrun/1 and the problem+json error responses.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use longrun_proto::header as h;
use longrun_proto::{Problem, ProblemKind, RunRef, State as RunState};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::Server;
use crate::auth::{Caller, Scope};
use crate::registry::{Claim, KeyState};
use crate::registry::{Lookup, SubmitError};
use crate::run::{CancelOutcome, Run};
use crate::store::{CreateError, IdemKey};

/// The router of a server: the protocol's routes, `/_health`, `/_openapi.json`, and
/// problem+json for everything that does not match.
pub fn app(server: Server) -> Router {
    let cors = cors(&server.config.cors_origins);
    let router = Router::new()
        .route("/_health", get(health))
        .route("/_openapi.json", get(openapi))
        .route("/_runs", get(crate::runs::list))
        .route("/_metrics", get(crate::metrics::scrape))
        .route("/_objects", get(crate::catalogue::list))
        .route("/_objects/{name}", get(crate::catalogue::show))
        .route(
            "/_nodes",
            get(crate::nodes::list).post(crate::nodes::register),
        )
        .route(
            "/_nodes/{id}",
            get(crate::nodes::show).delete(crate::nodes::remove),
        )
        .route(
            "/_nodes/{id}/{kind}",
            get(crate::nodes::list_subs)
                .post(crate::nodes::add_sub)
                .delete(crate::nodes::remove_sub),
        )
        .route("/_nodes/{id}/signal", post(crate::nodes::node_signal))
        .route("/_nodes/{id}/request", post(crate::nodes::node_request))
        .route("/_signals/{topic}", post(crate::nodes::signal))
        .route("/_topics/{topic}", post(publish))
        .route(
            "/_nodes/{node}/runs/{id}/events",
            post(crate::nodes::progress),
        )
        .route("/{object}", post(submit))
        .route("/{object}/", post(submit))
        .route(
            "/{object}/{id}",
            get(crate::follow::follow).head(exists).delete(cancel),
        )
        .route(
            "/{object}/{id}/stream",
            get(crate::stream::stream).head(crate::stream::stream),
        )
        .route("/{object}/{id}/read-token", post(read_token))
        .route("/{object}/{id}/hooks", get(crate::hooks::list));
    let router = crate::dashboard::routes(router)
        // On the routes above only: a route's template is its label (paths no route has
        // would be a label each).
        .route_layer(middleware::from_fn_with_state(
            server.clone(),
            crate::metrics::track,
        ))
        .fallback(|| async { ApiError::new(ProblemKind::NotFound, "no route has this path") })
        .layer(middleware::from_fn(bare_errors_to_problems))
        .with_state(server.clone());
    // Every packet of a WebSocket is served by the routes above (not by `/_ws` itself).
    let ws = crate::ws::WsState {
        server,
        api: router.clone(),
    };
    let router = router.route(crate::ws::PATH, get(crate::ws::upgrade).with_state(ws));
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
                name(h::IDEMPOTENCY_KEY),
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::RANGE,
                // The submit options (spec §4.4, §4.5, §26.1), so a page can send them.
                name(h::PREFER),
                name(h::LONGRUN_DEADLINE),
                name(h::LONGRUN_HOOK),
                name(h::LONGRUN_HOOK_EVENTS),
            ])
            .expose_headers([
                header::LOCATION,
                name(h::LONGRUN_STATE),
                name(h::LONGRUN_LAST_EVENT_ID),
                name(h::IDEMPOTENT_REPLAYED),
                header::WWW_AUTHENTICATE,
                name(h::LONGRUN_STREAM_URL),
                name(h::LONGRUN_STREAM_LENGTH),
                header::CONTENT_RANGE,
                name(h::PREFERENCE_APPLIED),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    )
}

/// Every error the server answers: a problem (RFC 9457) with its status, plus the headers
/// that belong to it (`Retry-After`, `Accept-Post`, `Connection: close`). Handlers return
/// `Result<Response, ApiError>`; its `IntoResponse` writes `application/problem+json`, the
/// status being the problem's own. Boxed: errors are the rare path, and a small `Err` keeps
/// every `Result` the handlers pass around small.
#[derive(Debug)]
pub(crate) struct ApiError(Box<Answer>);

#[derive(Debug)]
struct Answer {
    problem: Problem,
    headers: HeaderMap,
}

impl ApiError {
    pub(crate) fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Self::from_problem(Problem::new(kind, detail))
    }

    fn from_problem(problem: Problem) -> Self {
        ApiError(Box::new(Answer {
            problem,
            headers: HeaderMap::new(),
        }))
    }

    /// A problem for a status no [`ProblemKind`] names (a 401 of an auth layer, a tower 408 or
    /// 503, …): RFC 9457's `about:blank` with the status's reason phrase as its title, so the
    /// status goes out unchanged.
    pub(crate) fn from_status(status: StatusCode) -> Self {
        let kind = match status {
            StatusCode::NOT_FOUND => Some(ProblemKind::NotFound),
            StatusCode::METHOD_NOT_ALLOWED => Some(ProblemKind::MethodNotAllowed),
            StatusCode::PAYLOAD_TOO_LARGE => Some(ProblemKind::BodyTooLarge),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Some(ProblemKind::UnsupportedMediaType),
            _ => None,
        };
        let reason = status.canonical_reason().unwrap_or("Error");
        let problem = match kind {
            Some(kind) => Problem::new(kind, status.to_string()),
            None => Problem {
                type_uri: "about:blank".into(),
                title: reason.into(),
                status: status.as_u16(),
                detail: None,
                extensions: Default::default(),
            },
        };
        Self::from_problem(problem)
    }

    /// An extension member of the problem (e.g. `state` on a 409).
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.problem = self.0.problem.with(key, value);
        self
    }

    pub(crate) fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.0.headers.insert(name, value);
        self
    }

    /// Answered before the request body was read to its end: the connection cannot carry
    /// another request (its next bytes are the rest of this body), so say that it closes
    /// rather than let a pooling client reuse a dead connection.
    fn closing(self) -> Self {
        self.header(header::CONNECTION, HeaderValue::from_static("close"))
    }
}

impl ApiError {
    /// The status and the problem as JSON text (a WebSocket reply carries them, spec §28).
    pub(crate) fn status_and_body(self) -> (u16, String) {
        let problem = &self.0.problem;
        let body = serde_json::to_string(problem).expect("a problem always serializes");
        (problem.status, body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let Answer { problem, headers } = *self.0;
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).expect("a problem always serializes");
        let mut res = (status, body).into_response();
        let out = res.headers_mut();
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(h::PROBLEM_JSON),
        );
        out.extend(headers);
        res
    }
}

/// Marks a response whose error status comes with a body of its own on purpose (gilmour's
/// reply to a node-side request, spec §25.9): the layer below leaves it as it is.
#[derive(Clone, Copy)]
pub(crate) struct OwnErrorBody;

/// axum answers some errors itself with an empty or plain-text body (405 from the method
/// router, rejections of extractors), and so may any layer added around the routes. The
/// protocol promises problem+json for every error, so rewrite those — keeping their status
/// and their headers (e.g. `Allow`).
async fn bare_errors_to_problems(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    if res.extensions().get::<OwnErrorBody>().is_some() {
        return res;
    }
    let status = res.status();
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == h::PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return res;
    }
    let (mut parts, _) = res.into_parts();
    let fresh = ApiError::from_status(status).into_response();
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.extend(fresh_parts.headers);
    Response::from_parts(parts, body)
}

async fn health(State(server): State<Server>) -> Result<Response, ApiError> {
    if server.registry.is_shutting_down() {
        return Err(ApiError::new(
            ProblemKind::ShuttingDown,
            "the server is draining its runs",
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "protocol": longrun_proto::PROTOCOL,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    ))
}

/// The OpenAPI document: `spec/openapi.yaml` with a submit operation per object of this
/// server (spec §13.2), made at each request since node services come and go.
async fn openapi(State(server): State<Server>) -> Response {
    json_response(StatusCode::OK, &crate::catalogue::openapi(&server))
}

pub(crate) fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).expect("wire types always serialize");
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(h::JSON))],
        body,
    )
        .into_response()
}

async fn submit(
    caller: Caller,
    State(server): State<Server>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(obj) = server.object(&object) else {
        let err = ApiError::new(
            ProblemKind::UnknownObject,
            format!("no object is named {object:?}"),
        );
        return Err(refuse_body(&headers, body, err).await);
    };
    if let Err(err) = caller
        .require(Scope::Submit, &object)
        .and_then(|()| caller.admit_submit())
    {
        return Err(refuse_body(&headers, body, err).await);
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        if !ct.to_str().is_ok_and(h::is_json_content_type) {
            let err = ApiError::new(
                ProblemKind::UnsupportedMediaType,
                "send the arguments as application/json (or with no Content-Type)",
            )
            .header(
                header::HeaderName::from_static("accept-post"),
                HeaderValue::from_static(h::JSON),
            );
            return Err(refuse_body(&headers, body, err).await);
        }
    }
    let deadline = match deadline(&server.config, &headers) {
        Ok(d) => d,
        Err(err) => return Err(refuse_body(&headers, body, err).await),
    };
    let wait = h::prefer_wait(
        headers
            .get_all(h::PREFER)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
    // A client that asked for the stream gets it (303) at once; it waits better there.
    .filter(|_| !wants_event_stream(&headers));
    let args = read_args(&server, &headers, body).await?;
    let Value::Object(map) = &args else {
        return Err(ApiError::new(
            ProblemKind::ArgsNotObject,
            "the body must be a JSON object of arguments, e.g. {\"n\": 3}",
        ));
    };
    // The declared schema first (its errors name paths), then the handler's own check.
    obj.entry.check(&object, &args)?;
    if let Err(detail) = obj.handler.validate(map) {
        let kind = crate::compose::refused_arguments(&object);
        return Err(ApiError::new(kind, detail));
    }
    if object == crate::compose::OBJECT {
        crate::compose::require_topics(&caller, map)?;
    }
    let mut hook = crate::hooks::parse(&server.config, &headers).await?;
    let idem = idempotency_key(&headers)?.map(|key| {
        let scope = caller.owner().unwrap_or_default().to_owned();
        (IdemKey { scope, key }, fingerprint(&object, &args))
    });
    // A key whose first submit was refused is free again, and a key another replica stored
    // first answers from there: a few rounds at most.
    for _ in 0..4 {
        let mut guard = None;
        if let Some((key, fp)) = &idem {
            if let Some(pg) = server.registry.shared() {
                let found = pg
                    .find_key(key, server.config.idempotency_ttl)
                    .await
                    .map_err(store_unavailable)?;
                if let Some(record) = found {
                    if record.fingerprint != *fp || record.object != object {
                        return Err(key_reused());
                    }
                    let run = lookup(&server, &caller, &object, &record.run.to_string()).await?;
                    return Ok(submitted(&headers, &object, &run, true, wait).await);
                }
            }
            match server.registry.claim(key, fp, &object) {
                Claim::New => guard = Some(KeyGuard::new(&server, key)),
                Claim::Replay { run, object } => {
                    let run = lookup(&server, &caller, &object, &run.to_string()).await?;
                    return Ok(submitted(&headers, &object, &run, true, wait).await);
                }
                Claim::Reused => return Err(key_reused()),
                Claim::Wait(mut first) => {
                    let _ = first.wait_for(|s| *s != KeyState::Pending).await;
                    continue;
                }
            }
        }
        let made = create(
            &server,
            &caller,
            &object,
            &obj,
            args.clone(),
            idem.clone(),
            deadline,
        );
        match made.await {
            Ok(run) => {
                if let Some(guard) = guard {
                    guard.stored();
                }
                if let Some(hook) = hook.take() {
                    server.hooks.attach(run.clone(), hook).await;
                }
                return Ok(submitted(&headers, &object, &run, false, wait).await);
            }
            // Dropping the guard frees the key.
            Err(None) => continue,
            Err(Some(e)) => return Err(e),
        }
    }
    Err(store_unavailable(
        "the idempotency key could not be settled".into(),
    ))
}

/// `POST /_topics/{topic}` (spec §28.5): publish the body (any JSON) to a topic of the
/// caller's tenant; 202 with its offset.
async fn publish(
    caller: Caller,
    State(server): State<Server>,
    Path(topic): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    crate::topics::check_publish(&topic)?;
    let bytes = axum::body::to_bytes(body, server.config.body_limit)
        .await
        .map_err(|_| {
            ApiError::new(
                ProblemKind::BodyTooLarge,
                format!(
                    "a publication is at most {} bytes",
                    server.config.body_limit
                ),
            )
        })?;
    let data = serde_json::from_slice::<Box<serde_json::value::RawValue>>(&bytes).map_err(|e| {
        ApiError::new(
            ProblemKind::InvalidJson,
            format!("the body is not JSON: {e}"),
        )
    })?;
    let ns = caller.owner().map(std::sync::Arc::from);
    let offset = server.topics.publish(&ns, &topic, data).await?;
    let body = serde_json::json!({ "topic": topic, "offset": offset }).to_string();
    let ct = [(header::CONTENT_TYPE, HeaderValue::from_static(h::JSON))];
    Ok((StatusCode::ACCEPTED, ct, body).into_response())
}

/// The `Longrun-Deadline` of a submit (spec §4.4): seconds from now (a decimal number more
/// than 0), or an RFC 3339 time in the future; at most `max_deadline` away.
fn deadline(config: &crate::Config, headers: &HeaderMap) -> Result<Option<Duration>, ApiError> {
    let Some(value) = headers.get(h::LONGRUN_DEADLINE) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        ApiError::new(
            ProblemKind::InvalidDeadline,
            format!(
                "Longrun-Deadline {why}: give seconds from now (e.g. 30 or 2.5) or an RFC 3339 time (e.g. 2026-12-02T10:00:00Z), at most {} away",
                humantime::format_duration(config.max_deadline)
            ),
        )
    };
    let text = value.to_str().map_err(|_| bad("is not text"))?.trim();
    let after = if let Ok(secs) = text.parse::<f64>() {
        if !(secs.is_finite() && secs > 0.0) {
            return Err(bad("must be more than 0 seconds"));
        }
        Duration::try_from_secs_f64(secs).map_err(|_| bad("is too far"))?
    } else {
        let at = humantime::parse_rfc3339_weak(text)
            .ok()
            .filter(|_| text.contains('T') || text.contains(' '))
            .ok_or_else(|| bad("is neither a number of seconds nor an RFC 3339 time"))?;
        at.duration_since(std::time::SystemTime::now())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| bad("has passed"))?
    };
    if after > config.max_deadline {
        return Err(bad("is too far"));
    }
    Ok(Some(after))
}

/// The reply to a submit, after holding it up to `wait` seconds (`Prefer: wait`, spec §4.5):
/// 200 with the run's terminal event when it ended by then, else as [`submit_reply`].
async fn submitted(
    headers: &HeaderMap,
    object: &str,
    run: &Arc<Run>,
    replayed: bool,
    wait: Option<u64>,
) -> Response {
    let Some(wait) = wait else {
        return submit_reply(headers, object, run, replayed);
    };
    let mut appended = run.subscribe();
    let ended = tokio::time::timeout(Duration::from_secs(wait), async {
        while !run.status().0.is_terminal() {
            if appended.changed().await.is_err() {
                break;
            }
        }
    })
    .await
    .is_ok();
    let (state, last) = run.status();
    let mut res = if ended && state.is_terminal() {
        let batch = run.read_json(last, 1);
        // The terminal event as the log holds it, spliced in unparsed.
        let events: Vec<&serde_json::value::RawValue> =
            serde_json::from_slice(&batch.bytes).unwrap_or_default();
        let url = longrun_proto::run_path(object, &run.id);
        let body = Waited {
            event: events.last().copied(),
            id: run.id,
            object,
            state,
            stream_url: crate::stream::url(run),
            url: &url,
        };
        let mut res = json_response(StatusCode::OK, &body);
        res.headers_mut().insert(
            header::LOCATION,
            HeaderValue::from_str(&url).expect("object names and ids are header-safe"),
        );
        if replayed {
            res.headers_mut()
                .insert(h::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        res
    } else {
        submit_reply(headers, object, run, replayed)
    };
    res.headers_mut().insert(
        h::PREFERENCE_APPLIED,
        HeaderValue::from_str(&format!("wait={wait}")).expect("digits are header-safe"),
    );
    res
}

/// The body of a submit that waited for its run's end: the run and its terminal event (keys
/// sorted, as every reply of this server has them).
#[derive(serde::Serialize)]
struct Waited<'a> {
    event: Option<&'a serde_json::value::RawValue>,
    id: longrun_proto::RunId,
    object: &'a str,
    state: RunState,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_url: Option<String>,
    url: &'a str,
}

/// The reply to a submit: `201` (or `303` to the stream), `Location`, the run; marked when it
/// is the reply to an earlier submit with the same idempotency key.
fn submit_reply(headers: &HeaderMap, object: &str, run: &Run, replayed: bool) -> Response {
    let submitted = RunRef::new(object, run.id, RunState::Queued);
    let status = if wants_event_stream(headers) {
        StatusCode::SEE_OTHER
    } else {
        StatusCode::CREATED
    };
    let mut res = match crate::stream::url(run) {
        Some(url) => {
            let mut body = serde_json::to_value(&submitted).expect("a run reference serializes");
            body["stream_url"] = url.into();
            json_response(status, &body)
        }
        None => json_response(status, &submitted),
    };
    res.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&submitted.url).expect("object names and ids are header-safe"),
    );
    if replayed {
        res.headers_mut()
            .insert(h::IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    res
}

/// A claimed idempotency key: settled as stored, or, dropped before that (refused, or the
/// request went away), freed, so that whoever waits on it tries again.
struct KeyGuard {
    server: Server,
    key: Option<IdemKey>,
}

impl KeyGuard {
    fn new(server: &Server, key: &IdemKey) -> Self {
        KeyGuard {
            server: server.clone(),
            key: Some(key.clone()),
        }
    }

    fn stored(mut self) {
        if let Some(key) = self.key.take() {
            self.server.registry.settle(&self.server.config, &key, true);
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.server
                .registry
                .settle(&self.server.config, &key, false);
        }
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(h::IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if !h::is_valid_idempotency_key(bytes) {
        return Err(ApiError::new(
            ProblemKind::InvalidIdempotencyKey,
            format!(
                "Idempotency-Key must be 1 to {} visible ASCII characters",
                h::MAX_IDEMPOTENCY_KEY
            ),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

/// What a key's first submit is compared by: the object and the arguments as JSON (object
/// members in sorted order, so the same arguments in any order are the same request).
fn fingerprint(object: &str, args: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(object.as_bytes());
    hash.update([0]);
    hash.update(serde_json::to_vec(args).expect("JSON values serialize"));
    crate::auth::hex(&hash.finalize())
}

fn key_reused() -> ApiError {
    ApiError::new(
        ProblemKind::IdempotencyKeyReused,
        "this Idempotency-Key was sent before with another object or other arguments",
    )
}

/// Create the run and wait until it is stored. `Err(None)`: another replica stored its
/// idempotency key first (ask again).
async fn create(
    server: &Server,
    caller: &Caller,
    object: &str,
    obj: &crate::handler::Object,
    args: Value,
    key: Option<(IdemKey, String)>,
    deadline: Option<Duration>,
) -> Result<Arc<Run>, Option<ApiError>> {
    let submitted = server
        .registry
        .submit(
            &server.config,
            object,
            obj,
            caller.owner(),
            crate::registry::Submission {
                args,
                key,
                deadline,
            },
        )
        .map_err(|e| {
            Some(match e {
                SubmitError::ShuttingDown => ApiError::new(
                    ProblemKind::ShuttingDown,
                    "the server no longer accepts runs",
                ),
                SubmitError::TooManyRuns => too_many_runs(server),
            })
        })?;
    if let Some(durable) = submitted.durable {
        // A 201 promises the run survives a restart: answer once it is committed.
        let stored = durable
            .await
            .unwrap_or_else(|_| Err(CreateError::Store("the store stopped".into())));
        if let Err(why) = stored {
            submitted
                .run
                .request_cancel(longrun_proto::CancelReason::Shutdown);
            return Err(match why {
                CreateError::DuplicateKey => None,
                CreateError::TooManyRuns => Some(too_many_runs(server)),
                CreateError::Store(why) => Some(
                    ApiError::new(
                        ProblemKind::StoreUnavailable,
                        format!("the run could not be stored ({why}); retry later"),
                    )
                    .header(header::RETRY_AFTER, HeaderValue::from_static("1")),
                ),
            });
        }
    }
    Ok(submitted.run)
}

/// How much of a refused request body the server still reads, and for how long, before it
/// answers (nginx's lingering close). A client that writes its whole body before reading
/// the reply (Python's `http.client`, and requests/httpx on top of it) would otherwise see
/// the connection reset under its writes and never read the problem.
const LINGER_BYTES: u64 = 16 * 1024 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(5);

/// Answer `err` for a request whose body will not be used: read and discard the rest of the
/// body, within [`LINGER_BYTES`] and [`LINGER_TIME`], so that the client gets to read the
/// reply and the connection stays usable. A body beyond those bounds, or one the client has
/// not sent yet (`Expect: 100-continue`: it waits for our answer), is not read, and the
/// connection closes.
async fn refuse_body(headers: &HeaderMap, body: Body, err: ApiError) -> ApiError {
    let waits_for_continue = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared = declared_length(headers);
    if waits_for_continue || declared.is_some_and(|n| n > LINGER_BYTES) {
        return err.closing();
    }
    match tokio::time::timeout(LINGER_TIME, discard(body, LINGER_BYTES)).await {
        Ok(true) => err,
        _ => err.closing(),
    }
}

/// Read `body` to its end, keeping nothing; false when it holds more than `max` bytes or fails.
async fn discard(mut body: Body, max: u64) -> bool {
    let mut seen = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    seen += data.len() as u64;
                    if seen > max {
                        return false;
                    }
                }
            }
            Err(_) => return false,
        }
    }
    true
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

/// Read the body within the limit and parse it; an empty (or blank) body means `{}`. A body
/// over the limit is refused with 413 after the rest of it is discarded ([`refuse_body`]).
pub(crate) async fn read_args(
    server: &Server,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, ApiError> {
    let limit = server.config.body_limit;
    let too_large = || {
        ApiError::new(
            ProblemKind::BodyTooLarge,
            format!("the body is larger than the limit of {limit} bytes"),
        )
    };
    if declared_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(refuse_body(headers, body, too_large()).await);
    }
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                ProblemKind::InvalidJson,
                format!("the body could not be read: {e}"),
            )
            .closing()
        })?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > limit {
                // A chunked body (no Content-Length) that grew past the limit.
                return Err(refuse_body(headers, body, too_large()).await);
            }
            bytes.extend_from_slice(data);
        }
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
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

fn too_many_runs(server: &Server) -> ApiError {
    ApiError::new(
        ProblemKind::TooManyRuns,
        format!(
            "the server already runs {} runs; retry later",
            server.config.max_active_runs
        ),
    )
    .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

pub(crate) fn store_unavailable(why: String) -> ApiError {
    ApiError::new(
        ProblemKind::StoreUnavailable,
        format!("the store could not be read ({why}); retry later"),
    )
    .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
}

/// Find a run or answer 404/410.
pub(crate) async fn lookup(
    server: &Server,
    caller: &Caller,
    object: &str,
    id: &str,
) -> Result<Arc<Run>, ApiError> {
    if !server.objects.contains_key(object)
        && !server.nodes.knows(object)
        && object != crate::compose::OBJECT
    {
        return Err(ApiError::new(
            ProblemKind::UnknownObject,
            format!("no object is named {object:?}"),
        ));
    }
    let found = server
        .registry
        .find(&server.config, caller, object, id)
        .await
        .map_err(store_unavailable)?;
    match found {
        Lookup::Found(run) => Ok(run),
        Lookup::NotFound => Err(ApiError::new(
            ProblemKind::RunNotFound,
            format!("no run {id:?} of object {object:?}"),
        )),
        Lookup::Gone => Err(ApiError::new(
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
    caller: Caller,
    State(server): State<Server>,
    Path((object, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read, &object)?;
    let run = lookup(&server, &caller, &object, &id).await?;
    let mut res = StatusCode::OK.into_response();
    status_headers(&run, res.headers_mut());
    crate::stream::url_header(&run, res.headers_mut());
    Ok(res)
}

/// `POST /{object}/{id}/read-token`: a URL a page's native `EventSource` (which cannot send
/// `Authorization`) can follow this one run by, for a while (spec §22.2).
async fn read_token(
    caller: Caller,
    State(server): State<Server>,
    Path((object, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read, &object)?;
    let run = lookup(&server, &caller, &object, &id).await?;
    let path = longrun_proto::run_path(&object, &run.id);
    let body = match (server.auth(), run.tenant.as_deref()) {
        (Some(auth), Some(tenant)) => {
            let (token, expires) = auth.read_token(&path, tenant);
            serde_json::json!({
                "token": token,
                "url": format!("{path}?access_token={token}"),
                "expires": expires,
            })
        }
        // An open server needs no token; a run made before the server had tenants has no
        // tenant to sign for, and only admins see it.
        _ => serde_json::json!({ "token": null, "url": path, "expires": null }),
    };
    Ok(json_response(StatusCode::OK, &body))
}

async fn cancel(
    caller: Caller,
    State(server): State<Server>,
    Path((object, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Cancel, &object)?;
    let run = lookup(&server, &caller, &object, &id).await?;
    let outcome = server
        .registry
        .cancel(&run, longrun_proto::CancelReason::Client)
        .await
        .map_err(store_unavailable)?;
    match outcome {
        CancelOutcome::Accepted(state) => Ok(json_response(
            StatusCode::ACCEPTED,
            &RunRef::new(&object, run.id, state),
        )),
        CancelOutcome::Ended(state) => Err(ApiError::new(
            ProblemKind::RunEnded,
            format!("run {} already ended in {state}; nothing to cancel", run.id),
        )
        .with("state", state.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever error status a route or a layer inside the router answers bare, it goes out
    /// with that status, as problem+json, its own headers kept.
    #[tokio::test]
    async fn bare_error_statuses_are_kept_as_problems() {
        let statuses = [401u16, 403, 404, 405, 408, 413, 415, 429, 500, 503];
        let mut router = Router::new();
        for code in statuses {
            router = router.route(
                &format!("/{code}"),
                get(move || async move {
                    let status = StatusCode::from_u16(code).unwrap();
                    (status, [("www-authenticate", "Bearer")], "plain text").into_response()
                }),
            );
        }
        let router = router.layer(middleware::from_fn(bare_errors_to_problems));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let client = reqwest::Client::new();
        for code in statuses {
            let res = client
                .get(format!("http://{addr}/{code}"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status().as_u16(), code);
            assert_eq!(res.headers()["content-type"], h::PROBLEM_JSON);
            assert_eq!(res.headers()["www-authenticate"], "Bearer");
            let problem: Problem = res.json().await.unwrap();
            assert_eq!(problem.status, code, "{problem:?}");
            let status = StatusCode::from_u16(code).unwrap();
            match ApiError::from_status(status).0.problem.kind() {
                Some(kind) => assert_eq!(problem.kind(), Some(kind)),
                None => {
                    assert_eq!(problem.type_uri, "about:blank");
                    assert_eq!(problem.title, status.canonical_reason().unwrap());
                }
            }
        }
    }
}
