//! Counters a user can read: Pedestal's active-streams gauge and more.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
};

/// Streams open right now in this process, from every layer and handler.
static ACTIVE_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// How many event streams are open in this process right now (Pedestal's
/// active-streams gauge). For one layer's streams, see [`SseStats`].
///
/// ```
/// let open = tower_sse::active_streams();
/// # let _ = open;
/// ```
pub fn active_streams() -> usize {
    ACTIVE_STREAMS.load(Relaxed)
}

/// Counters for the streams of one [`SseLayer`](crate::SseLayer); clones share them.
///
/// `active_streams` and `streams_opened` change as streams open and close;
/// the event, byte and drop totals are added when each stream ends.
#[derive(Clone, Debug, Default)]
pub struct SseStats {
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    active: AtomicUsize,
    opened: AtomicU64,
    closed: AtomicU64,
    events: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    stalled: AtomicU64,
}

/// What one finished stream adds to the totals.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StreamTotals {
    pub(crate) events: u64,
    pub(crate) bytes: u64,
    pub(crate) dropped: u64,
    /// It ended with [`DisconnectReason::Stalled`](crate::DisconnectReason::Stalled).
    pub(crate) stalled: bool,
}

impl SseStats {
    /// Streams open right now.
    pub fn active_streams(&self) -> usize {
        self.counters.active.load(Relaxed)
    }

    /// Streams opened since the layer was built.
    pub fn streams_opened(&self) -> u64 {
        self.counters.opened.load(Relaxed)
    }

    /// Streams that have ended (each fired its disconnect callback).
    pub fn streams_closed(&self) -> u64 {
        self.counters.closed.load(Relaxed)
    }

    /// Events written by streams that have ended.
    pub fn events_sent(&self) -> u64 {
        self.counters.events.load(Relaxed)
    }

    /// Bytes written (events and heartbeats) by streams that have ended.
    pub fn bytes_sent(&self) -> u64 {
        self.counters.bytes.load(Relaxed)
    }

    /// Events dropped by buffer policies on streams that have ended.
    pub fn events_dropped(&self) -> u64 {
        self.counters.dropped.load(Relaxed)
    }

    /// Streams ended because their client stopped reading (see
    /// [`SseLayer::stall_timeout`](crate::SseLayer::stall_timeout)).
    pub fn streams_stalled(&self) -> u64 {
        self.counters.stalled.load(Relaxed)
    }
}

pub(crate) fn stream_opened(stats: Option<&SseStats>) {
    ACTIVE_STREAMS.fetch_add(1, Relaxed);
    if let Some(stats) = stats {
        stats.counters.active.fetch_add(1, Relaxed);
        stats.counters.opened.fetch_add(1, Relaxed);
    }
}

pub(crate) fn stream_closed(stats: Option<&SseStats>, totals: StreamTotals) {
    ACTIVE_STREAMS.fetch_sub(1, Relaxed);
    if let Some(stats) = stats {
        let counters = &stats.counters;
        counters.events.fetch_add(totals.events, Relaxed);
        counters.bytes.fetch_add(totals.bytes, Relaxed);
        counters.dropped.fetch_add(totals.dropped, Relaxed);
        counters
            .stalled
            .fetch_add(u64::from(totals.stalled), Relaxed);
        counters.closed.fetch_add(1, Relaxed);
        counters.active.fetch_sub(1, Relaxed);
    }
}
