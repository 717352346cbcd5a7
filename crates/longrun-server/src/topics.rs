//! Pubsub topics (spec §28.5): publications with dense offsets per topic, a bounded history
//! for `since`, and subscribers that receive in order.
//!
//! One lock orders everything: a publication takes its offset, joins its topic's history and
//! is offered to every matching subscriber under it, and a subscribe replays the history and
//! joins under it too, so a subscriber sees each offset once, in order, with no gap between
//! replay and live. Offering never waits: each subscriber's connection has a bounded queue,
//! and one that is full is closed as slow (4008) rather than stalling the publisher or any
//! other subscriber (the seed's hub stalled everyone behind one slow reader). An unsubscribe
//! is acknowledged through that same queue, after every publication offered before it.
//!
//! Topics are kept per namespace: a tenant's, or (on an open server, and for an admin's
//! `_runs` feeds) the server's. The built-in feeds `_runs` and `_runs.{object}` carry every
//! run created, started and ended.
//!
//! On Postgres the topics are the replicas' together: a publication takes its offset in the
//! database (`store/postgres.rs`: the topic's row, so one dense sequence over every replica)
//! and is notified; each replica delivers to its own subscribers only from those
//! notifications (`follow`), reading the rows after the offset it delivered last, so a gap
//! (a lost connection, a topic new here) is read, not skipped. The run feeds are published by
//! the journal, in the transaction that commits the run's `queued` or its end. The history
//! here is then a cache of the database's, which `since` reads.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use longrun_proto::{ObjectName, ProblemKind, State};
use serde_json::value::RawValue;

use crate::Config;
use crate::http::{ApiError, store_unavailable};
use crate::store::Journal;
use crate::store::postgres::NOTIFIED_NS;

/// How long an unsubscribe waits at most for the publications before it (on Postgres).
const SETTLE: Duration = Duration::from_secs(10);

/// Longest topic name.
pub const MAX_TOPIC: usize = 255;
/// The feed of every run created, started and ended; `_runs.{object}` has one object's.
pub const RUNS_FEED: &str = "_runs";

/// A tenant's topics, or the server's (`None`: an open server, or an admin's feeds).
pub(crate) type Namespace = Option<Arc<str>>;

/// Where a subscription's publications go: a WebSocket connection's queue.
pub(crate) trait Sink: Send + Sync {
    /// Queue `packet` without waiting; `false` when there is no room (the sink closes itself
    /// as slow) or it is closed.
    fn offer(&self, packet: String) -> bool;
}

/// One subscription, as the connection that made it knows it.
pub(crate) struct Subscription {
    pub id: u64,
}

struct Sub {
    ns: Namespace,
    pattern: String,
    /// The subscribe packet's `uid` as JSON text: every publication carries it.
    uid: String,
    sink: Arc<dyn Sink>,
}

struct Publication {
    offset: u64,
    at: Instant,
    data: Box<RawValue>,
}

#[derive(Default)]
struct Topic {
    /// The offset the next publication gets.
    next: u64,
    history: VecDeque<Publication>,
}

#[derive(Default)]
struct Inner {
    topics: HashMap<(Namespace, String), Topic>,
    /// Subscriptions by the one topic they name, and the pattern ones per namespace.
    exact: HashMap<(Namespace, String), Vec<u64>>,
    patterns: HashMap<Namespace, Vec<u64>>,
    subs: HashMap<u64, Sub>,
    next_sub: u64,
    /// Bytes of data in every topic's history.
    history_bytes: usize,
}

pub(crate) struct Topics {
    inner: Mutex<Inner>,
    history: usize,
    history_age: Duration,
    history_bytes: usize,
    max_topics: usize,
    /// The Postgres store, whose tables every replica's topics share.
    shared: Option<Arc<Journal>>,
    /// Whether `follow` runs (a server served twice starts it once).
    started: std::sync::atomic::AtomicBool,
    /// Told each time `follow` delivered, for `settle`.
    delivered: tokio::sync::Notify,
}

/// A namespace in the database: the tenant's name, `""` for the server's (tenants have names).
fn ns_text(ns: &Namespace) -> &str {
    ns.as_deref().unwrap_or("")
}

