//! The bounded queue between a stream's senders and its body.
//!
//! Events are encoded by the sender and queued as `Bytes`. The body takes
//! every event already queued at each poll and writes them as one frame, so a
//! busy stream makes few, full writes; it never waits for more to arrive.

use std::{
    collections::VecDeque,
    sync::{Mutex, MutexGuard, PoisonError},
    task::{Context, Poll, Waker},
};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, Semaphore, TryAcquireError};

use crate::buffer::Policy;

/// Largest frame the body assembles from queued events (a single larger event
/// still goes out whole).
pub(crate) const MAX_FRAME: usize = 64 * 1024;

/// Events at least this large are never copied into a joined frame: each
/// goes out as its own frame, as encoded (hyper still writes consecutive
/// frames with one vectored write). Joining saves hyper its per-frame work,
/// which outweighs the copy for small events only: over loopback, joining
/// 1-2 KiB events was 1.4-2.2x faster than one frame each, joining 3-16 KiB
/// events 0.5-0.9x (`cargo bench --bench loopback`, `raw-join` vs `raw-hyper`).
pub(crate) const JOIN_LIMIT: usize = 2 * 1024;

pub(crate) struct Shared {
    state: Mutex<State>,
    /// Free slots under [`Policy::Wait`]; the body returns permits as it drains.
    room: Semaphore,
    /// Wakes `EventSender::closed` once no more events are accepted.
    closed: Notify,
    policy: Policy,
    capacity: usize,
}

struct State {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    receiver: Option<Waker>,
    senders: usize,
    /// No more events are accepted (`close()` was called or the body is gone).
    closed: bool,
    receiver_gone: bool,
    heartbeat_requested: bool,
    dropped: u64,
    /// A sender was dropped while its thread was panicking.
    panicked: bool,
}

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    Full,
    Closed,
}

/// What the body takes from the queue in one poll.
pub(crate) struct Batch {
    pub(crate) bytes: Bytes,
    pub(crate) events: usize,
}

/// How the queue ended, once it is empty and will stay empty.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    Completed,
    Panicked,
}

impl Shared {
    /// A queue with one sender registered.
    pub(crate) fn new(policy: Policy, capacity: usize) -> Self {
        let permits = if policy == Policy::Wait { capacity } else { 0 };
        Self {
            state: Mutex::new(State {
                // Allocated at the first event: an idle stream never needs it.
                queue: VecDeque::new(),
                queued_bytes: 0,
                receiver: None,
                senders: 1,
                closed: false,
                receiver_gone: false,
                heartbeat_requested: false,
                dropped: 0,
                panicked: false,
            }),
            room: Semaphore::new(permits),
            closed: Notify::new(),
            policy,
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code that can panic runs under the lock; recover rather than propagate.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `bytes`, waiting for room under [`Policy::Wait`].
    pub(crate) async fn push(&self, bytes: Bytes) -> Result<(), Rejected> {
        if self.policy == Policy::Wait {
            match self.room.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Err(Rejected::Closed),
            }
        }
        self.enqueue(bytes)
    }

    /// Queues `bytes` if there is room now.
    pub(crate) fn try_push(&self, bytes: Bytes) -> Result<(), Rejected> {
        if self.policy == Policy::Wait {
            match self.room.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(TryAcquireError::NoPermits) => return Err(Rejected::Full),
                Err(TryAcquireError::Closed) => return Err(Rejected::Closed),
            }
        }
        self.enqueue(bytes)
    }

