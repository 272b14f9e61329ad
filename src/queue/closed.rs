//! Waiting for the end: [`Queue::closed`] and its future (`EventSender::closed`).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use super::{Queue, State, Waiter};

impl Queue {
    /// Resolves once no more events are accepted.
    pub(crate) fn closed(&self) -> WaitClosed<'_> {
        WaitClosed {
            queue: self,
            id: None,
        }
    }
}

/// The future of [`Queue::closed`].
pub(crate) struct WaitClosed<'a> {
    queue: &'a Queue,
    id: Option<u64>,
}

impl Future for WaitClosed<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Cloned outside the lock, in case it must be stored.
        let waker = cx.waker().clone();
        let mut state = this.queue.lock();
        if state.closed {
            let removed = this.leave(&mut state);
            drop(state);
            drop((removed, waker));
            return Poll::Ready(());
        }
        let old = match this.id {
            Some(id) => state
                .closing
                .iter_mut()
                .find(|w| w.id == id)
                .and_then(|w| w.waker.replace(waker)),
            None => {
                let id = state.next_id();
                // Most streams have one such waiter (an idle ready function's):
                // room for one is 32 bytes a stream where `push` takes 112.
                if state.closing.capacity() == 0 {
                    state.closing.reserve_exact(1);
                }
                state.closing.push(Waiter {
                    id,
                    waker: Some(waker),
                });
                this.id = Some(id);
                None
            }
        };
        drop(state);
        drop(old);
        Poll::Pending
    }
}

impl WaitClosed<'_> {
    fn leave(&mut self, state: &mut State) -> Option<Waiter> {
        let id = self.id.take()?;
        let at = state.closing.iter().position(|w| w.id == id)?;
        Some(state.closing.swap_remove(at))
    }
}

impl Drop for WaitClosed<'_> {
    fn drop(&mut self) {
        if self.id.is_none() {
            return;
        }
        let mut state = self.queue.lock();
        let removed = self.leave(&mut state);
        drop(state);
        drop(removed);
    }
}
