//! One stream's subscription: a cursor in each topic's ring, read straight
//! into the stream's frames, in the hub's order, with the lag policy applied
//! as it reads.

use std::{
    collections::VecDeque,
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use futures::future::BoxFuture;
use sync_wrapper::SyncWrapper;
use tokio::time::Instant;

use super::{
    Hub, LAGGED_EVENT, LagPolicy, MAX_BATCH, RESET_EVENT, Resume, TooManyTopics,
    topic::{Key, Topic},
};
use crate::{Event, frame::MAX_FRAME, telemetry};

/// The stream must end: it fell behind under [`LagPolicy::Close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Lagged;

/// Where a subscription starts, once known (on Redis, after a replay).
pub(crate) struct Begun {
    /// Deliver only what comes after this key.
    pub(crate) after: Key,
    /// Sent first: a reset notice, replayed events.
    pub(crate) first: Vec<Bytes>,
    /// The id could not be resumed from: a hub with a snapshot function
    /// sends snapshots instead of `first`.
    pub(crate) reset: bool,
    /// `first` is a page of a replay from Redis: send it, then ask for the
    /// next, so that a long replay goes out as it is read.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) more: bool,
    /// The rings reached back to `after` when checked: they must still when
    /// the stream is placed in them (a publish on another thread, or this
    /// node's reader, may have evicted since).
    pub(crate) from_rings: bool,
}

/// A stream's place in each of its topics. Dropping it leaves the topics.
pub(crate) struct Subscription {
    hub: Hub,
    /// Numbers this stream's waker registrations.
    id: u64,
    lanes: Vec<Lane>,
    /// The newest key delivered (or skipped by a reset): nothing at or below
    /// it is ever delivered, whatever a ring later receives.
    high_water: Key,
    /// Sent before anything read from the rings.
    first: VecDeque<Bytes>,
    /// Events missed and not yet announced.
    missed: u64,
    /// Finds where the subscription starts (Redis: follows the topics and
    /// replays from Redis). The lanes are read once it is done.
    /// `SyncWrapper` keeps the body `Sync`: the future is reached only
    /// through `&mut` (`get_mut`).
    starting: Option<SyncWrapper<BoxFuture<'static, Begun>>>,
    /// The waker the topics hold for this stream.
    waker: Option<Waker>,
    /// It left its topics.
    closed: bool,
    /// The `Last-Event-ID` it started from, for a replay's later pages.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    resume: Resume,
    /// Counted in `Hub::subscribers`: from the moment its start is known
    /// (on Redis, once the node follows its topics), so that an event
    /// published once it is counted reaches it.
    counted: bool,
    /// `sse_hub_delivery_seconds`, registered once per stream.
    #[cfg(feature = "metrics")]
    delivery: telemetry::Histogram,
}

struct Lane {
    name: Arc<str>,
    topic: Arc<Topic>,
    /// The index in the ring of the next event to read.
    cursor: u64,
    /// The topic's wake-up epoch this stream registered in.
    epoch: Option<u64>,
    /// Under `LagPolicy::Conflate`: how many events without a key the topic
    /// had before `cursor` (to count those a lag loses).
    keyless: u64,
    /// Under `LagPolicy::Conflate`: the newest events of the keys this
    /// stream missed, in the ring's order, sent before the ring's entries.
    catch_up: VecDeque<CatchUp>,
}

/// The newest event of a key a lagging stream missed, waiting to be sent.
/// Its bytes stay with the topic (`Conflation::latest`), read when it is
/// sent: a stalled stream holds no event its topic has let go, only these
/// 40 bytes a key.
struct CatchUp {
    /// Its conflation key (shared with the topic's map).
    name: Arc<str>,
    /// Its index in the ring (no longer there).
    index: u64,
    key: Key,
}

/// Where an event a stream read comes from.
#[derive(Clone, Copy)]
enum Source {
    /// The front of its lane's catch-up.
    CatchUp,
    /// The ring, at `index`, with `keyless` events without a key up to it.
    Ring { index: u64, keyless: u64 },
}

impl Subscription {
    /// Subscribes to `names` (each listed once) from `resume`.
    pub(crate) fn new(hub: &Hub, names: &[&str], resume: Resume) -> Result<Self, TooManyTopics> {
        let inner = &hub.inner;
        let lanes = inner
            .acquire(names)?
            .into_iter()
            .map(|(name, topic)| Lane {
                name,
                topic,
                cursor: 0,
                epoch: None,
                keyless: 0,
                catch_up: VecDeque::new(),
            })
            .collect();
        let mut subscription = Self {
            hub: hub.clone(),
            id: inner.next_stream.fetch_add(1, Ordering::Relaxed),
            lanes,
            high_water: (0, 0),
            first: VecDeque::new(),
            missed: 0,
            starting: None,
            waker: None,
            closed: false,
            counted: false,
            resume: Resume::Live,
            #[cfg(feature = "metrics")]
            delivery: telemetry::Histogram::delivery(),
        };
        #[cfg(feature = "redis")]
        if let Some(backend) = &inner.redis {
            let names = subscription.lanes.iter().map(|l| l.name.clone()).collect();
            let topics = subscription.lanes.iter().map(|l| l.topic.clone()).collect();
            subscription.resume = resume.clone();
            subscription.starting = Some(SyncWrapper::new(backend.begin(
                hub.clone(),
                names,
                topics,
                resume,
            )));
            return Ok(subscription);
        }
        let begun = subscription.begin_local(&resume);
        subscription.resume = resume;
        subscription.start(begun);
        Ok(subscription)
    }

    /// Where a subscription to in-memory rings starts.
    fn begin_local(&self, resume: &Resume) -> Begun {
        let inner = &self.hub.inner;
        let now = Instant::now();
        // `max_age` holds on read, however long the topic was left alone.
        for lane in &self.lanes {
            lane.topic.write().evict(inner.window, inner.max_age, now);
        }
        let published = inner.published.load(Ordering::Acquire);
        let live = (published, 0);
        let id = match resume {
            Resume::Live => return Begun::live(live),
            Resume::Unusable => return Begun::reset(live, resume),
            // Live only: the rings are there to deliver, not to replay.
            Resume::After(_) if inner.history == 0 => return Begun::reset(live, resume),
            Resume::After(id) => id,
        };
        // The id's place in the hub's order: an id in history, or a sequence
        // number this hub has handed out.
        let key = self
            .lanes
            .iter()
            .find_map(|lane| {
                let ring = lane.topic.read();
                ring.entries
                    .iter()
                    .rev()
                    .find(|e| *e.id == **id)
                    .map(|e| e.key)
            })
            .or_else(|| {
                let seq = id.parse::<u64>().ok()?;
                (seq <= published).then_some((seq, 0))
            });
        let resumable = key.filter(|key| {
            self.lanes
                .iter()
                .all(|lane| lane.topic.read().floor.is_none_or(|floor| floor <= *key))
        });
        match resumable {
            Some(key) => Begun::from_rings(key),
            None => Begun::reset(live, resume),
        }
    }

    fn start(&mut self, begun: Begun) {
        if !self.counted {
            self.counted = true;
            self.hub.inner.subscribers.fetch_add(1, Ordering::Relaxed);
        }
        if begun.reset && self.snapshot() {
            return;
        }
        if begun.reset {
            telemetry::hub_reset();
        }
        self.high_water = self.high_water.max(begun.after);
        #[cfg(feature = "redis")]
        if begun.more {
            self.first.extend(begun.first);
            if let Some(backend) = &self.hub.inner.redis {
                let names = self.lanes.iter().map(|l| l.name.clone()).collect();
                let topics = self.lanes.iter().map(|l| l.topic.clone()).collect();
                let more = backend.replay_more(
                    self.hub.clone(),
                    names,
                    topics,
                    self.high_water,
                    self.resume.clone(),
                );
                self.starting = Some(SyncWrapper::new(more));
            }
            return;
        }
        if !self.place(begun.after, begun.from_rings) {
            // Evicted past `after` since checked: what a resume now gets, a
            // replay of the rest from Redis, or (in memory) a reset.
            #[cfg(feature = "redis")]
            if self.hub.inner.redis.is_some() {
                return self.start(Begun {
                    more: true,
                    from_rings: false,
                    ..begun
                });
            }
            return self.start(Begun::reset(self.live(), &self.resume));
        }
        self.first.extend(begun.first);
    }

    /// Places each lane's cursor after `after`; with `check`, only if every
    /// ring still reaches back to it (checked under the lock the cursor is
    /// placed under), otherwise none and false.
    fn place(&mut self, after: Key, check: bool) -> bool {
        for lane in &mut self.lanes {
            let ring = lane.topic.read();
            if check && ring.floor.is_some_and(|floor| floor > after) {
                return false;
            }
            lane.cursor = ring.index_after(after);
            lane.keyless = ring.keyless_before(lane.cursor);
            drop(ring);
            lane.catch_up.clear();
        }
        true
    }

    /// Where a stream starting live now starts.
    fn live(&self) -> Key {
        #[cfg(feature = "redis")]
        if self.hub.inner.redis.is_some() {
            return Topic::complete_in_all(self.lanes.iter().map(|l| &*l.topic));
        }
        (self.hub.inner.published.load(Ordering::Acquire), 0)
    }

    /// Adds `count` events missed elsewhere (a dropping buffer) to the next
    /// lag notice.
    pub(crate) fn missed(&mut self, count: u64) {
        self.hub.inner.lagged.fetch_add(count, Ordering::Relaxed);
        telemetry::hub_lagged(count);
        self.missed += count;
    }

    /// Moves what the stream is to send next into `out`: at most `limit`
    /// events and about 64 KiB (one larger event goes alone). `Pending`
    /// with nothing to send, `cx` woken when there is.
    pub(crate) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        limit: usize,
        out: &mut Vec<Bytes>,
    ) -> Poll<Result<(), Lagged>> {
        if self.closed {
            return Poll::Pending;
        }
        let limit = limit.clamp(1, MAX_BATCH);
        let mut size = 0;
        loop {
            // What comes first (a notice, a page of a replay) goes before
            // anything else is read.
            while out.len() < limit && size < MAX_FRAME {
                let Some(bytes) = self.first.pop_front() else {
                    break;
                };
                size += bytes.len();
                out.push(bytes);
            }
            if !self.first.is_empty() || (!out.is_empty() && self.starting.is_some()) {
                return Poll::Ready(Ok(()));
            }
            let Some(starting) = &mut self.starting else {
                break;
            };
            let starting = starting.get_mut();
            // It may run the application's snapshot function, inside hyper's
            // task: never unwind there.
            let polled = catch_unwind(AssertUnwindSafe(|| starting.as_mut().poll(cx)));
            let begun = match polled {
                Ok(Poll::Pending) if out.is_empty() => return Poll::Pending,
                Ok(Poll::Pending) => return Poll::Ready(Ok(())),
                Ok(Poll::Ready(begun)) => begun,
                Err(_) => {
                    tracing::error!("the snapshot function panicked: sending a reset");
                    // Not sent back to the snapshot function.
                    let mut begun = Begun::reset(self.position(), &Resume::Unusable);
                    begun.reset = false;
                    begun
                }
            };
            self.starting = None;
            self.start(begun);
        }
        self.register(cx.waker());
        self.read(limit, size, out)?;
        if self.starting.is_some() {
            // It fell behind, and snapshots are on their way instead.
            return self.poll_read(cx, limit, out);
        }
        if out.is_empty() {
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// Where every topic of the stream has all its events now.
    fn position(&self) -> Key {
        let inner = &self.hub.inner;
        if !inner.is_redis() {
            return (inner.published.load(Ordering::Acquire), 0);
        }
        Topic::complete_in_all(self.lanes.iter().map(|lane| &*lane.topic))
    }

    /// With a snapshot function, starts sending each topic's snapshot in
    /// place of a gap; `false` without one.
    ///
    /// Each snapshot is stamped with the position of the hub taken before
    /// the function is called, and the stream goes on after that position:
    /// an event published before the call is in the snapshot, one published
    /// after it follows it (and may be in it too).
    fn snapshot(&mut self) -> bool {
        let Some(snapshot) = self.hub.inner.snapshot.clone() else {
            return false;
        };
        // Never behind what the stream sent (a replay from Redis may have
        // gone past what this node has read).
        let after = self.position().max(self.high_water);
        let id = self.hub.inner.key_id(after);
        let names: Vec<String> = self.lanes.iter().map(|l| l.name.to_string()).collect();
        self.first.clear();
        self.missed = 0;
        let taking = async move {
            let mut first = Vec::with_capacity(names.len());
            for name in names {
                let mut event = snapshot(name.clone()).await;
                event.id = Some(id.clone());
                match event.encode() {
                    Ok(bytes) => first.push(bytes),
                    Err(err) => {
                        // Say there is a gap rather than hide it.
                        tracing::error!(%err, topic = name, "invalid snapshot: sending a reset");
                        first.extend(Event::new("").name(RESET_EVENT).encode().ok());
                    }
                }
            }
            Begun {
                after,
                first,
                reset: false,
                more: false,
                from_rings: false,
            }
        };
        self.starting = Some(SyncWrapper::new(Box::pin(taking)));
        true
    }

    /// Registers for each topic's next event, unless registered already
    /// with this waker since the topic last woke its streams.
    fn register(&mut self, waker: &Waker) {
        let same = self.waker.as_ref().is_some_and(|w| w.will_wake(waker));
        for lane in &mut self.lanes {
            if !same || lane.epoch != Some(lane.topic.epoch()) {
                lane.epoch = Some(lane.topic.register(self.id, waker));
            }
        }
        if !same {
            self.waker = Some(waker.clone());
        }
    }

    /// Reads the rings after the cursors, in the hub's order, into `out`.
    fn read(&mut self, limit: usize, mut size: usize, out: &mut Vec<Bytes>) -> Result<(), Lagged> {
        let inner = &self.hub.inner;
        let bound = self.bound();
        let high_water = self.high_water;
        // What each ring has for this stream, read one ring at a time (a
        // stream never holds two rings' locks): (key, lane, source, bytes).
        let mut found: Vec<(Key, usize, Source, Bytes)> = Vec::new();
        // When each event found was published, for the delivery histogram.
        #[cfg(feature = "metrics")]
        let mut published = Vec::new();
        // Missed and announced: every event missed, or under
        // `LagPolicy::Conflate` those without a key.
        let mut missed = 0;
        // Under `LagPolicy::Conflate`: missed, replaced by a newer event of
        // their key; counted, not announced.
        let mut replaced = 0;
        for (i, lane) in self.lanes.iter_mut().enumerate() {
            let ring = lane.topic.read();
            let mut taken = 0;
            let mut bytes = 0;
            if let Some(conflation) = &ring.conflation {
                if lane.cursor < ring.first_index {
                    // The newest event of each key whose newest event is in
                    // the gap, in order; the other keyed events of the gap
                    // are replaced; those without a key are lost.
                    let gap = ring.first_index - lane.cursor;
                    let lost = conflation.keyless_evicted.saturating_sub(lane.keyless);
                    let newest = conflation.in_gap(lane.cursor..ring.first_index);
                    replaced += gap.saturating_sub(lost + newest.len() as u64);
                    missed += lost;
                    lane.catch_up
                        .extend(newest.into_iter().map(|(name, latest)| CatchUp {
                            name,
                            index: latest.index,
                            key: latest.key,
                        }));
                    lane.cursor = ring.first_index;
                    lane.keyless = conflation.keyless_evicted;
                }
                // The lane's catch-up first: it is older than the ring. An
                // entry whose key has a newer event since (from a later gap,
                // or in the ring ahead of the cursor) is replaced by it; one
                // a replay from Redis delivered is not missed. Each entry is
                // looked at once, as it reaches the front.
                let mut at = 0;
                while at < lane.catch_up.len() && taken < limit && bytes < MAX_FRAME {
                    let c = &lane.catch_up[at];
                    if c.key > bound {
                        break;
                    }
                    match conflation.latest_at(&c.name, c.index) {
                        Some(latest) if c.key > high_water => {
                            found.push((c.key, i, Source::CatchUp, latest.bytes.clone()));
                            #[cfg(feature = "metrics")]
                            published.push(latest.at);
                            taken += 1;
                            bytes += latest.bytes.len();
                            at += 1;
                        }
                        Some(_) => {
                            lane.catch_up.remove(at);
                        }
                        None => {
                            lane.catch_up.remove(at);
                            replaced += 1;
                        }
                    }
                }
            } else if lane.cursor < ring.first_index {
                missed += ring.first_index - lane.cursor;
                lane.cursor = ring.first_index;
            }
            let mut index = lane.cursor;
            while taken < limit && bytes < MAX_FRAME {
                let Some(entry) = ring.get(index) else { break };
                if entry.key > bound {
                    break;
                }
                if entry.key <= high_water {
                    // Delivered already (a replay from Redis reached it).
                    lane.cursor = index + 1;
                    lane.keyless = entry.keyless;
                } else {
                    let source = Source::Ring {
                        index,
                        keyless: entry.keyless,
                    };
                    found.push((entry.key, i, source, entry.bytes.clone()));
                    #[cfg(feature = "metrics")]
                    published.push(entry.at);
                    taken += 1;
                    bytes += entry.bytes.len();
                }
                index += 1;
            }
        }
        #[cfg(feature = "metrics")]
        {
            let now = Instant::now();
            for at in published {
                self.delivery.seconds(now.saturating_duration_since(at));
            }
        }
        if missed + replaced > 0 {
            inner.lagged.fetch_add(missed + replaced, Ordering::Relaxed);
            telemetry::hub_lagged(missed + replaced);
            tracing::debug!(missed, replaced, "subscriber lagged");
        }
        if missed > 0 && inner.lag != LagPolicy::Conflate {
            if inner.lag == LagPolicy::Close {
                return Err(Lagged);
            }
            if self.snapshot() {
                return Ok(());
            }
        }
        self.missed += missed;
        if self.missed > 0 {
            let notice = Event::new(self.missed.to_string()).name(LAGGED_EVENT);
            if let Ok(bytes) = notice.encode() {
                size += bytes.len();
                out.push(bytes);
            }
            self.missed = 0;
        }
        if self.lanes.len() > 1 {
            found.sort_unstable_by_key(|(key, ..)| *key);
        }
        for (key, lane, source, bytes) in found {
            if out.len() >= limit || (size > 0 && size + bytes.len() > MAX_FRAME) {
                break;
            }
            size += bytes.len();
            out.push(bytes);
            let lane = &mut self.lanes[lane];
            match source {
                Source::CatchUp => {
                    lane.catch_up.pop_front();
                }
                Source::Ring { index, keyless } => {
                    lane.cursor = index + 1;
                    lane.keyless = keyless;
                }
            }
            self.high_water = key;
        }
        Ok(())
    }

    /// The newest key this stream may deliver now: every topic of the
    /// stream has all its events up to it in its ring.
    fn bound(&self) -> Key {
        let inner = &self.hub.inner;
        if !inner.is_redis() {
            return (inner.published.load(Ordering::Acquire), u64::MAX);
        }
        if self.lanes.len() == 1 {
            return (u64::MAX, u64::MAX);
        }
        self.position()
    }
}

impl Subscription {
    /// Leaves the topics (at once, rather than when dropped).
    pub(crate) fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.starting = None;
        for lane in &self.lanes {
            lane.topic.unregister(self.id);
        }
        let taken: Vec<_> = self
            .lanes
            .drain(..)
            .map(|lane| (lane.name, lane.topic))
            .collect();
        let inner = &self.hub.inner;
        inner.release(&taken);
        if self.counted {
            inner.subscribers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.close();
    }
}

impl Begun {
    /// Live events after `after`.
    pub(crate) fn live(after: Key) -> Self {
        Self {
            after,
            first: Vec::new(),
            reset: false,
            more: false,
            from_rings: false,
        }
    }

    /// Resumed after `after` from the rings, which reached back to it when
    /// checked.
    pub(crate) fn from_rings(after: Key) -> Self {
        Self {
            from_rings: true,
            ..Self::live(after)
        }
    }

    /// A reset (echoing the id when usable, see [`RESET_EVENT`]), then live
    /// events after `after`.
    pub(crate) fn reset(after: Key, resume: &Resume) -> Self {
        let echo = resume.id().unwrap_or_default();
        let first = Event::new(echo).name(RESET_EVENT).encode().ok();
        Self {
            after,
            first: first.into_iter().collect(),
            reset: true,
            more: false,
            from_rings: false,
        }
    }
}

#[cfg(test)]
mod tests;
