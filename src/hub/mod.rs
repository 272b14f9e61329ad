//! Fan-out with resume: publish an event once, deliver it to every stream
//! subscribed to its topic, and let a reconnecting client catch up from
//! history with `Last-Event-ID`.
//!
//! The hub keeps, per topic, a ring of the last events *encoded once* as
//! shared [`Bytes`](bytes::Bytes). Each subscribed stream pulls from the rings with its own
//! cursor, so history and live events are one sequence: a reconnect replays
//! what was missed and continues live with no gap and no duplicate, and
//! `publish` never waits for a slow client.

use std::{
    collections::HashSet,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

#[allow(unused_imports)] // for the docs
use crate::StreamContext;
use crate::{Event, EventError, LAST_EVENT_ID, telemetry};

mod builder;
mod layer;
mod ready;
#[cfg(feature = "redis")]
mod redis;
mod subscription;
#[cfg(test)]
mod tests;
mod topic;
mod topics;

pub use self::builder::HubBuilder;
pub use self::layer::Refusal;
pub(crate) use self::layer::{HubSource, Selected};
pub(crate) use self::subscription::{Lagged, Subscription};
use self::{
    builder::{KeyFn, SnapshotFn},
    topic::{Entry, Key},
    topics::{TooManyTopics, Topics},
};

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
/// Under [`LagPolicy::Conflate`], it counts only the missed events without a
/// key (those replaced by a newer event of their key are not announced).
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
    /// Deliver the newest event of each key the stream missed, then go on:
    /// the hub's counterpart of [`Buffer::conflating`](crate::Buffer::conflating).
    ///
    /// Each event gets a key when published: by the function given to
    /// [`HubBuilder::conflate_by`], or, set with
    /// [`lag_policy`](HubBuilder::lag_policy) alone, the event's name
    /// ([`Event::name_ref`]). Each topic remembers the newest event of
    /// every key, also once history has let it go. A stream that falls
    /// behind gets, for the events it missed, the newest event of each key
    /// whose newest event was among them, in publish order and before what
    /// history still holds (a key whose newest event history still holds
    /// gets it from there): after catching up, the last event it got of
    /// each key is the newest published. Replaced events are counted in
    /// [`Hub::lagged_events`] (as a conflating buffer counts them as
    /// dropped) but not announced. Missed events without a key (the key
    /// function returned `None`) cannot be replaced: they are lost, and the
    /// stream gets a [`LAGGED_EVENT`] with how many, before the newest
    /// values.
    ///
    /// Memory: one event per distinct key per topic, for as long as the
    /// topic lives (not bounded by `history` or `max_age`, which bound what
    /// is replayed). Keys should come from a bounded set: symbols, ids of
    /// things, not one per event. No [`snapshot`](HubBuilder::snapshot) is
    /// sent on lag (the newest values are); snapshots still replace resets.
    /// A `Last-Event-ID` is resumed from exactly as under the other
    /// policies: history, else a reset (or snapshots).
    Conflate,
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
/// use tower_sse::{Event, hub::Hub};
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
    /// Under [`LagPolicy::Conflate`] (only): the key of each event.
    conflate: Option<Arc<KeyFn>>,
    #[cfg(feature = "redis")]
    redis: Option<redis::Backend>,
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

    /// The conflation key of `event` under [`LagPolicy::Conflate`] (`None`
    /// otherwise). Calls the application's key function: never under a lock.
    fn conflation_key(&self, event: &Event) -> Option<Arc<str>> {
        self.conflate
            .as_ref()
            .and_then(|key| key(event))
            .map(Arc::from)
    }

    fn lock(&self) -> MutexGuard<'_, Topics> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
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
            conflate: None,
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
    ///
    /// # Panics
    ///
    /// When the key function of [`HubBuilder::conflate_by`] panics: it is
    /// called here, before anything is locked or published, so the panic
    /// reaches the caller and the hub is left as it was.
    pub async fn publish(
        &self,
        topic: &str,
        event: impl Into<Event>,
    ) -> Result<String, PublishError> {
        let event = event.into();
        // Before any lock: the key function is the application's code.
        let key = self.inner.conflation_key(&event);
        #[cfg(feature = "redis")]
        if let Some(backend) = &self.inner.redis {
            return backend.publish(topic, event, key).await;
        }
        let (id, len) = self.publish_local(topic, event, key)?;
        telemetry::hub_published(len);
        Ok(id)
    }

    /// Publishes in memory with its conflation key; returns the id and the
    /// encoded size.
    fn publish_local(
        &self,
        name: &str,
        mut event: Event,
        key: Option<Arc<str>>,
    ) -> Result<(String, usize), PublishError> {
        let inner = &self.inner;
        let now = Instant::now();
        let mut topics = inner.lock();
        topics.expire(inner, now);
        let seq = topics.next_seq;
        if event.id.is_none() {
            event.id = Some(seq.to_string());
        }
        let id: Arc<str> = event.id.as_deref().unwrap_or_default().into();
        // What is left of the event (the caller's data) is dropped after
        // the lock, with `event`.
        let bytes = event.take_frame().map_err(PublishError::Invalid)?;
        let len = bytes.len();
        let topic = topics
            .get_or_insert(name, inner, now)
            .map_err(|TooManyTopics(max)| PublishError::TooManyTopics(max))?;
        topics.next_seq += 1;
        {
            let mut ring = topic.write();
            ring.push(
                Entry {
                    key: (seq, 0),
                    id: id.clone(),
                    bytes,
                    at: now,
                    keyless: 0,
                },
                key,
            );
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
        Ok((id.to_string(), len))
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

    /// Events missed by lagging streams so far, over all streams. Under
    /// [`LagPolicy::Conflate`] it counts the events replaced by a newer
    /// event of their key as well as those lost (without a key).
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
