use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use longrun_proto::header as h;
use longrun_proto::{Event, ObjectName, Problem, RunRef, State};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
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
    /// One WebSocket per client (spec §28), shared by every submit, follow, cancel, exists
    /// and wait: a page following many runs holds one connection, not one per run. A follow
    /// over it reads the run's events as packets and resumes from its cursor on a new socket
    /// after the old one is lost. Byte streams (spec §27) still go over HTTP. Not in the
    /// browser build.
    WebSocket,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::WebSocket => "ws",
        }
    }
}

/// The names every binding accepts: `"sse"`, `"poll"`, and `"ws"` (or `"websocket"`).
impl std::str::FromStr for Transport {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "sse" => Ok(Transport::Sse),
            "poll" => Ok(Transport::Poll),
            "ws" | "websocket" => Ok(Transport::WebSocket),
            other => Err(Error::invalid(format!(
                "transport {other:?}: use \"sse\", \"poll\" or \"ws\""
            ))),
        }
    }
}

/// Client settings as data, for bindings that are handed them as JSON (the C ABI, Go,
/// JavaScript) or as keyword arguments (Python): every member optional, an unset or null member
/// keeps the core's default, an unknown one is `InvalidArgument`. Each setting is read in one
/// place, [`ClientOptions::set`], under every spelling it has: snake_case or JavaScript's
/// camelCase; durations in milliseconds under a `_ms` name (C, Go, JavaScript) or in seconds
/// under the plain name (Python, whose durations are seconds everywhere); the reconnect
/// settings nested under `reconnect` or flat (`reconnect_attempts`, `reconnect_delay`,
/// `reconnect_max_delay`, as Python's keyword arguments are). A setting added here reaches
/// every binding without code in any of them.
#[derive(Clone, Default)]
pub struct ClientOptions {
    token: Option<String>,
    headers: Option<Vec<(String, String)>>,
    timeout: Option<Duration>,
    transport: Option<Transport>,
    user_agent: Option<String>,
    poll_wait: Option<Duration>,
    idle_timeout: Option<Duration>,
    sse_fallback_after: Option<Duration>,
    reconnect_attempts: Option<u32>,
    reconnect_delay: Option<Duration>,
    reconnect_max_delay: Option<Duration>,
}

/// Never the token or a header's value: they may be secrets.
impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| Redacted))
            .field("headers", &self.headers.as_deref().map(header_names))
            .field("timeout", &self.timeout)
            .field("transport", &self.transport)
            .field("user_agent", &self.user_agent)
            .field("poll_wait", &self.poll_wait)
            .field("idle_timeout", &self.idle_timeout)
            .field("sse_fallback_after", &self.sse_fallback_after)
            .field("reconnect_attempts", &self.reconnect_attempts)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .finish()
    }
}

/// What Debug shows for a secret.
struct Redacted;

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn header_names(headers: &[(String, String)]) -> Vec<(&str, Redacted)> {
    headers
        .iter()
        .map(|(name, _)| (name.as_str(), Redacted))
        .collect()
}

/// Where a member is: at the top, or in the `reconnect` object.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Group {
    Top,
    Reconnect,
}

/// One member's value, read by the kind of setting it is.
pub(crate) struct Member<'a> {
    /// Whose member: `"client option"`, `"submit option"`.
    pub options: &'static str,
    pub group: Group,
    pub name: &'a str,
    pub value: Value,
}

impl Member<'_> {
    /// Its name where it is (`reconnect.max_attempts`).
    fn path(&self) -> String {
        match self.group {
            Group::Top => self.name.to_owned(),
            Group::Reconnect => format!("reconnect.{}", self.name),
        }
    }

    /// What messages call it (`client option reconnect.max_attempts`).
    pub fn label(&self) -> String {
        format!("{} {}", self.options, self.path())
    }

    /// (The value is not shown: it may be a token or a header's secret.)
    fn invalid(&self, what: &str) -> Error {
        Error::invalid(format!("{} must be {what}", self.label()))
    }

    pub fn text(self) -> Result<String> {
        match self.value {
            Value::String(s) => Ok(s),
            _ => Err(self.invalid("a string")),
        }
    }

    fn duration(self, seconds_per_unit: f64, unit: &str) -> Result<Duration> {
        self.value
            .as_f64()
            .and_then(|n| Duration::try_from_secs_f64(n * seconds_per_unit).ok())
            .ok_or_else(|| {
                self.invalid(&format!(
                    "a non-negative number of {unit}, not {}",
                    self.value
                ))
            })
    }

    fn millis(self) -> Result<Duration> {
        self.duration(0.001, "milliseconds")
    }

    fn seconds(self) -> Result<Duration> {
        self.duration(1.0, "seconds")
    }

    pub fn count(self) -> Result<u32> {
        self.value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| self.invalid(&format!("a non-negative integer, not {}", self.value)))
    }

    /// An object of names to values, or an array of `[name, value]` pairs.
    fn headers(self) -> Result<Vec<(String, String)>> {
        let bad = || self.invalid("an object of names to values or a list of [name, value] pairs");
        match &self.value {
            Value::Object(map) => Ok(map
                .iter()
                .map(|(name, value)| {
                    let value = match value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (name.clone(), value)
                })
                .collect()),
            Value::Array(pairs) => pairs
                .iter()
                .map(|pair| <(String, String)>::deserialize(pair).map_err(|_| bad()))
                .collect(),
            _ => Err(bad()),
        }
    }
}

