//! Fan-out with resume: publish an event once, deliver it to every stream
//! subscribed to its topic, and let a reconnecting client catch up from
//! history with `Last-Event-ID`.
//!
//! The hub keeps, per topic, a ring of the last events *encoded once* as
//! shared [`Bytes`]. Each subscribed stream pulls from the rings with its own
//! cursor, so history and live events are one sequence: a reconnect replays
//! what was missed and continues live with no gap and no duplicate, and
//! `publish` never waits for a slow client.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fmt,
    pin::Pin,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::{sync::Notify, time::Instant};

use crate::{Event, EventError, EventSender, LAST_EVENT_ID, StreamContext};

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
use self::redis::StreamId;

/// The event type a stream receives when its `Last-Event-ID` cannot be
/// resumed from: older than the history holds, unknown, or unusable (longer
/// than [`MAX_LAST_EVENT_ID_LEN`] bytes, or, through [`Hub::ready`], not
/// UTF-8). The client should reload its state. Live events follow.
///
/// The data is the id that could not be resumed when it is at most
/// [`MAX_LAST_EVENT_ID_LEN`] bytes, and empty when it is longer or not UTF-8:
/// never the whole of an over-long header (a client must not be able to make
/// every reconnect send back kilobytes it chose), and never a prefix of it.
/// A prefix would be an id the client never had, and often a valid one (a
/// prefix of a sequence number is another sequence number, a prefix of a
/// Redis id `<ms>-<seq>` another Redis id): a client that kept or logged it
/// would be misled, one that sent it back would resume from the wrong place.
/// Empty data says "your id was unusable" without ambiguity, and the client
/// still knows the id it sent (the reset has no `id` field, so an
/// `EventSource`'s `lastEventId` is unchanged).
pub const RESET_EVENT: &str = "reset";

/// The longest `Last-Event-ID`, in bytes, that a [`Hub`] looks up, parses or
/// echoes in a [`RESET_EVENT`]: 256.
///
/// The hub's own ids are at most 20 bytes (a `u64`), Redis entry ids at most
/// 41 (`<ms>-<seq>`, two `u64`s); 256 leaves room for ids set by a publisher
/// (UUIDs, ULIDs, prefixed keys). A longer id is treated as unknown without
/// being parsed or copied: the stream gets a reset with empty data, then
/// live events. So the work and memory a reconnect costs the hub do not grow
/// with the header (hyper accepts a request head of about 400 KiB over
/// HTTP/1 by default).
///
/// Ids set by a publisher should not be longer, or a client resuming from
/// one gets a reset instead. The [`LastEventId`](crate::LastEventId)
/// extractor and [`StreamContext::last_event_id`] still give the header
/// whole, for applications with ids of their own.
pub const MAX_LAST_EVENT_ID_LEN: usize = 256;

/// The event type a stream receives, under [`LagPolicy::Notify`], where it
/// missed events because it could not keep up. The data is how many it missed.
pub const LAGGED_EVENT: &str = "lagged";

/// How many events at most a stream takes from the rings at a time.
const MAX_BATCH: usize = 256;

/// How many events of each topic a hub built with `history(0)` keeps to
/// deliver them live (never to replay them): how far one of its streams may
/// fall behind before it lags.
const LIVE_ONLY_WINDOW: usize = 256;

/// What happens to a stream that falls behind the history (its client reads
/// slower than events are published).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LagPolicy {
    /// Skip what was lost and send a [`LAGGED_EVENT`] with the count, then go on.
    #[default]
    Notify,
    /// Close the stream: the browser reconnects with `Last-Event-ID` and
    /// resumes from history (or gets a [`RESET_EVENT`] if that is gone too).
    Close,
}

/// Why [`Hub::publish`] refused an event.
#[derive(Debug)]
#[non_exhaustive]
pub enum PublishError {
    /// The event cannot be encoded.
    Invalid(EventError),
    /// The backend (Redis) could not store the event; it was not published.
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(err) => write!(f, "invalid event: {err}"),
            Self::Unavailable(err) => write!(f, "event not published: {err}"),
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Invalid(err) => Some(err),
            Self::Unavailable(err) => Some(err.as_ref()),
        }
    }
}

