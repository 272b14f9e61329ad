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
/// Live: the stream counts change as streams open and close, and the event,
/// byte and drop totals as each frame is handed to the connection (drops of
/// a fixed buffer never happen; a dropping or sliding buffer's, and the
/// events a conflating buffer replaced, are counted at the next frame, or
/// when the stream ends).
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

    /// Events handed to the connection so far, by every stream.
    pub fn events_sent(&self) -> u64 {
        self.counters.events.load(Relaxed)
    }

    /// Bytes handed to the connection so far (events and heartbeats).
    pub fn bytes_sent(&self) -> u64 {
        self.counters.bytes.load(Relaxed)
    }

    /// Events dropped by buffer policies so far (a conflating buffer's
    /// replaced events included).
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

/// A frame of `bytes` went to the connection, with `events` events, and
/// `dropped` events were dropped since the last frame.
pub(crate) fn frame_written(stats: Option<&SseStats>, events: u64, bytes: u64, dropped: u64) {
    if let Some(stats) = stats {
        let counters = &stats.counters;
        counters.events.fetch_add(events, Relaxed);
        counters.bytes.fetch_add(bytes, Relaxed);
        if dropped > 0 {
            counters.dropped.fetch_add(dropped, Relaxed);
        }
    }
}

/// A stream ended (what it wrote was counted by [`frame_written`]).
pub(crate) fn stream_closed(stats: Option<&SseStats>, stalled: bool) {
    ACTIVE_STREAMS.fetch_sub(1, Relaxed);
    if let Some(stats) = stats {
        let counters = &stats.counters;
        counters.stalled.fetch_add(u64::from(stalled), Relaxed);
        counters.closed.fetch_add(1, Relaxed);
        counters.active.fetch_sub(1, Relaxed);
    }
}
