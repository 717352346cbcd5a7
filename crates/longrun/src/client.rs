use std::sync::Arc;
use std::time::Duration;

use longrun_proto::header as h;
use longrun_proto::{ObjectName, Problem, RunRef, State};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use url::Url;

use crate::follow::{EventStream, FollowOptions};
use crate::{Error, Result, Run, rt};

/// How a follow reads events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Server-Sent Events; falls back to long polling by itself when the server's answer is
    /// not an event stream, or when nothing arrives on it in time (e.g. a buffering proxy).
    #[default]
    Sse,
    /// Long polling only.
    Poll,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
}

/// The names every binding accepts: `"sse"` and `"poll"`.
impl std::str::FromStr for Transport {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "sse" => Ok(Transport::Sse),
            "poll" => Ok(Transport::Poll),
            other => Err(Error::invalid(format!(
                "transport {other:?}: use \"sse\" or \"poll\""
            ))),
        }
    }
}

/// Client settings as data, for bindings that receive them as JSON (the C ABI, JavaScript):
/// every member optional, unset members keep the core's defaults. Names are snake_case, with
/// the camelCase spelling JavaScript uses accepted too; durations are in milliseconds.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientOptions {
    pub token: Option<String>,
    /// An object of names to values, or an array of `[name, value]` pairs.
    pub headers: Option<HeaderList>,
    #[serde(alias = "timeoutMs")]
    pub timeout_ms: Option<f64>,
    pub transport: Option<String>,
    #[serde(alias = "userAgent")]
    pub user_agent: Option<String>,
    #[serde(alias = "pollWaitMs")]
    pub poll_wait_ms: Option<f64>,
    #[serde(alias = "idleTimeoutMs")]
    pub idle_timeout_ms: Option<f64>,
    #[serde(alias = "sseFallbackAfterMs")]
    pub sse_fallback_after_ms: Option<f64>,
    pub reconnect: Option<ReconnectOptions>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum HeaderList {
    Pairs(Vec<(String, String)>),
    Map(serde_json::Map<String, Value>),
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectOptions {
    #[serde(alias = "maxAttempts")]
    pub max_attempts: Option<u32>,
    #[serde(alias = "initialDelayMs")]
    pub initial_delay_ms: Option<f64>,
    #[serde(alias = "maxDelayMs")]
    pub max_delay_ms: Option<f64>,
}

fn millis(name: &str, ms: Option<f64>) -> Result<Option<Duration>> {
    ms.map(|ms| {
        Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| {
            Error::invalid(format!(
                "{name} must be a non-negative number of milliseconds, not {ms}"
            ))
        })
    })
    .transpose()
}

impl ClientOptions {
    /// Parse options JSON; empty text means no options.
    pub fn from_json(json: &str) -> Result<Self> {
        if json.trim().is_empty() {
            return Ok(Self::default());
        }
        let bad = |e: serde_json::Error| Error::invalid(format!("client options: {e}"));
        // Parse to a value first: serde would also read a struct from a JSON array.
        match serde_json::from_str::<Value>(json).map_err(bad)? {
            obj @ Value::Object(_) => serde_json::from_value(obj).map_err(bad),
            other => Err(Error::invalid(format!(
                "client options must be a JSON object, not {other}"
            ))),
        }
    }