/// Publishes events to topics and fans them out to subscribed streams.
/// Cheap to clone; clones share the topics.
///
/// Ids: an event published without an id gets the next number of a hub-wide
/// sequence (so ids increase within every topic, and a stream subscribed to
/// several topics resumes from one id); an id set by the publisher is kept
/// and must be unique.
///
/// ```no_run
/// use axum::{Router, routing::{get, post}, extract::State};
/// use tower_sse::{Event, Hub, SseLayer};
///
/// let hub = Hub::new();
/// let events = SseLayer::new(hub.ready(|_ctx| vec!["chat".to_owned()]));
/// let app: Router = Router::new()
///     .route("/events", get(|| async {}).layer(events))
///     .route(
///         "/messages",
///         post(|State(hub): State<Hub>, text: String| async move {
///             hub.publish("chat", Event::new(text).name("message")).await.is_ok().to_string()
///         }),
///     )
///     .with_state(hub);
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    /// Topics and the sequence. Nothing user-reachable runs under this lock:
    /// no `tracing`, no wake-up (a topic's `Notify` is cloned out and
    /// notified after the guard is dropped), no user value dropped (evicted
    /// entries hold only bytes the hub encoded), never across an `.await`.
    state: RwLock<State>,
    /// How many events a resume may replay (`HubBuilder::history`); 0: none.
    history: usize,
    /// How many events each topic's ring keeps, which is how far a stream
    /// may fall behind before it lags: `history`, or [`LIVE_ONLY_WINDOW`]
    /// when `history` is 0.
    window: usize,
    max_age: Option<Duration>,
    lag: LagPolicy,
    lagged: AtomicU64,
    subscribers: AtomicUsize,
    #[cfg(feature = "redis")]
    redis: Option<redis::Backend>,
}

struct State {
    next_seq: u64,
    topics: HashMap<String, Topic>,
}

struct Topic {
    entries: VecDeque<Entry>,
    /// How many events of this topic came before `entries[0]`.
    first_index: u64,
    /// The sequence number of the newest event evicted from history.
    last_evicted: Option<u64>,
    /// The Redis id of the newest event evicted from history.
    #[cfg(feature = "redis")]
    last_evicted_stream_id: Option<StreamId>,
    notify: Arc<Notify>,
}

struct Entry {
    seq: u64,
    id: Arc<str>,
    bytes: Bytes,
    at: Instant,
    /// The Redis entry id, for events read from Redis.
    #[cfg(feature = "redis")]
    stream_id: Option<StreamId>,
}

impl Topic {
    fn new() -> Self {
        Self {
            entries: VecDeque::new(),
            first_index: 0,
            last_evicted: None,
            #[cfg(feature = "redis")]
            last_evicted_stream_id: None,
            notify: Arc::new(Notify::new()),
        }
    }

    fn end_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }

    /// Forgets the events beyond the newest `window`, and those older than `max_age`.
    fn evict(&mut self, window: usize, max_age: Option<Duration>, now: Instant) {
        while let Some(oldest) = self.entries.front() {
            let too_many = self.entries.len() > window;
            let too_old = max_age.is_some_and(|age| now.duration_since(oldest.at) > age);
            if !too_many && !too_old {
                break;
            }
            self.last_evicted = Some(oldest.seq);
            #[cfg(feature = "redis")]
            if oldest.stream_id.is_some() {
                self.last_evicted_stream_id = oldest.stream_id;
            }
            self.entries.pop_front();
            self.first_index += 1;
        }
    }
}

/// Builds a [`Hub`] with a history size, a history age and a lag policy.
#[derive(Clone, Debug)]
pub struct HubBuilder {
    history: usize,
    max_age: Option<Duration>,
    lag: LagPolicy,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    key_prefix: String,
}

impl HubBuilder {
    /// Keeps the last `events` events per topic (default 1,000). It is also
    /// how far a stream may fall behind before it lags.
    ///
    /// `history(0)` means live only: a stream gets the events published
    /// after it subscribed, nothing is replayed, and every `Last-Event-ID`
    /// gets a [`RESET_EVENT`] (there is nothing to resume from), then live
    /// events. Each topic still keeps its newest 256 events to deliver them,
    /// so a stream may fall up to 256 behind before it lags; with Redis,
    /// streams are trimmed to about 256 entries, and nothing is replayed
    /// from Redis either.
    pub fn history(mut self, events: usize) -> Self {
        self.history = events;
        self
    }

