//! The frame the body hands to the connection: queued events gathered into
//! one buffer, up to a cap, so a busy stream makes few, full writes.

use bytes::{Bytes, BytesMut};

/// Largest frame the body assembles from queued events (a single larger event
/// still goes out whole).
pub(crate) const MAX_FRAME: usize = 64 * 1024;

/// Events at least this large are never copied into a joined frame: each
/// goes out as its own frame, as encoded (hyper still writes consecutive
/// frames with one vectored write). Joining saves hyper its per-frame work,
/// which outweighs the copy for small events only: over loopback, joining
/// 1-2 KiB events was 1.4-2.2x faster than one frame each, joining 3-16 KiB
/// events 0.5-0.9x (`load loopback` of `benches/`, `raw-join` vs `raw-hyper`).
pub(crate) const JOIN_LIMIT: usize = 2 * 1024;

/// The end of every event: the data line's CRLF and the blank line.
pub(crate) const EVENT_END: &[u8] = b"\r\n\r\n";

/// An encoded event as queued: its wire bytes, or, for large data given
/// away (a `String`, `Bytes`, a `&'static str`), its fields up to `data: `,
/// then the data itself, never copied, then [`EVENT_END`], each a frame of
/// its own.
pub(crate) enum Encoded {
    Whole(Bytes),
    Split(Box<Split>),
}

/// The parts of a [`Encoded::Split`] event before its end.
pub(crate) struct Split {
    pub(crate) head: Bytes,
    pub(crate) data: Bytes,
}

impl Encoded {
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Whole(bytes) => bytes.len(),
            Self::Split(split) => split.head.len() + split.data.len() + EVENT_END.len(),
        }
    }

    /// The event's frames: the first, and what follows it (data and end).
    pub(crate) fn into_frames(self) -> (Bytes, Option<[Bytes; 2]>) {
        match self {
            Self::Whole(bytes) => (bytes, None),
            Self::Split(split) => {
                let Split { head, data } = *split;
                (head, Some([data, Bytes::from_static(EVENT_END)]))
            }
        }
    }

    /// The event's wire bytes in one buffer (copied when split).
    pub(crate) fn into_whole(self) -> Bytes {
        let len = self.len();
        match self {
            Self::Whole(bytes) => bytes,
            Self::Split(split) => {
                let mut whole = BytesMut::with_capacity(len);
                whole.extend_from_slice(&split.head);
                whole.extend_from_slice(&split.data);
                whole.extend_from_slice(EVENT_END);
                whole.freeze()
            }
        }
    }
}

#[cfg(test)]
impl Encoded {
    /// The bytes of an event queued whole (empty for a split one).
    pub(crate) fn whole(&self) -> &[u8] {
        match self {
            Self::Whole(bytes) => bytes,
            Self::Split(_) => &[],
        }
    }
}

impl Default for Encoded {
    fn default() -> Self {
        Self::Whole(Bytes::new())
    }
}

impl From<Bytes> for Encoded {
    fn from(bytes: Bytes) -> Self {
        Self::Whole(bytes)
    }
}

/// A frame being gathered from the queue: one event as it was encoded (no
/// copy), or several joined into one buffer, sized from what is queued.
#[derive(Default)]
pub(crate) struct FrameBuilder {
    first: Option<Encoded>,
    joined: BytesMut,
    /// Takes no more events: the size cap or a large event was reached.
    full: bool,
}

impl FrameBuilder {
    fn len(&self) -> usize {
        if self.joined.is_empty() {
            self.first.as_ref().map_or(0, Encoded::len)
        } else {
            self.joined.len()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none() && self.joined.is_empty()
    }

    pub(crate) fn is_full(&self) -> bool {
        self.full
    }

    /// Whether an event of `len` bytes goes into this frame. An event of
    /// [`JOIN_LIMIT`] bytes or more is a frame of its own, and ends the frame
    /// of smaller events before it (it stays queued, for the next frame).
    pub(crate) fn takes(&mut self, len: usize) -> bool {
        if self.full {
            return false;
        }
        if self.is_empty() {
            self.full = len >= JOIN_LIMIT;
            return true;
        }
        self.full = len >= JOIN_LIMIT || self.len() + len > MAX_FRAME;
        !self.full
    }

    /// Adds `bytes`; `queued` is what is still queued behind it, the most
    /// this frame may yet take.
    pub(crate) fn push(&mut self, event: impl Into<Encoded>, queued: usize) {
        let event = event.into();
        if self.is_empty() {
            self.first = Some(event);
            return;
        }
        // A split event is at least `JOIN_LIMIT` long: never joined, but
        // copied whole should it be.
        let bytes = event.into_whole();
        if let Some(first) = self.first.take().map(Encoded::into_whole) {
            // Exactly what is queued, so that `freeze` keeps the allocation.
            let room = (bytes.len() + queued).min(MAX_FRAME - first.len());
            self.joined.reserve(first.len() + room.max(bytes.len()));
            self.joined.extend_from_slice(&first);
        } else if self.joined.capacity() - self.joined.len() < bytes.len() {
            // A ready function refilled the queue while the frame was gathered: it
            // is busy, so grow once, to the cap, rather than copy at every
            // doubling (large copies are slow on some machines; see `event.rs`).
            self.joined
                .reserve(MAX_FRAME.saturating_sub(self.joined.len()).max(bytes.len()));
        }
        self.joined.extend_from_slice(&bytes);
    }

    /// The gathered event or events; the frame is empty again.
    pub(crate) fn take(&mut self) -> Encoded {
        self.full = false;
        match self.first.take() {
            Some(first) => first,
            None => Encoded::Whole(std::mem::take(&mut self.joined).freeze()),
        }
    }
}
