//! `longrun serve`: one description of every setting ([`Layer`]) that the flags, their
//! environment variables and the TOML config file all fill, merged flags > env > file >
//! defaults.
//!
//! Why this shape, and not figment: clap already reads each flag and, if it is absent, its
//! `LONGRUN_*` variable (and prints both, with the default, in `--help`), and serde already
//! reads the file; one struct of `Option`s deriving both leaves only the merge to write, and
//! the `layer!` macro writes that from the struct's own field list. figment would read the
//! environment itself, so `--help` would no longer name the variables from the same
//! attribute, and comma-separated `LONGRUN_CORS_ORIGIN` and the `--exec`/`[exec.NAME]` pair
//! would need custom providers anyway.
//!
//! Nothing can be forgotten silently: [`Layer::resolve`] destructures every `Layer` field and
//! builds `Config` with a struct literal without `..`, so a field added to either does not
//! compile until it is mapped; the tests below then set every field to a non-default value
//! through each layer alone and compare the result, which fails when a field lacks its flag,
//! its variable or its config key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use clap::Args;
use clap::builder::{FalseyValueParser, TypedValueParser};
use longrun_proto::ObjectName;
use longrun_server::exec::ExecSpec;
use longrun_server::{Auth, BuildError, Config, Server, StoreConfig};
use serde::{Deserialize, Deserializer};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Args, Debug)]
#[command(after_help = "\
Every setting comes from its flag, else its environment variable, else the config file (the \
key is the flag's name with `_` for `-`: keep_alive = \"15s\"; cors_origins is a list; \
demo = false; [exec.NAME] tables), else its default.\n\
Durations are written like 500ms, 15s, 10m, 1h. Sizes like 1048576, 512KiB, 1MiB.\n\
Logs go to stderr; set LONGRUN_LOG (e.g. debug, longrun_server=trace) to change the level.")]
pub struct ServeArgs {
    #[command(flatten)]
    layer: Layer,
    /// TOML config file; flags and environment variables override it.
    #[arg(long, env = "LONGRUN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Declares the struct and [`Layer::over`] from one list of fields, so no field can be
/// declared and left out of the merge.
macro_rules! layer {
    (
        $(#[$attr:meta])*
        struct $name:ident { $( $(#[$field_attr:meta])* $field:ident: $ty:ty, )* }
    ) => {
        $(#[$attr])*
        struct $name { $( $(#[$field_attr])* $field: $ty, )* }

        impl $name {
            /// `self` over `lower`, field by field.
            fn over(self, lower: Self) -> Self {
                Self { $( $field: Merge::over(self.$field, lower.$field), )* }
            }
        }
    };
}

layer! {
    /// Every setting of `longrun serve` as one layer gives them (the flags, each falling back
    /// to its variable; or the config file); `None` is "not set here". The field's name is
    /// the config key; the flag is the name with `-` for `_` and the variable `LONGRUN_` and
    /// the flag's name (but `--cors-origin` and `--no-demo`). Each help text ends with the
    /// default, which a test checks against `Config::default()`.
    #[derive(Args, Deserialize, Default, Debug)]
    #[serde(default, deny_unknown_fields)]
    struct Layer {
        /// Address to listen on: HOST:PORT (port 0 picks a free port; the chosen address is
        /// printed) or unix:PATH, a unix socket (repeatable, TCP and unix together; env:
        /// comma-separated) [default: 127.0.0.1:8080]
        #[arg(long, env = "LONGRUN_LISTEN", value_name = "ADDR", value_delimiter = ',')]
        #[serde(deserialize_with = "one_or_many")]
        listen: Option<Vec<Listen>>,
        /// Permission bits of the unix sockets, in octal: 0660 lets the owner and the group
        /// connect [default: 0660]
        #[arg(long, env = "LONGRUN_SOCKET_MODE", value_name = "MODE", value_parser = socket_mode)]
        #[serde(deserialize_with = "socket_mode_key")]
        socket_mode: Option<SocketMode>,
        /// Where runs are kept: sqlite:PATH survives restarts (add ?synchronous=full to survive
        /// power loss too); memory forgets them [default: sqlite:longrun.db]
        #[arg(long, env = "LONGRUN_STORE", value_name = "URL", value_parser = store_url)]
        #[serde(deserialize_with = "store_key")]
        store: Option<StoreConfig>,
        /// Tenants and their tokens' hashes (TOML; reloaded on SIGHUP): every run route then
        /// needs `Authorization: Bearer <token>` (none by default: the server is open)
        #[arg(long, env = "LONGRUN_AUTH", value_name = "FILE")]
        auth: Option<PathBuf>,
        /// Listen on a non-loopback address without --auth (anyone who can reach it may submit
        /// and cancel) [default: false]
        #[arg(
            long = "allow-unauthenticated",
            env = "LONGRUN_ALLOW_UNAUTHENTICATED",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = FalseyValueParser::new(),
        )]
        allow_unauthenticated: Option<bool>,
        /// Largest submit body accepted [default: 1MiB]
        #[arg(long, env = "LONGRUN_BODY_LIMIT", value_name = "SIZE")]
        body_limit: Option<ByteSize>,
        /// How long ended runs stay readable [default: 1h]
        #[arg(long, env = "LONGRUN_RETENTION", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        retention: Option<Duration>,
        /// Most ended runs kept [default: 10000]
        #[arg(long, env = "LONGRUN_MAX_RETAINED", value_name = "N")]
        max_retained: Option<usize>,
        /// Most runs active at once [default: 10000]
        #[arg(long, env = "LONGRUN_MAX_ACTIVE_RUNS", value_name = "N")]
        max_active_runs: Option<usize>,
        /// Most events one run may hold, counting its first and its last (at least 2)
        /// [default: 1000000]
        #[arg(long, env = "LONGRUN_MAX_EVENTS_PER_RUN", value_name = "N")]
        max_events_per_run: Option<u64>,
        /// Most bytes one run's byte stream may hold; a write past it ends the run as error
        /// [default: 64MiB]
        #[arg(long, env = "LONGRUN_MAX_STREAM_BYTES", value_name = "SIZE")]
        max_stream_bytes: Option<ByteSize>,
        /// How long a dropped run answers 410 Gone before it is forgotten (then 404)
        /// [default: 24h]
        #[arg(long, env = "LONGRUN_TOMBSTONE_TTL", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        tombstone_ttl: Option<Duration>,
        /// Most tombstones kept, oldest dropped first [default: 100000]
        #[arg(long, env = "LONGRUN_MAX_TOMBSTONES", value_name = "N")]
        max_tombstones: Option<usize>,
        /// Idle time before an SSE keep-alive comment (more than 0) [default: 15s]
        #[arg(long, env = "LONGRUN_KEEP_ALIVE", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        keep_alive: Option<Duration>,
        /// Reconnection hint sent to SSE clients [default: 1s]
        #[arg(long, env = "LONGRUN_RETRY", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        retry: Option<Duration>,
        /// How long a canceled run may take to stop; also the shutdown grace [default: 5s]
        #[arg(long, env = "LONGRUN_GRACE", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        grace: Option<Duration>,
        /// Long poll: how long a request without `wait` is held [default: 20s]
        #[arg(long, env = "LONGRUN_POLL_WAIT_DEFAULT", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        poll_wait_default: Option<Duration>,
        /// Long poll: the longest hold, whatever `wait` asks (at least --poll-wait-default)
        /// [default: 60s]
        #[arg(long, env = "LONGRUN_POLL_WAIT_MAX", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        poll_wait_max: Option<Duration>,
        /// Kernel send buffer of each connection (SO_SNDBUF; Linux doubles it); 0 leaves the
        /// kernel's autotuning, up to 4 MiB per connection that does not read [default: 64KiB]
        #[arg(long, env = "LONGRUN_SEND_BUFFER", value_name = "SIZE")]
        send_buffer: Option<ByteSize>,
        /// Reset a connection whose pending write makes no progress for this long; a follower
        /// cut so resumes by its cursor (more than 0) [default: 30s]
        #[arg(long, env = "LONGRUN_STALL_TIMEOUT", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        stall_timeout: Option<Duration>,
        /// Most followers (SSE streams, held long polls) of one run at once (more than 0)
        /// [default: 10000]
        #[arg(long, env = "LONGRUN_MAX_FOLLOWERS_PER_RUN", value_name = "N")]
        max_followers_per_run: Option<usize>,
        /// Most followers of all runs at once (more than 0) [default: 100000]
        #[arg(long, env = "LONGRUN_MAX_FOLLOWERS", value_name = "N")]
        max_followers: Option<usize>,
        /// How long a submit's Idempotency-Key is remembered [default: 1day]
        #[arg(long, env = "LONGRUN_IDEMPOTENCY_TTL", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        idempotency_ttl: Option<Duration>,
        /// Most idempotency keys remembered, oldest forgotten first [default: 100000]
        #[arg(long, env = "LONGRUN_MAX_IDEMPOTENCY_KEYS", value_name = "N")]
        max_idempotency_keys: Option<usize>,
        /// How often every worker node's health path is pinged (more than 0) [default: 10s]
        #[arg(long, env = "LONGRUN_HEALTH_INTERVAL", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        health_interval: Option<Duration>,
        /// How long one health ping of a worker node may take (more than 0) [default: 2s]
        #[arg(long, env = "LONGRUN_HEALTH_TIMEOUT", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        health_timeout: Option<Duration>,
        /// Consecutive failed health pings that make a worker node unavailable (at least 1)
        /// [default: 3]
        #[arg(long, env = "LONGRUN_HEALTH_FAILURES", value_name = "N")]
        health_failures: Option<u32>,
        /// How long a run of a worker service waits for an available node before it fails
        /// [default: 30s]
        #[arg(long, env = "LONGRUN_DISPATCH_TIMEOUT", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        dispatch_timeout: Option<Duration>,
        /// The furthest `Longrun-Deadline` a submit may ask for [default: 7days]
        #[arg(long, env = "LONGRUN_MAX_DEADLINE", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        max_deadline: Option<Duration>,
        /// Sign response hooks with this Standard Webhooks secret, whsec_ and base64 (spec
        /// §26); without one a submit with Longrun-Hook is refused (none by default)
        #[arg(long, env = "LONGRUN_HOOK_SECRET", value_name = "SECRET")]
        hook_secret: Option<String>,
        /// Let hooks reach this host, IP address, CIDR or unix socket path (a path ending in
        /// `/`: every socket under it) beyond public addresses (repeatable; env:
        /// comma-separated; none by default: loopback, private and link-local addresses and
        /// every socket are refused)
        #[arg(long, env = "LONGRUN_HOOK_ALLOW", value_name = "WHERE", value_delimiter = ',')]
        hook_allow: Option<Vec<String>>,
        /// The delay before each attempt of a hook delivery, comma-separated; after the last
        /// failed one the delivery is `failed` [default: 0s,5s,5m,30m,2h,5h,10h]
        #[arg(
            long,
            env = "LONGRUN_HOOK_RETRY",
            value_name = "DURS",
            value_delimiter = ',',
            value_parser = duration
        )]
        #[serde(deserialize_with = "durations_key")]
        hook_retry: Option<Vec<Duration>>,
        /// How long one attempt of a hook delivery may take [default: 15s]
        #[arg(long, env = "LONGRUN_HOOK_TIMEOUT", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        hook_timeout: Option<Duration>,
        /// Pending hook deliveries at most; beyond, progress deliveries are dropped
        /// [default: 100000]
        #[arg(long, env = "LONGRUN_HOOK_OUTBOX", value_name = "N")]
        hook_outbox: Option<usize>,
        /// Bytes queued towards one WebSocket at most; a subscriber that overflows it is closed with 4008 and resumes from its offset [default: 1MiB]
        #[arg(long, env = "LONGRUN_WS_QUEUE_BYTES", value_name = "SIZE")]
        ws_queue_bytes: Option<ByteSize>,
        /// The largest packet a client may send over the WebSocket (close 1009 beyond) [default: 1MiB]
        #[arg(long, env = "LONGRUN_WS_MAX_MESSAGE", value_name = "SIZE")]
        ws_max_message: Option<ByteSize>,
        /// Requests in flight on one WebSocket at once (429 beyond) [default: 1024]
        #[arg(long, env = "LONGRUN_WS_MAX_REQUESTS", value_name = "N")]
        ws_max_requests: Option<usize>,
        /// Subscriptions on one WebSocket at once (429 beyond) [default: 1024]
        #[arg(long, env = "LONGRUN_WS_MAX_SUBSCRIPTIONS", value_name = "N")]
        ws_max_subscriptions: Option<usize>,
        /// A WebSocket ping every this long; a socket silent by the next one is closed [default: 25s]
        #[arg(long, env = "LONGRUN_WS_PING_INTERVAL", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        ws_ping_interval: Option<Duration>,
        /// Publications kept per topic for subscribers that give `since` [default: 1000]
        #[arg(long, env = "LONGRUN_TOPIC_HISTORY", value_name = "N")]
        topic_history: Option<usize>,
        /// How long a publication stays in its topic's history [default: 10m]
        #[arg(long, env = "LONGRUN_TOPIC_HISTORY_AGE", value_name = "DUR", value_parser = duration)]
        #[serde(with = "humantime_serde")]
        topic_history_age: Option<Duration>,
        /// Bytes of publications kept over all topics; past it a topic's oldest go first [default: 64MiB]
        #[arg(long, env = "LONGRUN_TOPIC_HISTORY_BYTES", value_name = "SIZE")]
        topic_history_bytes: Option<ByteSize>,
        /// Topics held at once; a publication to a new one beyond is refused (503) [default: 100000]
        #[arg(long, env = "LONGRUN_MAX_TOPICS", value_name = "N")]
        max_topics: Option<usize>,
        /// Let browser pages from this origin call the server (CORS), e.g.
        /// http://localhost:3000; `*` allows any origin (repeatable; env: comma-separated;
        /// none by default)
        #[arg(
            long = "cors-origin",
            env = "LONGRUN_CORS_ORIGIN",
            value_name = "ORIGIN",
            value_delimiter = ','
        )]
        cors_origins: Option<Vec<String>>,
        /// Do not register the demo objects (echo, count, sleep, fail, emit, ephemeral)
        /// [default: false]
        #[arg(
            long = "no-demo",
            env = "LONGRUN_NO_DEMO",
            value_name = "BOOL",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = FalseyValueParser::new().map(|no_demo| !no_demo),
        )]
        demo: Option<bool>,
        /// Turn a program into an object: NAME='program arg…' (no shell; repeatable; env: one
        /// per line; added to the config file's [exec.NAME] objects)
        #[arg(
            long,
            env = "LONGRUN_EXEC",
            value_name = "NAME=COMMAND",
            value_delimiter = '\n',
            value_parser = exec_flag
        )]
        #[serde(deserialize_with = "exec_tables")]
        exec: Option<Vec<(String, ExecSpec)>>,
        /// How logs are written to stderr: text (for people) or json (one object per line,
        /// for a log collector) [default: text]
        #[arg(long, env = "LONGRUN_LOG_FORMAT", value_name = "FORMAT", value_enum)]
        log_format: Option<LogFormat>,
    }
}

