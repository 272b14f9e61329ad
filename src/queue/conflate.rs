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
    /// Sends of a key waiting for room, by waiter id: a later send of the
    /// key supersedes them (their value is older than the one it brings).
    waiting: Vec<(u64, String)>,
    /// Waiters superseded, not yet told: their send is done (counted as a
    /// drop), their event is dropped.
    superseded: Vec<u64>,
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
    /// Waiter `id` waits with `key`.
    pub(super) fn wait(&mut self, id: u64, key: &str) {
        self.waiting.push((id, key.to_owned()));
    }

    /// The waiters of `key` that came before `before` (a waiter id; every
    /// waiter, for a send that never waited) are superseded: returns them.
    pub(super) fn supersede(&mut self, key: &str, before: u64) -> Vec<u64> {
        let mut ids = Vec::new();
        self.waiting.retain(|(id, waiting)| {
            let older = *id < before && waiting == key;
            if older {
                ids.push(*id);
            }
            !older
        });
        self.superseded.extend_from_slice(&ids);
        ids
    }

    /// Whether waiter `id` was superseded (it is then forgotten).
    pub(super) fn take_superseded(&mut self, id: u64) -> bool {
        let found = self.superseded.iter().position(|&s| s == id);
        if let Some(at) = found {
            self.superseded.swap_remove(at);
        }
        found.is_some()
    }

    /// Waiter `id` is gone (queued, cancelled, or the queue closed).
    pub(super) fn forget(&mut self, id: u64) {
        self.waiting.retain(|(waiting, _)| *waiting != id);
        self.superseded.retain(|&s| s != id);
    }

    pub(super) fn popped(&mut self, taken: usize) {
        self.head += taken as u64;
    }

    /// How many keys the index holds, stale ones included.
    #[cfg(all(test, not(tower_sse_loom)))]
    pub(super) fn indexed(&self) -> usize {
        self.index.len()
    }
}

#[cfg(all(test, not(tower_sse_loom)))]
mod tests;
