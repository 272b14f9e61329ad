//! The hub's Redis Streams backend: `publish` appends with `XADD` (trimmed
//! with `MAXLEN ~ history`) from a script that numbers every event of the
//! hub with one clock, so that entry ids increase across all topics in
//! publish order. One reader per node follows the topics its streams use
//! with `XREAD BLOCK` and feeds the same rings as the in-memory hub, and a
//! `Last-Event-ID` older than this node's ring is replayed from Redis with
//! `XRANGE`. The Redis entry id is the SSE id, so a client resumes on any
//! node, and ordering and resuming go by it alone, never by a node's own
//! numbering.
//!
//! This file holds the backend, publishing, where a subscription starts,
//! and the keys and replies; the reader is `reader.rs`, the replay from
//! Redis `replay.rs`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use ::redis::{
    Client, RedisError, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use tokio::sync::Notify;

use super::{Hub, HubBuilder, PublishError, Resume, subscription::Begun, topic::Topic};
use crate::{
    Event,
    pedestal::{CRLF, ID_FIELD},
};

mod reader;
mod replay;

/// A Redis stream entry id: milliseconds and sequence.
pub(crate) type StreamId = (u64, u64);

/// A stored entry: its id (parsed and as text), its stored event, and its
/// conflation key (`LagPolicy::Conflate`), if it was published with one.
pub(crate) type Stored = (StreamId, String, Bytes, Option<Arc<str>>);

/// The field of a stream entry holding its conflation key.
const KEY_FIELD: &str = "key";

/// How long one `XREAD` blocks before the reader looks for new topics.
const READ_BLOCK: Duration = Duration::from_millis(250);
/// Entries per `XREAD` and per `XRANGE` page.
const PAGE: usize = 512;
/// The longest pause between attempts while Redis is away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Appends an event with the hub's next id: the later of now and one past
/// the last id the hub gave (in any topic), so ids increase across topics
/// in the order of publishing. `KEYS`: the stream, the hub's clock.
/// `ARGV`: trim, the stored event, `max_age` in ms (0: none), then, under
/// `LagPolicy::Conflate` for an event with a key, `key` and the key (stored
/// as the entry's field `key`).
const PUBLISH: &str = r"
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
local last = redis.call('GET', KEYS[2])
if last then
  local lms, lseq = string.match(last, '^(%d+)-(%d+)$')
  lms = tonumber(lms)
  if ms <= lms then
    ms = lms
    seq = tonumber(lseq) + 1
  end
end
local id = string.format('%d-%d', ms, seq)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id, 'sse', ARGV[2], unpack(ARGV, 4))
redis.call('SET', KEYS[2], id)
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return id
";

pub(crate) struct Backend {
    conn: ConnectionManager,
    prefix: String,
    trim: usize,
    max_age: Option<Duration>,
    /// Topics this node follows, with the id of the last entry read. As the
    /// hub's state: nothing user-reachable (`tracing`, a wake-up) runs under it.
    following: Arc<Mutex<HashMap<String, StreamId>>>,
    wake_reader: Arc<Notify>,
}