/// Set `slot` once: a setting given under two spellings is a mistake, not a choice.
pub(crate) fn put<T>(slot: &mut Option<T>, label: String, value: T) -> Result<()> {
    match slot.replace(value) {
        None => Ok(()),
        Some(_) => Err(Error::invalid(format!(
            "{label} is given twice (under two spellings)"
        ))),
    }
}

/// The members of an options object, or `InvalidArgument` naming `what` for anything else.
pub(crate) fn members(value: Value, what: &str) -> Result<serde_json::Map<String, Value>> {
    match value {
        Value::Object(members) => Ok(members),
        other => Err(Error::invalid(format!(
            "{what} must be a JSON object, not {other}"
        ))),
    }
}

/// Parse options JSON text; empty text is `null` (no options).
pub(crate) fn options_json(json: &str, what: &str) -> Result<Value> {
    if json.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(json).map_err(|e| Error::invalid(format!("{what}: {e}")))
}

impl ClientOptions {
    /// Parse options JSON; empty text (or `null`) means no options.
    pub fn from_json(json: &str) -> Result<Self> {
        Self::from_value(options_json(json, "client options")?)
    }

    /// Read options from a JSON object (what a binding built from its caller's arguments);
    /// `null` is no options.
    pub fn from_value(value: Value) -> Result<Self> {
        let mut options = Self::default();
        if value.is_null() {
            return Ok(options);
        }
        for (name, value) in members(value, "client options")? {
            options.set(Group::Top, &name, value)?;
        }
        Ok(options)
    }

    /// The one table of settings and their spellings.
    fn set(&mut self, group: Group, name: &str, value: Value) -> Result<()> {
        use Group::{Reconnect, Top};
        if value.is_null() {
            return Ok(());
        }
        let m = Member {
            options: "client option",
            group,
            name,
            value,
        };
        let label = m.label();
        match (group, name) {
            (Top, "token") => put(&mut self.token, label, m.text()?),
            (Top, "headers") => put(&mut self.headers, label, m.headers()?),
            (Top, "transport") => put(&mut self.transport, label, m.text()?.parse()?),
            (Top, "user_agent" | "userAgent") => put(&mut self.user_agent, label, m.text()?),
            (Top, "timeout_ms" | "timeoutMs") => put(&mut self.timeout, label, m.millis()?),
            (Top, "timeout") => put(&mut self.timeout, label, m.seconds()?),
            (Top, "poll_wait_ms" | "pollWaitMs") => put(&mut self.poll_wait, label, m.millis()?),
            (Top, "poll_wait") => put(&mut self.poll_wait, label, m.seconds()?),
            (Top, "idle_timeout_ms" | "idleTimeoutMs") => {
                put(&mut self.idle_timeout, label, m.millis()?)
            }
            (Top, "idle_timeout") => put(&mut self.idle_timeout, label, m.seconds()?),
            (Top, "sse_fallback_after_ms" | "sseFallbackAfterMs") => {
                put(&mut self.sse_fallback_after, label, m.millis()?)
            }
            (Top, "sse_fallback_after") => put(&mut self.sse_fallback_after, label, m.seconds()?),
            (Top, "reconnect") => match m.value {
                Value::Object(members) => members
                    .into_iter()
                    .try_for_each(|(name, value)| self.set(Reconnect, &name, value)),
                _ => Err(m.invalid("an object")),
            },
            (Reconnect, "max_attempts" | "maxAttempts") | (Top, "reconnect_attempts") => {
                put(&mut self.reconnect_attempts, label, m.count()?)
            }
            (Reconnect, "initial_delay_ms" | "initialDelayMs") => {
                put(&mut self.reconnect_delay, label, m.millis()?)
            }
            (Reconnect, "initial_delay") | (Top, "reconnect_delay") => {
                put(&mut self.reconnect_delay, label, m.seconds()?)
            }
            (Reconnect, "max_delay_ms" | "maxDelayMs") => {
                put(&mut self.reconnect_max_delay, label, m.millis()?)
            }
            (Reconnect, "max_delay") | (Top, "reconnect_max_delay") => {
                put(&mut self.reconnect_max_delay, label, m.seconds()?)
            }
            _ => Err(Error::invalid(format!(
                "{:?} is not a client option",
                m.path()
            ))),
        }
    }

