//! The node's reader: follows the topics its streams use and appends their
//! entries to the rings, one consistent round at a time.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use ::redis::{RedisError, Value, aio::ConnectionManager};
use tokio::{sync::Notify, time::Instant};

use super::{
    MAX_BACKOFF, PAGE, READ_BLOCK, Stored, StreamId, format_id, pairs, parse_entries, parse_id,
    stream_key, text, topic_of, with_id,
};
use crate::hub::{Entry, Inner, topic::Topic};

/// Follows every topic of this node with `XREAD BLOCK`, appending new entries
/// to the local rings, until the hub is dropped. Retries with backoff while
/// Redis is away, from the last id it delivered.
pub(super) async fn read_loop(
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
        // Blocked, Redis answers with the first topic that got entries only
        // (7.0): a second read, not blocking, is one snapshot of them all.
        let clock_key = format!("{prefix}\0clock");
        let read = async {
            let first = xread(&mut conn, &prefix, &topics, Some(READ_BLOCK)).await?;
            let after: Vec<(String, StreamId)> = topics
                .iter()
                .map(|(name, id)| {
                    let last = first.get(name).and_then(|e| e.last()).map(|(id, ..)| *id);
                    (name.clone(), last.unwrap_or(*id).max(*id))
                })
                .collect();
            // The clock, then the snapshot: every entry up to the clock is
            // in Redis before the snapshot, so it is in it (or read before).
            let clock: Option<String> = ::redis::cmd("GET")
                .arg(&clock_key)
                .query_async(&mut conn)
                .await?;
            let snapshot = xread(&mut conn, &prefix, &after, None).await?;
            Ok::<_, RedisError>((first, clock.as_deref().and_then(parse_id), snapshot))
        };
        let (mut first, clock, snapshot) = match read.await {
            Ok(replies) => {
                backoff = Duration::from_millis(50);
                replies
            }
            Err(err) => {
                tracing::warn!(%err, "reading from Redis failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let read: Vec<Read> = topics
            .into_iter()
            .map(|(name, _)| {
                let mut entries = first.remove(&name).unwrap_or_default();
                let more = snapshot.get(&name).map_or(&[][..], Vec::as_slice);
                let cut_short = more.len() >= PAGE;
                entries.extend(more.iter().cloned());
                Read {
                    name,
                    entries,
                    cut_short,
                }
            })
            .collect();
        let Some(inner) = hub.upgrade() else { return };
        deliver(&inner, &following, read, clock);
    }
}

/// What one round of the reader got for a topic.
struct Read {
    name: String,
    entries: Vec<Stored>,
    /// The snapshot read stopped at a page: later entries come next round.
    cut_short: bool,
}

/// `XREAD` of `topics` after their ids (`COUNT PAGE`, `BLOCK` if given),
/// by topic name.
async fn xread(
    conn: &mut ConnectionManager,
    prefix: &str,
    topics: &[(String, StreamId)],
    block: Option<Duration>,
) -> Result<HashMap<String, Vec<Stored>>, RedisError> {
    let mut cmd = ::redis::cmd("XREAD");
    cmd.arg("COUNT").arg(PAGE);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS");
    for (name, _) in topics {
        cmd.arg(stream_key(prefix, name));
    }
    for (_, id) in topics {
        cmd.arg(format_id(*id));
    }
    let reply: Value = cmd.query_async(conn).await?;
    let mut read = HashMap::new();
    for (key, entries) in pairs(&reply) {
        let Some(key) = text(&key) else { continue };
        if let Some(name) = topic_of(prefix, &key) {
            read.insert(name.to_owned(), parse_entries(&entries));
        }
    }
    Ok(read)
}

/// Appends one round of reads to the rings, then wakes their streams.
///
/// The second read of a round is one snapshot of Redis, and ids increase
/// across topics in publish order: every entry with an id up to the newest
/// read, or up to the hub's clock read before the snapshot, was in Redis
/// when the snapshot was taken, so each topic the snapshot did not cut
/// short is complete through that id, with or without entries of its own.
fn deliver(
    inner: &Inner,
    following: &Mutex<HashMap<String, StreamId>>,
    read: Vec<Read>,
    clock: Option<StreamId>,
) {
    let Some(newest) = read
        .iter()
        .filter_map(|r| r.entries.last().map(|(id, ..)| *id))
        .chain(clock)
        .max()
    else {
        return;
    };
    let found: Vec<Option<Arc<Topic>>> = {
        let topics = inner.lock();
        read.iter()
            .map(|r| topics.map.get(r.name.as_str()).cloned())
            .collect()
    };
    let now = Instant::now();
    let mut woken = Vec::new();
    let mut read_to = Vec::new();
    for (read, topic) in read.into_iter().zip(found) {
        let last = read.entries.last().map(|(id, ..)| *id);
        let complete = match last {
            Some(last) if read.cut_short => last,
            _ => newest,
        };
        if let Some(last) = last {
            read_to.push((read.name, last));
        }
        let Some(topic) = topic else { continue };
        let mut ring = topic.write();
        if !ring.followed {
            continue;
        }
        let mut added = false;
        for (stream_id, id, stored, key) in read.entries {
            // Never twice, never behind: a ring followed again, or a read
            // older than the ring's start, brings entries it has.
            if stream_id <= ring.last_key() {
                continue;
            }
            let entry = Entry {
                key: stream_id,
                bytes: with_id(&id, &stored),
                id: id.into(),
                at: now,
                keyless: 0,
            };
            ring.push(entry, key);
            added = true;
        }
        let advanced = complete > ring.complete;
        ring.complete = ring.complete.max(complete);
        ring.evict(inner.window, inner.max_age, now);
        drop(ring);
        // A stream of several topics may wait for this one's `complete`
        // alone; streams of this topic only, for its entries alone.
        if added || (advanced && topic.multi.load(std::sync::atomic::Ordering::Relaxed) > 0) {
            woken.push(topic);
        }
    }
    {
        let mut following = following.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, last) in read_to {
            // Only topics still followed: a topic left meanwhile stays gone.
            if let Some(id) = following.get_mut(&name) {
                *id = (*id).max(last);
            }
        }
    }
    for topic in woken {
        topic.wake();
    }
}
