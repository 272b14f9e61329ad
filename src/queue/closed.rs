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
            id: NOT_WAITING,
        }
    }
}

/// The future of [`Queue::closed`].
pub(crate) struct WaitClosed<'a> {
    queue: &'a Queue,
    /// Its waiter's id, or [`NOT_WAITING`] (`State::next_id` starts at 1):
    /// 16 bytes in all, where an `Option` would make it 24.
    id: u64,
}

const NOT_WAITING: u64 = 0;

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
            NOT_WAITING => {
                let id = state.next_id();
                state.closing.push(Waiter {
                    id,
                    waker: Some(waker),
                });
                this.id = id;
                None
            }
            id => state
                .closing
                .iter_mut()
                .find(|w| w.id == id)
                .and_then(|w| w.waker.replace(waker)),
        };
        drop(state);
        drop(old);
        Poll::Pending
    }
}

impl WaitClosed<'_> {
    fn leave(&mut self, state: &mut State) -> Option<Waiter> {
        let id = std::mem::replace(&mut self.id, NOT_WAITING);
        if id == NOT_WAITING {
            return None;
        }
        state.closing.remove(id)
    }
}

/// The `closed()` calls waiting for the end. Most streams have one (an
/// idle ready function's): it is held inline, so that it costs the stream
/// no allocation of its own.
#[derive(Default)]
pub(super) enum Closing {
    #[default]
    None,
    One(Waiter),
    Many(Vec<Waiter>),
}

impl Closing {
    fn push(&mut self, waiter: Waiter) {
        match std::mem::take(self) {
            Self::None => *self = Self::One(waiter),
            Self::One(first) => *self = Self::Many(vec![first, waiter]),
            Self::Many(mut all) => {
                all.push(waiter);
                *self = Self::Many(all);
            }
        }
    }

    pub(super) fn iter_mut(&mut self) -> std::slice::IterMut<'_, Waiter> {
        match self {
            Self::None => [].iter_mut(),
            Self::One(waiter) => std::slice::from_mut(waiter).iter_mut(),
            Self::Many(all) => all.iter_mut(),
        }
    }

    fn remove(&mut self, id: u64) -> Option<Waiter> {
        match self {
            Self::One(waiter) if waiter.id == id => match std::mem::take(self) {
                Self::One(waiter) => Some(waiter),
                _ => None,
            },
            Self::Many(all) => {
                let at = all.iter().position(|w| w.id == id)?;
                Some(all.swap_remove(at))
            }
            _ => None,
        }
    }
}

impl Drop for WaitClosed<'_> {
    fn drop(&mut self) {
        if self.id == NOT_WAITING {
            return;
        }
        let mut state = self.queue.lock();
        let removed = self.leave(&mut state);
        drop(state);
        drop(removed);
    }
}