/// How `longrun serve` writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How a layer's value stands over a lower layer's.
trait Merge: Sized {
    /// The upper layer wins; `exec` is the one exception.
    fn over(upper: Self, _lower: Self) -> Self {
        upper
    }
}

impl<T: Merge> Merge for Option<T> {
    fn over(upper: Self, lower: Self) -> Self {
        match (upper, lower) {
            (Some(upper), Some(lower)) => Some(T::over(upper, lower)),
            (upper, lower) => upper.or(lower),
        }
    }
}

impl Merge for Vec<Listen> {}
impl Merge for SocketMode {}
impl Merge for PathBuf {}
impl Merge for StoreConfig {}
impl Merge for ByteSize {}
impl Merge for Duration {}
impl Merge for usize {}
impl Merge for u64 {}
impl Merge for u32 {}
impl Merge for bool {}
impl Merge for Vec<String> {}
impl Merge for String {}
impl Merge for Vec<Duration> {}
impl Merge for LogFormat {}

/// Exec objects of all layers add up ([`Layer::resolve`] refuses a name defined twice).
impl Merge for Vec<(String, ExecSpec)> {
    fn over(mut upper: Self, lower: Self) -> Self {
        upper.extend(lower);
        upper
    }
}

fn store_url(text: &str) -> Result<StoreConfig, String> {
    StoreConfig::parse(text)
}