    /// Set what these options set on `builder`, leaving the rest as it was.
    pub fn apply(self, mut b: ClientBuilder) -> Result<ClientBuilder> {
        match self.headers {
            Some(HeaderList::Pairs(pairs)) => {
                for (name, value) in pairs {
                    b = b.header(name, value);
                }
            }
            Some(HeaderList::Map(map)) => {
                for (name, value) in map {
                    let value = match value {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    b = b.header(name, value);
                }
            }
            None => {}
        }
        if let Some(token) = self.token {
            b = b.token(token);
        }
        if let Some(t) = millis("timeout_ms", self.timeout_ms)? {
            b = b.timeout(t);
        }
        if let Some(t) = self.transport {
            b = b.transport(t.parse()?);
        }
        if let Some(ua) = self.user_agent {
            b = b.user_agent(ua);
        }
        if let Some(t) = millis("poll_wait_ms", self.poll_wait_ms)? {
            b = b.poll_wait(t);
        }
        if let Some(t) = millis("idle_timeout_ms", self.idle_timeout_ms)? {
            b = b.idle_timeout(t);
        }
        if let Some(t) = millis("sse_fallback_after_ms", self.sse_fallback_after_ms)? {
            b = b.sse_fallback_after(t);
        }
        if let Some(r) = self.reconnect {
            let d = Reconnect::default();
            b = b.reconnect(Reconnect {
                max_attempts: r.max_attempts.unwrap_or(d.max_attempts),
                initial_delay: millis("initial_delay_ms", r.initial_delay_ms)?
                    .unwrap_or(d.initial_delay),
                max_delay: millis("max_delay_ms", r.max_delay_ms)?.unwrap_or(d.max_delay),
            });
        }
        Ok(b)
    }
}

/// How a follow reconnects after a dropped connection or a 5xx. Delays start at the server's
/// `retry:` hint (or `initial_delay` before one is known), double per consecutive failure up
/// to `max_delay`, and are jittered (each is drawn between half and all of its value).
#[derive(Debug, Clone)]
pub struct Reconnect {
    /// Consecutive failed attempts allowed before the follow gives up with the last error.
    /// Any event received resets the count.
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            max_attempts: 10,
            initial_delay: Duration::from_millis(1000),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl Reconnect {
    /// Never reconnect: the first failure ends the follow.
    pub fn never() -> Self {
        Reconnect {
            max_attempts: 0,
            ..Default::default()
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientBuilder {
    base_url: String,
    headers: Vec<(String, String)>,
    token: Option<String>,
    timeout: Duration,
    reconnect: Reconnect,
    pub(crate) transport: Transport,
    user_agent: String,
    poll_wait: Duration,
    idle_timeout: Duration,
    sse_fallback_after: Duration,
}

impl ClientBuilder {
    pub fn new(base_url: impl Into<String>) -> Self {
        ClientBuilder {
            base_url: base_url.into(),
            headers: Vec::new(),
            token: None,
            timeout: Duration::from_secs(30),
            reconnect: Reconnect::default(),
            transport: Transport::default(),
            user_agent: concat!("longrun-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            poll_wait: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(45),
            sse_fallback_after: Duration::from_secs(10),
        }
    }

    /// A header sent with every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Send `Authorization: Bearer <token>` with every request.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Time limit of one request (submit, cancel, exists; connecting for a follow). Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// The transport follows use unless told otherwise. Default: SSE.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// How long the server may hold one long poll (`wait`). Default 20 s.
    pub fn poll_wait(mut self, wait: Duration) -> Self {
        self.poll_wait = wait;
        self
    }

    /// A follow connection on which nothing (not even a keep-alive) arrives for this long is
    /// dropped and resumed. Default 45 s, three keep-alive periods of the reference server.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// An SSE connection that delivers nothing this long after opening is taken for a
    /// buffering proxy and the follow switches to long polling. Default 10 s.
    pub fn sse_fallback_after(mut self, after: Duration) -> Self {
        self.sse_fallback_after = after;
        self
    }

    pub fn build(self) -> Result<Client> {
        let base = parse_base(&self.base_url)?;
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::invalid(format!("{name:?} is not a header name")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| Error::invalid(format!("the value of header {name} is not valid")))?;
            headers.append(name, value);
        }
        if let Some(token) = &self.token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::invalid("the token has characters a header cannot carry"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let builder = reqwest::Client::builder().default_headers(headers);
        #[cfg(not(target_arch = "wasm32"))]
        let builder = builder
            .user_agent(self.user_agent.clone())
            .connect_timeout(self.timeout)
            // Redirects are the protocol's business (303 after submit), handled explicitly.
            .redirect(reqwest::redirect::Policy::none());
        let http = builder
            .build()
            .map_err(|e| Error::invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                config: self,
            }),
        })
    }
}

pub(crate) fn parse_url(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| {
        Error::invalid(format!(
            "{url:?} is not a URL ({e}); write it like http://127.0.0.1:8080"
        ))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(format!(
            "{url:?}: only http and https URLs are supported"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid(format!("{url:?} has no host")));
    }
    Ok(parsed)
}

/// A base URL always ends with `/`, so joining `object/id` keeps any path prefix.
pub(crate) fn parse_base(url: &str) -> Result<Url> {
    let mut base = parse_url(url)?;
    if base.query().is_some() || base.fragment().is_some() {
        return Err(Error::invalid(format!(
            "{url:?}: a base URL cannot have a query or fragment"
        )));
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

pub(crate) struct Inner {
    pub http: reqwest::Client,
    pub base: Url,
    pub config: ClientBuilder,
}

impl Inner {
    pub fn reconnect(&self) -> &Reconnect {
        &self.config.reconnect
    }
    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }
    pub fn poll_wait(&self) -> Duration {
        self.config.poll_wait
    }
    pub fn idle_timeout(&self) -> Duration {
        self.config.idle_timeout
    }
    pub fn sse_fallback_after(&self) -> Duration {
        self.config.sse_fallback_after
    }

    /// Send a request within the request timeout.
    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response> {
        self.send_within(req, self.timeout(), what).await
    }

    /// Run one whole exchange — sending a request and reading its answer — within the request
    /// timeout. `send` alone stops at the head: a server that sends a head and then stalls
    /// its body must not hang the call.
    pub async fn exchange<T>(
        &self,
        what: &str,
        exchange: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.timeout();
        rt::timeout(limit, exchange).await.unwrap_or_else(|| {
            Err(Error::Timeout {
                after: limit,
                what: what.to_owned(),
            })
        })
    }

    pub async fn send_within(
        &self,
        req: reqwest::RequestBuilder,
        limit: Duration,
        what: &str,
    ) -> Result<reqwest::Response> {
        match rt::timeout(limit, req.send()).await {
            Some(Ok(res)) => Ok(res),
            Some(Err(e)) => Err(Error::transport(&e)),
            None => Err(Error::Timeout {
                after: limit,
                what: what.to_owned(),
            }),
        }
    }
}

/// Read an error answer into an [`Error`], keeping the problem details when there are some.
pub(crate) async fn error_from(res: reqwest::Response, what: &str) -> Error {
    let status = res.status().as_u16();
    let problem = res
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<Problem>(&b).ok());
    Error::from_status(status, problem, what)
}

/// What a HEAD reports about a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunStatus {
    pub state: State,
    /// The id of the run's newest event.
    pub last_event_id: u64,
}

/// The answer to a cancel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run is being canceled (or already was): it will end `canceled`.
    Accepted,
    /// The run had already ended in this state (`success` or `error`); nothing was changed.
    AlreadyEnded(State),
}

/// A longrun/1 client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base.as_str())
            .finish()
    }
}

