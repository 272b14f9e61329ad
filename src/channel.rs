//! The bounded queue between a stream's senders and its body.
//!
//! Events are encoded by the sender and queued as `Bytes`. The body takes
//! every event already queued at each poll and writes them as one frame (with
//! a fixed buffer, also what the ready function it polls queues meanwhile),
//! so a busy stream makes few, full writes; it never waits for more to arrive.

use std::{
    cell::Cell,
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
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
    /// The producer that the body polls itself (see `body.rs`) was woken:
    /// set by this queue's [`Wake`] impl, which is that producer's waker.
    producer_woken: AtomicBool,
    policy: Policy,
    capacity: usize,
}

struct State {
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    receiver: Option<Waker>,
    /// Live `EventSender`s (`u32` keeps `State` small: four billion senders
    /// would take 32 GB).
    senders: u32,
    /// No more events are accepted (`close()` was called or the body is gone).
    closed: bool,
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

/// A frame being gathered from the queue: one event as it was encoded (no
/// copy), or several joined into one buffer, sized from what is queued.
#[derive(Default)]
pub(crate) struct FrameBuilder {
    first: Option<Bytes>,
    joined: BytesMut,
    /// Takes no more events: the size cap or a large event was reached.
    full: bool,
}

impl FrameBuilder {
    fn len(&self) -> usize {
        if self.joined.is_empty() {
            self.first.as_ref().map_or(0, Bytes::len)
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
    fn takes(&mut self, len: usize) -> bool {
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
    fn push(&mut self, bytes: Bytes, queued: usize) {
        if self.is_empty() {
            self.first = Some(bytes);
            return;
        }
        if let Some(first) = self.first.take() {
            // Exactly what is queued, so that `freeze` keeps the allocation.
            let room = (bytes.len() + queued).min(MAX_FRAME - first.len());
            self.joined.reserve(first.len() + room.max(bytes.len()));
            self.joined.extend_from_slice(&first);
        } else if self.joined.capacity() - self.joined.len() < bytes.len() {
            // A producer refilled the queue while the frame was gathered: it
            // is busy, so grow once, to the cap, rather than copy at every
            // doubling (large copies are slow on some machines; see `event.rs`).
            self.joined
                .reserve(MAX_FRAME.saturating_sub(self.joined.len()).max(bytes.len()));
        }
        self.joined.extend_from_slice(&bytes);
    }

    /// The gathered bytes; the frame is empty again.
    pub(crate) fn take(&mut self) -> Bytes {
        self.full = false;
        match self.first.take() {
            Some(first) => first,
            None => std::mem::take(&mut self.joined).freeze(),
        }
    }
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
                heartbeat_requested: false,
                dropped: 0,
                panicked: false,
            }),
            room: Semaphore::new(permits),
            closed: Notify::new(),
            // Set: a body-polled producer is polled first at the first poll.
            producer_woken: AtomicBool::new(true),
            policy,
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No code that can panic runs under the lock; recover rather than propagate.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `bytes`, waiting for room under [`Policy::Wait`].
    ///
    /// `acquire` spends tokio's cooperative budget, so that a task sending in
    /// a loop yields now and then. Inside a body's poll of its own producer
    /// (see [`ProducerPoll`]), room that is there now is taken without it:
    /// that producer then fills whole frames, not 128 events per poll, and
    /// the body bounds the poll itself. Waiting for room spends it as usual.
    pub(crate) async fn push(&self, bytes: Bytes) -> Result<(), Rejected> {
        if self.policy == Policy::Wait {
            let free = if ProducerPoll::active() {
                self.room.try_acquire()
            } else {
                Err(TryAcquireError::NoPermits)
            };
            match free {
                Ok(permit) => permit.forget(),
                Err(TryAcquireError::Closed) => return Err(Rejected::Closed),
                Err(TryAcquireError::NoPermits) => match self.room.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return Err(Rejected::Closed),
                },
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

    /// Moves queued events into `frame`, as many as it takes (see
    /// [`FrameBuilder`]), and returns how many it took.
    ///
    /// With nothing to give, it is `Ready(Err(_))` when no event can come any
    /// more, `Ready(Ok(0))` when the producer polled by the body was woken
    /// (poll it, then call again), and otherwise `Pending`, with `cx` woken at
    /// the next event. A frame that is not empty clears the body's waker: the
    /// connection polls again once it has written the frame.
    pub(crate) fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        heartbeat: &'static [u8],
        frame: &mut FrameBuilder,
    ) -> Poll<Result<usize, Ended>> {
        let mut state = self.lock();
        // At the start of a frame only: one heartbeat per frame however many
        // requests, and never past the size cap.
        if state.heartbeat_requested && frame.is_empty() {
            state.heartbeat_requested = false;
            frame.push(Bytes::from_static(heartbeat), 0);
        }
        let mut taken = 0;
        while let Some(next) = state.queue.front() {
            if !frame.takes(next.len()) {
                break;
            }
            let Some(bytes) = state.queue.pop_front() else {
                break;
            };
            state.queued_bytes -= bytes.len();
            taken += 1;
            frame.push(bytes, state.queued_bytes);
        }
        if frame.is_empty() {
            if state.closed || state.senders == 0 {
                return Poll::Ready(Err(if state.panicked {
                    Ended::Panicked
                } else {
                    Ended::Completed
                }));
            }
            // Checked under the lock that `wake` takes, so a wake-up is never lost.
            if self.producer_woken() {
                return Poll::Ready(Ok(0));
            }
            match &mut state.receiver {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
        state.receiver = None;
        drop(state);
        if self.policy == Policy::Wait && taken > 0 {
            // Wakes a producer waiting for room; one the body polls sets `producer_woken`.
            self.room.add_permits(taken);
        }
        Poll::Ready(Ok(taken))
    }

    /// Whether the producer that the body polls was woken since the last
    /// call; clears the flag.
    pub(crate) fn take_producer_wake(&self) -> bool {
        self.producer_woken.swap(false, Ordering::AcqRel)
    }

    /// Whether the producer that the body polls was woken and not polled yet.
    pub(crate) fn producer_woken(&self) -> bool {
        self.producer_woken.load(Ordering::Acquire)
    }

    /// Records that a producer panicked (its senders are dropped after the
    /// unwinding was caught, so `remove_sender` cannot tell).
    pub(crate) fn mark_panicked(&self) {
        self.lock().panicked = true;
    }

    pub(crate) fn policy(&self) -> Policy {
        self.policy
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

thread_local! {
    static PRODUCER_POLL: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as polling a body's own producer, until dropped: the
/// sends that producer makes meanwhile take free room without spending
/// tokio's budget (see [`Shared::push`]); sends from anywhere else spend it.
pub(crate) struct ProducerPoll {
    outer: bool,
}

impl ProducerPoll {
    pub(crate) fn enter() -> Self {
        Self {
            outer: PRODUCER_POLL.with(|active| active.replace(true)),
        }
    }

    fn active() -> bool {
        PRODUCER_POLL.with(Cell::get)
    }
}

impl Drop for ProducerPoll {
    fn drop(&mut self) {
        PRODUCER_POLL.with(|active| active.set(self.outer));
    }
}

/// The waker of the producer the body polls: it flags the producer and wakes
/// the body, which polls it (sharing the queue's allocation, so a stream
/// needs no task and no waker of its own).
impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.producer_woken.store(true, Ordering::Release);
        let waker = self.lock().receiver.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    /// One frame, as the body takes it (the producer flag cleared first).
    fn poll_frame(
        shared: &Shared,
        frame: &mut FrameBuilder,
    ) -> Poll<Result<(Bytes, usize), Ended>> {
        let mut cx = Context::from_waker(noop_waker_ref());
        shared.take_producer_wake();
        shared
            .poll_recv(&mut cx, b": \r\n", frame)
            .map(|r| r.map(|events| (frame.take(), events)))
    }

    fn recv(shared: &Shared) -> Poll<Result<Vec<u8>, Ended>> {
        poll_frame(shared, &mut FrameBuilder::default()).map(|r| r.map(|(bytes, _)| bytes.to_vec()))
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
        let mut frame = FrameBuilder::default();
        let mut frames = Vec::new();
        while let Poll::Ready(Ok(taken)) = poll_frame(&shared, &mut frame) {
            frames.push(taken);
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

    #[test]
    fn a_frame_gathers_across_refills_up_to_the_cap() {
        let shared = Shared::new(Policy::Wait, 2);
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut frame = FrameBuilder::default();
        let event = Bytes::from(vec![b'e'; 1000]);
        let mut taken = 0;
        // What a body-polled producer does: refill the queue as it drains.
        while !frame.is_full() {
            for _ in 0..2 {
                shared.try_push(event.clone()).unwrap();
            }
            match shared.poll_recv(&mut cx, b": \r\n", &mut frame) {
                Poll::Ready(Ok(n)) => taken += n,
                other => panic!("unexpected {other:?}"),
            }
        }
        let bytes = frame.take();
        assert_eq!(taken, MAX_FRAME / 1000);
        assert_eq!(bytes.len(), taken * 1000);
        // The one that did not fit is still queued, first in the next frame.
        assert_eq!(shared.queued(), (1, 1000));
        assert!(frame.is_empty() && !frame.is_full());
    }

    #[test]
    fn the_queue_is_the_waker_of_a_body_polled_producer() {
        let shared = Arc::new(Shared::new(Policy::Wait, 1));
        let mut frame = FrameBuilder::default();
        let body = Arc::new(Flag::default());
        let body_waker = Waker::from(body.clone());
        let mut cx = Context::from_waker(&body_waker);
        // Flagged at first, so that the body polls the producer before waiting.
        assert_eq!(
            shared.poll_recv(&mut cx, b"", &mut frame),
            Poll::Ready(Ok(0))
        );
        assert!(shared.take_producer_wake());
        assert_eq!(shared.poll_recv(&mut cx, b"", &mut frame), Poll::Pending);
        // The producer's waker flags it and wakes the body, once.
        Waker::from(shared.clone()).wake();
        assert!(body.0.swap(false, Ordering::SeqCst));
        assert!(shared.producer_woken());
        assert_eq!(
            shared.poll_recv(&mut cx, b"", &mut frame),
            Poll::Ready(Ok(0))
        );
        assert!(shared.take_producer_wake());
        assert!(!shared.producer_woken());
        assert!(!body.0.load(Ordering::SeqCst));
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