impl HubBuilder {
    /// A hub on Redis Streams at `url` (for example `redis://127.0.0.1:6379`):
    /// the same API as [`build`](Self::build), shared by every node that uses
    /// the same Redis and key prefix.
    ///
    /// `history` is both the `MAXLEN ~` trim of each stream and the size of
    /// this node's local ring; with `history(0)` (live only) both are 256,
    /// and a `Last-Event-ID` is never replayed from Redis (see
    /// [`history`](Self::history)).
    ///
    /// Every event's id is given by one clock per hub (the key
    /// `<prefix>` followed by a NUL byte and `clock`), so ids increase
    /// across topics in publish order: every stream, on every node, gets
    /// its topics' events in that order, and resumes anywhere from one id.
    /// (On Redis Cluster, put a hash tag in the prefix, `{chat}:`, so that
    /// a hub's keys share a slot.) A node follows a topic while one of its
    /// streams is subscribed to it, and forgets it when the last one leaves.
    ///
    /// # Errors
    ///
    /// When the URL is invalid or Redis cannot be reached now.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = tower_sse::hub::Hub::builder()
    ///     .history(10_000)
    ///     .build_redis("redis://127.0.0.1:6379")
    ///     .await?;
    /// hub.publish("chat", "hello from any node").await?;
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub async fn build_redis(self, url: &str) -> Result<Hub, RedisError> {
        let client = Client::open(url)?;
        let config = |response: Duration| {
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(response))
                .set_connection_timeout(Some(Duration::from_secs(1)))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1))
        };
        let conn =
            ConnectionManager::new_with_config(client.clone(), config(Duration::from_secs(1)))
                .await?;
        let reader = ConnectionManager::new_with_config(client, config(READ_BLOCK * 4)).await?;
        let following = Arc::new(Mutex::new(HashMap::new()));
        let wake_reader = Arc::new(Notify::new());
        let mut inner = self.inner();
        inner.redis = Some(Backend {
            conn,
            prefix: self.key_prefix.clone(),
            trim: self.window(),
            max_age: self.max_age,
            following: following.clone(),
            wake_reader: wake_reader.clone(),
        });
        let inner = Arc::new(inner);
        tokio::spawn(reader::read_loop(
            Arc::downgrade(&inner),
            reader,
            following,
            wake_reader,
            self.key_prefix,
        ));
        Ok(Hub { inner })
    }
}

impl Backend {
    fn key(&self, topic: &str) -> String {
        stream_key(&self.prefix, topic)
    }

    fn clock_key(&self) -> String {
        format!("{}\0clock", self.prefix)
    }

    /// Appends with the hub's next id, and `key`, its conflation key, if
    /// any; an id set by the publisher is replaced.
    pub(super) async fn publish(
        &self,
        topic: &str,
        mut event: Event,
        key: Option<Arc<str>>,
    ) -> Result<String, PublishError> {
        event.id = None;
        let stored = event.into_frame().map_err(PublishError::Invalid)?;
        let mut conn = self.conn.clone();
        let max_age = self.max_age.map_or(0, |age| age.as_millis().max(1) as u64);
        // EVAL rather than EVALSHA: no script cache to miss after a Redis
        // restart, and the 600 bytes cost less than the round trip.
        let mut cmd = ::redis::cmd("EVAL");
        cmd.arg(PUBLISH)
            .arg(2)
            .arg(self.key(topic))
            .arg(self.clock_key())
            .arg(self.trim)
            .arg(stored.as_ref())
            .arg(max_age);
        if let Some(key) = &key {
            cmd.arg(KEY_FIELD).arg(key.as_bytes());
        }
        cmd.query_async::<String>(&mut conn)
            .await
            .map_err(|err| PublishError::Unavailable(Box::new(err)))
            .inspect(|_| crate::telemetry::hub_published(stored.len()))
    }

