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
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::time::Instant;

use crate::{Event, EventError, EventSender, LAST_EVENT_ID, StreamContext};

mod layer;
#[cfg(feature = "redis")]
mod redis;
mod subscription;
mod topic;

pub use self::layer::Refusal;
pub(crate) use self::layer::{HubSource, Selected};
pub(crate) use self::subscription::{Lagged, Subscription};
use self::topic::{Entry, Key, Topic};

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
    /// The topic is new and the hub already holds
    /// [`max_topics`](HubBuilder::max_topics) topics.
    TooManyTopics(usize),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(err) => write!(f, "invalid event: {err}"),
            Self::Unavailable(err) => write!(f, "event not published: {err}"),
            Self::TooManyTopics(max) => {
                write!(
                    f,
                    "event not published: the hub holds its maximum of {max} topics"
                )
            }
        }
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Invalid(err) => Some(err),
            Self::Unavailable(err) => Some(err.as_ref()),
            Self::TooManyTopics(_) => None,
        }
    }
}

/// A stream's place in a topic: the topic's name and the topic.
type Place = (Arc<str>, Arc<Topic>);

/// A new topic would take the hub past [`HubBuilder::max_topics`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TooManyTopics(pub(crate) usize);

/// Publishes events to topics and fans them out to subscribed streams.
/// Cheap to clone; clones share the topics.
///
/// Ids: an event published without an id gets the next number of a hub-wide
/// sequence (so ids increase across all topics, and a stream subscribed to
/// several topics resumes from one id); an id set by the publisher is kept
/// and must be unique. Every stream gets its topics' events in publish
/// order (on Redis, in Redis id order, which is publish order).
///
/// Topics come and go: a topic exists while a stream is subscribed to it
/// or its history holds an event (see [`HubBuilder::max_age`] and
/// [`HubBuilder::max_topics`]).
///
/// ```no_run
/// use axum::{Router, routing::{get, post}, extract::State};
/// use tower_sse::{Event, Hub};
///
/// let hub = Hub::new();
/// let events = hub.layer(|_parts| Ok(vec!["chat".to_owned()]));
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
    /// The topics. Nothing user-reachable runs under this lock: no
    /// `tracing`, no wake-up, no user value dropped, never across an `.await`.
    topics: Mutex<Topics>,
    /// In memory: the sequence number of the newest event in its ring. Every
    /// event up to it is in its ring, so a stream reading several rings one
    /// after the other delivers nothing above it and never out of order.
    published: AtomicU64,
    /// How many events a resume may replay (`HubBuilder::history`); 0: none.
    history: usize,
    /// How many events each topic's ring keeps, which is how far a stream
    /// may fall behind before it lags: `history`, or [`LIVE_ONLY_WINDOW`]
    /// when `history` is 0.
    window: usize,
    max_age: Option<Duration>,
    max_topics: Option<usize>,
    lag: LagPolicy,
    lagged: AtomicU64,
    subscribers: AtomicUsize,
    /// Numbers the streams, for their waker registrations.
    next_stream: AtomicU64,
    /// Sent in place of a reset or a lag notice (`HubBuilder::snapshot`).
    snapshot: Option<Arc<SnapshotFn>>,
    #[cfg(feature = "redis")]
    redis: Option<redis::Backend>,
}

struct Topics {
    map: HashMap<Arc<str>, Arc<Topic>>,
    next_seq: u64,
    /// Topics with no stream but events in history, by when their newest
    /// event expires (with `max_age` only).
    expiry: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// The newest key of an event that went with a removed topic: a topic
    /// made again cannot resume from before it.
    removed_floor: Option<Key>,
}

