//! `GET /{object}/{id}`: follow a run by SSE or by long polling, from a cursor.
//!
//! Both transports read the run's shared log at their own cursor and wait on a `watch`
//! receiver for appends, so a follower costs a cursor and a receiver: no copy of the history,
//! no queue. An SSE write is a slice of the log's shared segments (`run.rs`), so a reader that
//! stalls holds no bytes of its own; its connection's kernel buffer is capped and it is cut
//! after the stall timeout (`conn.rs`). Each follower holds a slot against the limits.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::Stream;
use longrun_proto::header as h;
use longrun_proto::{ProblemKind, sse};
use tokio::sync::watch;

use crate::Server;
use crate::auth::{Caller, Scope};
use crate::conn::FollowerSlot;
use crate::http::{ApiError, lookup, put_status_headers, status_headers, wants_event_stream};
use crate::run::Run;

/// How many events one long-poll reply carries at most.
pub const POLL_BATCH_EVENTS: usize = 10_000;

pub(crate) async fn follow(
    caller: Caller,
    State(server): State<Server>,
    Path((object, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    packets: Option<axum::Extension<crate::ws::Packets>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Scope::Read, &object)?;
    let run = lookup(&server, &caller, &object, &id).await?;
    let query: Vec<(String, String)> =
        form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let cursor = cursor(&headers, &query)?;
    // The first event a follower has not seen yet.
    let next = cursor.map_or(0, |c| c.saturating_add(1));
    use crate::metrics::Transport;
    if wants_event_stream(&headers) {
        let tenant = caller.admit_follower()?;
        let slot = follower_slot(&server, &run)?.with_tenant(tenant);
        run.mark_followed();
        if packets.is_some() {
            let slot = slot.counted(server.metrics.follower(Transport::Ws));
            return Ok(follow_packets(run, next, slot));
        }
        let slot = slot.counted(server.metrics.follower(Transport::Sse));
        Ok(follow_sse(&server, run, next, slot))
    } else {
        let wait = wait(&server, &query)?;
        let tenant = caller.admit_follower()?;
        let slot = follower_slot(&server, &run)?.with_tenant(tenant);
        let slot = slot.counted(server.metrics.follower(Transport::Poll));
        run.mark_followed();
        let res = follow_poll(run, next, wait, &server.metrics.long_poll_waits).await;
        drop(slot);
        Ok(res)
    }
}

/// Count the follower against the run's and the server's limits, or answer 503.
pub(crate) fn follower_slot(server: &Server, run: &Arc<Run>) -> Result<FollowerSlot, ApiError> {
    server.conns.follow(&server.config, run).ok_or_else(|| {
        ApiError::new(
            ProblemKind::TooManyFollowers,
            format!(
                "the run has {} followers or the server {}, as many as they may; retry later",
                server.config.max_followers_per_run, server.config.max_followers
            ),
        )
        .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
    })
}

/// The cursor: the `Last-Event-ID` header if present and non-empty, else the query.
fn cursor(headers: &HeaderMap, query: &[(String, String)]) -> Result<Option<u64>, ApiError> {
    let from_header = headers
        .get(h::LAST_EVENT_ID)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").trim())
        .filter(|v| !v.is_empty());
    let raw = from_header.or_else(|| {
        h::CURSOR_QUERY.iter().find_map(|name| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        })
    });
    match raw {
        None => Ok(None),
        Some(raw) => h::parse_cursor(raw).map(Some).ok_or_else(|| {
            ApiError::new(
                ProblemKind::InvalidCursor,
                format!(
                    "{raw:?} is not an event id; use the id of the last event you saw (0, 1, 2, …)"
                ),
            )
        }),
    }
}

/// The long-poll hold time: `wait` seconds, clamped to the maximum.
fn wait(server: &Server, query: &[(String, String)]) -> Result<Duration, ApiError> {
    let Some((_, raw)) = query.iter().find(|(k, _)| k == h::WAIT_QUERY) else {
        return Ok(server.config.poll_wait_default);
    };
    raw.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(server.config.poll_wait_max.as_secs_f64())))
        .ok_or_else(|| {
            ApiError::new(
                ProblemKind::InvalidWait,
                format!("wait={raw:?} is not a non-negative number of seconds"),
            )
        })
}

