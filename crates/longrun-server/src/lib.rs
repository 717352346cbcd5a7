//! The longrun/1 reference server as a library.
//!
//! [`Server`] holds the objects (handlers) and the runs; [`app`] turns it into an axum
//! `Router`; [`serve`] runs that router on a listener until a shutdown future completes, then
//! cancels the active runs (reason `shutdown`) and lets open streams end cleanly;
//! [`serve_all`] does it on several listeners at once, TCP and unix sockets ([`bind_unix`]).
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use longrun_server::{Config, Server};
//! let server = Server::builder().config(Config::default()).demo().build().expect("unique object names");
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! longrun_server::serve(listener, server, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

pub mod auth;
mod catalogue;
mod compose;
mod config;
mod conn;
mod dashboard;
mod demo;
pub mod exec;
mod follow;
mod handler;
mod hooks;
mod http;
mod metrics;
mod nodes;
mod registry;
mod run;
mod runs;
mod store;
mod stream;
mod topics;
mod ws;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use auth::Auth;
pub use config::Config;
pub use conn::{Listener, bind_unix};
pub use handler::{Handler, HandlerResult, ObjectOptions, RunContext, RunError};
pub use hooks::check_allow_entry as check_hook_allow;
pub use http::app;
/// The schemars an arguments type derives `JsonSchema` from for [`ObjectOptions::args`].
pub use schemars;
pub use store::{DEFAULT_LEASE, StoreConfig};
pub use stream::{StreamError, StreamWriter};

use handler::Object;
use longrun_proto::ObjectName;
use registry::Registry;

/// A server: its configuration, its objects and its runs. Cheap to clone: one `Arc`, so the
/// clone every request's handlers and layers make (axum's `State`) is one reference count,
/// not one per part.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::ops::Deref for Server {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// What a [`Server`] and its clones share (its parts are the crate's own).
#[doc(hidden)]
pub struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) objects: Arc<BTreeMap<String, Object>>,
    pub(crate) registry: Arc<Registry>,
    pub(crate) conns: Arc<conn::Connections>,
    /// The registered worker nodes (spec §25), in memory.
    pub(crate) nodes: Arc<nodes::Nodes>,
    /// Response hooks and their outbox (spec §26).
    pub(crate) hooks: Arc<hooks::Hooks>,
    /// Pubsub topics and the run feeds (spec §28.5).
    pub(crate) topics: Arc<topics::Topics>,
    /// The open WebSockets (spec §28), closed on shutdown.
    pub(crate) sockets: Arc<ws::Sockets>,
    /// This server's own metrics (`GET /_metrics`), apart from other servers in the process.
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// The tenants and tokens, when the server has an auth file; replaced whole on reload.
    auth: Arc<RwLock<Option<Arc<Auth>>>>,
}

impl Server {
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tenants and tokens in force (`None`: the server is open).
    pub fn auth(&self) -> Option<Arc<Auth>> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Put new tenants and tokens in force (a reloaded auth file): requests from now on are
    /// checked against them; open streams go on.
    pub fn set_auth(&self, auth: Auth) {
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(auth));
    }

    /// The object of this name: a registered one, the reserved `_compose` (spec §25.10), or
    /// a worker node service (spec §25).
    pub(crate) fn object(&self, name: &str) -> Option<Object> {
        match self.objects.get(name) {
            Some(obj) => Some(obj.clone()),
            None if name == compose::OBJECT => Some(compose::object(&self.nodes)),
            None => self.nodes.object(name),
        }
    }

    /// The registered object names, sorted.
    pub fn object_names(&self) -> impl Iterator<Item = &str> {
        self.objects.keys().map(String::as_str)
    }

    /// How many connections `serve` has reset because they accepted no bytes for
    /// [`Config::stall_timeout`]; the receiver sees every change.
    pub fn stalled_connections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.conns.stalled()
    }

    /// How many attempts to deliver response hooks were recorded (spec §26); the receiver
    /// sees every change.
    pub fn hook_attempts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.hooks.attempts()
    }

    /// Cancel every active run (reason `shutdown`) and wait until all have ended. New
    /// submits are refused from the moment this is called. `serve` calls it on shutdown.
    pub async fn shutdown(&self) {
        self.nodes.stop_all();
        self.registry.shutdown().await;
        self.hooks.drain().await;
        self.registry.close().await;
    }
}

#[derive(Default)]
pub struct ServerBuilder {
    config: Config,
    store: StoreConfig,
    objects: BTreeMap<String, Object>,
    /// Names registered more than once, in the order seen: `build` refuses them.
    duplicates: Vec<String>,
    /// Objects whose arguments' schema is not one, and why: `build` refuses them.
    bad_schemas: Vec<(String, String)>,
    auth: Option<Auth>,
}