impl Topics {
    /// The topic `name`, made if new (unless the hub is full).
    fn get_or_insert(
        &mut self,
        name: &str,
        inner: &Inner,
        now: Instant,
    ) -> Result<Arc<Topic>, TooManyTopics> {
        if let Some(topic) = self.map.get(name) {
            return Ok(topic.clone());
        }
        if let Some(max) = inner.max_topics {
            if self.map.len() >= max {
                self.expire(inner, now);
            }
            if self.map.len() >= max {
                return Err(TooManyTopics(max));
            }
        }
        let topic = Arc::new(Topic::new(!inner.is_redis()));
        topic.write().floor = self.removed_floor;
        self.map.insert(name.into(), topic.clone());
        Ok(topic)
    }

    /// Removes topic `name`, remembering what history it took along.
    fn remove(&mut self, name: &str) {
        if let Some(topic) = self.map.remove(name) {
            let floor = topic.read().floor;
            self.removed_floor = self.removed_floor.max(floor);
        }
    }

    /// Schedules an idle topic's removal once its newest event expires.
    fn schedule(&mut self, name: &Arc<str>, topic: &Topic, inner: &Inner) {
        let Some(age) = inner.max_age else { return };
        if topic.expiring.swap(true, Ordering::Relaxed) {
            return;
        }
        let newest = topic.read().entries.back().map(|e| e.at);
        let at = newest.unwrap_or_else(Instant::now) + age;
        self.expiry.push(Reverse((at, name.clone())));
    }

    /// Removes the idle topics whose history has expired.
    fn expire(&mut self, inner: &Inner, now: Instant) {
        while let Some(Reverse((at, _))) = self.expiry.peek() {
            if *at > now {
                return;
            }
            let Some(Reverse((_, name))) = self.expiry.pop() else {
                return;
            };
            let Some(topic) = self.map.get(&name).cloned() else {
                continue;
            };
            topic.expiring.store(false, Ordering::Relaxed);
            if topic.subscribers.load(Ordering::Relaxed) > 0 {
                // Scheduled again when its last stream leaves.
                continue;
            }
            topic.write().evict(inner.window, inner.max_age, now);
            if topic.read().entries.is_empty() {
                self.remove(&name);
            } else {
                self.schedule(&name, &topic, inner);
            }
        }
    }
}

/// A topic's current state, as one event (see [`HubBuilder::snapshot`]).
type SnapshotFn = dyn Fn(String) -> BoxFuture<'static, Event> + Send + Sync;

/// Builds a [`Hub`] with a history size, a history age and a lag policy.
#[derive(Clone)]
#[must_use = "a HubBuilder does nothing until built"]
pub struct HubBuilder {
    snapshot: Option<Arc<SnapshotFn>>,
    history: usize,
    max_age: Option<Duration>,
    max_topics: Option<usize>,
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

