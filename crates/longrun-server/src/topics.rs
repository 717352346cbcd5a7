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
//! run created and ended.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use longrun_proto::{ObjectName, ProblemKind, State};
use serde_json::value::RawValue;

use crate::Config;
use crate::http::ApiError;

/// Longest topic name.
pub const MAX_TOPIC: usize = 255;
/// The feed of every run created and ended; `_runs.{object}` has one object's.
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
    pub fn new(config: &Config) -> Self {
        Topics {
            inner: Mutex::default(),
            history: config.topic_history,
            history_age: config.topic_history_age,
            history_bytes: config.topic_history_bytes,
            max_topics: config.max_topics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publish `data` to `topic` of `ns`: its offset.
    pub fn publish(
        &self,
        ns: &Namespace,
        topic: &str,
        data: Box<RawValue>,
    ) -> Result<u64, ApiError> {
        let mut inner = self.lock();
        let now = Instant::now();
        let key = (ns.clone(), topic.to_owned());
        if !inner.topics.contains_key(&key) && inner.topics.len() >= self.max_topics {
            inner.sweep(now, self.history_age);
            if inner.topics.len() >= self.max_topics {
                return Err(ApiError::new(
                    ProblemKind::TooManyTopics,
                    format!(
                        "the server holds {} topics, as many as it may",
                        self.max_topics
                    ),
                ));
            }
        }
        let inner = &mut *inner;
        let t = inner.topics.entry(key.clone()).or_default();
        let offset = t.next;
        t.next += 1;
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
            return Ok(offset);
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
        Ok(offset)
    }

    /// A run was created or ended: its feeds `_runs` and `_runs.{object}` of its tenant, and
    /// the server's (which admins subscribe to), hear of it.
    pub fn run_feed(&self, tenant: Option<&Arc<str>>, object: &str, id: &str, state: State) {
        let data = serde_json::json!({ "object": object, "id": id, "state": state });
        let data = serde_json::value::to_raw_value(&data).expect("values serialize");
        let per_object = format!("{RUNS_FEED}.{object}");
        let mut namespaces = vec![None];
        if let Some(t) = tenant {
            namespaces.push(Some(t.clone()));
        }
        for ns in &namespaces {
            for topic in [RUNS_FEED, per_object.as_str()] {
                // Never refused for the topic limit: a feed is the server's own.
                if let Err(e) = self.publish(ns, topic, data.clone()) {
                    tracing::debug!(error = ?e, topic, "run feed publication dropped");
                }
            }
        }
    }

    /// Subscribe `sink` to `pattern` of `ns` (a topic, or a pattern with `*`/`?`), replaying
    /// from `since` when given (one topic only). `uid` is the subscribe packet's uid as JSON.
    /// The sink gets `ack(next, recovered)` first: the offset the topic's next publication
    /// gets (0 for a pattern), and whether every publication from `since` on is replayed
    /// (`false`: some had left the history).
    pub fn subscribe(
        &self,
        ns: &Namespace,
        pattern: &str,
        since: Option<u64>,
        uid: String,
        sink: Arc<dyn Sink>,
        ack: impl FnOnce(u64, bool) -> String,
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
        let mut inner = self.lock();
        let key = (ns.clone(), pattern.to_owned());
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
        Ok(Subscription { id })
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

    /// Drop history older than its age, and topics with neither history nor subscribers.
    pub fn sweep(&self) {
        self.lock().sweep(Instant::now(), self.history_age);
    }

    /// How many subscriptions exist (for tests and metrics).
    #[cfg(test)]
    fn subscriptions(&self) -> usize {
        self.lock().subs.len()
    }
}

impl Inner {
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

    #[test]
    fn since_replays_the_history_then_live_in_order_and_says_when_some_were_lost() {
        let config = Config {
            topic_history: 3,
            ..Config::default()
        };
        let topics = Topics::new(&config);
        let ns: Namespace = None;
        for i in 0..5 {
            assert_eq!(topics.publish(&ns, "t", raw(i.into())).unwrap(), i);
        }
        let q = Arc::new(Queue::default());
        let ack = |next: u64, recovered: bool| format!("ack {next} {recovered}");
        topics
            .subscribe(&ns, "t", Some(3), "1".into(), q.clone(), ack)
            .unwrap();
        topics.publish(&ns, "t", raw(5.into())).unwrap();
        assert_eq!(offsets(&q), [3, 4, 5]);
        assert_eq!(q.packets.lock().unwrap()[0], "ack 5 true");
        // Offset 0 and 1 left the history (3 kept): not recovered, the rest replayed.
        let q2 = Arc::new(Queue::default());
        topics
            .subscribe(&ns, "t", Some(0), "2".into(), q2.clone(), ack)
            .unwrap();
        assert_eq!(q2.packets.lock().unwrap()[0], "ack 6 false");
        assert_eq!(offsets(&q2), [3, 4, 5]);
    }

    #[test]
    fn patterns_namespaces_and_unsubscribe() {
        let topics = Topics::new(&Config::default());
        let a: Namespace = Some("a".into());
        let b: Namespace = Some("b".into());
        let q = Arc::new(Queue::default());
        let s = topics
            .subscribe(&a, "chat.*", None, "\"x\"".into(), q.clone(), |_, _| {
                "ack".into()
            })
            .unwrap();
        topics.publish(&a, "chat.one", raw(1.into())).unwrap();
        topics.publish(&b, "chat.one", raw(2.into())).unwrap();
        topics.publish(&a, "news", raw(3.into())).unwrap();
        topics.unsubscribe(&s);
        topics.publish(&a, "chat.two", raw(4.into())).unwrap();
        let got = q.packets.lock().unwrap().clone();
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[1].contains(r#""r":"chat.one""#) && got[1].contains(r#""uid":"x""#));
        assert_eq!(topics.subscriptions(), 0);
        assert!(
            topics
                .subscribe(&a, "chat.*", Some(1), "1".into(), q, |_, _| String::new())
                .is_err()
        );
    }

    #[test]
    fn history_stays_within_its_byte_budget() {
        let config = Config {
            topic_history_bytes: 100,
            ..Config::default()
        };
        let topics = Topics::new(&config);
        for i in 0..50 {
            topics
                .publish(&None, &format!("t{}", i % 5), raw("0123456789".into()))
                .unwrap();
        }
        assert!(topics.lock().history_bytes <= 100);
        topics
            .publish(&None, "big", raw("x".repeat(500).into()))
            .unwrap();
        assert!(topics.lock().history_bytes <= 100);
    }
}
