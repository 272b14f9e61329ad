//! Queueing an event: [`Queue::push`] and its future, which waits for room
//! in arrival order (a fixed buffer, or the hub's `push_waiting`).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use crate::frame::Encoded;

use super::{Queue, ReadyPoll, Rejected, State, Waiter, WakeList};

impl Queue {
    /// Queues `bytes`, waiting for room under
    /// [`Policy::Wait`](crate::buffer::Policy::Wait) (first come, first
    /// served); see [`Push`].
    #[cfg(all(test, tower_sse_loom))]
    pub(crate) fn push(&self, bytes: impl Into<Encoded>) -> Push<'_> {
        self.push_keyed(bytes.into(), None)
    }

    /// Queues `bytes`, filed under `key` by a conflating buffer (see
    /// [`Queue::key_of`]): it replaces a queued event of `key`, or else
    /// waits for room as under [`Policy::Wait`](crate::buffer::Policy::Wait);
    /// see [`Push`].
    pub(crate) fn push_keyed(&self, bytes: impl Into<Encoded>, key: Option<String>) -> Push<'_> {
        Push {
            queue: self,
            bytes: Some(bytes.into()),
            key,
            waiter: None,
            waits: self.waits_when_full(),
        }
    }

    /// Queues `bytes`, waiting in line for room whatever the policy, as a
    /// send to a fixed buffer does: with a dropping or sliding buffer it
    /// never drops an event (its own or one queued), and the slot it is
    /// granted is kept for it (the other sends drop instead). The hub's
    /// sends: it falls behind in its history, and says so, rather than lose
    /// events, or its notices, in the buffer.
    pub(crate) fn push_waiting(&self, bytes: impl Into<Encoded>) -> Push<'_> {
        Push {
            queue: self,
            bytes: Some(bytes.into()),
            key: None,
            waiter: None,
            waits: true,
        }
    }
}

/// The future of [`Queue::push`] and [`Queue::push_waiting`].
///
/// Spends tokio's cooperative budget as tokio's own channels do, so that a
/// task sending in a loop yields now and then even when every send finds
/// room (with a dropping or sliding buffer, always). Inside a body's poll of
/// its own ready function (see [`ReadyPoll`]) room is taken without it: that
/// ready function then fills whole frames, and the body bounds the poll itself.
/// A send that finds the stream closed spends it everywhere, inside that
/// poll too: a loop that ignores `Closed` yields.
///
/// Cancel safe: dropped before it completes, it queued nothing, and a slot
/// it had been granted passes to the next waiting send.
pub(crate) struct Push<'a> {
    queue: &'a Queue,
    bytes: Option<Encoded>,
    /// Its key in a conflating buffer (taken when it is queued).
    key: Option<String>,
    /// Its place among the waiting sends, once it waits.
    waiter: Option<u64>,
    /// It waits for room when full (a fixed or conflating buffer, or
    /// `push_waiting`); otherwise the policy drops an event.
    waits: bool,
}

