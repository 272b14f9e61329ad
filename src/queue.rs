//! The bounded queue between a stream's senders and its body.
//!
//! Events are encoded by the sender and queued as `Bytes`. The body takes
//! every event already queued at each poll and writes them as one frame (with
//! a body-polled ready function, also what it queues meanwhile), so a busy
//! stream makes few, full writes; it never waits for more to arrive.
//!
//! Everything is one `Mutex<State>`: the events, the free room and the
//! sends waiting for it (first come, first served: any send to a fixed
//! buffer, and the hub's `push_waiting` whatever the buffer), the
//! body's waker and the `closed()` waiters. No other primitive is involved,
//! so the whole protocol can be model-checked (`loom`, see `tests` below and
//! `sync.rs`). No user-reachable code runs under the lock: wakers are cloned
//! before it is taken and woken or dropped after it is released, events that
//! leave the queue are dropped after it, and `tracing` is called outside it.
//!
//! This file holds the state and what the body and the senders do to it
//! without waiting; the futures that wait are `push.rs` (room, in arrival
//! order) and `closed.rs` (the end), and `wake.rs` is the queue as the waker
//! of the ready function the body polls.

use std::{
    collections::VecDeque,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;

use crate::{
    Event,
    buffer::{ConflationKey, Policy, Resolved},
    frame::{Encoded, FrameBuilder},
    sync::{AtomicBool, Mutex, MutexGuard},
};

mod after_lock;
mod closed;
mod conflate;
mod push;
mod wake;

use after_lock::{Enqueued, Superseded, WakeList, wake_all};
use closed::Closing;
use conflate::Conflation;
pub(crate) use wake::ReadyPoll;

/// One stream's queue, shared by its senders and its body.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// The ready function that the body polls itself (see `body.rs`) was woken:
    /// set by this queue's `Wake` impl (`wake.rs`), which is that ready
    /// function's waker.
    ready_woken: AtomicBool,
    policy: Policy,
    /// At most `u32::MAX` (4 billion events): beside `policy` and
    /// `ready_woken`, it keeps the queue in a smaller allocation.
    capacity: u32,
    /// A conflating buffer's key function, called by the senders before
    /// they lock (boxed: a thin pointer, so the other queues grow by 8 bytes,
    /// not 16).
    key: Option<Box<ConflationKey>>,
}

struct State {
    events: VecDeque<Encoded>,
    queued_bytes: usize,
    receiver: Option<Waker>,
    /// Live `EventSender`s (`u32`, like `granted`, keeps the queue in the
    /// allocation size class it had before it held its waiters itself).
    senders: u32,
    /// No more events are accepted (`close()` was called, a sender panicked,
    /// or the body is gone).
    closed: bool,
    heartbeat_requested: bool,
    dropped: u64,
    /// A task holding a sender panicked.
    panicked: bool,
    /// Sends waiting for room, in arrival order: any send to a fixed buffer,
    /// and [`Queue::push_waiting`] whatever the policy. The first `granted`
    /// of them were each given a slot and have yet to fill it; a slot
    /// granted is kept for its send, even from a dropping policy's sends
    /// (`events.len() + granted` never exceeds the capacity).
    waiting: VecDeque<Waiter>,
    granted: u32,
    /// `EventSender::closed()` calls waiting for the end.
    closing: Closing,
    next_id: u64,
    /// Where each key's event is queued: a conflating buffer only (boxed,
    /// so the other queues stay the size they were).
    conflation: Option<Box<Conflation>>,
}

pub(super) struct Waiter {
    id: u64,
    /// Taken when the waiter is woken (granted a slot, or the queue closed).
    waker: Option<Waker>,
}

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    Full,
    Closed,
}

/// How the queue ended, once it is empty and will stay empty.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Completed,
    Panicked,
    /// A hub stream fell behind under `LagPolicy::Close` (never from a queue).
    Lagged,
}

impl State {
    /// Whether a send arriving now (not waiting already) may take a slot:
    /// there is one, and nobody waiting was there first.
    fn admits_newcomer(&self, capacity: usize) -> bool {
        self.waiting.len() == self.granted as usize
            && self.events.len() + (self.granted as usize) < capacity
    }

