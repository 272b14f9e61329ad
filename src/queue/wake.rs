//! The queue as the waker of the ready function its body polls (see
//! `body.rs`): a wake-up sets a flag and wakes the body, so a stream needs
//! no task and no waker of its own; and [`ReadyPoll`], which tells a send
//! that it runs inside that poll.

use std::{cell::Cell, sync::Arc, task::Wake};

use super::Queue;
use crate::sync::Ordering;

impl Queue {
    /// Whether the ready function that the body polls was woken since the last
    /// call; clears the flag.
    pub(crate) fn take_ready_wake(&self) -> bool {
        self.ready_woken.swap(false, Ordering::AcqRel)
    }

    /// Whether the ready function that the body polls was woken and not polled yet.
    pub(crate) fn ready_woken(&self) -> bool {
        self.ready_woken.load(Ordering::Acquire)
    }
}

thread_local! {
    /// The address of the queue whose body is polling its own ready function on
    /// this thread (0: none).
    static PRODUCER_POLL: Cell<usize> = const { Cell::new(0) };
}

/// Marks this thread as polling the ready function of `queue`'s body, until
/// dropped: that ready function's sends to *this* queue take free room without
/// spending tokio's budget (see [`Push`]); every other send spends it, its
/// sends to other streams included.
pub(crate) struct ReadyPoll {
    outer: usize,
}

impl ReadyPoll {
    pub(crate) fn enter(queue: &Queue) -> Self {
        let address = std::ptr::from_ref(queue) as usize;
        Self {
            outer: PRODUCER_POLL.with(|polled| polled.replace(address)),
        }
    }

    pub(super) fn polls(queue: &Queue) -> bool {
        PRODUCER_POLL.with(Cell::get) == std::ptr::from_ref(queue) as usize
    }
}

impl Drop for ReadyPoll {
    fn drop(&mut self) {
        PRODUCER_POLL.with(|polled| polled.set(self.outer));
    }
}

/// The waker of the ready function the body polls: it flags the ready function and wakes
/// the body, which polls it (sharing the queue's allocation, so a stream
/// needs no task and no waker of its own).
impl Wake for Queue {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready_woken.store(true, Ordering::Release);
        let waker = self.lock().receiver.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}