    /// Set what these options set on `builder`, leaving the rest as it was.
    pub fn apply(self, mut b: ClientBuilder) -> Result<ClientBuilder> {
        for (name, value) in self.headers.into_iter().flatten() {
            b = b.header(name, value);
        }
        if let Some(token) = self.token {
            b = b.token(token);
        }
        if let Some(t) = self.timeout {
            b = b.timeout(t);
        }
        if let Some(t) = self.transport {
            b = b.transport(t);
        }
        if let Some(ua) = self.user_agent {
            b = b.user_agent(ua);
        }
        if let Some(t) = self.poll_wait {
            b = b.poll_wait(t);
        }
        if let Some(t) = self.idle_timeout {
            b = b.idle_timeout(t);
        }
        if let Some(t) = self.sse_fallback_after {
            b = b.sse_fallback_after(t);
        }
        let (attempts, delay, max_delay) = (
            self.reconnect_attempts,
            self.reconnect_delay,
            self.reconnect_max_delay,
        );
        if attempts.is_some() || delay.is_some() || max_delay.is_some() {
            let d = Reconnect::default();
            b = b.reconnect(Reconnect {
                max_attempts: attempts.unwrap_or(d.max_attempts),
                initial_delay: delay.unwrap_or(d.initial_delay),
                max_delay: max_delay.unwrap_or(d.max_delay),
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

#[derive(Clone)]
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

/// Never the token or a header's value: they may be secrets.
impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("headers", &header_names(&self.headers))
            .field("token", &self.token.as_ref().map(|_| Redacted))
            .field("timeout", &self.timeout)
            .field("reconnect", &self.reconnect)
            .field("transport", &self.transport)
            .field("user_agent", &self.user_agent)
            .field("poll_wait", &self.poll_wait)
            .field("idle_timeout", &self.idle_timeout)
            .field("sse_fallback_after", &self.sse_fallback_after)
            .finish()
    }
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

    /// Send `Authorization: Bearer <token>` with every request (a server with tenants needs
    /// one, spec §22.1). The token is never shown: not by `Debug`, not in an error.
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
        let all_headers = headers.clone();
        let builder = reqwest::Client::builder().default_headers(headers);
        // A unix base URL: every connection goes to its socket (parse_url refused it on
        // targets without unix sockets).
        #[cfg(unix)]
        let builder = match unix_socket_path(&base) {
            Some(path) => builder.unix_socket(path),
            None => builder,
        };
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
                headers: all_headers,
                socket: std::sync::OnceLock::new(),
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
    if parsed.scheme() == UNIX {
        return unix_url(url, &parsed);
    }
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(format!(
            "{url:?}: only http, https and unix URLs are supported"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid(format!("{url:?} has no host")));
    }
    Ok(parsed)
}

/// The scheme of a server on a unix socket (spec §20.4): `unix:///run/longrun.sock` is the
/// server, `unix:///run/longrun.sock/OBJECT/ID` a run on it. The socket's path is the whole
/// base path: such a server has no path prefix.
pub(crate) const UNIX: &str = "unix";

/// A `unix:` URL in its one spelling, `unix:///ABSOLUTE/PATH…` (`unix:/PATH` is taken too).
fn unix_url(url: &str, parsed: &Url) -> Result<Url> {
    if !cfg!(unix) {
        return Err(Error::invalid(format!(
            "{url:?}: this build cannot reach a unix socket ({}); use an http(s) URL",
            if cfg!(target_arch = "wasm32") {
                "a browser or WebAssembly has none"
            } else {
                "this system has none"
            }
        )));
    }
    if parsed.host_str().is_some_and(|h| !h.is_empty()) || !parsed.path().starts_with('/') {
        return Err(Error::invalid(format!(
            "{url:?}: a unix socket URL names the socket's absolute path after three slashes, \
             like unix:///run/longrun.sock"
        )));
    }
    if parsed.path().trim_end_matches('/').is_empty() {
        return Err(Error::invalid(format!("{url:?} names no socket")));
    }
    let mut normal = Url::parse(&format!("{UNIX}://{}", parsed.path()))
        .map_err(|e| Error::invalid(format!("{url:?}: {e}")))?;
    normal.set_query(parsed.query());
    normal.set_fragment(parsed.fragment());
    Ok(normal)
}

/// The socket of a unix base URL (`None` for http and https).
#[cfg(unix)]
fn unix_socket_path(base: &Url) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if base.scheme() != UNIX {
        return None;
    }
    let path = base.path().trim_end_matches('/');
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(path).collect();
    Some(std::ffi::OsStr::from_bytes(&bytes).into())
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
    /// The headers every request carries (the token among them), for the WebSocket.
    headers: HeaderMap,
    /// The WebSocket (spec §28), opened on first use: every exchange goes over it with
    /// [`Transport::WebSocket`], and subscriptions whatever the transport.
    socket: std::sync::OnceLock<crate::ws::Socket>,
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

    /// The URL a request for `url` (the base URL or one under it) is sent to: itself, or for
    /// a server on a unix socket the same path after the socket on `http://localhost/`.
    pub fn wire(&self, url: &Url) -> Url {
        if self.base.scheme() != UNIX {
            return url.clone();
        }
        let rest = url.as_str().strip_prefix(self.base.as_str());
        rest.and_then(|rest| Url::parse(&format!("http://localhost/{rest}")).ok())
            // Never reached (a run on another server is refused first); reqwest refuses it.
            .unwrap_or_else(|| url.clone())
    }

    /// The client's WebSocket (not opened until a packet is sent).
    pub fn socket(&self) -> Result<&crate::ws::Socket> {
        Ok(self.socket.get_or_init(|| {
            crate::ws::Socket::new(
                &self.base,
                &self.headers,
                #[cfg(unix)]
                unix_socket_path(&self.base),
            )
        }))
    }

    /// Send a request within the request timeout.
    pub async fn send(&self, req: reqwest::RequestBuilder, what: &str) -> Result<Response> {
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
    ) -> Result<Response> {
        self.send_over(
            req,
            limit,
            what,
            self.config.transport == Transport::WebSocket,
        )
        .await
    }

    /// [`send_within`](Self::send_within) over the WebSocket if `ws`, else over HTTP.
    pub async fn send_over(
        &self,
        req: reqwest::RequestBuilder,
        limit: Duration,
        what: &str,
        ws: bool,
    ) -> Result<Response> {
        if ws {
            let req = req
                .build()
                .map_err(|e| Error::invalid(format!("cannot build the request: {e}")))?;
            // Boxed: the socket's futures (its handshake among them) would otherwise sit
            // inside every caller's future, and a debug build's stack overflows.
            let exchange = Box::pin(self.socket()?.exchange(req, limit));
            return match rt::timeout(limit, exchange).await {
                Some(res) => res.map(Response::Socket),
                None => Err(Error::Timeout {
                    after: limit,
                    what: what.to_owned(),
                }),
            };
        }
        self.send_http(req, limit, what).await.map(Response::Http)
    }

    /// Send a request over HTTP whatever the transport (a byte stream, spec §27).
    pub async fn send_http(
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
pub(crate) async fn error_from(res: impl Into<Response>, what: &str) -> Error {
    let res = res.into();
    let status = res.status().as_u16();
    let problem = res
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<Problem>(&b).ok());
    Error::from_status(status, problem, what)
}

/// An answer over HTTP or over the WebSocket, read the same way by every caller.
pub(crate) enum Response {
    Http(reqwest::Response),
    Socket(crate::ws::Answer),
}

/// What an answer's body brings at a time: SSE text (over HTTP), or the events of one
/// stream packet (over the WebSocket), taken as they are.
pub(crate) enum Chunk {
    Sse(Bytes),
    Events(Vec<longrun_proto::RawEvent>),
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) type Chunks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Chunk>> + Send>>;
#[cfg(target_arch = "wasm32")]
pub(crate) type Chunks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Chunk>>>>;

impl From<reqwest::Response> for Response {
    fn from(res: reqwest::Response) -> Self {
        Response::Http(res)
    }
}

impl Response {
    pub fn status(&self) -> reqwest::StatusCode {
        match self {
            Response::Http(res) => res.status(),
            Response::Socket(a) => a.status,
        }
    }

    pub fn headers(&self) -> &HeaderMap {
        match self {
            Response::Http(res) => res.headers(),
            Response::Socket(a) => &a.headers,
        }
    }

    /// The whole body (an event stream's events as a JSON array, as a long poll has them).
    pub async fn bytes(self) -> Result<Bytes> {
        use crate::ws::Body;
        match self {
            Response::Http(res) => res.bytes().await.map_err(|e| Error::transport(&e)),
            Response::Socket(a) => match a.body {
                Body::Full(b) => Ok(b),
                Body::Events(mut packets) => {
                    let mut all = Vec::new();
                    while let Some(events) = packets.next().await {
                        all.extend(events?);
                    }
                    serde_json::to_vec(&all)
                        .map(Bytes::from)
                        .map_err(|e| Error::Protocol(e.to_string()))
                }
            },
        }
    }

    /// The body as it arrives.
    pub fn chunks(self) -> Chunks {
        use futures::StreamExt;
        match self {
            Response::Http(res) => Box::pin(
                res.bytes_stream()
                    .map(|chunk| chunk.map(Chunk::Sse).map_err(|e| Error::transport(&e))),
            ),
            Response::Socket(a) => match a.body {
                crate::ws::Body::Full(b) => {
                    Box::pin(futures::stream::once(async move { Ok(Chunk::Sse(b)) }))
                }
                crate::ws::Body::Events(packets) => {
                    Box::pin(futures::stream::unfold(packets, |mut packets| async move {
                        let next = packets.next().await?;
                        Some((next.map(Chunk::Events), packets))
                    }))
                }
            },
        }
    }
}

/// What a submit may say besides its object and arguments.
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// Sent as `Idempotency-Key`: 1 to 255 visible ASCII characters (`!` to `~`), e.g. a UUID.
    /// The server answers a submit that repeats a key (of the same tenant) with the first
    /// submit's reply, so no second run is made; the same key with another object or other
    /// arguments is refused (422 `idempotency-key-reused`, an `InvalidArgument`). With a key,
    /// a submit whose connection fails before the reply is sent again, with the same key,
    /// under the client's [`Reconnect`] policy; without one it is never sent twice.
    pub idempotency_key: Option<String>,
    /// Sent as `Longrun-Deadline` (spec §4.4): a run still going this long after the submit
    /// is stopped and ends `canceled` with reason `deadline`, queued or running. More than
    /// the server's maximum (7 days by default) is refused, an `InvalidArgument`.
    pub deadline: Option<Duration>,
    /// Sent as `Prefer: wait=N` (spec §4.5): the server holds the submit up to this long
    /// (whole seconds, rounded up; 1 to 60) and answers once the run has ended, if it ends in
    /// that time — so the run a submit returns may already be over. [`Client::call`] asks
    /// for its own wait and ignores this one.
    pub wait: Option<Duration>,
    /// Sent as `Longrun-Hook` (spec §26): where the server pushes the run's outcome, an
    /// `http(s)://` URL (a signed POST) or `unix:///path.sock` (acomm's framing). The
    /// server checks it (400 `invalid-hook`, 422 `hook-refused`, both `InvalidArgument`).
    /// Verify deliveries with [`crate::webhook::verify`].
    pub hook: Option<String>,
    /// Sent as `Longrun-Hook-Events`: which events the hook gets; the server's default is
    /// [`HookEvents::Ended`]. Needs `hook`.
    pub hook_events: Option<HookEvents>,
}

/// Which events a response hook is sent (`Longrun-Hook-Events`, spec §26.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HookEvents {
    /// The run's end only (`run.ended`).
    #[default]
    Ended,
    /// Every event (`run.event`, coalesced by the server), then the end.
    All,
}

impl HookEvents {
    pub fn as_str(self) -> &'static str {
        match self {
            HookEvents::Ended => "ended",
            HookEvents::All => "all",
        }
    }
}

