//! A conflating buffer's index (`Buffer::conflating`): where in the queue
//! the event of each key is, so that a new event of that key replaces it in
//! place. Only a conflating queue has one: the other policies store and hash
//! no keys.

use std::collections::HashMap;

/// Keys of queued events and where those events are.
///
/// Positions are sequence numbers (the `n`-th event pushed at the back is
/// `n`), so the body taking events from the front moves one counter,
/// `head`, instead of every entry. An entry older than `head` is stale (its
/// event has left the queue); stale entries are pruned when the index grows
/// past twice the capacity, so it holds a bounded number of keys however
/// many a stream sees.
#[derive(Default)]
pub(super) struct Conflation {
    index: HashMap<String, u64>,
    /// The sequence number of the queue's front event.
    head: u64,
}

impl Conflation {
    /// The position in the queue of the event queued under `key`, if any.
    pub(super) fn position(&self, key: &str) -> Option<usize> {
        let seq = *self.index.get(key)?;
        let at = seq.checked_sub(self.head)?;
        usize::try_from(at).ok()
    }

    /// An event of `key` was pushed at the back, making the queue `len` long.
    pub(super) fn pushed(&mut self, key: String, len: usize, capacity: usize) {
        if self.index.len() >= capacity.saturating_mul(2).max(16) {
            let head = self.head;
            self.index.retain(|_, seq| *seq >= head);
        }
        let seq = self.head + len as u64 - 1;
        self.index.insert(key, seq);
    }

    /// `taken` events left the queue from the front.
    pub(super) fn popped(&mut self, taken: usize) {
        self.head += taken as u64;
    }

    /// How many keys the index holds, stale ones included.
    #[cfg(test)]
    pub(super) fn indexed(&self) -> usize {
        self.index.len()
    }
}

#[cfg(all(test, not(tower_sse_loom)))]
mod tests;