    /// Forgets events older than `age` (default: kept until pushed out by
    /// newer ones). It holds when a stream resumes, whether or not the
    /// topic was touched since, and a topic with no stream is removed once
    /// its newest event is older than `age`. On Redis, an id older than
    /// `age` gets a [`RESET_EVENT`], and a topic's stream key expires
    /// `age` after its last event.
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = Some(age);
        self
    }

    /// Holds at most `topics` topics at a time (default: no limit). A
    /// topic exists while a stream is subscribed to it or its history
    /// holds an event; at the limit, publishing to a new topic fails with
    /// [`PublishError::TooManyTopics`], and a stream asking for a new topic
    /// is refused with `503 Service Unavailable` (see [`Hub::layer`]).
    ///
    /// Without [`max_age`](Self::max_age), a topic that was published to
    /// keeps its history (and so its place) for good: set one or both when
    /// clients choose topics.
    pub fn max_topics(mut self, topics: usize) -> Self {
        self.max_topics = Some(topics);
        self
    }

    /// Sends a topic's current state where a stream would have a gap:
    /// instead of a [`RESET_EVENT`] (its `Last-Event-ID` is older than
    /// history, or unknown) or a [`LAGGED_EVENT`] (it fell behind, under
    /// [`LagPolicy::Notify`]), the stream gets `snapshot(topic)` for each of
    /// its topics, stamped with an id, then every event after that id. The
    /// client never reloads, and no event falls between the snapshot and
    /// what follows it.
    ///
    /// The id is the hub's position taken just before `snapshot` is called
    /// (any `id` the event has is replaced), so the snapshot must reflect
    /// at least every event published before the call: update the state,
    /// then publish. An event published while `snapshot` runs may be both
    /// in it and sent after it; make applying an event twice harmless (set
    /// a value rather than add to it, or carry a version in the data).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use tower_sse::{Event, Hub};
    ///
    /// let scores = Arc::new(Mutex::new(String::from("{}")));
    /// let hub = Hub::builder()
    ///     .history(100)
    ///     .snapshot({
    ///         let scores = scores.clone();
    ///         move |_topic: String| {
    ///             let now = scores.lock().unwrap().clone();
    ///             async move { Event::new(now).name("snapshot") }
    ///         }
    ///     })
    ///     .build();
    /// # let _ = hub;
    /// ```
    pub fn snapshot<F, Fut>(mut self, snapshot: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Event> + Send + 'static,
    {
        self.snapshot = Some(Arc::new(move |topic| Box::pin(snapshot(topic))));
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
            topics: Mutex::new(Topics {
                map: HashMap::new(),
                next_seq: 1,
                expiry: BinaryHeap::new(),
                removed_floor: None,
            }),
            published: AtomicU64::new(0),
            history: self.history,
            window: self.window(),
            max_age: self.max_age,
            max_topics: self.max_topics,
            lag: self.lag,
            lagged: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
            next_stream: AtomicU64::new(0),
            snapshot: self.snapshot.clone(),
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("history", &self.history)
            .field("max_age", &self.max_age)
            .field("max_topics", &self.max_topics)
            .field("lag", &self.lag)
            .field("snapshot", &self.snapshot.is_some())
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl Inner {
    /// The SSE id of a position in the hub's order.
    fn key_id(&self, (a, b): Key) -> String {
        if self.is_redis() {
            format!("{a}-{b}")
        } else {
            a.to_string()
        }
    }

    fn is_redis(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.redis.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    fn lock(&self) -> MutexGuard<'_, Topics> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a stream's place in each of `names` (each listed once);
    /// nothing when one of them cannot be made.
    fn acquire(&self, names: &[&str]) -> Result<Vec<Place>, TooManyTopics> {
        let now = Instant::now();
        let mut topics = self.lock();
        topics.expire(self, now);
        let mut taken = Vec::with_capacity(names.len());
        for name in names {
            match topics.get_or_insert(name, self, now) {
                Ok(topic) => {
                    topic.subscribers.fetch_add(1, Ordering::Relaxed);
                    if names.len() > 1 {
                        topic.multi.fetch_add(1, Ordering::Relaxed);
                    }
                    let name = topics
                        .map
                        .get_key_value(*name)
                        .map_or_else(|| Arc::from(*name), |(name, _)| name.clone());
                    taken.push((name, topic));
                }
                Err(full) => {
                    drop(topics);
                    self.release(&taken);
                    return Err(full);
                }
            }
        }
        Ok(taken)
    }

    /// Gives back a stream's places: a topic left with no stream goes when
    /// its history is empty (in memory) or at once (on Redis, which keeps
    /// the history; the node stops following it).
    fn release(&self, taken: &[Place]) {
        let mut gone = Vec::new();
        {
            let mut topics = self.lock();
            for (name, topic) in taken {
                if taken.len() > 1 {
                    topic.multi.fetch_sub(1, Ordering::Relaxed);
                }
                if topic.subscribers.fetch_sub(1, Ordering::Relaxed) != 1 {
                    continue;
                }
                let current = topics.map.get(name).is_some_and(|t| Arc::ptr_eq(t, topic));
                if !current {
                    continue;
                }
                if self.is_redis() || topic.read().entries.is_empty() {
                    topics.remove(name);
                    gone.push(name.clone());
                } else {
                    topics.schedule(name, topic, self);
                }
            }
        }
        #[cfg(feature = "redis")]
        if let Some(backend) = &self.redis {
            backend.unfollow(&gone);
        }
        drop(gone);
    }
}

/// A stream's `Last-Event-ID`, checked against [`MAX_LAST_EVENT_ID_LEN`]
/// before anything looks at its contents.
#[derive(Clone, Debug)]
pub(crate) enum Resume {
    /// No id: live events only.
    Live,
    /// An id short enough to look up, parse and echo.
    After(Box<str>),
    /// An id no history can resume from (over the cap, or not UTF-8): a
    /// reset echoing nothing.
    Unusable,
}

impl Resume {
    fn new(last_event_id: Option<&str>) -> Self {
        match last_event_id {
            None => Self::Live,
            Some(id) if id.len() <= MAX_LAST_EVENT_ID_LEN => Self::After(id.into()),
            Some(_) => Self::Unusable,
        }
    }

    /// A request's `Last-Event-ID` header: looked at only up to the cap.
    pub(crate) fn from_headers(headers: &http::HeaderMap) -> Self {
        let Some(value) = headers.get(LAST_EVENT_ID) else {
            return Self::Live;
        };
        let value = value.as_bytes();
        if value.len() > MAX_LAST_EVENT_ID_LEN {
            return Self::Unusable;
        }
        match std::str::from_utf8(value) {
            Ok(id) => Self::After(id.into()),
            Err(_) => Self::Unusable,
        }
    }

    /// The id to look up, if there is a usable one.
    fn id(&self) -> Option<&str> {
        match self {
            Self::After(id) => Some(id),
            Self::Live | Self::Unusable => None,
        }
    }
}

impl Hub {
    /// A hub keeping the last 1,000 events per topic, lag policy [`LagPolicy::Notify`].
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder for a hub with other settings.
    pub fn builder() -> HubBuilder {
        HubBuilder {
            snapshot: None,
            history: 1000,
            max_age: None,
            max_topics: None,
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
    /// [`PublishError::Unavailable`] when Redis cannot store it;
    /// [`PublishError::TooManyTopics`] for a new topic when the hub is full
    /// (in memory). In every case nothing is published.
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

    fn publish_local(&self, name: &str, mut event: Event) -> Result<String, PublishError> {
        let inner = &self.inner;
        let now = Instant::now();
        let mut topics = inner.lock();
        topics.expire(inner, now);
        let seq = topics.next_seq;
        if event.id.is_none() {
            event.id = Some(seq.to_string());
        }
        let bytes = event.encode().map_err(PublishError::Invalid)?;
        let id: Arc<str> = event.id.as_deref().unwrap_or_default().into();
        let topic = topics
            .get_or_insert(name, inner, now)
            .map_err(|TooManyTopics(max)| PublishError::TooManyTopics(max))?;
        topics.next_seq += 1;
        {
            let mut ring = topic.write();
            ring.push(Entry {
                key: (seq, 0),
                id: id.clone(),
                bytes,
                at: now,
            });
            ring.evict(inner.window, inner.max_age, now);
        }
        if topic.subscribers.load(Ordering::Relaxed) == 0 {
            if let Some((name, _)) = topics.map.get_key_value(name) {
                let name = name.clone();
                topics.schedule(&name, &topic, inner);
            }
        }
        inner.published.store(seq, Ordering::Release);
        drop(topics);
        topic.wake();
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
    /// Call it from a ready function (or use [`Hub::ready`]); [`Hub::layer`]
    /// serves the same streams from the response body, with no task or
    /// buffer per stream. Each event goes through the stream's buffer: a
    /// stream that cannot keep up falls behind in history without slowing
    /// anyone, and the [`LagPolicy`] decides what it sees when history
    /// moves past it. The hub waits in line for room whatever the buffer,
    /// so a dropping or sliding buffer never drops its events or notices;
    /// events that other senders of the stream had dropped are reported the
    /// same way, once per batch.
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
        resume: Resume,
        topics: &[T],
    ) {
        let names = distinct(topics);
        let mut subscription = match Subscription::new(self, &names, resume) {
            Ok(subscription) => subscription,
            Err(TooManyTopics(max)) => {
                tracing::warn!(max, "too many topics: stream not subscribed");
                return;
            }
        };
        let mut batch = Vec::new();
        let mut dropped_seen = events.dropped();
        let closed = events.closed();
        tokio::pin!(closed);
        loop {
            // A buffer's worth, however full the buffer is now: the sends
            // below wait in line for room whatever its policy (so the hub
            // never has an event or a notice dropped), and a lag notice is
            // followed by as many events as the buffer holds, not by one.
            // The rest stays in history, and `batch` stays small.
            let room = events.capacity();
            let read = std::future::poll_fn(|cx| subscription.poll_read(cx, room, &mut batch));
            match futures::future::select(std::pin::pin!(read), closed.as_mut()).await {
                futures::future::Either::Left((Ok(()), _)) => {}
                futures::future::Either::Left((Err(_lagged), _)) => {
                    events.close();
                    return;
                }
                futures::future::Either::Right(_) => return,
            }
            for bytes in batch.drain(..) {
                if events.send_encoded(bytes).await.is_err() {
                    return;
                }
            }
            let dropped = events.dropped();
            if dropped > dropped_seen {
                subscription.missed(dropped - dropped_seen);
                dropped_seen = dropped;
            }
        }
    }

    /// A ready function that subscribes each stream to the topics `topics`
    /// picks from its request, resuming from its `Last-Event-ID`. A topic
    /// picked more than once (`?topic=chat&topic=chat`) counts once.
    ///
    /// [`Hub::layer`] serves the same streams from the response body (no
    /// task, queue or sender per stream) and can refuse a request: prefer it.
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
    ) -> impl Fn(EventSender, StreamContext) -> futures::future::BoxFuture<'static, ()>
    + Send
    + Sync
    + 'static
    where
        F: Fn(&StreamContext) -> Vec<String> + Send + Sync + 'static,
    {
        let hub = self.clone();
        move |events, ctx| {
            let hub = hub.clone();
            let topics = topics(&ctx);
            // Only the id outlives this call, and only up to the cap: the
            // stream keeps no copy of the request.
            let resume = Resume::from_headers(ctx.headers());
            drop(ctx);
            Box::pin(async move {
                hub.subscribe_from(&events, resume, &topics).await;
            })
        }
    }

    /// Streams subscribed right now: an event published once a stream is
    /// counted reaches it. (On Redis a stream is counted once its node
    /// follows its topics, at its body's first poll.)
    pub fn subscribers(&self) -> usize {
        self.inner.subscribers.load(Ordering::Relaxed)
    }

    /// Topics this hub holds right now, in this process: those with a
    /// subscribed stream or (in memory) events in history.
    pub fn topics(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Events missed by lagging streams so far, over all streams.
    pub fn lagged_events(&self) -> u64 {
        self.inner.lagged.load(Ordering::Relaxed)
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
            .field("max_topics", &self.inner.max_topics)
            .field("lag", &self.inner.lag)
            .field("subscribers", &self.subscribers())
            .finish_non_exhaustive()
    }
}

/// The topics, each once, in the order they first appear: a topic listed
/// twice would be two cursors in one ring, and every event sent twice.
pub(crate) fn distinct<T: AsRef<str>>(topics: &[T]) -> Vec<&str> {
    let mut seen = HashSet::with_capacity(topics.len());
    topics
        .iter()
        .map(AsRef::as_ref)
        .filter(|name| seen.insert(*name))
        .collect()
}