impl Client {
    /// A client with default settings for the server at `base_url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base_url: &str) -> Result<Client> {
        ClientBuilder::new(base_url).build()
    }

    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(base_url)
    }

    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// A handle on an existing run of this server.
    pub fn run(&self, object: &str, id: &str) -> Result<Run> {
        Run::at(&self.inner.base, object, id)
    }

    /// Start a run of `object` with `args` (anything that serializes to a JSON object).
    pub async fn submit(&self, object: &str, args: impl Serialize) -> Result<Run> {
        let name = ObjectName::new(object).map_err(|e| Error::invalid(e.to_string()))?;
        let args = serde_json::to_value(args)
            .map_err(|e| Error::invalid(format!("the arguments do not serialize to JSON: {e}")))?;
        if !args.is_object() {
            return Err(Error::invalid(format!(
                "the arguments must be a JSON object, not {args}"
            )));
        }
        let url = self
            .inner
            .base
            .join(name.as_str())
            .map_err(|e| Error::invalid(e.to_string()))?;
        let req = self
            .inner
            .http
            .post(url)
            .header(reqwest::header::ACCEPT, h::JSON)
            .json(&args);
        let what = format!("object {object:?}");
        let doing = format!("submitting to {object}");
        let body = self
            .inner
            .exchange(&doing, async {
                let res = self.inner.send(req, &doing).await?;
                if res.status().as_u16() != 201 {
                    return Err(error_from(res, &what).await);
                }
                res.bytes().await.map_err(|e| Error::transport(&e))
            })
            .await?;
        let submitted: RunRef = serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("the submit answer is not a run: {e}")))?;
        Run::at(
            &self.inner.base,
            &submitted.object,
            &submitted.id.to_string(),
        )
    }

    /// Follow a run from its first event: an ordered, gap-free, duplicate-free stream that ends
    /// after the terminal event, reconnecting (from the last id seen) as needed.
    pub fn follow(&self, run: &Run) -> EventStream {
        self.follow_with(run, FollowOptions::default())
    }

    /// Follow a run from after `cursor` (the id of the last event already seen).
    pub fn follow_from(&self, run: &Run, cursor: u64) -> EventStream {
        self.follow_with(
            run,
            FollowOptions {
                since: Some(cursor),
                ..Default::default()
            },
        )
    }

    pub fn follow_with(&self, run: &Run, options: FollowOptions) -> EventStream {
        if let Err(e) = self.same_server(run) {
            return EventStream::failed(e);
        }
        crate::follow::follow(self.inner.clone(), run.clone(), options)
    }

    /// A client sends its token and headers to its own server only: a run rebuilt from a URL
    /// that names another server (perhaps from untrusted input) is refused, not contacted.
    fn same_server(&self, run: &Run) -> Result<()> {
        if run.url().origin() == self.inner.base.origin() {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "run {run} is on another server than this client ({}); make a Client for that server",
                self.inner.base
            )))
        }
    }

    /// Ask the server to cancel a run.
    pub async fn cancel(&self, run: &Run) -> Result<CancelOutcome> {
        self.same_server(run)?;
        let req = self.inner.http.delete(run.url().clone());
        self.inner
            .exchange("canceling", self.cancel_exchange(run, req))
            .await
    }

    async fn cancel_exchange(
        &self,
        run: &Run,
        req: reqwest::RequestBuilder,
    ) -> Result<CancelOutcome> {
        let res = self.inner.send(req, "canceling").await?;
        match res.status().as_u16() {
            202 => Ok(CancelOutcome::Accepted),
            409 => {
                let err = error_from(res, run.url().as_str()).await;
                let state = err
                    .problem()
                    .and_then(|p| p.extensions.get("state"))
                    .and_then(Value::as_str)
                    .and_then(State::parse)
                    .filter(|s| s.is_terminal())
                    .ok_or_else(|| {
                        Error::Protocol("409 without the run's terminal state".into())
                    })?;
                Ok(CancelOutcome::AlreadyEnded(state))
            }
            _ => Err(error_from(res, run.url().as_str()).await),
        }
    }

    /// The run's state and newest event id. A run that does not exist is a `NotFound` error.
    pub async fn status(&self, run: &Run) -> Result<RunStatus> {
        self.same_server(run)?;
        let req = self.inner.http.head(run.url().clone());
        let res = self.inner.send(req, "checking the run").await?;
        if res.status().as_u16() != 200 {
            return Err(error_from(res, run.url().as_str()).await);
        }
        let header = |name: &str| {
            res.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .ok_or_else(|| Error::Protocol(format!("HEAD answered without {name}")))
        };
        let state = State::parse(&header(h::LONGRUN_STATE)?)
            .ok_or_else(|| Error::Protocol("HEAD answered an unknown state".into()))?;
        let last_event_id = h::parse_cursor(&header(h::LONGRUN_LAST_EVENT_ID)?)
            .ok_or_else(|| Error::Protocol("HEAD answered a bad last event id".into()))?;
        Ok(RunStatus {
            state,
            last_event_id,
        })
    }

    /// Does the run exist? `false` for 404; a run whose retention passed is a `Gone` error.
    pub async fn exists(&self, run: &Run) -> Result<bool> {
        match self.status(run).await {
            Ok(_) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Follow the run to its end and return its `success` value. `error` and `canceled` ends
    /// are `RunFailed` and `Canceled` errors carrying the event's value. With a `timeout`, a
    /// `Timeout` error once it passes — the run itself goes on (see [`Client::wait_or_cancel`]).
    pub async fn wait(&self, run: &Run, timeout: Option<Duration>) -> Result<Value> {
        self.wait_with(run, timeout, |_| {}).await
    }

    /// [`Client::wait`], showing each event to `on_event` as it arrives, as read: its value is
    /// JSON text, parsed only if you ask (`ev.value::<T>()`, `ev.to_event()`; progress with
    /// [`ev.progress()`](crate::RawEvent::progress)), so that waiting on a long log stays
    /// cheap.
    pub async fn wait_with(
        &self,
        run: &Run,
        timeout: Option<Duration>,
        on_event: impl FnMut(&crate::RawEvent),
    ) -> Result<Value> {
        let follow = crate::follow::last_event(self.follow(run), on_event);
        let last = match timeout {
            None => follow.await?,
            Some(limit) => rt::timeout(limit, follow)
                .await
                .ok_or_else(|| Error::Timeout {
                    after: limit,
                    what: "waiting for the run to end".into(),
                })??,
        };
        crate::follow::outcome(last)
    }

    /// Like [`Client::wait`], but cancel the run if the timeout passes. A run that ended by
    /// itself between the timeout and the cancel answers with that end, not with `Timeout`.
    pub async fn wait_or_cancel(&self, run: &Run, timeout: Duration) -> Result<Value> {
        match self.wait(run, Some(timeout)).await {
            Err(e @ Error::Timeout { .. }) => match self.cancel(run).await? {
                CancelOutcome::Accepted => Err(e),
                // Its log is complete, so this wait reads it to the end at once.
                CancelOutcome::AlreadyEnded(_) => self.wait(run, None).await,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_read_both_spellings_and_keep_unset_defaults() {
        for json in [
            r#"{"timeout_ms": 250, "transport": "poll", "headers": [["x-a", "1"]], "reconnect": {"max_attempts": 2}}"#,
            r#"{"timeoutMs": 250, "transport": "poll", "headers": {"x-a": "1"}, "reconnect": {"maxAttempts": 2}}"#,
        ] {
            let b = ClientOptions::from_json(json)
                .unwrap()
                .apply(ClientBuilder::new("http://h"))
                .unwrap();
            assert_eq!(b.timeout, Duration::from_millis(250), "{json}");
            assert_eq!(b.transport, Transport::Poll);
            assert_eq!(b.headers, vec![("x-a".to_owned(), "1".to_owned())]);
            assert_eq!(b.reconnect.max_attempts, 2);
            assert_eq!(b.reconnect.max_delay, Reconnect::default().max_delay);
            assert_eq!(b.poll_wait, ClientBuilder::new("h").poll_wait);
        }
        assert!(ClientOptions::from_json("").is_ok());
    }

    #[test]
    fn bad_options_are_invalid_arguments() {
        for json in [
            r#"{"transport": "websocket"}"#,
            r#"{"timeout_ms": -1}"#,
            r#"{"bogus": 1}"#,
            r#"{"reconnect": {"bogus": 1}}"#,
            r#"[1]"#,
            r#"[]"#,
            r#""sse""#,
        ] {
            let err = ClientOptions::from_json(json)
                .and_then(|o| o.apply(ClientBuilder::new("http://h")))
                .unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{json}");
        }
        assert_eq!("sse".parse::<Transport>().unwrap(), Transport::Sse);
        assert_eq!(
            Transport::Poll.as_str().parse::<Transport>().unwrap(),
            Transport::Poll
        );
    }
}