    /// Forgets events older than `age` (default: kept until pushed out by newer ones).
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// What happens to a stream that falls behind the history (default [`LagPolicy::Notify`]).
    pub fn lag_policy(mut self, lag: LagPolicy) -> Self {
        self.lag = lag;
        self
    }

    /// The prefix of the Redis stream keys (default `"tower-sse:"`; a topic
    /// `chat` is the stream `tower-sse:chat`). Used by the Redis backend only.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// An in-memory hub: history lives in this process.
    pub fn build(self) -> Hub {
        Hub {
            inner: Arc::new(self.inner()),
        }
    }

    /// How many events each topic's ring keeps.
    fn window(&self) -> usize {
        match self.history {
            0 => LIVE_ONLY_WINDOW,
            events => events,
        }
    }

    fn inner(&self) -> Inner {
        Inner {
            state: RwLock::new(State {
                next_seq: 1,
                topics: HashMap::new(),
            }),
            history: self.history,
            window: self.window(),
            max_age: self.max_age,
            lag: self.lag,
            lagged: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

/// Where a new subscription starts in each topic, and whether it must say reset.
struct Start {
    cursors: Vec<u64>,
    reset: bool,
}

/// A stream's `Last-Event-ID`, checked against [`MAX_LAST_EVENT_ID_LEN`]
/// before anything looks at its contents.
#[derive(Clone, Copy, Debug)]
enum Resume<'a> {
    /// No id: live events only.
    Live,
    /// An id short enough to look up, parse and echo.
    After(&'a str),
    /// An id no history can resume from (over the cap, or not UTF-8): a
    /// reset echoing nothing.
    Unusable,
}

impl<'a> Resume<'a> {
    fn new(last_event_id: Option<&'a str>) -> Self {
        match last_event_id {
            None => Self::Live,
            Some(id) if id.len() <= MAX_LAST_EVENT_ID_LEN => Self::After(id),
            Some(_) => Self::Unusable,
        }
    }

    /// The id to look up, if there is a usable one.
    fn id(self) -> Option<&'a str> {
        match self {
            Self::After(id) => Some(id),
            Self::Live | Self::Unusable => None,
        }
    }
}

/// A request's `Last-Event-ID` as [`Hub::ready`] keeps it for the stream:
/// `None` without the header, `Some(None)` when it is over the cap or not
/// UTF-8 (checked on the first [`MAX_LAST_EVENT_ID_LEN`] bytes at most),
/// `Some(Some(id))` otherwise.
fn header_id(ctx: &StreamContext) -> Option<Option<String>> {
    let value = ctx.headers().get(LAST_EVENT_ID)?.as_bytes();
    if value.len() > MAX_LAST_EVENT_ID_LEN {
        return Some(None);
    }
    Some(std::str::from_utf8(value).ok().map(str::to_owned))
}

impl Hub {
    /// A hub keeping the last 1,000 events per topic, lag policy [`LagPolicy::Notify`].
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a hub with other settings.
    pub fn builder() -> HubBuilder {
        HubBuilder {
            history: 1000,
            max_age: None,
            lag: LagPolicy::Notify,
            key_prefix: "tower-sse:".to_owned(),
        }
    }

    /// Publishes `event` to `topic`: encodes it once, keeps it in the topic's
    /// history and wakes every subscribed stream. Never waits for a client
    /// (with Redis it waits for Redis to store the event). Returns the event's id.
    ///
    /// # Errors
    ///
    /// [`PublishError::Invalid`] when the event cannot be encoded;
    /// [`PublishError::Unavailable`] when Redis cannot store it. Either way
    /// nothing is published.
    pub async fn publish(
        &self,
        topic: &str,
        event: impl Into<Event>,
    ) -> Result<String, PublishError> {
        #[cfg(feature = "redis")]
        if let Some(backend) = &self.inner.redis {
            return backend.publish(topic, event.into()).await;
        }
        self.publish_local(topic, event.into())
    }

    fn publish_local(&self, topic: &str, mut event: Event) -> Result<String, PublishError> {
        let inner = &self.inner;
        let mut state = inner.state.write().unwrap_or_else(PoisonError::into_inner);
        let seq = state.next_seq;
        if event.id.is_none() {
            event.id = Some(seq.to_string());
        }
        let bytes = event.encode().map_err(PublishError::Invalid)?;
        let id: Arc<str> = event.id.as_deref().unwrap_or_default().into();
        state.next_seq += 1;
        let topic = state
            .topics
            .entry(topic.to_owned())
            .or_insert_with(Topic::new);
        let now = Instant::now();
        topic.entries.push_back(Entry {
            seq,
            id: id.clone(),
            bytes,
            at: now,
            #[cfg(feature = "redis")]
            stream_id: None,
        });
        topic.evict(inner.window, inner.max_age, now);
        let notify = topic.notify.clone();
        drop(state);
        notify.notify_waiters();
        Ok(id.to_string())
    }

    /// Streams `topics` to `events` until the stream closes: first what came
    /// after `last_event_id` (from history; a [`RESET_EVENT`] if that is no
    /// longer known), then live events. Without `last_event_id`, live events only.
    /// A topic listed more than once counts once: each event is sent once.
    ///
    /// An id longer than [`MAX_LAST_EVENT_ID_LEN`] bytes is not looked at: it
    /// gets a reset with empty data. ([`StreamContext::last_event_id`] gives
    /// `None` for a header that is not UTF-8; [`Hub::ready`] treats such a
    /// header as unusable, with a reset, rather than as no id.)
    ///
    /// Call it from a ready function (or use [`Hub::ready`]). Each event goes
    /// through the stream's buffer: a stream that cannot keep up falls behind
    /// in history without slowing anyone, and the [`LagPolicy`] decides what
    /// it sees when history moves past it. Events dropped by a dropping or
    /// sliding buffer are reported the same way.
    pub async fn subscribe<T: AsRef<str>>(
        &self,
        events: &EventSender,
        last_event_id: Option<&str>,
        topics: &[T],
    ) {
        self.subscribe_from(events, Resume::new(last_event_id), topics)
            .await;
    }

    async fn subscribe_from<T: AsRef<str>>(
        &self,
        events: &EventSender,
        resume: Resume<'_>,
        topics: &[T],
    ) {
        let inner = &self.inner;
        inner.subscribers.fetch_add(1, Relaxed);
        let _count = SubscriberGuard(&inner.subscribers);
        let names = distinct(topics);
        let Some((mut cursors, notifies)) = self.begin(events, resume, &names).await else {
            return;
        };
        let mut batch = Vec::new();
        let mut dropped_seen = events.dropped();
        let closed = events.closed();
        tokio::pin!(closed);
        loop {
            // Register for wake-ups before reading, so a publish in between is
            // not missed: one topic (the common case) needs no allocation.
            let single = (notifies.len() == 1).then(|| notifies[0].notified());
            tokio::pin!(single);
            if let Some(wait) = single.as_mut().as_pin_mut() {
                wait.enable();
            }
            let mut waits: Vec<Pin<Box<tokio::sync::futures::Notified<'_>>>> = Vec::new();
            if notifies.len() > 1 {
                waits = notifies.iter().map(|n| Box::pin(n.notified())).collect();
                for wait in &mut waits {
                    wait.as_mut().enable();
                }
            }
            // No more than the stream's buffer can take now: the rest stays
            // in history, and `batch` stays small.
            let room = events
                .capacity()
                .saturating_sub(events.queued_events())
                .max(1);
            let missed = self.read(&names, &mut cursors, &mut batch, room);
            if missed > 0 && !self.lagged(events, missed).await {
                return;
            }
            if batch.is_empty() {
                if notifies.is_empty() {
                    closed.await;
                    return;
                }
                let woken = async {
                    match single.as_mut().as_pin_mut() {
                        Some(wait) => wait.await,
                        None => {
                            futures::future::select_all(waits).await;
                        }
                    }
                };
                match futures::future::select(std::pin::pin!(woken), closed.as_mut()).await {
                    futures::future::Either::Left(_) => continue,
                    futures::future::Either::Right(_) => return,
                }
            }
            drop(waits);
            for bytes in batch.drain(..) {
                if events.send_encoded(bytes).await.is_err() {
                    return;
                }
            }
            let dropped = events.dropped();
            if dropped > dropped_seen {
                if !self.lagged(events, dropped - dropped_seen).await {
                    return;
                }
                dropped_seen = events.dropped();
            }
        }
    }

    /// Where a new subscription starts, after any replay or reset it needs;
    /// `None` when the stream closed meanwhile.
    async fn begin(
        &self,
        events: &EventSender,
        resume: Resume<'_>,
        names: &[&str],
    ) -> Option<(Vec<u64>, Vec<Arc<Notify>>)> {
        #[cfg(feature = "redis")]
        if let Some(backend) = &self.inner.redis {
            // Boxed, so in-memory subscriptions do not carry the Redis state.
            return Box::pin(backend.begin(self, events, resume, names)).await;
        }
        let (start, notifies) = self.start(resume, names, true);
        if start.reset {
            send_reset(events, resume).await?;
        }
        Some((start.cursors, notifies))
    }

    /// Applies the lag policy; `false` when the stream is done.
    async fn lagged(&self, events: &EventSender, missed: u64) -> bool {
        self.inner.lagged.fetch_add(missed, Relaxed);
        tracing::debug!(missed, "subscriber lagged");
        match self.inner.lag {
            LagPolicy::Notify => events
                .send(Event::new(missed.to_string()).name(LAGGED_EVENT))
                .await
                .is_ok(),
            LagPolicy::Close => {
                events.close();
                false
            }
        }
    }

    /// A ready function that subscribes each stream to the topics `topics`
    /// picks from its request, resuming from its `Last-Event-ID`. A topic
    /// picked more than once (`?topic=chat&topic=chat`) counts once.
    ///
    /// A `Last-Event-ID` longer than [`MAX_LAST_EVENT_ID_LEN`] bytes, or not
    /// UTF-8, gets a [`RESET_EVENT`] with empty data, then live events; the
    /// stream keeps at most [`MAX_LAST_EVENT_ID_LEN`] bytes of the header.
    ///
    /// ```
    /// # let hub = tower_sse::Hub::new();
    /// let layer = tower_sse::SseLayer::new(hub.ready(|ctx| {
    ///     // /rooms/lobby/events -> topic "lobby"
    ///     ctx.uri().path().split('/').nth(2).map(str::to_owned).into_iter().collect()
    /// }));
    /// # let _ = layer;
    /// ```
    pub fn ready<F>(
        &self,
        topics: F,
    ) -> impl Fn(EventSender, StreamContext) -> BoxFuture<'static, ()> + Send + Sync + 'static
    where
        F: Fn(&StreamContext) -> Vec<String> + Send + Sync + 'static,
    {
        let hub = self.clone();
        move |events, ctx| {
            let hub = hub.clone();
            let topics = topics(&ctx);
            // Only the id outlives this call, and only up to the cap: the
            // stream keeps no copy of the request.
            let last_event_id = header_id(&ctx);
            drop(ctx);
            Box::pin(async move {
                let resume = match &last_event_id {
                    None => Resume::Live,
                    Some(Some(id)) => Resume::new(Some(id.as_str())),
                    Some(None) => Resume::Unusable,
                };
                hub.subscribe_from(&events, resume, &topics).await;
            })
        }
    }

    /// Streams subscribed right now.
    pub fn subscribers(&self) -> usize {
        self.inner.subscribers.load(Relaxed)
    }

    /// Events missed by lagging streams so far, over all streams.
    pub fn lagged_events(&self) -> u64 {
        self.inner.lagged.load(Relaxed)
    }

    /// Finds each topic's starting point for `resume` in this process's
    /// history. `sequence_ids`: ids are this hub's sequence numbers (in memory).
    fn start(
        &self,
        resume: Resume<'_>,
        names: &[&str],
        sequence_ids: bool,
    ) -> (Start, Vec<Arc<Notify>>) {
        let inner = &self.inner;
        let mut state = inner.state.write().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let next_seq = state.next_seq;
        for name in names {
            let topic = state
                .topics
                .entry((*name).to_owned())
                .or_insert_with(Topic::new);
            topic.evict(inner.window, inner.max_age, now);
        }
        let topics: Vec<&Topic> = names.iter().map(|name| &state.topics[*name]).collect();
        let notifies = topics.iter().map(|t| t.notify.clone()).collect();
        let live = |topics: &[&Topic]| topics.iter().map(|t| t.end_index()).collect();
        let last = match resume {
            // Live only: the ring is there to deliver, not to replay.
            Resume::After(_) if inner.history == 0 => {
                let start = Start {
                    cursors: live(&topics),
                    reset: true,
                };
                return (start, notifies);
            }
            Resume::After(last) => last,
            Resume::Live | Resume::Unusable => {
                let start = Start {
                    cursors: live(&topics),
                    reset: matches!(resume, Resume::Unusable),
                };
                return (start, notifies);
            }
        };
        // The id's place in the hub-wide sequence: an id in history, or a
        // sequence number this hub has handed out.
        let seq = topics
            .iter()
            .find_map(|t| t.entries.iter().rev().find(|e| &*e.id == last))
            .map(|entry| entry.seq)
            .or_else(|| {
                let seq = last.parse::<u64>().ok()?;
                (sequence_ids && seq < next_seq).then_some(seq)
            });
        let resumable = seq.filter(|seq| {
            topics
                .iter()
                .all(|t| t.last_evicted.is_none_or(|evicted| evicted <= *seq))
        });
        let start = match resumable {
            Some(seq) => Start {
                cursors: topics
                    .iter()
                    .map(|t| t.first_index + t.entries.partition_point(|e| e.seq <= seq) as u64)
                    .collect(),
                reset: false,
            },
            None => Start {
                cursors: live(&topics),
                reset: true,
            },
        };
        (start, notifies)
    }

    /// Takes up to `limit` (at most [`MAX_BATCH`]) events after the cursors, in publish order.
    /// Returns how many events history lost before this stream read them.
    fn read(
        &self,
        names: &[&str],
        cursors: &mut [u64],
        batch: &mut Vec<Bytes>,
        limit: usize,
    ) -> u64 {
        let state = self
            .inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut missed = 0;
        // Each subscribed topic with this stream's cursor in it.
        let mut lanes: Vec<(&Topic, &mut u64)> = names
            .iter()
            .zip(cursors.iter_mut())
            .filter_map(|(name, cursor)| Some((state.topics.get(*name)?, cursor)))
            .collect();
        for (topic, cursor) in &mut lanes {
            if **cursor < topic.first_index {
                missed += topic.first_index - **cursor;
                **cursor = topic.first_index;
            }
        }
        while batch.len() < limit.min(MAX_BATCH) {
            // The lane whose next event is the oldest.
            let next = lanes
                .iter()
                .enumerate()
                .filter_map(|(i, (topic, cursor))| {
                    let entry = topic.entries.get((**cursor - topic.first_index) as usize)?;
                    Some((entry.seq, i))
                })
                .min();
            let Some((_, i)) = next else { break };
            let (topic, cursor) = &mut lanes[i];
            batch.push(
                topic.entries[(**cursor - topic.first_index) as usize]
                    .bytes
                    .clone(),
            );
            **cursor += 1;
        }
        missed
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("history", &self.inner.history)
            .field("max_age", &self.inner.max_age)
            .field("lag", &self.inner.lag)
            .field("subscribers", &self.subscribers())
            .finish_non_exhaustive()
    }
}

/// The topics, each once, in the order they first appear: a topic listed
/// twice would be two cursors in one ring, and every event sent twice.
fn distinct<T: AsRef<str>>(topics: &[T]) -> Vec<&str> {
    let mut seen = HashSet::with_capacity(topics.len());
    topics
        .iter()
        .map(AsRef::as_ref)
        .filter(|name| seen.insert(*name))
        .collect()
}

/// Tells a stream that its `Last-Event-ID` cannot be resumed; `None` when it
/// closed. The data is the id when it is usable (at most
/// [`MAX_LAST_EVENT_ID_LEN`] bytes), and empty otherwise (see [`RESET_EVENT`]).
async fn send_reset(events: &EventSender, resume: Resume<'_>) -> Option<()> {
    let echo = resume.id().unwrap_or_default();
    events.send(Event::new(echo).name(RESET_EVENT)).await.ok()
}

struct SubscriberGuard<'a>(&'a AtomicUsize);

impl Drop for SubscriberGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
