//! The hub's Redis Streams backend: `publish` appends with `XADD` (trimmed
//! with `MAXLEN ~ history`), one reader per node follows every topic its
//! streams use with `XREAD BLOCK` and feeds the same in-memory rings as the
//! in-memory hub, and a `Last-Event-ID` unknown to this node is replayed from
//! Redis with `XRANGE`. The Redis entry id is the SSE id, so a client resumes
//! on any node.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use ::redis::{
    Client, RedisError, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::{sync::Notify, time::Instant};

use super::{Entry, Hub, HubBuilder, Inner, PublishError, Resume, Topic, send_reset};
use crate::{
    Event, EventSender,
    event::{CRLF, ID_FIELD},
};

/// A Redis stream entry id: milliseconds and sequence.
pub(crate) type StreamId = (u64, u64);

/// How long one `XREAD` blocks before the reader looks for new topics.
const READ_BLOCK: Duration = Duration::from_millis(250);
/// Entries per `XREAD` and per `XRANGE` page.
const PAGE: usize = 512;
/// The longest pause between attempts while Redis is away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

pub(crate) struct Backend {
    conn: ConnectionManager,
    prefix: String,
    trim: usize,
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
    /// # Errors
    ///
    /// When the URL is invalid or Redis cannot be reached now.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = tower_sse::Hub::builder()
    ///     .history(10_000)
    ///     .build_redis("redis://127.0.0.1:6379")
    ///     .await?;
    /// hub.publish("chat", "hello from any node").await?;
    /// # Ok(()) }
    /// ```
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
            following: following.clone(),
            wake_reader: wake_reader.clone(),
        });
        let inner = Arc::new(inner);
        tokio::spawn(read_loop(
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
        format!("{}{topic}", self.prefix)
    }

    /// `XADD`: Redis gives the id; an id set by the publisher is replaced.
    pub(super) async fn publish(
        &self,
        topic: &str,
        mut event: Event,
    ) -> Result<String, PublishError> {
        event.id = None;
        let stored = event.encode().map_err(PublishError::Invalid)?;
        let mut conn = self.conn.clone();
        ::redis::cmd("XADD")
            .arg(self.key(topic))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.trim)
            .arg("*")
            .arg("sse")
            .arg(stored.as_ref())
            .query_async::<String>(&mut conn)
            .await
            .map_err(|err| PublishError::Unavailable(Box::new(err)))
    }

    /// Where a subscription starts: local history when it has the id,
    /// otherwise a replay from Redis; a reset when Redis trimmed past it, or
    /// when the id is no Redis id (over the cap ids are not even parsed).
    pub(super) async fn begin(
        &self,
        hub: &Hub,
        events: &EventSender,
        resume: Resume<'_>,
        names: &[&str],
    ) -> Option<(Vec<u64>, Vec<Arc<Notify>>)> {
        self.follow(hub, names).await;
        let (start, notifies) = hub.start(resume, names, false);
        if !start.reset {
            return Some((start.cursors, notifies));
        }
        // Live only: nothing is replayed, from Redis either.
        let replayable = hub.inner.history > 0;
        let Some(mut after) = resume.id().and_then(parse_id).filter(|_| replayable) else {
            send_reset(events, resume).await?;
            return Some((start.cursors, notifies));
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            if events.is_closed() {
                return None;
            }
            match self.replay(names, after).await {
                Err(err) => {
                    // Redis is away: the stream stays open (heartbeats go on) until it is back.
                    tracing::warn!(%err, "cannot replay from Redis; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Ok(None) => {
                    send_reset(events, resume).await?;
                    let (start, notifies) = hub.start(Resume::Live, names, false);
                    return Some((start.cursors, notifies));
                }
                Ok(Some((entries, complete))) => {
                    for (stream_id, id, stored) in entries {
                        events.send_encoded(with_id(&id, &stored)).await.ok()?;
                        after = stream_id;
                    }
                    if complete {
                        if let Some(cursors) = join(hub, names, after) {
                            return Some((cursors, notifies));
                        }
                    }
                }
            }
        }
    }

    /// Makes the reader follow `names`, each from the stream's current end.
    /// `names` has each topic once (the hub deduplicates a subscription's
    /// topics before anything looks them up).
    async fn follow(&self, hub: &Hub, names: &[&str]) {
        let new: Vec<&str> = {
            let following = self
                .following
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            names
                .iter()
                .copied()
                .filter(|name| !following.contains_key(*name))
                .collect()
        };
        if new.is_empty() {
            return;
        }
        for name in new {
            let start = match self.last_id(name).await {
                Ok(id) => id,
                Err(err) => {
                    tracing::warn!(%err, topic = name, "Redis unavailable; following from now");
                    (now_millis(), 0)
                }
            };
            self.following
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(name.to_owned())
                .or_insert(start);
            hub.inner
                .state
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .topics
                .entry(name.to_owned())
                .or_insert_with(Topic::new);
        }
        self.wake_reader.notify_one();
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
            .map(|(id, _, _)| *id)
            .unwrap_or((0, 0)))
    }

    /// The entries after `after` in every topic, merged in id order, and
    /// whether that is all of them. `None` when Redis trimmed some of them.
    #[allow(clippy::type_complexity)]
    async fn replay(
        &self,
        names: &[&str],
        after: StreamId,
    ) -> Result<Option<(Vec<(StreamId, String, Bytes)>, bool)>, RedisError> {
        let mut conn = self.conn.clone();
        let mut merged = Vec::new();
        let mut cutoff: Option<StreamId> = None;
        for name in names {
            let key = self.key(name);
            if lost_after(&mut conn, &key, after).await? {
                return Ok(None);
            }
            let reply: Value = ::redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("({}", format_id(after)))
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await?;
            let entries = parse_entries(&reply);
            if entries.len() == PAGE {
                // A full page: later entries of this topic come in the next round.
                let last = entries.last().map(|(id, _, _)| *id);
                cutoff = cutoff.min(last).or(last);
            }
            merged.extend(entries);
        }
        merged.sort_by_key(|(id, _, _)| *id);
        if let Some(cutoff) = cutoff {
            merged.retain(|(id, _, _)| *id <= cutoff);
        }
        Ok(Some((merged, cutoff.is_none())))
    }
}