impl Future for Push<'_> {
    type Output = Result<(), Rejected>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let coop = if ReadyPoll::polls(this.queue) {
            None
        } else {
            Some(ready!(crate::sync::poll_proceed(cx)))
        };
        let queue = this.queue;
        let mut waker = None;
        loop {
            let mut state = queue.lock();
            // A later send of its key came first: this one is done (its
            // value was older), even if the queue closed since.
            if let (Some(id), Some(conflation)) = (this.waiter, &mut state.conflation) {
                if conflation.take_superseded(id) {
                    this.waiter = None;
                    drop(state);
                    drop(this.bytes.take());
                    if let Some(coop) = coop {
                        coop.made_progress();
                    }
                    return Poll::Ready(Ok(()));
                }
            }
            // Its place in line, for the sends of its key it supersedes.
            let arrived = this.waiter.unwrap_or(u64::MAX);
            if state.closed {
                let removed = this.leave(&mut state);
                drop(state);
                drop(removed);
                // Spent like a send that found room (tokio's channels count a
                // closed channel as progress too): a loop that ignores
                // `Closed` still yields, so an aborted task stops and a
                // body-polled ready function gives the body's poll back.
                // Inside that poll too, where room is otherwise taken
                // without the budget.
                match coop {
                    Some(coop) => coop.made_progress(),
                    None => ready!(crate::sync::poll_proceed(cx)).made_progress(),
                }
                return Poll::Ready(Err(Rejected::Closed));
            }
            let mut left = None;
            let admitted = match (this.waits, this.waiter) {
                // It replaces the queued event of its key and needs no
                // slot (one it was granted passes to the next in line).
                (true, _) if state.holds_key(this.key.as_deref()) => {
                    left = Some(this.leave(&mut state));
                    true
                }
                (true, None) => state.admits_newcomer(queue.capacity()),
                (true, Some(id)) => {
                    let position = state.waiting.iter().position(|w| w.id == id);
                    match position {
                        Some(at) if at < state.granted as usize => {
                            // Its slot: the first `granted` waiters hold one each.
                            state.waiting.remove(at);
                            state.granted -= 1;
                            this.waiter = None;
                            true
                        }
                        _ => false,
                    }
                }
                (false, _) => true,
            };
            if admitted {
                let bytes = this.bytes.take().unwrap_or_default();
                let key = this.key.take();
                if let Some(conflation) = &mut state.conflation {
                    conflation.forget(arrived);
                }
                let superseded = state.supersede(key.as_deref(), arrived, queue.capacity());
                let enqueued = state.enqueue(bytes, key, queue.policy, queue.capacity());
                drop(state);
                if let Some((removed, mut wakes)) = left {
                    drop(removed);
                    wakes.wake_all();
                }
                enqueued.finish();
                superseded.finish(queue);
                if let Some(coop) = coop {
                    coop.made_progress();
                }
                return Poll::Ready(Ok(()));
            }
            // Wait for a slot, registered with `cx`'s waker (cloned outside the lock).
            let slot = this
                .waiter
                .and_then(|id| state.waiting.iter_mut().find(|w| w.id == id));
            if let Some(Waiter {
                waker: Some(stored),
                ..
            }) = &slot
            {
                if stored.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
            }
            let Some(new) = waker.take() else {
                drop(state);
                waker = Some(cx.waker().clone());
                continue;
            };
            let old = match slot {
                Some(slot) => slot.waker.replace(new),
                None => {
                    let id = state.next_id();
                    state.waiting.push_back(Waiter {
                        id,
                        waker: Some(new),
                    });
                    if let (Some(conflation), Some(key)) = (&mut state.conflation, &this.key) {
                        conflation.wait(id, key);
                    }
                    this.waiter = Some(id);
                    None
                }
            };
            drop(state);
            drop(old);
            return Poll::Pending;
        }
    }
}

impl Push<'_> {
    /// Leaves the waiting line (under the lock), passing on a granted slot;
    /// returns what to drop and wake after the lock.
    fn leave(&mut self, state: &mut State) -> (Option<Waiter>, WakeList) {
        let mut wakes = WakeList::default();
        let Some(id) = self.waiter.take() else {
            return (None, wakes);
        };
        if let Some(conflation) = &mut state.conflation {
            conflation.forget(id);
        }
        let Some(at) = state.waiting.iter().position(|w| w.id == id) else {
            return (None, wakes);
        };
        let removed = state.waiting.remove(at);
        if at < state.granted as usize {
            state.granted -= 1;
            if !state.closed {
                // One slot freed, so at most one grant: `wakes` has room.
                state.grant(self.queue.capacity(), &mut wakes);
            }
        }
        (removed, wakes)
    }
}

impl Drop for Push<'_> {
    fn drop(&mut self) {
        if self.waiter.is_none() {
            return;
        }
        let queue = self.queue;
        let mut state = queue.lock();
        let (removed, mut wakes) = self.leave(&mut state);
        drop(state);
        drop(removed);
        wakes.wake_all();
    }
}