    /// Where a subscription starts, once this node follows its topics: in
    /// the local rings when they reach back to the id, otherwise after a
    /// replay from Redis; a reset when Redis trimmed past it, when it is
    /// older than `max_age`, or when it is no Redis id (over the cap ids are
    /// not even parsed).
    pub(super) fn begin(
        &self,
        hub: Hub,
        names: Vec<Arc<str>>,
        topics: Vec<Arc<Topic>>,
        resume: Resume,
    ) -> BoxFuture<'static, Begun> {
        Box::pin(async move {
            let Some(backend) = &hub.inner.redis else {
                return Begun::live((0, 0));
            };
            backend.follow(&names, &topics).await;
            backend.start(&hub, &names, &topics, &resume).await
        })
    }

    async fn start(
        &self,
        hub: &Hub,
        names: &[Arc<str>],
        topics: &[Arc<Topic>],
        resume: &Resume,
    ) -> Begun {
        // Live: after everything every topic has complete on this node.
        let live = Topic::complete_in_all(topics.iter().map(|t| &**t));
        let id = match resume {
            Resume::Live => return Begun::live(live),
            // Live only: nothing is replayed, from Redis either.
            Resume::After(_) if hub.inner.history == 0 => return Begun::reset(live, resume),
            Resume::Unusable => return Begun::reset(live, resume),
            Resume::After(id) => id,
        };
        let Some(after) = parse_id(id) else {
            return Begun::reset(live, resume);
        };
        if self
            .max_age
            .is_some_and(|age| after.0 < now_millis().saturating_sub(age.as_millis() as u64))
        {
            return Begun::reset(live, resume);
        }
        let known = topics
            .iter()
            .map(|topic| topic.read().complete)
            .max()
            .unwrap_or_default();
        if after > known {
            // Newer than anything this node has read: an id another node
            // read first, or one the hub never gave (no stream may wait for
            // it: it would skip every event up to it).
            match self.clock().await {
                Ok(Some(clock)) if after <= clock => {}
                Ok(_) => return Begun::reset(live, resume),
                Err(err) => tracing::warn!(%err, "cannot read the hub's clock"),
            }
        }
        let local = topics
            .iter()
            .all(|topic| topic.read().floor.is_some_and(|floor| floor <= after));
        if local {
            return Begun::from_rings(after);
        }
        self.replay_page(names, topics, after, resume).await
    }

    /// The hub's clock: the newest id it gave; `None` before its first event.
    async fn clock(&self) -> Result<Option<StreamId>, RedisError> {
        let mut conn = self.conn.clone();
        let clock: Option<String> = ::redis::cmd("GET")
            .arg(self.clock_key())
            .query_async(&mut conn)
            .await?;
        Ok(clock.as_deref().and_then(parse_id))
    }

    /// Makes the reader follow `names`, each from the stream's current end.
    async fn follow(&self, names: &[Arc<str>], topics: &[Arc<Topic>]) {
        let mut new = false;
        for (name, topic) in names.iter().zip(topics) {
            if topic.read().followed {
                continue;
            }
            // The clock first: the topic has no entry between its last one
            // and the clock, so the ring is complete through the clock.
            let (start, complete) = match self.follow_point(name).await {
                Ok(point) => point,
                Err(err) => {
                    tracing::warn!(%err, topic = &**name, "Redis unavailable; following from now");
                    ((now_millis(), 0), (now_millis(), 0))
                }
            };
            // The first follower's start stands; the ring takes entries after
            // it. Set under the same lock, so that the reader, which follows
            // the topic from the moment it is in `following`, never finds the
            // ring not yet following.
            let mut following = self
                .following
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let first = *following.entry(name.to_string()).or_insert(start);
            let mut ring = topic.write();
            if !ring.followed {
                ring.followed = true;
                ring.floor = Some(first);
                // The clock read before `start` holds only if `start` stood.
                ring.complete = if first == start {
                    complete.max(start)
                } else {
                    first
                };
                new = true;
            }
        }
        if new {
            self.wake_reader.notify_one();
        }
    }

    /// Stops following topics no stream of this node reads any more.
    pub(super) fn unfollow(&self, names: &[Arc<str>]) {
        if names.is_empty() {
            return;
        }
        let mut following = self
            .following
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for name in names {
            following.remove(&**name);
        }
    }

    /// Where to follow `topic` from (its last entry id), and the hub's
    /// clock read just before.
    async fn follow_point(&self, topic: &str) -> Result<(StreamId, StreamId), RedisError> {
        let clock = self.clock().await?.unwrap_or_default();
        let last = self.last_id(topic).await?;
        Ok((last, clock))
    }

    async fn last_id(&self, topic: &str) -> Result<StreamId, RedisError> {
        let mut conn = self.conn.clone();
        let reply: Value = ::redis::cmd("XREVRANGE")
            .arg(self.key(topic))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(parse_entries(&reply)
            .first()
            .map(|(id, ..)| *id)
            .unwrap_or((0, 0)))
    }
}