/// The names every binding accepts: `"ended"` and `"all"`.
impl std::str::FromStr for HookEvents {
    type Err = Error;
    fn from_str(name: &str) -> Result<Self> {
        match name {
            "ended" => Ok(HookEvents::Ended),
            "all" => Ok(HookEvents::All),
            other => Err(Error::invalid(format!(
                "hook events {other:?}: use \"ended\" or \"all\""
            ))),
        }
    }
}

impl SubmitOptions {
    /// Parse submit options JSON; empty text (or `null`) means none. See
    /// [`SubmitOptions::from_value`].
    pub fn from_json(json: &str) -> Result<Self> {
        Self::from_value(options_json(json, "submit options")?)
    }

    /// Submit options as data, for bindings (as [`ClientOptions`] are): a JSON object whose
    /// members are all optional (null is unset), an unknown one `InvalidArgument`. The
    /// spellings, read here only: `idempotency_key` / `idempotencyKey`; `deadline` and
    /// `wait` in seconds (Python) or `deadline_ms` / `deadlineMs`, `wait_ms` / `waitMs` in
    /// milliseconds (C, Go, JavaScript); `hook`; `hook_events` / `hookEvents` (`"ended"`,
    /// `"all"`).
    pub fn from_value(value: Value) -> Result<Self> {
        let mut options = Self::default();
        if value.is_null() {
            return Ok(options);
        }
        for (name, value) in members(value, "submit options")? {
            if value.is_null() {
                continue;
            }
            let m = Member {
                options: "submit option",
                group: Group::Top,
                name: &name,
                value,
            };
            let label = m.label();
            match name.as_str() {
                "idempotency_key" | "idempotencyKey" => {
                    put(&mut options.idempotency_key, label, m.text()?)
                }
                "deadline" => put(&mut options.deadline, label, m.seconds()?),
                "deadline_ms" | "deadlineMs" => put(&mut options.deadline, label, m.millis()?),
                "wait" => put(&mut options.wait, label, m.seconds()?),
                "wait_ms" | "waitMs" => put(&mut options.wait, label, m.millis()?),
                "hook" => put(&mut options.hook, label, m.text()?),
                "hook_events" | "hookEvents" => {
                    put(&mut options.hook_events, label, m.text()?.parse()?)
                }
                _ => Err(Error::invalid(format!("{name:?} is not a submit option"))),
            }?;
        }
        Ok(options)
    }
}

