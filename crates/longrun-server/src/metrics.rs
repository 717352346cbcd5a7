//! `GET /_metrics` (spec §13.5): the server's metrics in the Prometheus text format.
//!
//! Each `Server` has a registry of its own (`prometheus-client`), not a process-global
//! recorder: the server is a library, and tests (or an embedder) run several servers in one
//! process whose numbers must not mix. Labels are bounded: objects come from the catalogue,
//! states, transports, node statuses and methods are fixed sets, routes are the router's
//! templates (`/{object}/{id}`), never a run id.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::Server;
use crate::auth::Caller;
use crate::http::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ObjectLabel {
    pub object: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndedLabels {
    pub object: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TransportLabel {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: &'static str,
}

/// How a follower reads: Server-Sent Events, long polling, or the WebSocket (§28).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Transport {
    Sse,
    Poll,
    Ws,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Poll => "poll",
            Transport::Ws => "ws",
        }
    }
}

/// Every metric of one server. Each handle is an `Arc` inside, so clones count together.
pub(crate) struct Metrics {
    registry: Registry,
    runs_submitted: Family<ObjectLabel, Counter>,
    runs_ended: Family<EndedLabels, Counter>,
    /// Set from the registry at each scrape.
    active_runs: Gauge,
    /// Events this server appended (queued, running, terminal), of the runs it executes.
    pub events_appended: Counter,
    followers: Family<TransportLabel, Gauge>,
    pub long_poll_waits: Counter,
    pub hook_deliveries: Counter,
    pub hook_failures: Counter,
    /// Set from the node registry at each scrape.
    nodes: Family<StatusLabel, Gauge>,
    requests: Family<RequestLabels, Histogram>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s: a submit, a poll that answers at once, a held poll.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("longrun");
        let m = Metrics {
            runs_submitted: Family::default(),
            runs_ended: Family::default(),
            active_runs: Gauge::default(),
            events_appended: Counter::default(),
            followers: Family::default(),
            long_poll_waits: Counter::default(),
            hook_deliveries: Counter::default(),
            hook_failures: Counter::default(),
            nodes: Family::default(),
            requests: Family::new_with_constructor(latency_histogram),
            registry: Registry::default(),
        };
        // (name, help, metric): the names get the `longrun_` prefix, counters `_total`.
        macro_rules! register {
            ($($name:literal, $help:literal, $metric:ident;)*) => {
                $(registry.register($name, $help, m.$metric.clone());)*
            };
        }
        register! {
            "runs_submitted", "Runs created by submits, by object", runs_submitted;
            "runs_ended", "Runs that ended, by object and terminal state", runs_ended;
            "active_runs", "Runs queued or running that this server executes", active_runs;
            "events_appended", "Events appended to the runs this server executes", events_appended;
            "followers", "Followers now, by transport (sse, poll, ws)", followers;
            "long_poll_waits", "Long polls that found nothing new and waited", long_poll_waits;
            "hook_deliveries", "Hook delivery attempts that were delivered", hook_deliveries;
            "hook_delivery_failures", "Hook delivery attempts that failed (to be retried, or given up)", hook_failures;
            "nodes", "Registered worker nodes, by health status", nodes;
            "http_request_duration_seconds", "Time to the response head of HTTP requests, by method, route and status class", requests;
        }
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn submitted(&self, object: &str) {
        self.runs_submitted
            .get_or_create(&ObjectLabel {
                object: object.to_owned(),
            })
            .inc();
    }

    pub fn ended(&self, object: &str, state: longrun_proto::State) {
        self.runs_ended
            .get_or_create(&EndedLabels {
                object: object.to_owned(),
                state: state.as_str(),
            })
            .inc();
    }

    /// One more follower of `transport`, until the guard is dropped.
    pub fn follower(&self, transport: Transport) -> Held {
        let gauge = self
            .followers
            .get_or_create(&TransportLabel {
                transport: transport.as_str(),
            })
            .clone();
        gauge.inc();
        Held(gauge)
    }

    /// The text of a scrape, with the gauges read now.
    fn render(&self, server: &Server) -> String {
        self.active_runs.set(server.registry.active() as i64);
        for (status, count) in server.nodes.count_by_status() {
            self.nodes.get_or_create(&StatusLabel { status }).set(count);
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// A gauge counted up while this lives.
pub(crate) struct Held(Gauge);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /_metrics`: open without tenants; with them, for the admin scope only (a scrape
/// sees every tenant's numbers).
pub(crate) async fn scrape(
    caller: Caller,
    State(server): State<Server>,
) -> Result<Response, ApiError> {
    caller.require_admin_for("read the metrics")?;
    let text = server.metrics.render(&server);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE),
        )],
        text,
    )
        .into_response())
}

/// The latency of every request a route matched, by its template; the `/_ws` upgrade and
/// paths no route has are not measured.
pub(crate) async fn track(State(server): State<Server>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = known_method(req.method().as_str());
    let res = next.run(req).await;
    let status = match res.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    server
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .observe(started.elapsed().as_secs_f64());
    res
}

/// The method as a label: one the routes know, or `other` (a client may send any token).
fn known_method(method: &str) -> String {
    match method {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" => method.to_owned(),
        _ => "other".to_owned(),
    }
}