    /// Whether an event of `key` is queued, to be replaced (a conflating
    /// buffer only): such a send needs no slot.
    fn holds_key(&self, key: Option<&str>) -> bool {
        match (key, &self.conflation) {
            (Some(key), Some(conflation)) => conflation.position(key).is_some(),
            _ => false,
        }
    }

    /// A send of `key` is applied: the sends of `key` waiting since before
    /// it (`before`, a waiter id; `u64::MAX` for a send that never waited)
    /// are superseded, each counted as a drop and woken to finish. Returns
    /// their wakers, and whether slots they held are left to grant.
    fn supersede(&mut self, key: Option<&str>, before: u64, capacity: usize) -> Superseded {
        let mut done = Superseded::default();
        let (Some(key), Some(conflation)) = (key, &mut self.conflation) else {
            return done;
        };
        for id in conflation.supersede(key, before) {
            let Some(at) = self.waiting.iter().position(|w| w.id == id) else {
                continue;
            };
            if let Some(waiter) = self.waiting.remove(at) {
                done.wakers.extend(waiter.waker);
            }
            if at < self.granted as usize {
                self.granted -= 1;
            }
            self.dropped += 1;
        }
        if !done.wakers.is_empty() && !self.closed {
            done.more = self.grant(capacity, &mut done.grants);
        }
        done
    }

    /// Replaces the queued event of `key` with `bytes` (a conflating
    /// buffer), counting the replaced one as dropped; gives `bytes` back
    /// when no event of `key` is queued.
    fn replace(
        &mut self,
        bytes: Encoded,
        key: &str,
        enqueued: &mut Enqueued,
    ) -> Result<(), Encoded> {
        let Some(at) = self.conflation.as_ref().and_then(|c| c.position(key)) else {
            return Err(bytes);
        };
        let Some(queued) = self.events.get_mut(at) else {
            return Err(bytes);
        };
        self.queued_bytes = self.queued_bytes - queued.len() + bytes.len();
        enqueued.discarded = Some(std::mem::replace(queued, bytes));
        self.dropped += 1;
        enqueued.dropped = Some((self.dropped, Policy::Conflate));
        Ok(())
    }

    /// Queues `bytes`, applying a dropping policy when full (counting the
    /// slots granted to waiting sends as taken: they are kept for them), or
    /// a conflating buffer's replacement when an event of `key` is queued.
    fn enqueue(
        &mut self,
        bytes: Encoded,
        key: Option<String>,
        policy: Policy,
        capacity: usize,
    ) -> Enqueued {
        let mut enqueued = Enqueued::default();
        if let Some(key) = key.filter(|_| self.conflation.is_some()) {
            let bytes = match self.replace(bytes, &key, &mut enqueued) {
                Ok(()) => return enqueued,
                Err(bytes) => bytes,
            };
            // A conflating buffer's sends wait for room: there is a slot.
            self.queued_bytes += bytes.len();
            self.events.push_back(bytes);
            if let Some(conflation) = &mut self.conflation {
                conflation.pushed(key, self.events.len(), capacity);
            }
            enqueued.receiver = self.receiver.take();
            return enqueued;
        }
        if self.events.len() + self.granted as usize >= capacity {
            // Only a dropping policy's sends that do not wait get here: a
            // send that waits is admitted only with a slot for it.
            self.dropped += 1;
            // With every slot granted, a sliding buffer has nothing older
            // queued to drop: the new event is dropped. (Nor does any other
            // policy: a conflating queue's index follows the front only as
            // the body takes it.)
            if policy != Policy::DropOldest || self.events.is_empty() {
                enqueued.dropped = Some((self.dropped, Policy::DropNewest));
                enqueued.discarded = Some(bytes);
                return enqueued;
            }
            enqueued.dropped = Some((self.dropped, policy));
            enqueued.discarded = self.events.pop_front();
            if let Some(oldest) = &enqueued.discarded {
                self.queued_bytes -= oldest.len();
            }
        }
        self.queued_bytes += bytes.len();
        self.events.push_back(bytes);
        enqueued.receiver = self.receiver.take();
        enqueued
    }