fn follow_sse(server: &Server, run: Arc<Run>, next: u64, slot: FollowerSlot) -> Response {
    let (state, last) = run.status();
    if state.is_terminal() && next > last {
        // WHATWG: 204 tells an EventSource to stop reconnecting.
        return StatusCode::NO_CONTENT.into_response();
    }
    let retry = sse::retry_line(server.config.retry.as_millis() as u64);
    let body = Body::from_stream(sse_stream(
        run.clone(),
        next,
        retry,
        server.config.keep_alive,
        slot,
    ));
    let mut res = Response::new(body);
    let hs = res.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(h::EVENT_STREAM),
    );
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Ask nginx-like proxies not to buffer the stream.
    hs.insert("x-accel-buffering", HeaderValue::from_static("no"));
    status_headers(&run, hs);
    res
}

/// The event stream of a follow that came over the WebSocket (spec §28.3): the same follow,
/// each body chunk a JSON array of the events one read found (the log's own pre-encoded JSON,
/// up to [`POLL_BATCH_EVENTS`]), which the socket sends as one packet.
fn follow_packets(run: Arc<Run>, next: u64, slot: FollowerSlot) -> Response {
    let (state, last) = run.status();
    if state.is_terminal() && next > last {
        return StatusCode::NO_CONTENT.into_response();
    }
    let appended = run.subscribe();
    let follower = (run.clone(), appended, next, false, slot);
    let body = futures::stream::unfold(
        follower,
        |(run, mut appended, next, done, slot)| async move {
            if done {
                return None;
            }
            loop {
                let batch = run.read_json(next, POLL_BATCH_EVENTS);
                if batch.count > 0 {
                    let (next, done) = (batch.next, batch.finished);
                    return Some((
                        Ok::<_, Infallible>(batch.bytes),
                        (run, appended, next, done, slot),
                    ));
                }
                if batch.finished || appended.changed().await.is_err() {
                    return None;
                }
            }
        },
    );
    let mut res = Response::new(Body::from_stream(body));
    let hs = res.headers_mut();
    hs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(h::EVENT_STREAM),
    );
    status_headers(&run, hs);
    res
}

struct SseFollower {
    run: Arc<Run>,
    appended: watch::Receiver<usize>,
    next: u64,
    retry: Option<Bytes>,
    keep_alive: Duration,
    done: bool,
    /// Held while the stream lives: it is what counts this follower.
    _slot: FollowerSlot,
}

fn sse_stream(
    run: Arc<Run>,
    next: u64,
    retry: Bytes,
    keep_alive: Duration,
    slot: FollowerSlot,
) -> impl Stream<Item = Result<Bytes, Infallible>> + Send {
    // Subscribe before the first read: an append between the read and the wait then shows up
    // as a change, so no event is ever missed.
    let follower = SseFollower {
        appended: run.subscribe(),
        run,
        next,
        retry: Some(retry),
        keep_alive,
        done: false,
        _slot: slot,
    };
    futures::stream::unfold(follower, |mut f| async move {
        if f.done {
            return None;
        }
        if let Some(retry) = f.retry.take() {
            return Some((Ok(retry), f));
        }
        loop {
            let batch = f.run.read_sse(f.next);
            if batch.count > 0 {
                f.next = batch.next;
                f.done = batch.finished;
                return Some((Ok(batch.bytes), f));
            }
            if batch.finished {
                return None;
            }
            tokio::select! {
                changed = f.appended.changed() => {
                    if changed.is_err() {
                        return None; // the run is gone; cannot happen while we hold it
                    }
                }
                _ = tokio::time::sleep(f.keep_alive) => {
                    return Some((Ok(Bytes::from_static(sse::KEEP_ALIVE)), f));
                }
            }
        }
    })
}

/// A long poll: what is after `next` now, or else what comes within `wait`; `waits` counts
/// the polls that had to wait.
async fn follow_poll(
    run: Arc<Run>,
    next: u64,
    wait: Duration,
    waits: &prometheus_client::metrics::counter::Counter,
) -> Response {
    let mut appended = run.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let mut waited = false;
    let batch = loop {
        let batch = run.read_json(next, POLL_BATCH_EVENTS);
        if batch.count > 0 || batch.finished {
            break batch;
        }
        if !wait.is_zero() && !std::mem::replace(&mut waited, true) {
            waits.inc();
        }
        tokio::select! {
            changed = appended.changed() => {
                if changed.is_err() {
                    break batch;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break run.read_json(next, POLL_BATCH_EVENTS),
        }
    };
    let mut res = (StatusCode::OK, batch.bytes).into_response();
    let hs = res.headers_mut();
    hs.insert(header::CONTENT_TYPE, HeaderValue::from_static(h::JSON));
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    put_status_headers(batch.state, batch.last, hs);
    res
}
