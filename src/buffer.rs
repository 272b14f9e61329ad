//! Buffer policies: what a stream does when its application outruns the client.

use std::{fmt, sync::Arc};

/// The buffer between the application's senders and the client, like
/// Pedestal's `bufferfn-or-n` (core.async's fixed, dropping and sliding buffers).
///
/// - A number `n` (or [`Buffer::fixed`]) holds `n` events; senders wait for room.
/// - [`Buffer::dropping`] holds `n` events and drops the *new* event when full.
/// - [`Buffer::sliding`] holds `n` events and drops the *oldest* when full.
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
/// let per_stream: Buffer = (|| Buffer::sliding(5)).into();
/// # let _ = (fixed, newest_lost, oldest_lost, per_stream);
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
    PerStream(Arc<dyn Fn() -> Buffer + Send + Sync>),
}

/// What a resolved buffer does when it is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Policy {
    Wait,
    DropNewest,
    DropOldest,
}

impl Buffer {
    /// Holds `capacity` events; senders wait for room (`send`) or get `Full` (`try_send`).
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

    /// Calls `make` once per stream to choose that stream's buffer.
    pub fn per_stream<F>(make: F) -> Self
    where
        F: Fn() -> Buffer + Send + Sync + 'static,
    {
        Self {
            kind: Kind::PerStream(Arc::new(make)),
        }
    }

    /// The policy and capacity for one new stream.
    pub(crate) fn resolve(&self) -> (Policy, usize) {
        // A factory may return another factory; follow a few, then fall back
        // to the seed's default rather than loop forever.
        let mut current = self.clone();
        for _ in 0..8 {
            let (policy, capacity) = match current.kind {
                Kind::Fixed(n) => (Policy::Wait, n),
                Kind::Dropping(n) => (Policy::DropNewest, n),
                Kind::Sliding(n) => (Policy::DropOldest, n),
                Kind::PerStream(make) => {
                    current = make();
                    continue;
                }
            };
            return (policy, capacity.max(1));
        }
        tracing::warn!("buffer factories nest too deeply; using a fixed buffer of 10");
        (Policy::Wait, 10)
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
            Kind::PerStream(_) => f.write_str("Buffer::per_stream(..)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_fixed_and_zero_is_one() {
        assert_eq!(Buffer::from(3).resolve(), (Policy::Wait, 3));
        assert_eq!(Buffer::fixed(0).resolve(), (Policy::Wait, 1));
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
        assert_eq!(buffer.resolve(), (Policy::DropOldest, 4));
        assert_eq!(buffer.resolve(), (Policy::DropOldest, 4));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn endless_factories_fall_back() {
        fn again() -> Buffer {
            Buffer::per_stream(again)
        }
        assert_eq!(again().resolve(), (Policy::Wait, 10));
    }
}