/// Whether Redis removed (trimmed or deleted) an entry of `key` newer than `after`.
async fn lost_after(
    conn: &mut ConnectionManager,
    key: &str,
    after: StreamId,
) -> Result<bool, RedisError> {
    let info: Result<Value, RedisError> = ::redis::cmd("XINFO")
        .arg("STREAM")
        .arg(key)
        .query_async(conn)
        .await;
    let info = match info {
        Ok(info) => info,
        // No such stream yet: nothing was removed.
        Err(err)
            if err.kind()
                == ::redis::ErrorKind::Server(::redis::ServerErrorKind::ResponseError) =>
        {
            return Ok(false);
        }
        Err(err) => return Err(err),
    };
    let fields = pairs(&info);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(field, _)| text(field).as_deref() == Some(name))
            .map(|(_, value)| value.clone())
    };
    let int = |name: &str| match field(name) {
        Some(Value::Int(n)) => n,
        _ => 0,
    };
    let id = |name: &str| {
        field(name)
            .and_then(|v| text(&v))
            .and_then(|id| parse_id(&id))
    };
    // XDEL records what it removes; trimming only removes from the front,
    // everything before the first entry still there.
    let deleted = id("max-deleted-entry-id").is_some_and(|deleted| deleted > after);
    let trimmed = int("entries-added") > int("length")
        && id("recorded-first-entry-id").is_some_and(|first| first > after);
    Ok(deleted || trimmed)
}

/// Joins the local ring after `after`; `None` if the ring already dropped
/// entries after it (replay more first).
fn join(hub: &Hub, names: &[&str], after: StreamId) -> Option<Vec<u64>> {
    let state = hub
        .inner
        .state
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    names
        .iter()
        .map(|name| {
            let topic = state.topics.get(*name)?;
            if topic
                .last_evicted_stream_id
                .is_some_and(|evicted| evicted > after)
            {
                return None;
            }
            let skip = topic
                .entries
                .partition_point(|e| e.stream_id.is_some_and(|id| id <= after));
            Some(topic.first_index + skip as u64)
        })
        .collect()
}

/// Follows every topic of this node with `XREAD BLOCK`, appending new entries
/// to the local rings, until the hub is dropped. Retries with backoff while
/// Redis is away, from the last id it delivered.
async fn read_loop(
    hub: Weak<Inner>,
    mut conn: ConnectionManager,
    following: Arc<Mutex<HashMap<String, StreamId>>>,
    wake: Arc<Notify>,
    prefix: String,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        if hub.strong_count() == 0 {
            return;
        }
        let topics: Vec<(String, StreamId)> = following
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, id)| (name.clone(), *id))
            .collect();
        if topics.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        }
        let mut cmd = ::redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(PAGE)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for (name, _) in &topics {
            cmd.arg(format!("{prefix}{name}"));
        }
        for (_, id) in &topics {
            cmd.arg(format_id(*id));
        }
        let reply = match cmd.query_async::<Value>(&mut conn).await {
            Ok(reply) => {
                backoff = Duration::from_millis(50);
                reply
            }
            Err(err) => {
                tracing::warn!(%err, "reading from Redis failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let Some(inner) = hub.upgrade() else { return };
        // Notified only once both guards are dropped: a wake-up runs waker code.
        let mut woken = Vec::new();
        {
            let mut state = inner.state.write().unwrap_or_else(PoisonError::into_inner);
            let mut following = following.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, entries) in pairs(&reply) {
                let Some(key) = text(&key) else { continue };
                let Some(name) = key.strip_prefix(&prefix) else {
                    continue;
                };
                let entries = parse_entries(&entries);
                let Some(last) = entries.last().map(|(id, _, _)| *id) else {
                    continue;
                };
                let now = Instant::now();
                let seq_start = state.next_seq;
                state.next_seq += entries.len() as u64;
                let topic = state
                    .topics
                    .entry(name.to_owned())
                    .or_insert_with(Topic::new);
                for (n, (stream_id, id, stored)) in entries.into_iter().enumerate() {
                    topic.entries.push_back(Entry {
                        seq: seq_start + n as u64,
                        bytes: with_id(&id, &stored),
                        id: id.into(),
                        at: now,
                        stream_id: Some(stream_id),
                    });
                }
                topic.evict(inner.window, inner.max_age, now);
                woken.push(topic.notify.clone());
                following.insert(name.to_owned(), last);
            }
        }
        for notify in woken {
            notify.notify_waiters();
        }
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

/// Stream entries (`[[id, [field, value, ...]], ...]`) with their `sse` field.
fn parse_entries(value: &Value) -> Vec<(StreamId, String, Bytes)> {
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
            let stored = pairs(parts.get(1)?)
                .into_iter()
                .find(|(field, _)| text(field).as_deref() == Some("sse"))
                .and_then(|(_, value)| match value {
                    Value::BulkString(bytes) => Some(Bytes::from(bytes)),
                    _ => None,
                })?;
            Some((stream_id, id, stored))
        })
        .collect()
}