/// `store = "sqlite:PATH"`.
fn store_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StoreConfig>, D::Error> {
    let url = String::deserialize(d)?;
    StoreConfig::parse(&url)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// What `longrun serve` keeps its runs in when nothing says otherwise: a file in the working
/// directory, so a fresh `longrun serve` keeps its runs across restarts with no set-up.
const DEFAULT_STORE: &str = "sqlite:longrun.db";

fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// A config file's list of durations (`hook_retry = ["0s", "5s"]`).
fn durations_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Duration>>, D::Error> {
    let list = Vec::<humantime_serde::Serde<Duration>>::deserialize(d)?;
    Ok(Some(list.into_iter().map(|d| d.into_inner()).collect()))
}

/// `--exec NAME='program arg…'`.
fn exec_flag(flag: &str) -> Result<(String, ExecSpec), String> {
    let (name, command) = flag
        .split_once('=')
        .ok_or("write it as NAME='program arg…'")?;
    Ok((name.to_owned(), ExecSpec::from_command_line(command)?))
}

/// `[exec.NAME]` tables.
fn exec_tables<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<(String, ExecSpec)>>, D::Error> {
    let tables = BTreeMap::<String, ExecSpec>::deserialize(d)?;
    Ok(Some(tables.into_iter().collect()))
}

/// Where `longrun serve` listens: `HOST:PORT`, or `unix:PATH` for a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            // `unix:///run/l.sock` (the client's URL spelling) names the same socket.
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(format!(
                    "{s:?}: give the socket's path, e.g. unix:/run/longrun.sock"
                ));
            }
            return Ok(Listen::Unix(path.into()));
        }
        s.parse()
            .map(Listen::Tcp)
            .map_err(|_| format!("{s:?} is neither HOST:PORT (127.0.0.1:8080) nor unix:PATH"))
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// `listen = "ADDR"` or `listen = ["ADDR", "unix:PATH"]` in the config file.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Listen>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Listen),
        Many(Vec<Listen>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(l) => vec![l],
        OneOrMany::Many(ls) => ls,
    }))
}

/// Permission bits of a unix socket, written in octal (`0660`, `660`, `0o600`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SocketMode(u32);

const DEFAULT_SOCKET_MODE: SocketMode = SocketMode(0o660);

fn socket_mode(s: &str) -> Result<SocketMode, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .map(SocketMode)
        .ok_or_else(|| format!("{s:?} is not permission bits in octal, like 0660 or 0600"))
}

fn socket_mode_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketMode>, D::Error> {
    let s = String::deserialize(d)?;
    socket_mode(&s).map(Some).map_err(serde::de::Error::custom)
}

/// What `longrun serve` runs with.
#[derive(Debug)]
struct Settings {
    listen: Vec<Listen>,
    socket_mode: SocketMode,
    store: StoreConfig,
    auth: Option<PathBuf>,
    allow_unauthenticated: bool,
    config: Config,
    demo: bool,
    exec: BTreeMap<String, ExecSpec>,
    log_format: LogFormat,
}