    fn enqueue(&self, bytes: Bytes) -> Result<(), Rejected> {
        let mut state = self.lock();
        if state.closed {
            return Err(Rejected::Closed);
        }
        if state.queue.len() >= self.capacity {
            // Only the dropping policies get here: `Wait` holds a permit per slot.
            state.dropped += 1;
            let dropped = state.dropped;
            if self.policy == Policy::DropNewest {
                drop(state);
                tracing::debug!(dropped, "buffer full: dropped the newest event");
                return Ok(());
            }
            if let Some(oldest) = state.queue.pop_front() {
                state.queued_bytes -= oldest.len();
            }
            tracing::debug!(dropped, "buffer full: dropped the oldest event");
        }
        state.queued_bytes += bytes.len();
        state.queue.push_back(bytes);
        let waker = state.receiver.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
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

    /// Takes every queued event (up to [`MAX_FRAME`] bytes) as one frame.
    ///
    /// Events of [`JOIN_LIMIT`] bytes or more are not copied: such an event is
    /// a frame of its own, and ends the frame of smaller events before it
    /// (it is still queued, for the next poll, which takes it at once).
    ///
    /// `Ready(Err(_))` means the queue is empty and no event can come any more.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        heartbeat: &'static [u8],
        scratch: &mut Vec<Bytes>,
    ) -> Poll<Result<Batch, Ended>> {
        let mut state = self.lock();
        if state.heartbeat_requested {
            state.heartbeat_requested = false;
            scratch.push(Bytes::from_static(heartbeat));
        }
        let mut taken = 0;
        let mut size: usize = scratch.iter().map(Bytes::len).sum();
        while let Some(next) = state.queue.front() {
            let alone = next.len() >= JOIN_LIMIT;
            if !scratch.is_empty() && (alone || size + next.len() > MAX_FRAME) {
                break;
            }
            size += next.len();
            taken += 1;
            if let Some(bytes) = state.queue.pop_front() {
                state.queued_bytes -= bytes.len();
                scratch.push(bytes);
            }
            if alone {
                break;
            }
        }
        if scratch.is_empty() {
            if state.closed || state.senders == 0 {
                return Poll::Ready(Err(if state.panicked {
                    Ended::Panicked
                } else {
                    Ended::Completed
                }));
            }
            match &mut state.receiver {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        drop(state);
        if self.policy == Policy::Wait && taken > 0 {
            self.room.add_permits(taken);
        }
        let bytes = if scratch.len() == 1 {
            scratch.pop().unwrap_or_default()
        } else {
            let mut frame = BytesMut::with_capacity(size);
            for part in scratch.drain(..) {
                frame.extend_from_slice(&part);
            }
            frame.freeze()
        };
        Poll::Ready(Ok(Batch {
            bytes,
            events: taken,
        }))
    }

    pub(crate) fn add_sender(&self) {
        self.lock().senders += 1;
    }

    pub(crate) fn remove_sender(&self) {
        let mut state = self.lock();
        state.senders -= 1;
        if std::thread::panicking() {
            state.panicked = true;
        }
        let waker = if state.senders == 0 {
            state.receiver.take()
        } else {
            None
        };
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Stops accepting events; the queued ones are still delivered.
    pub(crate) fn close(&self) {
        let waker = {
            let mut state = self.lock();
            state.closed = true;
            state.receiver.take()
        };
        self.room.close();
        self.closed.notify_waiters();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The body is gone: discard the queue and fail every sender from now on.
    pub(crate) fn close_receiver(&self) {
        let discarded = {
            let mut state = self.lock();
            state.closed = true;
            state.receiver_gone = true;
            state.queued_bytes = 0;
            state.receiver = None;
            std::mem::take(&mut state.queue)
        };
        drop(discarded);
        self.room.close();
        self.closed.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub(crate) async fn wait_closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            // Register before checking, so a close in between is not missed.
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    pub(crate) fn queued(&self) -> (usize, usize) {
        let state = self.lock();
        (state.queue.len(), state.queued_bytes)
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    fn recv(shared: &Shared) -> Poll<Result<Vec<u8>, Ended>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut scratch = Vec::new();
        shared
            .poll_recv(&mut cx, b": \r\n", &mut scratch)
            .map(|r| r.map(|batch| batch.bytes.to_vec()))
    }

    #[test]
    fn queued_events_come_out_as_one_frame() {
        let shared = Shared::new(Policy::Wait, 4);
        for part in ["a", "b", "c"] {
            shared.try_push(Bytes::from(part)).unwrap();
        }
        assert_eq!(recv(&shared), Poll::Ready(Ok(b"abc".to_vec())));
        assert!(recv(&shared).is_pending());
    }

    #[test]
    fn fixed_buffer_refuses_when_full_and_frees_room_when_drained() {
        let shared = Shared::new(Policy::Wait, 2);
        shared.try_push(Bytes::from("a")).unwrap();
        shared.try_push(Bytes::from("b")).unwrap();
        assert_eq!(shared.try_push(Bytes::from("c")), Err(Rejected::Full));
        assert!(recv(&shared).is_ready());
        shared.try_push(Bytes::from("c")).unwrap();
    }

    #[test]
    fn dropping_keeps_the_oldest_and_sliding_keeps_the_newest() {
        let dropping = Shared::new(Policy::DropNewest, 2);
        let sliding = Shared::new(Policy::DropOldest, 2);
        for part in ["a", "b", "c"] {
            dropping.try_push(Bytes::from(part)).unwrap();
            sliding.try_push(Bytes::from(part)).unwrap();
        }
        assert_eq!(recv(&dropping), Poll::Ready(Ok(b"ab".to_vec())));
        assert_eq!(recv(&sliding), Poll::Ready(Ok(b"bc".to_vec())));
        assert_eq!((dropping.dropped(), sliding.dropped()), (1, 1));
    }

    #[test]
    fn frames_are_capped_but_never_split_an_event() {
        let shared = Shared::new(Policy::Wait, 8);
        let big = Bytes::from(vec![b'x'; MAX_FRAME - 1]);
        shared.try_push(big.clone()).unwrap();
        shared.try_push(Bytes::from("yy")).unwrap();
        assert_eq!(recv(&shared), Poll::Ready(Ok(big.to_vec())));
        assert_eq!(recv(&shared), Poll::Ready(Ok(b"yy".to_vec())));
    }

    #[test]
    fn large_events_are_frames_of_their_own_and_never_copied() {
        let shared = Shared::new(Policy::Wait, 8);
        let big = Bytes::from(vec![b'x'; JOIN_LIMIT]);
        for part in [Bytes::from("a"), Bytes::from("b"), big.clone(), big.clone()] {
            shared.try_push(part).unwrap();
        }
        shared.try_push(Bytes::from("c")).unwrap();
        shared.request_heartbeat().unwrap();
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut scratch = Vec::new();
        let mut frames = Vec::new();
        while let Poll::Ready(Ok(batch)) = shared.poll_recv(&mut cx, b": \r\n", &mut scratch) {
            frames.push((batch.bytes, batch.events));
        }
        let sizes: Vec<_> = frames.iter().map(|(b, n)| (b.len(), *n)).collect();
        assert_eq!(sizes, [(6, 2), (JOIN_LIMIT, 1), (JOIN_LIMIT, 1), (1, 1)]);
        assert_eq!(&frames[0].0[..], b": \r\nab");
        // The very allocation the sender made: no copy.
        assert_eq!(frames[1].0.as_ptr(), big.as_ptr());
        // Room for every event taken.
        for _ in 0..8 {
            shared.try_push(Bytes::from("d")).unwrap();
        }
    }

    #[test]
    fn close_delivers_what_is_queued_then_ends() {
        let shared = Shared::new(Policy::Wait, 2);
        shared.try_push(Bytes::from("a")).unwrap();
        shared.close();
        assert_eq!(shared.try_push(Bytes::from("b")), Err(Rejected::Closed));
        assert_eq!(recv(&shared), Poll::Ready(Ok(b"a".to_vec())));
        assert_eq!(recv(&shared), Poll::Ready(Err(Ended::Completed)));
    }

    #[test]
    fn last_sender_gone_ends_the_queue() {
        let shared = Shared::new(Policy::Wait, 2);
        shared.add_sender();
        shared.remove_sender();
        assert!(recv(&shared).is_pending());
        shared.remove_sender();
        assert_eq!(recv(&shared), Poll::Ready(Err(Ended::Completed)));
    }
}