fn ns_from(text: &str) -> Namespace {
    (!text.is_empty()).then(|| Arc::from(text))
}

/// The feeds' publication of a run created, started or ended: its data, and the `(namespace, topic)`s
/// it goes to — `_runs` and `_runs.{object}` of its tenant and of the server (which admins
/// subscribe to).
pub(crate) fn feed(
    tenant: Option<&Arc<str>>,
    object: &str,
    id: &str,
    state: State,
) -> (String, Vec<(Namespace, String)>) {
    let data = serde_json::to_string(&FeedEntry { id, object, state }).expect("feeds serialize");
    (data, feed_topics(tenant, object))
}

/// The `(namespace, topic)`s a run of `object` is announced on: `_runs` and `_runs.{object}`
/// of the server's, then of its tenant's.
fn feed_topics(tenant: Option<&Arc<str>>, object: &str) -> Vec<(Namespace, String)> {
    let mut namespaces = vec![None];
    if let Some(t) = tenant {
        namespaces.push(Some(t.clone()));
    }
    let per_object = format!("{RUNS_FEED}.{object}");
    namespaces
        .into_iter()
        .flat_map(|ns| [(ns.clone(), RUNS_FEED.to_owned()), (ns, per_object.clone())])
        .collect()
}

/// One publication of the run feeds, as its subscribers read it (keys in the order they
/// always had: sorted).
#[derive(serde::Serialize)]
struct FeedEntry<'a> {
    id: &'a str,
    object: &'a str,
    state: State,
}

/// Is `name` a topic: dot-separated parts of letters, digits, `_` and `-`?
pub(crate) fn is_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// Is `pattern` a subscription pattern (a topic with `*` or `?` somewhere)?
fn is_pattern(pattern: &str) -> bool {
    pattern.contains(['*', '?'])
}

/// Check a topic a client publishes to: a topic, not reserved.
pub(crate) fn check_publish(topic: &str) -> Result<(), ApiError> {
    if !is_topic(topic) {
        return Err(invalid_topic(topic));
    }
    if topic.starts_with('_') {
        return Err(ApiError::new(
            ProblemKind::InvalidTopic,
            format!("{topic:?} is reserved: topics starting with _ are the server's feeds"),
        ));
    }
    Ok(())
}

fn invalid_topic(topic: &str) -> ApiError {
    ApiError::new(
        ProblemKind::InvalidTopic,
        format!(
            "{topic:?} is not a topic: dot-separated parts of letters, digits, _ and - (e.g. \
             chat.room-1), at most {MAX_TOPIC} bytes; a subscription may use * and ?"
        ),
    )
}

/// One publication packet (spec §28.5): `{uid, m: "PUB", r: topic, d: {offset, data}}`.
fn packet(uid: &str, topic: &str, offset: u64, data: &RawValue) -> String {
    let topic = serde_json::to_string(topic).expect("strings serialize");
    format!(
        r#"{{"uid":{uid},"m":"PUB","r":{topic},"d":{{"offset":{offset},"data":{}}}}}"#,
        data.get()
    )
}

impl Topics {
    /// The topics of this process, or with a Postgres `journal` those every replica shares.
    pub fn new(config: &Config, journal: Option<Arc<Journal>>) -> Self {
        Topics {
            inner: Mutex::default(),
            history: config.topic_history,
            history_age: config.topic_history_age,
            history_bytes: config.topic_history_bytes,
            max_topics: config.max_topics,
            shared: journal.filter(|j| j.shared().is_some()),
            started: Default::default(),
            delivered: tokio::sync::Notify::new(),
        }
    }

    fn pg(&self) -> Option<&crate::store::postgres::Handle> {
        self.shared.as_deref().and_then(Journal::shared)
    }

