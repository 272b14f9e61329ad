//! Buffer policies: what a stream does when its application outruns the client.

use std::{fmt, sync::Arc};

use crate::Event;

/// What a conflating buffer calls on each event, before queueing it, to
/// find its key (`None`: never conflated).
pub(crate) type ConflationKey = Arc<dyn Fn(&Event) -> Option<String> + Send + Sync>;

/// The buffer between the application's senders and the client, like
/// Pedestal's `bufferfn-or-n` (core.async's fixed, dropping and sliding buffers).
///
/// - A number `n` (or [`Buffer::fixed`]) holds `n` events; senders wait for room.
/// - [`Buffer::dropping`] holds `n` events and drops the *new* event when full.
/// - [`Buffer::sliding`] holds `n` events and drops the *oldest* when full.
/// - [`Buffer::conflating`] holds `n` events and at most one per key: a new
///   event replaces the queued one of its key (the latest value wins).
/// - A closure returning a `Buffer` (or [`Buffer::per_stream`]) is called once
///   per stream, like Pedestal's buffer function.
///
/// A capacity of 0 is taken as 1: a stream always holds at least one event.
/// Dropped events are counted ([`EventSender::dropped`](crate::EventSender::dropped))
/// and reported in `tracing`.
///
/// ```
/// use tower_sse::Buffer;
///
/// let fixed: Buffer = 10.into();
/// let newest_lost = Buffer::dropping(100);
/// let oldest_lost = Buffer::sliding(100);
/// let latest_per_name = Buffer::conflating(100, |event| event.name_ref().map(str::to_owned));
/// let per_stream: Buffer = (|| Buffer::sliding(5)).into();
/// # let _ = (fixed, newest_lost, oldest_lost, latest_per_name, per_stream);
/// ```
#[derive(Clone)]
#[must_use = "a Buffer does nothing until given to a layer or a stream"]
pub struct Buffer {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Fixed(usize),
    Dropping(usize),
    Sliding(usize),
    Conflating(usize, ConflationKey),
    PerStream(Arc<dyn Fn() -> Buffer + Send + Sync>),
}

/// What a resolved buffer does when it is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    Wait,
    DropNewest,
    DropOldest,
    /// At most one queued event per key (the new one replaces it, in its
    /// place); an event whose key is not queued waits for room, as with `Wait`.
    Conflate,
}

/// One stream's buffer: what [`Buffer::resolve`] chose.
pub(crate) struct Resolved {
    pub(crate) policy: Policy,
    pub(crate) capacity: usize,
    /// Set under [`Policy::Conflate`] only.
    pub(crate) key: Option<ConflationKey>,
}

impl Buffer {
    /// Holds `capacity` events (at least 1, at most `u32::MAX`); senders
    /// wait for room (`send`) or get `Full` (`try_send`).
    pub fn fixed(capacity: usize) -> Self {
        Self {
            kind: Kind::Fixed(capacity),
        }
    }

    /// Holds `capacity` events; when full, a new event is dropped and counted.
    pub fn dropping(capacity: usize) -> Self {
        Self {
            kind: Kind::Dropping(capacity),
        }
    }

    /// Holds `capacity` events; when full, the oldest queued event is dropped and counted.
    pub fn sliding(capacity: usize) -> Self {
        Self {
            kind: Kind::Sliding(capacity),
        }
    }

