//! What a queue operation leaves to do after the lock: wakers to wake,
//! an event to drop, a drop to log (none of it may run under the lock).

use std::task::Waker;

use super::Queue;
use crate::{buffer::Policy, frame::Encoded};

/// What an accepted event displaced, to be dealt with after the lock.
#[derive(Default)]
pub(super) struct Enqueued {
    pub(super) receiver: Option<Waker>,
    /// The event a dropping policy discarded (the new one or the oldest),
    /// or the one a conflating buffer replaced.
    pub(super) discarded: Option<Encoded>,
    /// The drop count after a discard, for `tracing`.
    pub(super) dropped: Option<(u64, Policy)>,
}

impl Enqueued {
    /// Runs, after the lock, what the enqueue left to do.
    pub(super) fn finish(self) {
        drop(self.discarded);
        if let Some((dropped, policy)) = self.dropped {
            match policy {
                Policy::DropNewest => {
                    tracing::debug!(dropped, "buffer full: dropped the newest event");
                }
                Policy::DropOldest => {
                    tracing::debug!(dropped, "buffer full: dropped the oldest event");
                }
                Policy::Conflate | Policy::Wait => {
                    tracing::trace!(dropped, "conflated: replaced the queued event of its key");
                }
            }
        }
        if let Some(waker) = self.receiver {
            waker.wake();
        }
    }
}

/// What superseding waiting sends left to do after the lock.
#[derive(Default)]
pub(super) struct Superseded {
    pub(super) wakers: Vec<Waker>,
    pub(super) grants: WakeList,
    /// More slots to grant than `grants` holds.
    pub(super) more: bool,
}

impl Superseded {
    pub(super) fn finish(mut self, queue: &Queue) {
        for waker in self.wakers {
            waker.wake();
        }
        self.grants.wake_all();
        while self.more {
            self.more = queue.lock().grant(queue.capacity(), &mut self.grants);
            self.grants.wake_all();
        }
    }
}

/// Wakers collected under the lock, woken after it (a few inline: most
/// drains grant room to one waiting sender at most).
#[derive(Default)]
pub(super) struct WakeList {
    pub(super) wakers: [Option<Waker>; 4],
    pub(super) len: usize,
}

impl WakeList {
    pub(super) fn is_full(&self) -> bool {
        self.len == self.wakers.len()
    }

    pub(super) fn push(&mut self, waker: Option<Waker>) {
        if let Some(waker) = waker {
            self.wakers[self.len] = Some(waker);
            self.len += 1;
        }
    }

    pub(super) fn wake_all(&mut self) {
        for waker in &mut self.wakers[..self.len] {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        self.len = 0;
    }
}

pub(super) fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}
