use std::time::Duration;

/// Limits and timings of a server. Every field has the protocol's default (see
/// `spec/PROTOCOL.md`); `longrun serve` fills them from flags, env and its config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest submit body accepted, in bytes (413 beyond).
    pub body_limit: usize,
    /// How long a terminal run stays readable before it is dropped (then 410).
    pub retention: Duration,
    /// How many terminal runs are kept at most; the one due to expire soonest goes first.
    pub max_retained: usize,
    /// How many runs may be active (not terminal) at once (503 beyond), so memory stays bounded.
    pub max_active_runs: usize,
    /// How many events one run may hold; a handler that emits more gets its run ended as `error`.
    pub max_events_per_run: u64,
    /// How long a dropped run answers 410 before it is forgotten (then 404).
    pub tombstone_ttl: Duration,
    /// How many tombstones are kept at most, oldest dropped first.
    pub max_tombstones: usize,
    /// Idle time after which an SSE stream gets a keep-alive comment.
    pub keep_alive: Duration,
    /// The `retry:` hint sent first on every SSE stream.
    pub retry: Duration,
    /// How long a canceled handler may take to stop before it is dropped (or its process killed).
    pub grace: Duration,
    /// Long poll: default and maximum hold time.
    pub poll_wait_default: Duration,
    pub poll_wait_max: Duration,
    /// Origins whose browser pages may call this server (CORS); `*` allows any. Empty: no
    /// CORS headers at all, so browsers keep cross-origin pages out.
    pub cors_origins: Vec<String>,
    /// The Standard Webhooks secret (`whsec_…`) response hooks are signed with (spec §26.4);
    /// without one, a submit with `Longrun-Hook` is refused.
    pub hook_secret: Option<String>,
    /// What the hook guard lets through beyond public addresses: host names, IP addresses,
    /// CIDRs, unix socket paths (a path ending in `/`: every socket under it) (spec §26.6).
    pub hook_allow: Vec<String>,
    /// The delay before each attempt of a delivery (the first counts from its event); after
    /// the last failed attempt the delivery is `failed`. Each is jittered by ±10%.
    pub hook_retry: Vec<Duration>,
    /// How long one attempt of a delivery may take.
    pub hook_timeout: Duration,
    /// Pending deliveries at most; beyond, `run.event` deliveries are dropped (a `run.ended`
    /// one is always kept).
    pub hook_outbox: usize,
    /// `SO_SNDBUF` of every accepted connection, in bytes (Linux doubles it for its own
    /// bookkeeping); 0 leaves the kernel's autotuning, which lets one connection that does not
    /// read hold up to `tcp_wmem`'s maximum (4 MiB) of kernel memory.
    pub send_buffer: usize,
    /// A connection that accepts no byte of a pending write for this long is closed (reset,
    /// so the kernel frees its buffers at once). A follower cut this way resumes by its cursor.
    pub stall_timeout: Duration,
    /// Most followers (SSE streams and held long polls) of one run at once (503 beyond).
    pub max_followers_per_run: usize,
    /// Most followers of all runs at once (503 beyond).
    pub max_followers: usize,
    /// How long a submit's idempotency key is remembered (the same key then answers the
    /// first reply again).
    pub idempotency_ttl: Duration,
    /// How many idempotency keys are remembered at most, oldest forgotten first.
    pub max_idempotency_keys: usize,
    /// How often every worker node's health path is pinged (spec §25.3).
    pub health_interval: Duration,
    /// How long one health ping may take before it counts as failed.
    pub health_timeout: Duration,
    /// Consecutive failed health pings that turn an `ok` node `unavailable` (at least 1).
    pub health_failures: u32,
    /// How long a run of a node service waits `queued` for an `ok` node before it ends
    /// `error` ("No active listeners for: <topic>"; spec §25.4).
    pub dispatch_timeout: Duration,
    /// The furthest `Longrun-Deadline` a submit may ask for (spec §4.4).
    pub max_deadline: Duration,
    /// How many bytes one run's byte stream may hold (spec §27.4); a write past it ends the
    /// run as `error`.
    pub max_stream_bytes: u64,
    /// WebSocket (spec §28): bytes queued towards one connection at most. A stream's packets
    /// wait for room (its run's log keeps the events); a publication that finds no room closes
    /// the connection with 4008, and its subscriber resumes from its offset.
    pub ws_queue_bytes: usize,
    /// The largest packet a client may send over the WebSocket (close 1009 beyond).
    pub ws_max_message: usize,
    /// Requests (streams included) in flight on one WebSocket at once (429 beyond).
    pub ws_max_requests: usize,
    /// Subscriptions on one WebSocket at once (429 beyond).
    pub ws_max_subscriptions: usize,
    /// A ping every this long; a connection that sent nothing, not even the pong, by the next
    /// ping is closed.
    pub ws_ping_interval: Duration,
    /// Publications kept per topic for `since` (spec §28.5), by count and by age.
    pub topic_history: usize,
    pub topic_history_age: Duration,
    /// Bytes of publications kept for `since` over all topics; past it a topic's oldest go
    /// first, so memory stays bounded whatever the number of topics.
    pub topic_history_bytes: usize,
    /// Topics known at once; a publication to a new topic past it is refused (503) until
    /// idle topics expire.
    pub max_topics: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            body_limit: 1024 * 1024,
            retention: Duration::from_secs(3600),
            max_retained: 10_000,
            max_active_runs: 10_000,
            max_events_per_run: 1_000_000,
            tombstone_ttl: Duration::from_secs(24 * 3600),
            max_tombstones: 100_000,
            keep_alive: Duration::from_secs(15),
            retry: Duration::from_millis(1000),
            grace: Duration::from_secs(5),
            poll_wait_default: Duration::from_secs(20),
            poll_wait_max: Duration::from_secs(60),
            cors_origins: Vec::new(),
            hook_secret: None,
            hook_allow: Vec::new(),
            hook_retry: [0, 5, 300, 1800, 7200, 18000, 36000]
                .map(Duration::from_secs)
                .to_vec(),
            hook_timeout: Duration::from_secs(15),
            hook_outbox: 100_000,
            send_buffer: 64 * 1024,
            stall_timeout: Duration::from_secs(30),
            max_followers_per_run: 10_000,
            max_followers: 100_000,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            max_idempotency_keys: 100_000,
            health_interval: Duration::from_secs(10),
            health_timeout: Duration::from_secs(2),
            health_failures: 3,
            dispatch_timeout: Duration::from_secs(30),
            max_deadline: Duration::from_secs(7 * 86400),
            max_stream_bytes: 64 * 1024 * 1024,
            ws_queue_bytes: 1024 * 1024,
            ws_max_message: 1024 * 1024,
            ws_max_requests: 1024,
            ws_max_subscriptions: 1024,
            ws_ping_interval: Duration::from_secs(25),
            topic_history: 1000,
            topic_history_age: Duration::from_secs(600),
            topic_history_bytes: 64 * 1024 * 1024,
            max_topics: 100_000,
        }
    }
}