/// Why [`ServerBuilder::build`] refused to build a server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// Two objects were registered under this name (a later one would silently have
    /// replaced the earlier).
    DuplicateObject(String),
    /// The store could not be opened (its file, its lock, its schema); the text says why.
    Store(String),
    /// This object's `args_schema` is not a JSON Schema; the text says why.
    InvalidSchema { object: String, why: String },
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::DuplicateObject(name) => {
                write!(
                    f,
                    "two objects are named {name:?}; object names must be unique"
                )
            }
            BuildError::Store(why) => write!(f, "cannot open the store: {why}"),
            BuildError::InvalidSchema { object, why } => write!(f, "object {object}: {why}"),
        }
    }
}

impl std::error::Error for BuildError {}

impl ServerBuilder {
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Require a tenant's token on every run route (without, the server is open).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Where runs are kept ([`StoreConfig::Memory`] by default).
    pub fn store(mut self, store: StoreConfig) -> Self {
        self.store = store;
        self
    }

    /// Register an object. Panics if `name` is not a valid object name (see
    /// [`ObjectName::is_valid`]: names starting with `_` are the server's own); names that
    /// come from user input should be checked first. A name registered twice makes
    /// [`build`](Self::build) fail with [`BuildError::DuplicateObject`].
    pub fn object(self, name: &str, handler: impl Handler) -> Self {
        self.object_with(name, ObjectOptions::default(), handler)
    }

    /// Register an object with its options: a timeout, a retention, a byte stream, and what
    /// `GET /_objects` tells of it (`description`, `args_schema`, spec §13.6).
    pub fn object_with(self, name: &str, options: ObjectOptions, handler: impl Handler) -> Self {
        let kind = if (&handler as &dyn std::any::Any).is::<exec::ExecHandler>() {
            catalogue::Kind::Exec
        } else {
            catalogue::Kind::Handler
        };
        self.object_of_kind(name, kind, options, handler)
    }

    /// [`object_with`](Self::object_with), listed in the catalogue as `kind`.
    pub(crate) fn object_of_kind(
        mut self,
        name: &str,
        kind: catalogue::Kind,
        mut options: ObjectOptions,
        handler: impl Handler,
    ) -> Self {
        if let Err(e) = ObjectName::user(name) {
            panic!("{e}");
        }
        // Compiled once here; the options a run is given keep neither copy.
        let entry = catalogue::Entry::new(
            kind,
            options.description.take(),
            options.args_schema.take(),
            options.stream.is_some(),
        );
        let entry = match entry {
            Ok(entry) => entry,
            Err(why) => {
                self.bad_schemas.push((name.to_owned(), why));
                catalogue::Entry::new(kind, None, None, false).expect("no schema is valid")
            }
        };
        let object = Object {
            handler: Arc::new(handler),
            options,
            entry: Arc::new(entry),
        };
        if self.objects.insert(name.to_owned(), object).is_some() {
            self.duplicates.push(name.to_owned());
        }
        self
    }

    /// Add the demo objects (`echo`, `count`, `sleep`, `fail`, `emit`, `ephemeral`) that the
    /// conformance scenarios and the README use.
    pub fn demo(self) -> Self {
        demo::register(self)
    }

    /// The server, or the first name that was registered twice, or why its store could not
    /// be opened. A durable store is read back here: its ended runs and tombstones are served
    /// again, and runs it held as running end as `error` with `"reason": "interrupted"`.
    pub fn build(self) -> Result<Server, BuildError> {
        if let Some(name) = self.duplicates.into_iter().next() {
            return Err(BuildError::DuplicateObject(name));
        }
        if let Some((object, why)) = self.bad_schemas.into_iter().next() {
            return Err(BuildError::InvalidSchema { object, why });
        }
        let keys = store::KeyLimits {
            idempotency_ttl: self.config.idempotency_ttl,
            max_idempotency_keys: self.config.max_idempotency_keys,
        };
        let mut outbox = Vec::new();
        let metrics = Arc::new(metrics::Metrics::default());
        let (registry, nodes) = match &self.store {
            StoreConfig::Memory => (Registry::new(None, metrics.clone()), Vec::new()),
            StoreConfig::Sqlite { path, full_sync } => {
                let (journal, mut restored) =
                    store::Journal::open(path, *full_sync, keys).map_err(BuildError::Store)?;
                if restored.interrupted > 0 {
                    tracing::warn!(
                        runs = restored.interrupted,
                        "runs that were running when the server stopped ended as interrupted"
                    );
                }
                let nodes = std::mem::take(&mut restored.nodes);
                outbox = std::mem::take(&mut restored.hooks);
                let registry = Registry::new(Some(journal), metrics.clone());
                registry.restore(&self.config, restored);
                (registry, nodes)
            }
            StoreConfig::Postgres { url, lease } => {
                // Nothing is read back: runs are read from the database when asked for,
                // and those of a replica that stopped are ended once its lease runs out.
                let limits = store::Limits {
                    max_active_runs: self.config.max_active_runs,
                    tombstone_ttl: self.config.tombstone_ttl,
                    max_tombstones: self.config.max_tombstones,
                    keys,
                    lease: *lease,
                    topic_history: self.config.topic_history,
                    topic_history_age: self.config.topic_history_age,
                };
                // Nodes too: `Nodes::start` reads them, and follows other replicas' changes.
                let journal = store::Journal::connect(url, limits).map_err(BuildError::Store)?;
                (Registry::new(Some(journal), metrics.clone()), Vec::new())
            }
        };
        let nodes = Arc::new(nodes::Nodes::new(
            &self.config,
            registry.journal().cloned(),
            nodes,
        ));
        let hooks = hooks::Hooks::new(
            &self.config,
            registry.journal().cloned(),
            outbox,
            metrics.clone(),
        );
        let topics = Arc::new(topics::Topics::new(
            &self.config,
            registry.journal().cloned(),
        ));
        registry.set_feed(topics.clone());
        Ok(Server {
            shared: Arc::new(Shared {
                topics,
                sockets: Arc::default(),
                metrics,
                hooks: Arc::new(hooks),
                config: Arc::new(self.config),
                objects: Arc::new(self.objects),
                registry: Arc::new(registry),
                conns: Arc::new(conn::Connections::new()),
                nodes,
                auth: Arc::new(RwLock::new(self.auth.map(Arc::new))),
            }),
        })
    }
}

