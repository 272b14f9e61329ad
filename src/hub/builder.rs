//! Building a hub: history, age, topics, lag policy, snapshots.

use std::{
    collections::{BinaryHeap, HashMap},
    fmt,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize},
    },
    time::Duration,
};

use futures::future::BoxFuture;

use super::{Hub, Inner, LIVE_ONLY_WINDOW, LagPolicy, topics::Topics};
#[allow(unused_imports)] // for the docs
use super::{LAGGED_EVENT, PublishError, RESET_EVENT};
use crate::Event;

/// A topic's current state, as one event (see [`HubBuilder::snapshot`]).
pub(crate) type SnapshotFn = dyn Fn(String) -> BoxFuture<'static, Event> + Send + Sync;

/// An event's conflation key (see [`HubBuilder::conflate_by`]).
pub(crate) type KeyFn = dyn Fn(&Event) -> Option<String> + Send + Sync;

/// Builds a [`Hub`] with a history size, a history age and a lag policy.
#[derive(Clone)]
#[must_use = "a HubBuilder does nothing until built"]
pub struct HubBuilder {
    pub(super) snapshot: Option<Arc<SnapshotFn>>,
    pub(super) history: usize,
    pub(super) max_age: Option<Duration>,
    pub(super) max_topics: Option<usize>,
    pub(super) lag: LagPolicy,
    /// The key function of [`LagPolicy::Conflate`] (default: the event's name).
    pub(super) conflate: Option<Arc<KeyFn>>,
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(super) key_prefix: String,
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
    /// use tower_sse::{Event, hub::Hub};
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

    /// What happens to a stream that falls behind the history (default
    /// [`LagPolicy::Notify`]). [`LagPolicy::Conflate`] set here keys events
    /// by the function of an earlier [`conflate_by`](Self::conflate_by),
    /// or without one by their name ([`Event::name_ref`]; an event without
    /// a name has no key).
    ///
    /// ```
    /// use tower_sse::hub::{Hub, LagPolicy};
    ///
    /// // A slow client gets the newest event of each event name it missed.
    /// let hub = Hub::builder().lag_policy(LagPolicy::Conflate).build();
    /// # let _ = hub;
    /// ```
    pub fn lag_policy(mut self, lag: LagPolicy) -> Self {
        self.lag = lag;
        self
    }

    /// Sets the lag policy to [`LagPolicy::Conflate`], with `key` giving
    /// each event's key: a stream that falls behind gets the newest event
    /// of each key it missed, and a [`LAGGED_EVENT`] counting only the
    /// missed events whose key is `None`.
    ///
    /// `key` is called once per event, in [`Hub::publish`], before the hub
    /// takes any lock, on the event as the publisher gave it: without the
    /// id the hub gives it (an id the publisher set is there; on Redis it
    /// is replaced afterwards). A panic in `key` reaches the caller of
    /// `publish`, and the event is not published. Each topic keeps the
    /// newest event of every key for as long as it lives: keys should come
    /// from a bounded set (see [`LagPolicy::Conflate`]). With Redis, the
    /// key is stored with the event, so every node conflates alike.
    ///
    /// ```
    /// use tower_sse::{Event, hub::Hub};
    ///
    /// // Prices: a slow client gets the latest price of each symbol, the
    /// // symbol being the event's data up to the first space.
    /// let hub = Hub::builder()
    ///     .history(256)
    ///     .conflate_by(|event: &Event| {
    ///         let data = event.data_ref()?;
    ///         data.split_once(' ').map(|(symbol, _)| symbol.to_owned())
    ///     })
    ///     .build();
    /// # let _ = hub;
    /// ```
    pub fn conflate_by<F>(mut self, key: F) -> Self
    where
        F: Fn(&Event) -> Option<String> + Send + Sync + 'static,
    {
        self.conflate = Some(Arc::new(key));
        self.lag = LagPolicy::Conflate;
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
    pub(super) fn window(&self) -> usize {
        match self.history {
            0 => LIVE_ONLY_WINDOW,
            events => events,
        }
    }

    pub(super) fn inner(&self) -> Inner {
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
            conflate: (self.lag == LagPolicy::Conflate).then(|| {
                self.conflate.clone().unwrap_or_else(|| {
                    Arc::new(|event: &Event| event.name_ref().map(str::to_owned))
                })
            }),
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
            .field("conflate_by", &self.conflate.is_some())
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}
