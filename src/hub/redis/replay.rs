//! Replaying from Redis: a `Last-Event-ID` older than this node's rings is
//! read back with `XRANGE`, a page at a time and merged across topics in id
//! order, until the replay reaches the rings; a reset when Redis trimmed or
//! deleted an entry after it.

use std::{sync::Arc, time::Duration};

use ::redis::{RedisError, Value, aio::ConnectionManager};
use futures::future::BoxFuture;

use super::{
    Backend, MAX_BACKOFF, PAGE, Stored, StreamId, format_id, pairs, parse_entries, parse_id, text,
    with_id,
};
use crate::hub::{Hub, Resume, subscription::Begun, topic::Topic};

impl Backend {
    /// The rest of a replay, after `after` (see [`Begun::more`]).
    pub(in crate::hub) fn replay_more(
        &self,
        hub: Hub,
        names: Vec<Arc<str>>,
        topics: Vec<Arc<Topic>>,
        after: StreamId,
        resume: Resume,
    ) -> BoxFuture<'static, Begun> {
        Box::pin(async move {
            let Some(backend) = &hub.inner.redis else {
                return Begun::live(after);
            };
            backend.replay_page(&names, &topics, after, &resume).await
        })
    }

    /// One page of a replay from Redis after `after`: the stream sends it,
    /// then asks for more, or joins the node's rings once the replay has
    /// reached them. A reset when Redis lost entries after `after`.
    pub(super) async fn replay_page(
        &self,
        names: &[Arc<str>],
        topics: &[Arc<Topic>],
        after: StreamId,
        resume: &Resume,
    ) -> Begun {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.replay(names, after).await {
                Err(err) => {
                    // Redis is away: the stream stays open (heartbeats go on) until it is back.
                    tracing::warn!(%err, "cannot replay from Redis; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Ok(None) => {
                    let live = Topic::complete_in_all(topics.iter().map(|t| &**t));
                    return Begun::reset(live, resume);
                }
                Ok(Some((entries, through, complete))) => {
                    let first = entries
                        .into_iter()
                        .map(|(_, id, stored, _)| with_id(&id, &stored))
                        .collect();
                    let joins = topics
                        .iter()
                        .all(|topic| topic.read().floor.is_some_and(|floor| floor <= through));
                    return Begun {
                        after: through,
                        first,
                        reset: false,
                        more: !(complete && joins),
                        from_rings: complete && joins,
                    };
                }
            }
        }
    }

    /// The entries after `after` in every topic, merged in id order, up to
    /// an id through which they are complete; that id; and whether that is
    /// all of them. `None` when Redis trimmed some of them.
    #[allow(clippy::type_complexity)]
    async fn replay(
        &self,
        names: &[Arc<str>],
        after: StreamId,
    ) -> Result<Option<(Vec<Stored>, StreamId, bool)>, RedisError> {
        let mut conn = self.conn.clone();
        // Every entry up to the clock, read first, is in Redis before the
        // reads below: whatever they return up to it is complete. (Without
        // a clock, entries were written by something else than a hub: read
        // to the end.)
        let clock = self.clock().await?.map(|c| c.max(after));
        let upper = clock.map_or_else(|| "+".to_owned(), format_id);
        let mut merged = Vec::new();
        let mut cut: Option<StreamId> = None;
        let mut complete = true;
        for name in names {
            let key = self.key(name);
            let reply: Value = ::redis::cmd("XRANGE")
                .arg(&key)
                .arg(format!("({}", format_id(after)))
                .arg(&upper)
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await?;
            // After the read, never before it: removal only goes forward, so
            // if nothing after `after` is gone now, nothing was gone when the
            // read was made (checked first, a trim in between would leave a
            // silent gap).
            if lost_after(&mut conn, &key, after).await? {
                return Ok(None);
            }
            let entries = parse_entries(&reply);
            if entries.len() == PAGE {
                // A full page: later entries of this topic come in the next round.
                if let Some((last, ..)) = entries.last() {
                    cut = Some(cut.map_or(*last, |cut| cut.min(*last)));
                }
                complete = false;
            }
            merged.extend(entries);
        }
        let newest = merged.iter().map(|(id, ..)| *id).max().unwrap_or(after);
        let through = cut.or(clock).unwrap_or(newest).max(after);
        merged.sort_by_key(|(id, ..)| *id);
        merged.retain(|(id, ..)| *id <= through);
        Ok(Some((merged, through, complete)))
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