impl Layer {
    /// The settings, each from this layer or else its default, checked.
    fn resolve(self) -> Result<Settings, String> {
        // Destructured, not `..`: a new field does not compile until it is used here.
        let Layer {
            listen,
            socket_mode,
            store,
            auth,
            allow_unauthenticated,
            body_limit,
            retention,
            max_retained,
            max_active_runs,
            max_events_per_run,
            max_stream_bytes,
            tombstone_ttl,
            max_tombstones,
            keep_alive,
            retry,
            grace,
            poll_wait_default,
            poll_wait_max,
            send_buffer,
            stall_timeout,
            max_followers_per_run,
            max_followers,
            idempotency_ttl,
            max_idempotency_keys,
            health_interval,
            health_timeout,
            health_failures,
            dispatch_timeout,
            max_deadline,
            hook_secret,
            hook_allow,
            hook_retry,
            hook_timeout,
            hook_outbox,
            ws_queue_bytes,
            ws_max_message,
            ws_max_requests,
            ws_max_subscriptions,
            ws_ping_interval,
            topic_history,
            topic_history_age,
            topic_history_bytes,
            max_topics,
            cors_origins,
            demo,
            exec: exec_layers,
            log_format,
        } = self;
        let d = Config::default();
        let body_limit = match body_limit {
            None => d.body_limit,
            Some(size) => usize::try_from(size.as_u64())
                .map_err(|_| invalid("body_limit", "is too large for this machine"))?,
        };
        let send_buffer = match send_buffer {
            None => d.send_buffer,
            Some(size) => usize::try_from(size.as_u64())
                .ok()
                .filter(|n| i32::try_from(*n).is_ok())
                .ok_or_else(|| invalid("send_buffer", "is too large for a socket option"))?,
        };
        let ws_queue_bytes = match ws_queue_bytes {
            None => d.ws_queue_bytes,
            Some(size) => usize::try_from(size.as_u64())
                .map_err(|_| invalid("ws_queue_bytes", "is too large for this machine"))?,
        };
        let ws_max_message = match ws_max_message {
            None => d.ws_max_message,
            Some(size) => usize::try_from(size.as_u64())
                .map_err(|_| invalid("ws_max_message", "is too large for this machine"))?,
        };
        let topic_history_bytes = match topic_history_bytes {
            None => d.topic_history_bytes,
            Some(size) => usize::try_from(size.as_u64())
                .map_err(|_| invalid("topic_history_bytes", "is too large for this machine"))?,
        };
        // No `..d` either: a new `Config` field does not compile until a `Layer` field sets it.
        let config = Config {
            body_limit,
            retention: retention.unwrap_or(d.retention),
            max_retained: max_retained.unwrap_or(d.max_retained),
            max_active_runs: max_active_runs.unwrap_or(d.max_active_runs),
            max_events_per_run: max_events_per_run.unwrap_or(d.max_events_per_run),
            max_stream_bytes: max_stream_bytes.map_or(d.max_stream_bytes, |s| s.as_u64()),
            tombstone_ttl: tombstone_ttl.unwrap_or(d.tombstone_ttl),
            max_tombstones: max_tombstones.unwrap_or(d.max_tombstones),
            keep_alive: keep_alive.unwrap_or(d.keep_alive),
            retry: retry.unwrap_or(d.retry),
            grace: grace.unwrap_or(d.grace),
            poll_wait_default: poll_wait_default.unwrap_or(d.poll_wait_default),
            poll_wait_max: poll_wait_max.unwrap_or(d.poll_wait_max),
            cors_origins: cors_origins.unwrap_or(d.cors_origins),
            send_buffer,
            stall_timeout: stall_timeout.unwrap_or(d.stall_timeout),
            max_followers_per_run: max_followers_per_run.unwrap_or(d.max_followers_per_run),
            max_followers: max_followers.unwrap_or(d.max_followers),
            idempotency_ttl: idempotency_ttl.unwrap_or(d.idempotency_ttl),
            max_idempotency_keys: max_idempotency_keys.unwrap_or(d.max_idempotency_keys),
            health_interval: health_interval.unwrap_or(d.health_interval),
            health_timeout: health_timeout.unwrap_or(d.health_timeout),
            health_failures: health_failures.unwrap_or(d.health_failures),
            dispatch_timeout: dispatch_timeout.unwrap_or(d.dispatch_timeout),
            max_deadline: max_deadline.unwrap_or(d.max_deadline),
            hook_secret: hook_secret.or(d.hook_secret),
            hook_allow: hook_allow.unwrap_or(d.hook_allow),
            hook_retry: hook_retry.unwrap_or(d.hook_retry),
            hook_timeout: hook_timeout.unwrap_or(d.hook_timeout),
            hook_outbox: hook_outbox.unwrap_or(d.hook_outbox),
            ws_queue_bytes,
            ws_max_message,
            ws_max_requests: ws_max_requests.unwrap_or(d.ws_max_requests),
            ws_max_subscriptions: ws_max_subscriptions.unwrap_or(d.ws_max_subscriptions),
            ws_ping_interval: ws_ping_interval.unwrap_or(d.ws_ping_interval),
            topic_history: topic_history.unwrap_or(d.topic_history),
            topic_history_age: topic_history_age.unwrap_or(d.topic_history_age),
            topic_history_bytes,
            max_topics: max_topics.unwrap_or(d.max_topics),
        };
        check(&config)?;
        let mut exec = BTreeMap::new();
        for (name, spec) in exec_layers.unwrap_or_default() {
            if exec.insert(name.clone(), spec).is_some() {
                return Err(format!(
                    "--exec {name}: defined twice (flags, LONGRUN_EXEC, config file)"
                ));
            }
        }
        Ok(Settings {
            listen: listen
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("a valid address")]),
            socket_mode: socket_mode.unwrap_or(DEFAULT_SOCKET_MODE),
            store: store.unwrap_or_else(|| {
                StoreConfig::parse(DEFAULT_STORE).expect("the default store is a store")
            }),
            auth,
            allow_unauthenticated: allow_unauthenticated.unwrap_or(false),
            config,
            demo: demo.unwrap_or(true),
            exec,
            log_format: log_format.unwrap_or_default(),
        })
    }
}

/// Values the server cannot work with.
fn check(c: &Config) -> Result<(), String> {
    if c.body_limit == 0 {
        return Err(invalid("body_limit", "must be more than 0"));
    }
    if c.max_active_runs == 0 {
        return Err(invalid("max_active_runs", "must be more than 0"));
    }
    if c.max_events_per_run < 2 {
        return Err(invalid(
            "max_events_per_run",
            "must be at least 2 (the first event and the last)",
        ));
    }
    if c.keep_alive.is_zero() {
        return Err(invalid("keep_alive", "must be longer than 0s"));
    }
    if c.stall_timeout.is_zero() {
        return Err(invalid("stall_timeout", "must be longer than 0s"));
    }
    if c.max_followers_per_run == 0 {
        return Err(invalid("max_followers_per_run", "must be more than 0"));
    }
    if c.max_followers == 0 {
        return Err(invalid("max_followers", "must be more than 0"));
    }
    if c.health_interval.is_zero() {
        return Err(invalid("health_interval", "must be longer than 0s"));
    }
    if c.max_deadline.is_zero() {
        return Err(invalid("max_deadline", "must be longer than 0s"));
    }
    if let Some(secret) = &c.hook_secret {
        longrun_proto::webhook::secret_key(secret).map_err(|e| invalid("hook_secret", &e))?;
    }
    for entry in &c.hook_allow {
        longrun_server::check_hook_allow(entry).map_err(|e| invalid("hook_allow", &e))?;
    }
    if c.hook_retry.is_empty() {
        return Err(invalid("hook_retry", "must name at least one delay"));
    }
    if c.hook_timeout.is_zero() {
        return Err(invalid("hook_timeout", "must be longer than 0s"));
    }
    if c.hook_outbox == 0 {
        return Err(invalid("hook_outbox", "must be more than 0"));
    }
    if c.ws_queue_bytes == 0 {
        return Err(invalid("ws_queue_bytes", "must be more than 0"));
    }
    if c.ws_max_message == 0 {
        return Err(invalid("ws_max_message", "must be more than 0"));
    }
    if c.ws_max_requests == 0 {
        return Err(invalid("ws_max_requests", "must be more than 0"));
    }
    if c.ws_max_subscriptions == 0 {
        return Err(invalid("ws_max_subscriptions", "must be more than 0"));
    }
    if c.max_topics == 0 {
        return Err(invalid("max_topics", "must be more than 0"));
    }
    if c.ws_ping_interval.is_zero() {
        return Err(invalid("ws_ping_interval", "must be longer than 0s"));
    }
    if c.health_timeout.is_zero() {
        return Err(invalid("health_timeout", "must be longer than 0s"));
    }
    if c.health_failures == 0 {
        return Err(invalid("health_failures", "must be at least 1"));
    }
    if c.poll_wait_default > c.poll_wait_max {
        return Err(invalid(
            "poll_wait_default",
            &format!(
                "({}) must not be longer than --poll-wait-max ({})",
                humantime::format_duration(c.poll_wait_default),
                humantime::format_duration(c.poll_wait_max)
            ),
        ));
    }
    let durations = [
        ("retention", c.retention),
        ("tombstone_ttl", c.tombstone_ttl),
        ("keep_alive", c.keep_alive),
        ("retry", c.retry),
        ("grace", c.grace),
        ("poll_wait_default", c.poll_wait_default),
        ("poll_wait_max", c.poll_wait_max),
        ("stall_timeout", c.stall_timeout),
        ("idempotency_ttl", c.idempotency_ttl),
        ("health_interval", c.health_interval),
        ("health_timeout", c.health_timeout),
        ("dispatch_timeout", c.dispatch_timeout),
        ("max_deadline", c.max_deadline),
        ("hook_timeout", c.hook_timeout),
        ("ws_ping_interval", c.ws_ping_interval),
        ("topic_history_age", c.topic_history_age),
    ];
    let retries = c.hook_retry.iter().map(|d| ("hook_retry", *d));
    for (id, duration) in durations.into_iter().chain(retries) {
        // The server adds them to the clock.
        if Instant::now().checked_add(duration).is_none() {
            return Err(invalid(id, "is too long"));
        }
    }
    Ok(())
}