    /// Gives free slots to waiting sends, in order, as many as `wakes` holds;
    /// `true` if more could be granted once those are woken.
    fn grant(&mut self, capacity: usize, wakes: &mut WakeList) -> bool {
        while (self.granted as usize) < self.waiting.len()
            && self.events.len() + (self.granted as usize) < capacity
        {
            if wakes.is_full() {
                return true;
            }
            let waker = self.waiting[self.granted as usize].waker.take();
            self.granted += 1;
            wakes.push(waker);
        }
        false
    }

    /// Stops accepting events; returns every waker to wake.
    fn close(&mut self) -> Vec<Waker> {
        self.closed = true;
        let waiting = self.waiting.iter_mut().map(|w| w.waker.take());
        let closing = self.closing.iter_mut().map(|w| w.waker.take());
        let receiver = self.receiver.take();
        waiting.chain(closing).chain([receiver]).flatten().collect()
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl Queue {
    /// The queue of a stream with `buffer` (see [`Queue::new`]).
    pub(crate) fn from_buffer(buffer: Resolved) -> Self {
        let mut queue = Self::new(buffer.policy, buffer.capacity);
        queue.key = buffer
            .key
            .filter(|_| buffer.policy == Policy::Conflate)
            .map(Box::new);
        queue
    }

    /// A queue with one sender registered. A fixed buffer may be as large as
    /// memory allows (up to `u32::MAX` events): its room is a count, not a
    /// semaphore's permits.
    pub(crate) fn new(policy: Policy, capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                // Allocated at the first event: an idle stream never needs it.
                events: VecDeque::new(),
                queued_bytes: 0,
                receiver: None,
                senders: 1,
                closed: false,
                heartbeat_requested: false,
                dropped: 0,
                panicked: false,
                waiting: VecDeque::new(),
                granted: 0,
                closing: Closing::None,
                next_id: 0,
                conflation: (policy == Policy::Conflate).then(Box::default),
            }),
            // Set: a body-polled ready function is polled first at the first poll.
            ready_woken: AtomicBool::new(true),
            policy,
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX).max(1),
            key: None,
        }
    }

    /// The key a conflating buffer files `event` under (`None` for every
    /// other buffer, which calls nothing). Runs the user's key function:
    /// never under the lock.
    pub(crate) fn key_of(&self, event: &Event) -> Option<String> {
        self.key.as_ref().and_then(|key| key(event))
    }

    /// Whether a send finding the queue full waits for room (a fixed or a
    /// conflating buffer) rather than drop an event.
    fn waits_when_full(&self) -> bool {
        matches!(self.policy, Policy::Wait | Policy::Conflate)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under the lock; recover rather than propagate.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `bytes` if there is room now (never ahead of a waiting send).
    #[cfg(test)]
    pub(crate) fn try_push(&self, bytes: impl Into<Encoded>) -> Result<(), Rejected> {
        self.try_push_keyed(bytes.into(), None)
    }

    /// Queues `bytes`, filed under `key` by a conflating buffer (see
    /// [`Queue::key_of`]), if there is room now (never ahead of a waiting
    /// send) or an event of `key` to replace.
    pub(crate) fn try_push_keyed(
        &self,
        bytes: impl Into<Encoded>,
        key: Option<String>,
    ) -> Result<(), Rejected> {
        let bytes = bytes.into();
        let mut state = self.lock();
        if state.closed {
            return Err(Rejected::Closed);
        }
        if self.waits_when_full()
            && !state.admits_newcomer(self.capacity())
            && !state.holds_key(key.as_deref())
        {
            return Err(Rejected::Full);
        }
        // Newer than every send of its key still waiting.
        let superseded = state.supersede(key.as_deref(), u64::MAX, self.capacity());
        let enqueued = state.enqueue(bytes, key, self.policy, self.capacity());
        drop(state);
        enqueued.finish();
        superseded.finish(self);
        Ok(())
    }

    /// Asks the body for one heartbeat comment at its next poll.
    pub(crate) fn request_heartbeat(&self) -> Result<(), Rejected> {
        let mut state = self.lock();
        if state.closed {
            return Err(Rejected::Closed);
        }
        state.heartbeat_requested = true;
        let waker = state.receiver.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Moves queued events into `frame`, as many as it takes (see
    /// [`FrameBuilder`]), and returns how many it took.
    ///
    /// With nothing to give, it is `Ready(Err(_))` when no event can come any
    /// more, `Ready(Ok(0))` when the ready function polled by the body was woken
    /// (poll it, then call again), and otherwise `Pending`, with `cx` woken at
    /// the next event. A frame that is not empty clears the body's waker: the
    /// connection polls again once it has written the frame.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        heartbeat: &Bytes,
        frame: &mut FrameBuilder,
    ) -> Poll<Result<usize, Ended>> {
        // A clone of `cx`'s waker, made outside the lock when it must be stored.
        let mut waker = None;
        loop {
            let mut state = self.lock();
            // At the start of a frame only: one heartbeat per frame however
            // many requests, and never past the size cap.
            if state.heartbeat_requested && frame.is_empty() {
                state.heartbeat_requested = false;
                frame.push(heartbeat.clone(), 0);
            }
            let mut taken = 0;
            while let Some(next) = state.events.front() {
                if !frame.takes(next.len()) {
                    break;
                }
                let Some(bytes) = state.events.pop_front() else {
                    break;
                };
                state.queued_bytes -= bytes.len();
                taken += 1;
                frame.push(bytes, state.queued_bytes);
            }
            if let Some(conflation) = &mut state.conflation {
                conflation.popped(taken);
            }
            if !frame.is_empty() {
                let old = state.receiver.take();
                let mut wakes = WakeList::default();
                let mut more = taken > 0 && state.grant(self.capacity(), &mut wakes);
                drop(state);
                drop(old);
                wakes.wake_all();
                while more {
                    more = self.lock().grant(self.capacity(), &mut wakes);
                    wakes.wake_all();
                }
                return Poll::Ready(Ok(taken));
            }
            if state.closed || state.senders == 0 {
                return Poll::Ready(Err(if state.panicked {
                    Ended::Panicked
                } else {
                    Ended::Completed
                }));
            }
            // Checked under the lock that `wake` takes, so a wake-up is never lost.
            if self.ready_woken() {
                return Poll::Ready(Ok(0));
            }
            if state
                .receiver
                .as_ref()
                .is_some_and(|stored| stored.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            match waker.take() {
                Some(waker) => {
                    let old = state.receiver.replace(waker);
                    drop(state);
                    drop(old);
                    return Poll::Pending;
                }
                None => {
                    drop(state);
                    waker = Some(cx.waker().clone());
                }
            }
        }
    }

    /// A ready function panicked (its senders are dropped after the unwinding was
    /// caught, so `remove_sender` cannot tell): accept nothing more, from
    /// any sender, and end with [`Ended::Panicked`] once the queue is empty.
    pub(crate) fn mark_panicked(&self) {
        let wakers = {
            let mut state = self.lock();
            state.panicked = true;
            state.close()
        };
        wake_all(wakers);
    }

    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    pub(crate) fn add_sender(&self) {
        self.lock().senders += 1;
    }

    /// A sender was dropped. One dropped while its thread unwinds from a
    /// panic ends the stream for every sender: what it was doing is broken.
    pub(crate) fn remove_sender(&self) {
        let panicking = std::thread::panicking();
        let wakers = {
            let mut state = self.lock();
            state.senders -= 1;
            if panicking {
                state.panicked = true;
                state.close()
            } else if state.senders == 0 {
                state.receiver.take().into_iter().collect()
            } else {
                Vec::new()
            }
        };
        wake_all(wakers);
    }

    /// Stops accepting events; the queued ones are still delivered.
    pub(crate) fn close(&self) {
        let wakers = self.lock().close();
        wake_all(wakers);
    }

    /// The body is gone: discard the queue and fail every sender from now on.
    pub(crate) fn close_receiver(&self) {
        let (discarded, wakers) = {
            let mut state = self.lock();
            state.queued_bytes = 0;
            let discarded = std::mem::take(&mut state.events);
            if let Some(conflation) = &mut state.conflation {
                conflation.popped(discarded.len());
            }
            (discarded, state.close())
        };
        drop(discarded);
        wake_all(wakers);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    pub(crate) fn queued(&self) -> (usize, usize) {
        let state = self.lock();
        (state.events.len(), state.queued_bytes)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity as usize
    }
}

/// Model checks of the queue's synchronisation (`src/sync.rs` says how to run them).
#[cfg(all(test, tower_sse_loom))]
mod loom;

#[cfg(all(test, not(tower_sse_loom)))]
mod tests;