/// The `Prefer: wait` seconds of a wait: rounded up, 1 to [`h::MAX_PREFER_WAIT`].
fn prefer_wait(wait: Duration) -> Result<u64> {
    let seconds = wait.as_nanos().div_ceil(1_000_000_000);
    if wait.is_zero() || seconds > u128::from(h::MAX_PREFER_WAIT) {
        return Err(Error::invalid(format!(
            "a submit waits 1 to {} seconds (Prefer: wait), not {wait:?}",
            h::MAX_PREFER_WAIT
        )));
    }
    Ok(seconds as u64)
}

/// A header value the caller gave (a hook URL), checked before it is sent.
fn header_value(value: &str, what: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|_| {
        Error::invalid(format!(
            "the {what} has characters a header cannot carry (a URL is visible ASCII)"
        ))
    })
}

/// The `Longrun-Deadline` value of a deadline: seconds, to the millisecond.
fn deadline(after: Duration) -> Result<HeaderValue> {
    if after.is_zero() {
        return Err(Error::invalid(
            "a deadline must be more than 0 seconds away",
        ));
    }
    // Rounded up, so a deadline under a millisecond is not sent as 0.
    let millis = after.as_nanos().div_ceil(1_000_000);
    HeaderValue::from_str(&format!("{}.{:03}", millis / 1000, millis % 1000))
        .map_err(|_| Error::invalid("the deadline is not a header value"))
}