/// "--flag PROBLEM (LONGRUN_FLAG, or `flag` in the config file)" for the setting `id`.
fn invalid(id: &str, problem: &str) -> String {
    let command = ServeArgs::augment_args(clap::Command::new("serve"));
    let arg = command.get_arguments().find(|a| a.get_id() == id);
    let flag = arg.and_then(|a| a.get_long()).unwrap_or(id);
    let env = arg.and_then(|a| a.get_env()).and_then(|e| e.to_str());
    format!(
        "--{flag} {problem} ({}, or `{id}` in the config file)",
        env.unwrap_or("its variable")
    )
}

fn settings(args: ServeArgs) -> Result<Settings, String> {
    let file: Layer = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
            toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?
        }
        None => Layer::default(),
    };
    args.layer.over(file).resolve()
}

fn build_server(s: &Settings) -> Result<Server, String> {
    let mut builder = Server::builder()
        .config(s.config.clone())
        .store(s.store.clone());
    if let Some(path) = &s.auth {
        builder = builder.auth(Auth::load(path)?);
    } else if let Some(open) = s.listen.iter().find_map(|l| match l {
        // A unix socket is reached by who may open it (--socket-mode), never from afar.
        Listen::Tcp(addr) if !addr.ip().is_loopback() => Some(addr),
        _ => None,
    }) && !s.allow_unauthenticated
    {
        return Err(format!(
            "refusing to listen on {} without --auth: anyone who reaches it could submit and \
             cancel runs. Give tenants and tokens (--auth FILE; `longrun token new` makes a \
             token), listen on 127.0.0.1, or pass --allow-unauthenticated if something in \
             front of it checks callers",
            open
        ));
    }
    if s.demo {
        builder = builder.demo();
    }
    for (name, spec) in &s.exec {
        ObjectName::user(name.as_str()).map_err(|e| format!("exec object: {e}"))?;
        let handler = spec
            .handler()
            .map_err(|e| format!("exec object {name}: {e}"))?;
        let options = spec
            .options()
            .map_err(|e| format!("exec object {name}: {e}"))?;
        builder = builder.object_with(name, options, handler);
    }
    // Exec names are unique among themselves (a map); a clash can only be with a demo object.
    builder.build().map_err(|e| match e {
        BuildError::DuplicateObject(name) => {
            format!("exec object {name}: a demo object has this name; rename it or use --no-demo")
        }
        e => e.to_string(),
    })
}

/// Logs to stderr in `format`, at the level `LONGRUN_LOG` says (info by default).
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LONGRUN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal only, not into a file or a collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