    /// Whether the run feeds are published by the journal (on Postgres) rather than here.
    pub fn feeds_in_store(&self) -> bool {
        self.shared.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish `data` to `topic` of `ns`: its offset. On Postgres it is committed there, and
    /// reaches this replica's subscribers, like every other's, from its notification.
    pub async fn publish(
        &self,
        ns: &Namespace,
        topic: &str,
        data: Box<RawValue>,
    ) -> Result<u64, ApiError> {
        let Some(pg) = self.pg() else {
            return self.publish_local(ns, topic, data);
        };
        pg.publish(
            ns_text(ns),
            topic,
            data.get(),
            self.history,
            self.max_topics,
        )
        .await
        .map_err(store_unavailable)?
        .ok_or_else(|| self.too_many_topics())
    }

    fn too_many_topics(&self) -> ApiError {
        ApiError::new(
            ProblemKind::TooManyTopics,
            format!(
                "the server holds {} topics, as many as it may",
                self.max_topics
            ),
        )
    }

    /// Publish in this process: the next offset of the topic here.
    fn publish_local(
        &self,
        ns: &Namespace,
        topic: &str,
        data: Box<RawValue>,
    ) -> Result<u64, ApiError> {
        let mut inner = self.lock();
        let key = (ns.clone(), topic.to_owned());
        self.publish_under(&mut inner, key, data, Instant::now())
    }

    /// [`Topics::publish_local`] with the lock held.
    fn publish_under(
        &self,
        inner: &mut Inner,
        key: (Namespace, String),
        data: Box<RawValue>,
        now: Instant,
    ) -> Result<u64, ApiError> {
        let offset = match inner.topics.get(&key) {
            Some(t) => t.next,
            None => {
                if inner.topics.len() >= self.max_topics {
                    inner.sweep(now, self.history_age);
                    if inner.topics.len() >= self.max_topics {
                        return Err(self.too_many_topics());
                    }
                }
                0
            }
        };
        self.deliver(inner, key, offset, data, now);
        Ok(offset)
    }

    /// Offer publication `offset` of `key` to every subscriber it matches and keep it in the
    /// history; the topic's next offset is `offset + 1` after it.
    fn deliver(
        &self,
        inner: &mut Inner,
        key: (Namespace, String),
        offset: u64,
        data: Box<RawValue>,
        now: Instant,
    ) {
        let (ns, topic) = (&key.0, key.1.as_str());
        let t = match inner.topics.get_mut(&key) {
            Some(t) => t,
            None => inner.topics.entry(key.clone()).or_default(),
        };
        t.next = offset + 1;
        // Live first: every subscriber naming the topic, then every pattern that matches.
        let exact = inner.exact.get(&key).into_iter().flatten();
        let patterns = inner.patterns.get(ns).into_iter().flatten();
        for id in exact.chain(patterns) {
            let Some(sub) = inner.subs.get(id) else {
                continue;
            };
            if is_pattern(&sub.pattern) && !crate::nodes::matches(&sub.pattern, topic) {
                continue;
            }
            // A full queue closes its connection as slow; the connection drops its
            // subscriptions when it goes.
            sub.sink.offer(packet(&sub.uid, topic, offset, &data));
        }
        if self.history == 0 {
            return;
        }
        let size = data.get().len();
        t.history.push_back(Publication {
            offset,
            at: now,
            data,
        });
        inner.history_bytes += size;
        let mut dropped = 0;
        while t.history.len() > self.history
            || t.history
                .front()
                .is_some_and(|p| now - p.at > self.history_age)
            || (inner.history_bytes - dropped > self.history_bytes && t.history.len() > 1)
        {
            let p = t.history.pop_front().expect("checked");
            dropped += p.data.get().len();
        }
        inner.history_bytes -= dropped;
        // Even alone, a publication larger than the whole budget is not kept.
        if inner.history_bytes > self.history_bytes {
            if let Some(p) = t.history.pop_front() {
                inner.history_bytes -= p.data.get().len();
            }
        }
    }

    /// Start delivering what the replicas publish (Postgres only; elsewhere a publication is
    /// delivered as it is made).
    pub fn start(self: &Arc<Self>) {
        let first = !self.started.swap(true, std::sync::atomic::Ordering::SeqCst);
        if first && self.pg().is_some() {
            tokio::spawn(self.clone().follow());
        }
    }

    /// Deliver the publications committed in the database to this replica's subscribers:
    /// for each topic notified (or every topic held, after a lost connection), the rows
    /// after the offset delivered last here, in offset order, each once.
    async fn follow(self: Arc<Self>) {
        let Some(pg) = self.pg() else { return };
        loop {
            let notes = pg.topic_notes().await;
            let wants: Vec<(String, String, u64)> =
                {
                    let inner = self.lock();
                    let mut wants = Vec::new();
                    if notes.reload {
                        for (key, t) in &inner.topics {
                            wants.push((ns_text(&key.0).to_owned(), key.1.clone(), t.next));
                        }
                    }
                    for ((ns, topic), (first, last)) in notes.seen {
                        if ns.chars().count() >= NOTIFIED_NS {
                            // A tenant's name as long as a notification carries: every topic of
                            // that name held here whose namespace begins so is read.
                            for (key, t) in inner.topics.iter().filter(|(k, _)| {
                                k.1 == topic && ns_text(&k.0).starts_with(ns.as_str())
                            }) {
                                wants.push((ns_text(&key.0).to_owned(), topic.clone(), t.next));
                            }
                            continue;
                        }
                        let key = (ns_from(&ns), topic);
                        match inner.topics.get(&key) {
                            // Asked for above already.
                            Some(_) if notes.reload => {}
                            Some(t) if t.next <= last => wants.push((ns, key.1, t.next)),
                            Some(_) => {}
                            // A topic new here that a pattern subscriber hears: from the first
                            // offset notified since the last look.
                            None if first != u64::MAX && inner.pattern_matches(&key) => {
                                wants.push((ns, key.1, first));
                            }
                            None => {}
                        }
                    }
                    wants
                };
            if wants.is_empty() {
                continue;
            }
            match pg.read_topics(&wants).await {
                Ok(rows) => {
                    // Where each read starts, for a topic not held here (new here, or swept
                    // while it was read).
                    let from: HashMap<(&str, &str), u64> = wants
                        .iter()
                        .map(|(ns, topic, from)| ((ns.as_str(), topic.as_str()), *from))
                        .collect();
                    let mut inner = self.lock();
                    let now = Instant::now();
                    for (ns, topic, offset, data) in rows {
                        let start = from.get(&(ns.as_str(), topic.as_str())).copied();
                        let key = (ns_from(&ns), topic);
                        let next = inner.topics.get(&key).map(|t| t.next).or(start);
                        // Delivered already; a jump past `next` is what retention deleted.
                        if next.is_none_or(|next| offset < next) {
                            continue;
                        }
                        let Ok(data) = RawValue::from_string(data) else {
                            continue;
                        };
                        self.deliver(&mut inner, key, offset, data, now);
                    }
                    drop(inner);
                    self.delivered.notify_waiters();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read publications; reading them again");
                    pg.topic_again("", None);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// A run was created, started or ended: its feeds `_runs` and `_runs.{object}` of its tenant, and
    /// the server's (which admins subscribe to), hear of it. (On Postgres the journal
    /// publishes them instead, when it commits the run.)
    pub fn run_feed(&self, tenant: Option<&Arc<str>>, object: &str, id: &str, state: State) {
        // Written straight as raw JSON (no parse of what was just written), and published
        // to every feed under one lock: a run's feeds cost little even with nobody listening.
        let data = serde_json::value::to_raw_value(&FeedEntry { id, object, state })
            .expect("feeds serialize");
        let mut inner = self.lock();
        let now = Instant::now();
        for key in feed_topics(tenant, object) {
            if let Err(e) = self.publish_under(&mut inner, key, data.clone(), now) {
                tracing::debug!(error = ?e, object, "run feed publication dropped");
            }
        }
    }

    /// Subscribe `sink` to `pattern` of `ns` (a topic, or a pattern with `*`/`?`), replaying
    /// from `since` when given (one topic only). `uid` is the subscribe packet's uid as JSON.
    /// The sink gets `ack(next, recovered)` first: the offset the topic's next publication
    /// gets (0 for a pattern), and whether every publication from `since` on is replayed
    /// (`false`: some had left the history). On Postgres a topic is read from the database
    /// first (its next offset, and the publications from `since`).
    pub async fn subscribe(
        &self,
        ns: &Namespace,
        pattern: &str,
        since: Option<u64>,
        uid: String,
        sink: Arc<dyn Sink>,
        ack: impl FnOnce(u64, bool) -> String + Send,
    ) -> Result<Subscription, ApiError> {
        let wild = is_pattern(pattern);
        // A pattern is a topic once its wildcards are read as letters.
        if !is_topic(&pattern.replace(['*', '?'], "x")) {
            return Err(invalid_topic(pattern));
        }
        if wild && since.is_some() {
            return Err(ApiError::new(
                ProblemKind::InvalidTopic,
                "since needs one topic: offsets are per topic, a pattern has none",
            ));
        }
        if let Some(object) = pattern.strip_prefix("_runs.") {
            if !wild && !ObjectName::is_valid(object) && !ObjectName::is_reserved(object) {
                return Err(invalid_topic(pattern));
            }
        } else if pattern.starts_with('_') && pattern != RUNS_FEED {
            return Err(invalid_topic(pattern));
        }
        let read = match self.pg() {
            Some(pg) if !wild => Some(
                pg.topic(ns_text(ns), pattern, since, self.history_age)
                    .await
                    .map_err(store_unavailable)?,
            ),
            _ => None,
        };
        let mut inner = self.lock();
        let key = (ns.clone(), pattern.to_owned());
        let mut cold = false;
        if let Some(read) = read {
            // The offset delivered here next: the database's when the topic is new here (its
            // later publications are read once this subscription is in), else this replica's,
            // which may be behind the database (notifications on their way, delivered live)
            // or ahead of the read (delivered since, in the history here).
            let t = inner.topics.entry(key.clone()).or_insert_with(|| {
                cold = true;
                Topic {
                    next: read.next,
                    history: VecDeque::new(),
                }
            });
            let next = t.next;
            // With no history kept (`topic_history` 0) the row the database keeps for
            // delivery is not replayed.
            let kept = if self.history == 0 {
                &[][..]
            } else {
                &read.rows[..]
            };
            let first = read.first.filter(|_| self.history > 0).unwrap_or(read.next);
            let recovered = since.is_none_or(|s| s >= first && s <= next.max(read.next));
            sink.offer(ack(next, recovered));
            if let Some(since) = since {
                for (offset, data) in kept.iter().filter(|(o, _)| *o >= since && *o < next) {
                    if let Ok(data) = RawValue::from_string(data.clone()) {
                        sink.offer(packet(&uid, pattern, *offset, &data));
                    }
                }
                let from = since.max(read.next);
                for p in t
                    .history
                    .iter()
                    .filter(|p| p.offset >= from && p.offset < next)
                {
                    sink.offer(packet(&uid, pattern, p.offset, &p.data));
                }
            }
        } else {
            let (next, recovered) = match inner.topics.get(&key) {
                _ if wild => (0, true),
                None => (0, since.is_none_or(|s| s == 0)),
                Some(t) => {
                    let first = t.history.front().map_or(t.next, |p| p.offset);
                    (t.next, since.is_none_or(|s| s >= first && s <= t.next))
                }
            };
            // The ack first, then the replay, then live: all before any later publication.
            sink.offer(ack(next, recovered));
            if let (Some(since), Some(t)) = (since, inner.topics.get(&key)) {
                for p in t.history.iter().filter(|p| p.offset >= since) {
                    sink.offer(packet(&uid, pattern, p.offset, &p.data));
                }
            }
        }
        let id = inner.next_sub;
        inner.next_sub += 1;
        if wild {
            inner.patterns.entry(ns.clone()).or_default().push(id);
        } else {
            inner.exact.entry(key).or_default().push(id);
        }
        inner.subs.insert(
            id,
            Sub {
                ns: ns.clone(),
                pattern: pattern.to_owned(),
                uid,
                sink,
            },
        );
        drop(inner);
        if cold {
            if let Some(pg) = self.pg() {
                // What was committed after the read, which no notification here delivered.
                pg.topic_again(ns_text(ns), Some(pattern));
            }
        }
        Ok(Subscription { id })
    }

    /// Before an unsubscribe (on Postgres, of one topic): wait until this replica has
    /// delivered every publication of the topic committed before now, through any replica,
    /// so that an UNSUB loses nothing published before it. Elsewhere a publication is
    /// delivered as it is made, so there is nothing to wait for.
    pub async fn settle(&self, subscription: &Subscription) -> Result<(), ApiError> {
        let Some(pg) = self.pg() else {
            return Ok(());
        };
        let key = match self.lock().subs.get(&subscription.id) {
            Some(sub) if !is_pattern(&sub.pattern) => (sub.ns.clone(), sub.pattern.clone()),
            _ => return Ok(()),
        };
        // The newest kept row: `follow` delivers it (and those before it) here. At most
        // `SETTLE` is waited for, should it go before (every row deleted meanwhile).
        let Some(last) = pg
            .last_offset(ns_text(&key.0), &key.1)
            .await
            .map_err(store_unavailable)?
        else {
            return Ok(());
        };
        let wait = async {
            loop {
                let delivered = self.delivered.notified();
                tokio::pin!(delivered);
                delivered.as_mut().enable();
                // The topic is held while it has a subscriber; `follow` moves its offset on.
                if self.lock().topics.get(&key).is_none_or(|t| t.next > last) {
                    return;
                }
                delivered.await;
            }
        };
        if tokio::time::timeout(SETTLE, wait).await.is_err() {
            tracing::warn!(
                topic = key.1,
                "an unsubscribe went on before its topic was delivered"
            );
        }
        Ok(())
    }

    /// End a subscription. Everything offered to it before this call is already in its
    /// sink's queue, ahead of whatever the caller queues next (the ack).
    pub fn unsubscribe(&self, subscription: &Subscription) {
        let mut inner = self.lock();
        let Some(sub) = inner.subs.remove(&subscription.id) else {
            return;
        };
        let list = if is_pattern(&sub.pattern) {
            inner.patterns.get_mut(&sub.ns)
        } else {
            inner.exact.get_mut(&(sub.ns.clone(), sub.pattern.clone()))
        };
        if let Some(list) = list {
            list.retain(|id| *id != subscription.id);
            if list.is_empty() {
                if is_pattern(&sub.pattern) {
                    inner.patterns.remove(&sub.ns);
                } else {
                    inner.exact.remove(&(sub.ns, sub.pattern));
                }
            }
        }
    }

    /// Drop history older than its age, and topics with neither history nor subscribers; on
    /// Postgres, tell the store which topics are held here (their offsets must go on).
    pub fn sweep(&self) {
        let mut inner = self.lock();
        inner.sweep(Instant::now(), self.history_age);
        if let Some(pg) = self.pg() {
            let named = inner
                .topics
                .keys()
                .map(|(ns, topic)| (ns_text(ns).to_owned(), topic.clone()))
                .collect();
            drop(inner);
            pg.watch_topics(named);
        }
    }

    /// How many subscriptions exist (for tests and metrics).
    #[cfg(test)]
    fn subscriptions(&self) -> usize {
        self.lock().subs.len()
    }
}

impl Inner {
    /// Whether a pattern subscription of the key's namespace matches its topic.
    fn pattern_matches(&self, key: &(Namespace, String)) -> bool {
        self.patterns.get(&key.0).into_iter().flatten().any(|id| {
            self.subs
                .get(id)
                .is_some_and(|s| crate::nodes::matches(&s.pattern, &key.1))
        })
    }

    fn sweep(&mut self, now: Instant, age: Duration) {
        let mut freed = 0;
        let exact = &self.exact;
        self.topics.retain(|key, t| {
            while t.history.front().is_some_and(|p| now - p.at > age) {
                freed += t.history.pop_front().expect("checked").data.get().len();
            }
            // A topic that has a subscriber keeps its offsets going.
            !t.history.is_empty() || exact.contains_key(key)
        });
        self.history_bytes -= freed;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Queue {
        packets: Mutex<Vec<String>>,
        room: Option<usize>,
    }

    impl Sink for Queue {
        fn offer(&self, packet: String) -> bool {
            let mut p = self.packets.lock().unwrap();
            if self.room.is_some_and(|r| p.len() >= r) {
                return false;
            }
            p.push(packet);
            true
        }
    }

    fn raw(v: serde_json::Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(&v).unwrap()
    }

    fn offsets(q: &Queue) -> Vec<u64> {
        q.packets
            .lock()
            .unwrap()
            .iter()
            .filter_map(|p| {
                let v: serde_json::Value = serde_json::from_str(p).ok()?;
                v["d"]["offset"].as_u64().filter(|_| v["m"] == "PUB")
            })
            .collect()
    }

    #[test]
    fn topic_names() {
        for ok in ["chat", "chat.room-1", "a.b_c.D9"] {
            assert!(is_topic(ok), "{ok}");
        }
        for bad in ["", ".", "a..b", "a.", "a b", "é", &"x".repeat(256)] {
            assert!(!is_topic(bad), "{bad}");
        }
        assert!(check_publish("_runs").is_err());
    }

    #[tokio::test]
    async fn since_replays_the_history_then_live_in_order_and_says_when_some_were_lost() {
        let config = Config {
            topic_history: 3,
            ..Config::default()
        };
        let topics = Topics::new(&config, None);
        let ns: Namespace = None;
        for i in 0..5 {
            assert_eq!(topics.publish_local(&ns, "t", raw(i.into())).unwrap(), i);
        }
        let q = Arc::new(Queue::default());
        let ack = |next: u64, recovered: bool| format!("ack {next} {recovered}");
        topics
            .subscribe(&ns, "t", Some(3), "1".into(), q.clone(), ack)
            .await
            .unwrap();
        topics.publish_local(&ns, "t", raw(5.into())).unwrap();
        assert_eq!(offsets(&q), [3, 4, 5]);
        assert_eq!(q.packets.lock().unwrap()[0], "ack 5 true");
        // Offset 0 and 1 left the history (3 kept): not recovered, the rest replayed.
        let q2 = Arc::new(Queue::default());
        topics
            .subscribe(&ns, "t", Some(0), "2".into(), q2.clone(), ack)
            .await
            .unwrap();
        assert_eq!(q2.packets.lock().unwrap()[0], "ack 6 false");
        assert_eq!(offsets(&q2), [3, 4, 5]);
    }

    #[tokio::test]
    async fn patterns_namespaces_and_unsubscribe() {
        let topics = Topics::new(&Config::default(), None);
        let a: Namespace = Some("a".into());
        let b: Namespace = Some("b".into());
        let q = Arc::new(Queue::default());
        let s = topics
            .subscribe(&a, "chat.*", None, "\"x\"".into(), q.clone(), |_, _| {
                "ack".into()
            })
            .await
            .unwrap();
        topics.publish_local(&a, "chat.one", raw(1.into())).unwrap();
        topics.publish_local(&b, "chat.one", raw(2.into())).unwrap();
        topics.publish_local(&a, "news", raw(3.into())).unwrap();
        topics.unsubscribe(&s);
        topics.publish_local(&a, "chat.two", raw(4.into())).unwrap();
        let got = q.packets.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[1].contains(r#""r":"chat.one""#) && got[1].contains(r#""uid":"x""#));
        assert_eq!(topics.subscriptions(), 0);
        assert!(
            topics
                .subscribe(&a, "chat.*", Some(1), "1".into(), q, |_, _| String::new())
                .await
                .is_err()
        );
    }

    #[test]
    fn history_stays_within_its_byte_budget() {
        let config = Config {
            topic_history_bytes: 100,
            ..Config::default()
        };
        let topics = Topics::new(&config, None);
        for i in 0..50 {
            topics
                .publish_local(&None, &format!("t{}", i % 5), raw("0123456789".into()))
                .unwrap();
        }
        assert!(topics.lock().history_bytes <= 100);
        topics
            .publish_local(&None, "big", raw("x".repeat(500).into()))
            .unwrap();
        assert!(topics.lock().history_bytes <= 100);
    }
}