/// The stream key of `topic`: the prefix and the topic, with a NUL put
/// before a topic that starts with one, so that no topic's key is the hub's
/// clock (`<prefix>\0clock`) and no two topics share a key.
fn stream_key(prefix: &str, topic: &str) -> String {
    if topic.starts_with('\0') {
        format!("{prefix}\0{topic}")
    } else {
        format!("{prefix}{topic}")
    }
}

/// The topic of a stream key made by [`stream_key`].
fn topic_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    let topic = key.strip_prefix(prefix)?;
    match topic.strip_prefix('\0') {
        Some(escaped) if escaped.starts_with('\0') => Some(escaped),
        // The clock, or no key of this hub.
        Some(_) => None,
        None => Some(topic),
    }
}

/// The wire bytes of a stored event: its Redis id, then the stored fields.
fn with_id(id: &str, stored: &[u8]) -> Bytes {
    let mut bytes = BytesMut::with_capacity(ID_FIELD.len() + id.len() + CRLF.len() + stored.len());
    bytes.put_slice(ID_FIELD);
    bytes.put_slice(id.as_bytes());
    bytes.put_slice(CRLF);
    bytes.put_slice(stored);
    bytes.freeze()
}

pub(crate) fn parse_id(id: &str) -> Option<StreamId> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn format_id((ms, seq): StreamId) -> String {
    format!("{ms}-{seq}")
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// A reply of pairs: a RESP3 map, or a RESP2 array of 2-arrays or of
/// alternating names and values.
fn pairs(value: &Value) -> Vec<(Value, Value)> {
    match value {
        Value::Map(pairs) => pairs.clone(),
        Value::Array(items)
            if items
                .iter()
                .all(|i| matches!(i, Value::Array(p) if p.len() == 2)) =>
        {
            items
                .iter()
                .filter_map(|item| match item {
                    Value::Array(pair) => Some((pair[0].clone(), pair[1].clone())),
                    _ => None,
                })
                .collect()
        }
        Value::Array(items) => items
            .chunks_exact(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Stream entries (`[[id, [field, value, ...]], ...]`) with their `sse`
/// field and their `key` field if they have one.
fn parse_entries(value: &Value) -> Vec<Stored> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|entry| {
            let Value::Array(parts) = entry else {
                return None;
            };
            let id = text(parts.first()?)?;
            let stream_id = parse_id(&id)?;
            let mut stored = None;
            let mut key = None;
            for (field, value) in pairs(parts.get(1)?) {
                match text(&field).as_deref() {
                    Some("sse") => {
                        if let Value::BulkString(bytes) = value {
                            stored = Some(Bytes::from(bytes));
                        }
                    }
                    Some(KEY_FIELD) => key = text(&value).map(Arc::from),
                    _ => {}
                }
            }
            Some((stream_id, id, stored?, key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn entries_carry_their_conflation_key_when_stored_with_one() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                bulk("5-0"),
                Value::Array(vec![
                    bulk("sse"),
                    bulk("data: a\n\n"),
                    bulk("key"),
                    bulk("AAPL"),
                ]),
            ]),
            Value::Array(vec![
                bulk("6-1"),
                Value::Array(vec![bulk("sse"), bulk("data: b\n\n")]),
            ]),
            // No stored event: skipped.
            Value::Array(vec![
                bulk("7-0"),
                Value::Array(vec![bulk("key"), bulk("X")]),
            ]),
        ]);
        let entries = parse_entries(&reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].0, (5, 0));
        assert_eq!(entries[0].2, Bytes::from_static(b"data: a\n\n"));
        assert_eq!(entries[0].3.as_deref(), Some("AAPL"));
        assert_eq!(entries[1].0, (6, 1));
        assert_eq!(entries[1].3, None);
    }
}