/// Serve `server` on `listener` (TCP or unix socket) until `shutdown` completes; then stop
/// accepting, cancel the active runs with reason `shutdown` (each has the grace period to
/// stop), let open streams deliver their terminal event, and return once every connection is
/// closed.
pub async fn serve(
    listener: impl Into<Listener>,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_all(vec![listener.into()], server, shutdown).await
}

/// [`serve`] on every one of `listeners` at once: the same routes, runs and shutdown on each.
/// A request that came over a unix socket has no peer address (a node registering over one
/// must give its `host`, spec §25.1).
pub async fn serve_all(
    listeners: Vec<Listener>,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if listeners.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "serve_all needs at least one listener",
        ));
    }
    let janitor = tokio::spawn(janitor(server.clone()));
    server.nodes.start();
    server.hooks.start(&server);
    server.topics.start();
    let router = app(server.clone());
    let draining = server.clone();
    let mut listeners: Vec<conn::Acceptor> = listeners
        .into_iter()
        .map(|l| conn::Acceptor::new(l, &server.config, server.conns.clone()))
        .collect();
    // hyper's HTTP/1 connection directly rather than `axum::serve` (whose connection, built
    // to tell HTTP/1 from HTTP/2, costs an idle follower 22.5 KiB instead of 13 KiB here;
    // the workspace builds axum for HTTP/1 only anyway), with upgrades for `/_ws`. The
    // patched hyper of `vendor/hyper` brings that to about 6 KiB: its two per-connection
    // buffers start at 1 KiB instead of 8 KiB. Shutdown
    // is as graceful as axum's: stop accepting, let every connection finish its exchange,
    // wait for all of them. (hyper-util's graceful watcher does not take an upgradeable
    // connection, so a token and a task tracker do its job.)
    let closing = tokio_util::sync::CancellationToken::new();
    let connections = tokio_util::task::TaskTracker::new();
    let http = hyper::server::conn::http1::Builder::new();
    tokio::pin!(shutdown);
    loop {
        // Every listener's accept at once (each is cancel-safe); the first connection wins.
        let accept =
            futures::future::select_all(listeners.iter_mut().map(|l| Box::pin(l.accept())));
        tokio::select! {
            ((io, addr), _, _) = accept => {
                let service = hyper_util::service::TowerToHyperService::new(router.clone());
                // The peer's address, for a node registering without a host (spec §25.1).
                let service = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        if let Some(addr) = addr {
                            req.extensions_mut().insert(axum::extract::ConnectInfo(addr));
                        }
                        hyper::service::Service::call(&service, req)
                    },
                );
                let conn = http
                    .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                    .with_upgrades();
                let closing = closing.clone();
                connections.spawn(async move {
                    let mut conn = std::pin::pin!(conn);
                    let ended = tokio::select! {
                        ended = conn.as_mut() => ended,
                        _ = closing.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("shutting down: canceling active runs");
    drop(listeners);
    // Runs end (so their streams end) while the connections drain.
    tokio::spawn(async move { draining.shutdown().await });
    closing.cancel();
    connections.close();
    server.sockets.shutdown().await;
    connections.wait().await;
    server.shutdown().await;
    janitor.abort();
    Ok(())
}

/// Drops expired runs and tombstones while the server is idle (every access also sweeps).
async fn janitor(server: Server) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        server.registry.sweep(&server.config);
        server.topics.sweep();
    }
}