/// Check an idempotency key before it is sent: the server would refuse it anyway (400).
fn idempotency_key(key: &str) -> Result<HeaderValue> {
    if !h::is_valid_idempotency_key(key.as_bytes()) {
        return Err(Error::invalid(format!(
            "an idempotency key is 1 to {} visible ASCII characters (! to ~), without \
             spaces; this one has {} bytes",
            h::MAX_IDEMPOTENCY_KEY,
            key.len()
        )));
    }
    HeaderValue::from_str(key)
        .map_err(|_| Error::invalid("the idempotency key is not a header value"))
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
        self.submit_with(object, args, SubmitOptions::default())
            .await
    }

    /// [`Client::submit`] with options: an idempotency key, a deadline, a wait, a response
    /// hook (see [`SubmitOptions`]).
    pub async fn submit_with(
        &self,
        object: &str,
        args: impl Serialize,
        options: SubmitOptions,
    ) -> Result<Run> {
        let wait = options.wait.map(prefer_wait).transpose()?;
        let (run, _) = self.submitting(object, args, options, wait).await?;
        Ok(run)
    }

    /// Submit and wait for the run's end in one exchange when the server can: the submit
    /// asks the server to hold it until the run ends (`Prefer: wait`, spec §4.5, up to 60 s
    /// or `timeout`), and only a run still going then is followed to its end, as
    /// [`Client::wait`] does. The same outcomes as `wait`: the `success` value, `RunFailed`,
    /// `Canceled`, or `Timeout` once `timeout` passes (the run goes on).
    pub async fn call(
        &self,
        object: &str,
        args: impl Serialize,
        options: SubmitOptions,
        timeout: Option<Duration>,
    ) -> Result<Value> {
        let wait = timeout.map_or(h::MAX_PREFER_WAIT, |t| t.as_secs().min(h::MAX_PREFER_WAIT));
        let (run, ended) = self.submitting(object, args, options, Some(wait)).await?;
        match ended {
            Some(event) => crate::follow::outcome(event),
            // The server held the submit `wait` seconds: what is left of the timeout.
            None => {
                let left = timeout.map(|t| t.saturating_sub(Duration::from_secs(wait)));
                self.wait(&run, left).await
            }
        }
    }

    /// The submit itself; with `wait`, `Prefer: wait=N`, and the terminal event when the
    /// server answered with it (200).
    async fn submitting(
        &self,
        object: &str,
        args: impl Serialize,
        options: SubmitOptions,
        wait: Option<u64>,
    ) -> Result<(Run, Option<Event>)> {
        let name = ObjectName::new(object).map_err(|e| Error::invalid(e.to_string()))?;
        let args = serde_json::to_value(args)
            .map_err(|e| Error::invalid(format!("the arguments do not serialize to JSON: {e}")))?;
        if !args.is_object() {
            return Err(Error::invalid(format!(
                "the arguments must be a JSON object, not {args}"
            )));
        }
        let key = options
            .idempotency_key
            .as_deref()
            .map(idempotency_key)
            .transpose()?;
        let deadline = options.deadline.map(deadline).transpose()?;
        let hook = options
            .hook
            .as_deref()
            .map(|url| header_value(url.trim(), "hook URL"))
            .transpose()?;
        let hook_events = options
            .hook_events
            .map(|events| HeaderValue::from_static(events.as_str()));
        let prefer = wait
            .map(|n| HeaderValue::from_str(&format!("wait={n}")).expect("digits are header-safe"));
        let url = self
            .inner
            .base
            .join(name.as_str())
            .map_err(|e| Error::invalid(e.to_string()))?;
        let what = format!("object {object:?}");
        let doing = format!("submitting to {object}");
        let mut failures = 0u32;
        let body = loop {
            let mut req = self
                .inner
                .http
                .post(self.inner.wire(&url))
                .header(reqwest::header::ACCEPT, h::JSON)
                .json(&args);
            if let Some(key) = &key {
                req = req.header(h::IDEMPOTENCY_KEY, key.clone());
            }
            if let Some(deadline) = &deadline {
                req = req.header(h::LONGRUN_DEADLINE, deadline.clone());
            }
            if let Some(hook) = &hook {
                req = req.header(h::LONGRUN_HOOK, hook.clone());
            }
            if let Some(events) = &hook_events {
                req = req.header(h::LONGRUN_HOOK_EVENTS, events.clone());
            }
            if let Some(prefer) = &prefer {
                req = req.header(h::PREFER, prefer.clone());
            }
            let attempt = self
                .inner
                .exchange(&doing, async {
                    let res = self.inner.send(req, &doing).await?;
                    let status = res.status().as_u16();
                    // 200 only answers a `Prefer: wait` whose run ended in time.
                    if status != 201 && !(status == 200 && prefer.is_some()) {
                        return Err(error_from(res, &what).await);
                    }
                    res.bytes().await
                })
                .await;
            match attempt {
                // Without a key a lost reply may have made a run: sending again could make a
                // second one (spec §4.2). With one, the server answers a repeat with the first
                // reply, so a submit whose connection failed is sent again, as a follow
                // reconnects.
                Err(e @ Error::Transport { .. }) if key.is_some() => {
                    failures += 1;
                    let policy = self.inner.reconnect();
                    if failures > policy.max_attempts {
                        break Err(e);
                    }
                    rt::sleep(crate::follow::backoff(
                        policy.initial_delay,
                        policy.max_delay,
                        failures,
                    ))
                    .await;
                }
                other => break other,
            }
        }?;
        let submitted: RunRef = serde_json::from_slice(&body)
            .map_err(|e| Error::Protocol(format!("the submit answer is not a run: {e}")))?;
        let run = Run::at(
            &self.inner.base,
            &submitted.object,
            &submitted.id.to_string(),
        )?;
        let ended = if submitted.state.is_terminal() {
            #[derive(Deserialize)]
            struct Ended {
                event: Event,
            }
            let ended: Ended = serde_json::from_slice(&body).map_err(|e| {
                Error::Protocol(format!("an ended submit answer has no terminal event: {e}"))
            })?;
            if !ended.event.state.is_terminal() {
                return Err(Error::Protocol(
                    "an ended submit answer's event is not terminal".into(),
                ));
            }
            Some(ended.event)
        } else {
            None
        };
        Ok((run, ended))
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
    pub(crate) fn same_server(&self, run: &Run) -> Result<()> {
        let base = &self.inner.base;
        // A unix URL's origin is opaque (never equal): the same socket is the same server,
        // and a run is `OBJECT/ID` right under it.
        let same = if run.url().scheme() == UNIX || base.scheme() == UNIX {
            run.url()
                .as_str()
                .strip_prefix(base.as_str())
                .is_some_and(|rest| rest.split('/').count() == 2)
        } else {
            run.url().origin() == base.origin()
        };
        if same {
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
        let req = self.inner.http.delete(self.inner.wire(run.url()));
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
        let req = self.inner.http.head(self.inner.wire(run.url()));
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

    const ID: &str = "0f8fad5b-d9cb-469f-a165-70867728950e";

    #[test]
    fn a_unix_client_talks_to_its_own_socket_only() {
        let client = Client::new("unix:///run/a.sock").unwrap();
        assert_eq!(client.base_url().as_str(), "unix:///run/a.sock/");
        let own = Run::from_url(&format!("unix:///run/a.sock/echo/{ID}")).unwrap();
        assert!(client.same_server(&own).is_ok());
        assert_eq!(
            client.inner.wire(own.url()).as_str(),
            format!("http://localhost/echo/{ID}")
        );
        for other in [
            format!("unix:///run/b.sock/echo/{ID}"),
            format!("unix:///run/a.sock/x/echo/{ID}"),
            format!("http://localhost/echo/{ID}"),
        ] {
            let run = Run::from_url(&other).unwrap();
            let err = client.same_server(&run).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::InvalidArgument,
                "{other}: {err}"
            );
        }
        // And an http client refuses a run on a socket.
        let http = Client::new("http://localhost").unwrap();
        assert!(http.same_server(&own).is_err());
        assert_eq!(
            unix_socket_path(client.base_url()).unwrap(),
            std::path::Path::new("/run/a.sock")
        );
        let spaced = Client::new("unix:///tmp/my%20dir/a.sock").unwrap();
        assert_eq!(
            unix_socket_path(spaced.base_url()).unwrap(),
            std::path::Path::new("/tmp/my dir/a.sock")
        );
    }

    #[test]
    fn bad_unix_urls_say_how_to_write_one() {
        for bad in ["unix://run/a.sock", "unix:a.sock", "unix:///", "unix://"] {
            let err = Client::new(bad).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::InvalidArgument,
                "{bad}: {err}"
            );
        }
        let err = Client::new("unix://run/a.sock").unwrap_err();
        assert!(
            err.to_string().contains("unix:///run/longrun.sock"),
            "{err}"
        );
    }

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
    fn options_read_python_spellings_in_seconds() {
        let b = ClientOptions::from_json(
            r#"{"timeout": 0.25, "poll_wait": 2, "idle_timeout": 1.5, "sse_fallback_after": 0,
                "reconnect_attempts": 3, "reconnect_delay": 0.02, "reconnect_max_delay": null,
                "token": null, "user_agent": "ua"}"#,
        )
        .unwrap()
        .apply(ClientBuilder::new("http://h"))
        .unwrap();
        assert_eq!(b.timeout, Duration::from_millis(250));
        assert_eq!(b.poll_wait, Duration::from_secs(2));
        assert_eq!(b.idle_timeout, Duration::from_millis(1500));
        assert_eq!(b.sse_fallback_after, Duration::ZERO);
        assert_eq!(b.reconnect.max_attempts, 3);
        assert_eq!(b.reconnect.initial_delay, Duration::from_millis(20));
        assert_eq!(b.reconnect.max_delay, Reconnect::default().max_delay);
        assert_eq!((b.token, b.user_agent.as_str()), (None, "ua"));
        let nested = ClientOptions::from_json(
            r#"{"idleTimeoutMs": 1500, "reconnect": {"initialDelayMs": 20, "max_delay": 1}}"#,
        )
        .unwrap()
        .apply(ClientBuilder::new("http://h"))
        .unwrap();
        assert_eq!(nested.idle_timeout, b.idle_timeout);
        assert_eq!(nested.reconnect.initial_delay, b.reconnect.initial_delay);
        assert_eq!(nested.reconnect.max_delay, Duration::from_secs(1));
    }

    #[test]
    fn submit_options_read_every_binding_spelling() {
        let python = SubmitOptions::from_json(
            r#"{"idempotency_key": "k-1", "deadline": 1.5, "wait": 2, "hook": "http://h/x",
                "hook_events": "all"}"#,
        )
        .unwrap();
        let js = SubmitOptions::from_json(
            r#"{"idempotencyKey": "k-1", "deadlineMs": 1500, "waitMs": 2000, "hook": "http://h/x",
                "hookEvents": "all"}"#,
        )
        .unwrap();
        let c = SubmitOptions::from_json(
            r#"{"idempotency_key": "k-1", "deadline_ms": 1500, "wait_ms": 2000, "hook": "http://h/x",
                "hook_events": "all"}"#,
        )
        .unwrap();
        for o in [&python, &js, &c] {
            assert_eq!(o.idempotency_key.as_deref(), Some("k-1"));
            assert_eq!(o.deadline, Some(Duration::from_millis(1500)));
            assert_eq!(o.wait, Some(Duration::from_secs(2)));
            assert_eq!(o.hook.as_deref(), Some("http://h/x"));
            assert_eq!(o.hook_events, Some(HookEvents::All));
        }
        for none in ["", "null", "{}", r#"{"deadline": null, "hook": null}"#] {
            let o = SubmitOptions::from_json(none).unwrap();
            assert!(
                o.deadline.is_none() && o.hook.is_none() && o.wait.is_none(),
                "{none}"
            );
        }
        assert_eq!(prefer_wait(Duration::from_millis(1500)).unwrap(), 2);
        assert_eq!(prefer_wait(Duration::from_secs(60)).unwrap(), 60);
    }

    #[test]
    fn bad_submit_options_are_invalid_arguments() {
        for json in [
            r#"{"bogus": 1}"#,
            r#"{"deadline": -1}"#,
            r#"{"deadline": "1s"}"#,
            r#"{"deadline": 1, "deadlineMs": 1000}"#,
            r#"{"wait_ms": -5}"#,
            r#"{"hook": 1}"#,
            r#"{"hook_events": "some"}"#,
            r#"{"idempotencyKey": 7}"#,
            r#"[1]"#,
            r#""x""#,
            r#"{"#,
        ] {
            let err = SubmitOptions::from_json(json).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{json}");
        }
        for wait in [Duration::ZERO, Duration::from_secs(61)] {
            let err = prefer_wait(wait).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument, "{wait:?}");
        }
        assert_eq!(
            header_value("http://h/\n", "hook URL").unwrap_err().kind(),
            crate::ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn bad_options_are_invalid_arguments() {
        for json in [
            r#"{"transport": "carrier-pigeon"}"#,
            r#"{"timeout_ms": -1}"#,
            r#"{"bogus": 1}"#,
            r#"{"reconnect": {"bogus": 1}}"#,
            r#"{"reconnect": {"reconnect_delay": 1}}"#,
            r#"{"reconnect.max_attempts": 1}"#,
            r#"{"reconnect": 1}"#,
            r#"{"timeout": 1, "timeout_ms": 1000}"#,
            r#"{"reconnect_attempts": 1, "reconnect": {"maxAttempts": 2}}"#,
            r#"{"idle_timeout": -1}"#,
            r#"{"sse_fallback_after": "1s"}"#,
            r#"{"reconnect_attempts": 1.5}"#,
            r#"{"token": 1}"#,
            r#"{"headers": [["x-a", 1]]}"#,
            r#"{"headers": "x-a: 1"}"#,
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