    /// Holds `capacity` events and at most one per key: a slow client gets
    /// the latest value of everything (prices, progress, presence) instead
    /// of a stale backlog, or a gap.
    ///
    /// `key` is called on every event sent, before it is queued (in the
    /// sender's task, never under the queue's lock). When an event of the
    /// same key is still queued, the new event takes its place (the position
    /// of the first, so keys keep the order in which they first appeared)
    /// and the replaced one is counted as dropped
    /// ([`EventSender::dropped`](crate::EventSender::dropped),
    /// [`SseStats::events_dropped`](crate::SseStats::events_dropped)).
    /// An event whose key is `None`, or whose key is not queued, needs a
    /// slot of its own: when the buffer is full, [`send`](crate::EventSender::send)
    /// waits for room and [`try_send`](crate::EventSender::try_send) returns
    /// [`Full`](crate::TrySendError::Full), as with a fixed buffer, so the
    /// latest value of a key is never lost. Choose a `capacity` that covers
    /// the number of keys, and sends of a queued key never wait. A send of
    /// a key that is waiting for room when a later send of that key is
    /// queued (from another task) is superseded: it completes at once,
    /// its older value dropped and counted, so the client never ends on it.
    ///
    /// The ready function runs in a task of its own (as with a dropping or
    /// sliding buffer): its sends of a queued key never wait, so the body
    /// cannot bound a poll of it. A hub's events sent through
    /// [`Hub::ready`](crate::hub::Hub::ready) arrive encoded and are never
    /// conflated: they wait in line, as with every buffer.
    ///
    /// ```
    /// use tower_sse::{Buffer, Event, SseLayer};
    ///
    /// // The latest price per symbol, the symbol being the event's name.
    /// let layer = SseLayer::new(|events, _ctx| async move {
    ///     for (symbol, price) in [("ACME", 10), ("INIT", 7), ("ACME", 11)] {
    ///         if events.send(Event::new(price.to_string()).name(symbol)).await.is_err() {
    ///             return;
    ///         }
    ///     }
    /// })
    /// .buffer(Buffer::conflating(64, |event: &Event| event.name_ref().map(str::to_owned)));
    /// # let _ = layer;
    /// ```
    pub fn conflating<F>(capacity: usize, key: F) -> Self
    where
        F: Fn(&Event) -> Option<String> + Send + Sync + 'static,
    {
        Self {
            kind: Kind::Conflating(capacity, Arc::new(key)),
        }
    }

    /// Calls `make` once per stream to choose that stream's buffer.
    pub fn per_stream<F>(make: F) -> Self
    where
        F: Fn() -> Buffer + Send + Sync + 'static,
    {
        Self {
            kind: Kind::PerStream(Arc::new(make)),
        }
    }

    /// The policy and capacity [`resolve`](Self::resolve) chooses.
    #[cfg(test)]
    fn policy(&self) -> (Policy, usize) {
        let resolved = self.resolve();
        (resolved.policy, resolved.capacity)
    }

    /// The policy, capacity and key for one new stream.
    pub(crate) fn resolve(&self) -> Resolved {
        // A factory may return another factory; follow a few, then fall back
        // to the seed's default rather than loop forever.
        let mut current = self.clone();
        for _ in 0..8 {
            let (policy, capacity, key) = match current.kind {
                Kind::Fixed(n) => (Policy::Wait, n, None),
                Kind::Dropping(n) => (Policy::DropNewest, n, None),
                Kind::Sliding(n) => (Policy::DropOldest, n, None),
                Kind::Conflating(n, key) => (Policy::Conflate, n, Some(key)),
                Kind::PerStream(make) => {
                    current = make();
                    continue;
                }
            };
            return Resolved {
                policy,
                capacity: capacity.max(1),
                key,
            };
        }
        tracing::warn!("buffer factories nest too deeply; using a fixed buffer of 10");
        Resolved {
            policy: Policy::Wait,
            capacity: 10,
            key: None,
        }
    }
}

impl Default for Buffer {
    /// Pedestal's default: a fixed buffer of 10.
    fn default() -> Self {
        Self::fixed(10)
    }
}

impl From<usize> for Buffer {
    fn from(capacity: usize) -> Self {
        Self::fixed(capacity)
    }
}

impl<F> From<F> for Buffer
where
    F: Fn() -> Buffer + Send + Sync + 'static,
{
    fn from(make: F) -> Self {
        Self::per_stream(make)
    }
}

impl fmt::Debug for Buffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Fixed(n) => f.debug_tuple("Buffer::fixed").field(n).finish(),
            Kind::Dropping(n) => f.debug_tuple("Buffer::dropping").field(n).finish(),
            Kind::Sliding(n) => f.debug_tuple("Buffer::sliding").field(n).finish(),
            Kind::Conflating(n, _) => write!(f, "Buffer::conflating({n}, ..)"),
            Kind::PerStream(_) => f.write_str("Buffer::per_stream(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_fixed_and_zero_is_one() {
        assert_eq!(Buffer::from(3).policy(), (Policy::Wait, 3));
        assert_eq!(Buffer::fixed(0).policy(), (Policy::Wait, 1));
    }

    #[test]
    fn factories_are_called_per_resolve() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let buffer: Buffer = (move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Buffer::sliding(4)
        })
        .into();
        assert_eq!(buffer.policy(), (Policy::DropOldest, 4));
        assert_eq!(buffer.policy(), (Policy::DropOldest, 4));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn endless_factories_fall_back() {
        fn again() -> Buffer {
            Buffer::per_stream(again)
        }
        assert_eq!(again().policy(), (Policy::Wait, 10));
    }
}