pub fn main(args: ServeArgs) -> ExitCode {
    // The settings first: they say how to log (their own errors go to stderr as they are).
    let result = settings(args).and_then(|s| {
        init_logs(s.log_format);
        build_server(&s).map(|server| (s, server))
    });
    let (settings, server) = match result {
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("longrun serve: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("longrun serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(settings, server)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("longrun serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// SIGHUP reads the auth file again: the next requests are checked against it, open streams
/// go on. A file that no longer parses keeps the tenants in force and says why.
fn reload_on_hangup(path: PathBuf, server: Server) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match Auth::load(&path) {
                Ok(auth) => {
                    server.set_auth(auth);
                    tracing::info!(file = %path.display(), "auth file reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "auth file not reloaded; the previous one stays in force")
                }
            }
        }
    });
    Ok(())
}

async fn run(settings: Settings, server: Server) -> std::io::Result<()> {
    let mut listeners = Vec::new();
    let mut addresses = Vec::new();
    let mut sockets = Vec::new();
    for listen in &settings.listen {
        match listen {
            Listen::Tcp(addr) => {
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                addresses.push(format!("http://{}", listener.local_addr()?));
                listeners.push(listener.into());
            }
            Listen::Unix(path) => {
                let listener = longrun_server::bind_unix(path, settings.socket_mode.0)?;
                // The client's spelling of this server (spec §20.4).
                let absolute = std::path::absolute(path)?;
                addresses.push(format!("unix://{}", absolute.display()));
                sockets.push(path.clone());
                listeners.push(listener.into());
            }
        }
    }
    let objects: Vec<&str> = server.object_names().collect();
    tracing::info!(objects = ?objects, "serving longrun/1");
    // The handlers go in before the address is printed: whoever reads it may send SIGTERM at
    // once, and without a handler that signal would kill the process instead of draining it.
    let shutdown = shutdown_signal()?;
    if let Some(path) = settings.auth.clone() {
        reload_on_hangup(path, server.clone())?;
    }
    // On stdout, one line per listener, so scripts and tests can learn the port when --listen
    // used port 0.
    for address in addresses {
        println!("longrun listening on {address}");
    }
    let served = longrun_server::serve_all(listeners, server, shutdown).await;
    // Our sockets were listening until now: nobody else's file is removed.
    for path in sockets {
        let _ = std::fs::remove_file(path);
    }
    served
}

/// Installs the SIGINT and SIGTERM handlers now; the future completes on the first signal.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::FromArgMatches;

    use super::*;

    /// Set for [`probe_child`]: the `longrun serve` arguments, as a JSON array.
    const PROBE: &str = "PROBE_SERVE_ARGS";

    /// Not a test of its own: [`probe`] runs it in a child process, so that the environment it
    /// parses is exactly the one the test gave (no other `LONGRUN_*` of the machine, no
    /// `set_var` in this process).
    #[test]
    fn probe_child() {
        let Ok(args) = std::env::var(PROBE) else {
            return;
        };
        let args: Vec<String> = serde_json::from_str(&args).unwrap();
        let result = ServeArgs::augment_args(clap::Command::new("serve"))
            .try_get_matches_from(std::iter::once("serve".to_owned()).chain(args))
            .and_then(|m| ServeArgs::from_arg_matches(&m))
            .map_err(|e| e.to_string())
            .and_then(settings);
        let text = match result {
            Ok(settings) => format!("ok {settings:?}"),
            Err(e) => format!("err {e}"),
        };
        println!("\nPROBE {}", serde_json::to_string(&text).unwrap());
    }

    /// The settings `longrun serve ARGS` gets with only the `env` variables among `LONGRUN_*`
    /// set, as `Debug` text, or its error.
    fn probe(args: &[String], env: &[(String, String)]) -> Result<String, String> {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child.args([
            "--exact",
            "serve::tests::probe_child",
            "--nocapture",
            "--test-threads=1",
        ]);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("LONGRUN_") {
                child.env_remove(key);
            }
        }
        child.envs(env.iter().map(|(k, v)| (k, v)));
        child.env(PROBE, serde_json::to_string(args).unwrap());
        let out = child.output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{stdout}");
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("PROBE "))
            .unwrap_or_else(|| panic!("no PROBE line in:\n{stdout}"));
        let text: String = serde_json::from_str(line).unwrap();
        match text.split_once(' ') {
            Some(("ok", settings)) => Ok(settings.to_owned()),
            Some(("err", e)) => Err(e.to_owned()),
            _ => panic!("{text}"),
        }
    }

    /// One setting: its id (the `Layer` field, which is also its config key), a non-default
    /// value as flags and env write it and as TOML writes it, and another non-default value (the
    /// same two ways) for a lower layer to lose with. Together they make [`target`].
    struct Sample {
        id: &'static str,
        value: &'static str,
        toml: &'static str,
        lower: Option<(&'static str, &'static str)>,
    }

    const SAMPLES: &[Sample] = &[
        sample(
            "listen",
            "127.0.0.1:9,unix:/run/l.sock",
            r#"["127.0.0.1:9", "unix:/run/l.sock"]"#,
            Some(("127.0.0.2:7", r#""127.0.0.2:7""#)),
        ),
        sample(
            "socket_mode",
            "0600",
            r#""0600""#,
            Some(("0640", r#""0640""#)),
        ),
        sample(
            "store",
            "sqlite:t.db?synchronous=full",
            r#""sqlite:t.db?synchronous=full""#,
            Some(("memory", r#""memory""#)),
        ),
        sample(
            "auth",
            "tenants.toml",
            r#""tenants.toml""#,
            Some(("other.toml", r#""other.toml""#)),
        ),
        sample(
            "allow_unauthenticated",
            "true",
            "true",
            Some(("false", "false")),
        ),
        sample("body_limit", "2KiB", r#""2KiB""#, Some(("3KiB", "3072"))),
        sample("retention", "2h", r#""2h""#, Some(("3h", r#""3h""#))),
        sample("max_retained", "7", "7", Some(("70", "70"))),
        sample("max_active_runs", "8", "8", Some(("80", "80"))),
        sample("max_events_per_run", "9", "9", Some(("90", "90"))),
        sample(
            "max_stream_bytes",
            "5KiB",
            r#""5KiB""#,
            Some(("6KiB", "6144")),
        ),
        sample("tombstone_ttl", "3m", r#""3m""#, Some(("4m", r#""4m""#))),
        sample("max_tombstones", "11", "11", Some(("110", "110"))),
        sample("keep_alive", "4s", r#""4s""#, Some(("40s", r#""40s""#))),
        sample("retry", "1234ms", r#""1234ms""#, Some(("2s", r#""2s""#))),
        sample("grace", "6s", r#""6s""#, Some(("60s", r#""60s""#))),
        sample(
            "poll_wait_default",
            "2s",
            r#""2s""#,
            Some(("1s", r#""1s""#)),
        ),
        sample("poll_wait_max", "3s", r#""3s""#, Some(("30s", r#""30s""#))),
        sample("send_buffer", "8KiB", r#""8KiB""#, Some(("16KiB", "16384"))),
        sample("stall_timeout", "7s", r#""7s""#, Some(("70s", r#""70s""#))),
        sample("max_followers_per_run", "12", "12", Some(("120", "120"))),
        sample("max_followers", "13", "13", Some(("130", "130"))),
        sample("idempotency_ttl", "5h", r#""5h""#, Some(("6h", r#""6h""#))),
        sample("max_idempotency_keys", "14", "14", Some(("140", "140"))),
        sample(
            "health_interval",
            "15s",
            r#""15s""#,
            Some(("16s", r#""16s""#)),
        ),
        sample(
            "health_timeout",
            "17s",
            r#""17s""#,
            Some(("18s", r#""18s""#)),
        ),
        sample("health_failures", "19", "19", Some(("190", "190"))),
        sample(
            "dispatch_timeout",
            "20s",
            r#""20s""#,
            Some(("21s", r#""21s""#)),
        ),
        sample("max_deadline", "22h", r#""22h""#, Some(("23h", r#""23h""#))),
        sample(
            "hook_secret",
            "whsec_c2VjcmV0",
            r#""whsec_c2VjcmV0""#,
            Some(("whsec_b3RoZXI=", r#""whsec_b3RoZXI=""#)),
        ),
        sample(
            "hook_allow",
            "10.0.0.0/8,/run/hooks/",
            r#"["10.0.0.0/8", "/run/hooks/"]"#,
            Some(("hooks.internal", r#"["hooks.internal"]"#)),
        ),
        sample(
            "hook_retry",
            "1s,2s",
            r#"["1s", "2s"]"#,
            Some(("3s", r#"["3s"]"#)),
        ),
        sample("hook_timeout", "24s", r#""24s""#, Some(("25s", r#""25s""#))),
        sample("hook_outbox", "26", "26", Some(("260", "260"))),
        sample(
            "ws_queue_bytes",
            "27KiB",
            r#""27KiB""#,
            Some(("28KiB", r#"28672"#)),
        ),
        sample(
            "ws_max_message",
            "29KiB",
            r#""29KiB""#,
            Some(("30KiB", r#"30720"#)),
        ),
        sample("ws_max_requests", "31", r#"31"#, Some(("310", r#"310"#))),
        sample(
            "ws_max_subscriptions",
            "32",
            r#"32"#,
            Some(("320", r#"320"#)),
        ),
        sample(
            "ws_ping_interval",
            "33s",
            r#""33s""#,
            Some(("34s", r#""34s""#)),
        ),
        sample("topic_history", "35", r#"35"#, Some(("350", r#"350"#))),
        sample(
            "topic_history_age",
            "36m",
            r#""36m""#,
            Some(("37m", r#""37m""#)),
        ),
        sample(
            "topic_history_bytes",
            "38KiB",
            r#""38KiB""#,
            Some(("39KiB", r#"39936"#)),
        ),
        sample("max_topics", "40", r#"40"#, Some(("400", r#"400"#))),
        sample(
            "cors_origins",
            "http://a.example,http://b.example",
            r#"["http://a.example", "http://b.example"]"#,
            Some(("http://c.example", r#"["http://c.example"]"#)),
        ),
        sample("demo", "true", "false", Some(("false", "true"))),
        // Exec objects of all layers add up, so no lower value.
        sample(
            "exec",
            "tool=tr a-z A-Z",
            r#"{ tool = { command = "tr a-z A-Z" } }"#,
            None,
        ),
        sample(
            "log_format",
            "json",
            r#""json""#,
            Some(("text", r#""text""#)),
        ),
    ];

    const fn sample(
        id: &'static str,
        value: &'static str,
        toml: &'static str,
        lower: Option<(&'static str, &'static str)>,
    ) -> Sample {
        Sample {
            id,
            value,
            toml,
            lower,
        }
    }

    /// What [`SAMPLES`] set. A struct literal: a new `Config` field does not compile until it
    /// has a value here, and then the layer tests fail until it has a sample.
    fn target() -> Settings {
        Settings {
            listen: vec![
                "127.0.0.1:9".parse().unwrap(),
                "unix:/run/l.sock".parse().unwrap(),
            ],
            socket_mode: SocketMode(0o600),
            store: StoreConfig::Sqlite {
                path: "t.db".into(),
                full_sync: true,
            },
            auth: Some("tenants.toml".into()),
            allow_unauthenticated: true,
            config: Config {
                body_limit: 2048,
                retention: Duration::from_secs(7200),
                max_retained: 7,
                max_active_runs: 8,
                max_events_per_run: 9,
                max_stream_bytes: 5120,
                tombstone_ttl: Duration::from_secs(180),
                max_tombstones: 11,
                keep_alive: Duration::from_secs(4),
                retry: Duration::from_millis(1234),
                grace: Duration::from_secs(6),
                poll_wait_default: Duration::from_secs(2),
                poll_wait_max: Duration::from_secs(3),
                cors_origins: vec!["http://a.example".into(), "http://b.example".into()],
                send_buffer: 8192,
                stall_timeout: Duration::from_secs(7),
                max_followers_per_run: 12,
                max_followers: 13,
                idempotency_ttl: Duration::from_secs(5 * 3600),
                max_idempotency_keys: 14,
                health_interval: Duration::from_secs(15),
                health_timeout: Duration::from_secs(17),
                health_failures: 19,
                dispatch_timeout: Duration::from_secs(20),
                max_deadline: Duration::from_secs(22 * 3600),
                hook_secret: Some("whsec_c2VjcmV0".into()),
                hook_allow: vec!["10.0.0.0/8".into(), "/run/hooks/".into()],
                hook_retry: vec![Duration::from_secs(1), Duration::from_secs(2)],
                hook_timeout: Duration::from_secs(24),
                hook_outbox: 26,
                ws_queue_bytes: 27 * 1024,
                ws_max_message: 29 * 1024,
                ws_max_requests: 31,
                ws_max_subscriptions: 32,
                ws_ping_interval: Duration::from_secs(33),
                topic_history: 35,
                topic_history_age: Duration::from_secs(36 * 60),
                topic_history_bytes: 38 * 1024,
                max_topics: 40,
            },
            demo: false,
            exec: BTreeMap::from([(
                "tool".to_owned(),
                ExecSpec::from_command_line("tr a-z A-Z").unwrap(),
            )]),
            log_format: LogFormat::Json,
        }
    }

    fn defaults() -> Settings {
        Layer::default().resolve().unwrap()
    }

    /// Asserts that each named field of `$a` (a `$ty`, destructured without `..`, so every
    /// field must be named) differs from the same field of `$b`.
    macro_rules! assert_every_field_differs {
        ($ty:ident, $a:expr, $b:expr; $($field:ident),* $(,)?) => {{
            let $ty { $(ref $field),* } = $a;
            $(assert_ne!(
                format!("{:?}", $field),
                format!("{:?}", $b.$field),
                stringify!($field)
            );)*
        }};
    }

    #[test]
    fn the_target_differs_from_the_defaults_in_every_field() {
        let (target, defaults) = (target(), defaults());
        assert_every_field_differs!(
            Settings, target, defaults;
            listen, socket_mode, store, auth, allow_unauthenticated, config, demo, exec,
            log_format
        );
        assert_every_field_differs!(
            Config, target.config, defaults.config;
            body_limit, retention, max_retained, max_active_runs, max_events_per_run,
            max_stream_bytes,
            tombstone_ttl, max_tombstones, keep_alive, retry, grace, poll_wait_default,
            poll_wait_max, cors_origins, send_buffer, stall_timeout, max_followers_per_run,
            max_followers, idempotency_ttl, max_idempotency_keys, health_interval,
            health_timeout, health_failures, dispatch_timeout, max_deadline, hook_secret,
            hook_allow, hook_retry, hook_timeout, hook_outbox, ws_queue_bytes, ws_max_message,
            ws_max_requests, ws_max_subscriptions, ws_ping_interval, topic_history,
            topic_history_age, topic_history_bytes, max_topics,
        );
    }

    fn layer_args() -> Vec<clap::Arg> {
        Layer::augment_args(clap::Command::new("serve"))
            .get_arguments()
            .cloned()
            .collect()
    }

    fn arg(id: &str) -> clap::Arg {
        layer_args()
            .into_iter()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("{id} is not a setting of Layer"))
    }

    fn flag(id: &str, value: &str) -> String {
        let long = arg(id).get_long().map(str::to_owned);
        format!(
            "--{}={value}",
            long.unwrap_or_else(|| panic!("{id} has no flag"))
        )
    }

    fn env(id: &str, value: &str) -> (String, String) {
        let name = arg(id)
            .get_env()
            .and_then(|e| e.to_str())
            .map(str::to_owned);
        (
            name.unwrap_or_else(|| panic!("{id} has no env variable")),
            value.to_owned(),
        )
    }

    fn file(dir: &Path, name: &str, lines: &[String]) -> String {
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n")).unwrap();
        format!("--config={}", path.display())
    }

    fn toml_line(id: &str, toml: &str) -> String {
        format!("{id} = {toml}")
    }

    use std::path::Path;

    #[test]
    fn every_setting_has_a_sample_a_flag_and_an_env_variable_named_after_it() {
        let ids: BTreeSet<String> = layer_args()
            .iter()
            .map(|a| a.get_id().to_string())
            .collect();
        let sampled: BTreeSet<String> = SAMPLES.iter().map(|s| s.id.to_owned()).collect();
        assert_eq!(ids, sampled);
        for arg in ServeArgs::augment_args(clap::Command::new("serve")).get_arguments() {
            let id = arg.get_id();
            let long = arg.get_long().unwrap_or_else(|| panic!("{id} has no flag"));
            let expected = format!("LONGRUN_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(
                arg.get_env().and_then(|e| e.to_str()),
                Some(&*expected),
                "{id}"
            );
        }
    }

    #[test]
    fn every_setting_reaches_the_settings_through_each_layer_alone() {
        let expected = Ok(format!("{:?}", target()));
        let flags: Vec<String> = SAMPLES.iter().map(|s| flag(s.id, s.value)).collect();
        assert_eq!(probe(&flags, &[]), expected, "flags");
        let vars: Vec<_> = SAMPLES.iter().map(|s| env(s.id, s.value)).collect();
        assert_eq!(probe(&[], &vars), expected, "env");
        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = SAMPLES.iter().map(|s| toml_line(s.id, s.toml)).collect();
        let config = file(dir.path(), "all.toml", &lines);
        assert_eq!(
            probe(std::slice::from_ref(&config), &[]),
            expected,
            "config file"
        );
        // The config file named by the environment.
        let config_var = ("LONGRUN_CONFIG".into(), config["--config=".len()..].into());
        assert_eq!(probe(&[], &[config_var]), expected, "LONGRUN_CONFIG");
    }

    #[test]
    fn flags_beat_env_which_beats_the_config_file() {
        let expected = Ok(format!("{:?}", target()));
        let lowers = || SAMPLES.iter().filter_map(|s| Some((s.id, s.lower?)));
        let dir = tempfile::tempdir().unwrap();
        let lower_file = file(
            dir.path(),
            "lower.toml",
            &lowers()
                .map(|(id, (_, toml))| toml_line(id, toml))
                .collect::<Vec<_>>(),
        );
        let lower_env: Vec<_> = lowers().map(|(id, (value, _))| env(id, value)).collect();
        let flags: Vec<String> = SAMPLES.iter().map(|s| flag(s.id, s.value)).collect();
        let vars: Vec<_> = SAMPLES.iter().map(|s| env(s.id, s.value)).collect();

        let over_file = [flags.clone(), vec![lower_file.clone()]].concat();
        assert_eq!(probe(&over_file, &[]), expected, "flags over the file");
        assert_eq!(probe(&flags, &lower_env), expected, "flags over env");
        assert_eq!(probe(&[lower_file], &vars), expected, "env over the file");
    }

    /// The `[default: …]` at the end of a setting's help text.
    fn documented_default(arg: &clap::Arg) -> Option<String> {
        let help = arg.get_help().expect("a help text").to_string();
        let (_, rest) = help.split_once("[default: ")?;
        Some(rest.split_once(']').unwrap().0.to_owned())
    }

    #[test]
    fn the_defaults_in_the_help_are_the_defaults() {
        let expected = Ok(format!("{:?}", defaults()));
        assert_eq!(probe(&[], &[]), expected, "nothing set");
        let mut flags = Vec::new();
        for arg in layer_args() {
            let id = arg.get_id().as_str();
            match documented_default(&arg) {
                Some(default) => flags.push(flag(id, &default)),
                None => assert!(
                    ["auth", "cors_origins", "exec", "hook_secret", "hook_allow"].contains(&id),
                    "--{id} does not say its default: {:?}",
                    arg.get_help()
                ),
            }
        }
        assert_eq!(probe(&flags, &[]), expected, "{flags:?}");
    }

    fn repository_file(path: &str) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        std::fs::read_to_string(root.join(path)).unwrap()
    }

    /// Spec §20 has a row for every flag, naming its variable, its config key and its default.
    #[test]
    fn the_spec_table_has_every_setting() {
        let spec = repository_file("spec/PROTOCOL.md");
        let row = |long: &str| {
            let start = format!("| `--{long}");
            // The flag's whole name: `--max-followers` is not `--max-followers-per-run`.
            let row = spec.lines().find(|l| {
                l.strip_prefix(&start)
                    .is_some_and(|rest| rest.starts_with([' ', '`', '[']))
            });
            row.unwrap_or_else(|| panic!("spec §20 has no row for --{long}"))
        };
        for arg in ServeArgs::augment_args(clap::Command::new("serve")).get_arguments() {
            let row = row(arg.get_long().unwrap());
            let env = arg.get_env().unwrap().to_str().unwrap();
            assert!(row.contains(&format!("`{env}`")), "{row}");
        }
        for arg in layer_args() {
            let (id, row) = (arg.get_id().as_str(), row(arg.get_long().unwrap()));
            let key = [format!("`{id}`"), format!("`{id} = "), format!("`[{id}.")];
            assert!(key.iter().any(|k| row.contains(k)), "no config key: {row}");
            // `--no-demo`: "demos on" says it better than "false".
            if let Some(default) = documented_default(&arg).filter(|_| id != "demo") {
                assert!(
                    row.contains(&format!("| `{default}` |")),
                    "{default}: {row}"
                );
            }
        }
    }

    #[test]
    fn the_readme_example_config_is_valid() {
        let readme = repository_file("README.md");
        let (_, section) = readme.split_once("## Configuring the server").unwrap();
        let (_, block) = section.split_once("```toml\n").unwrap();
        let (toml, _) = block.split_once("```").unwrap();
        let settings = toml::from_str::<Layer>(toml).unwrap().resolve().unwrap();
        assert!(settings.exec.contains_key("backup"), "{settings:?}");
    }

    /// The error of the settings in `toml`, set through the config file.
    fn refused(toml: &str) -> String {
        let layer: Layer = toml::from_str(toml).unwrap();
        layer.resolve().unwrap_err()
    }

    #[test]
    fn values_the_server_cannot_use_are_refused_naming_every_way_to_set_them() {
        let cases = [
            (
                "keep_alive = \"0s\"",
                "--keep-alive must be longer than 0s (LONGRUN_KEEP_ALIVE, or `keep_alive` in the config file)",
            ),
            ("body_limit = 0", "--body-limit must be more than 0"),
            (
                "max_active_runs = 0",
                "--max-active-runs must be more than 0",
            ),
            (
                "max_events_per_run = 1",
                "--max-events-per-run must be at least 2",
            ),
            (
                "poll_wait_default = \"61s\"",
                "--poll-wait-default (1m 1s) must not be longer than --poll-wait-max (1m)",
            ),
            (
                "poll_wait_default = \"2s\"\npoll_wait_max = \"1s\"",
                "--poll-wait-default (2s) must not be longer than --poll-wait-max (1s)",
            ),
            (
                "tombstone_ttl = \"500000000000years\"",
                "--tombstone-ttl is too long",
            ),
        ];
        for (toml, message) in cases {
            let error = refused(toml);
            assert!(error.contains(message), "{toml}: {error}");
        }
        // Zero where it means "none": no retention, no tombstones, no wait, no grace.
        let zeros = "retention = \"0s\"\nmax_retained = 0\ntombstone_ttl = \"0s\"\n\
            max_tombstones = 0\nretry = \"0s\"\ngrace = \"0s\"\n\
            poll_wait_default = \"0s\"\npoll_wait_max = \"0s\"";
        toml::from_str::<Layer>(zeros).unwrap().resolve().unwrap();
    }

    #[test]
    fn exec_objects_of_all_layers_add_up_and_a_name_may_not_repeat() {
        let flags = Layer {
            exec: Some(vec![exec_flag("a=true").unwrap()]),
            ..Layer::default()
        };
        let file: Layer = toml::from_str("[exec.b]\ncommand = \"true\"").unwrap();
        let names: Vec<String> = flags
            .over(file)
            .resolve()
            .unwrap()
            .exec
            .into_keys()
            .collect();
        assert_eq!(names, ["a", "b"]);

        let flags = Layer {
            exec: Some(vec![exec_flag("b=false").unwrap()]),
            ..Layer::default()
        };
        let file: Layer = toml::from_str("[exec.b]\ncommand = \"true\"").unwrap();
        let error = flags.over(file).resolve().unwrap_err();
        assert!(error.contains("--exec b: defined twice"), "{error}");
    }
}
