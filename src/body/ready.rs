//! The ready function of a stream fed by a queue: called at the body's first
//! poll, then polled by the body itself (a fixed buffer) or run as a task of
//! its own, and stopped when the stream ends. Wherever it runs inside
//! hyper's task (its call, its polls, its drop), a panic is caught: it ends
//! the stream with `Panicked` and never unwinds into the connection.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    sync::Arc,
    task::{Context, Poll, Waker},
};

use futures::future::BoxFuture;
use sync_wrapper::SyncWrapper;
use tokio::task::AbortHandle;
use tracing::Instrument;

use crate::{
    StreamContext,
    buffer::Policy,
    config::StreamConfig,
    queue::{Queue, ReadyPoll},
    sender::EventSender,
};

/// Where the application's ready function is.
pub(super) enum ReadyState {
    /// Not called yet: the body calls it at its first poll, in the runtime
    /// that polls it.
    Waiting(EventSender),
    /// Polled by the body (fixed buffers). The future is `Send` but not
    /// `Sync`; `SyncWrapper` makes the body `Sync` (as axum's bodies are)
    /// by allowing it to be reached only through `&mut`, which the body
    /// always has when it polls or drops it.
    Polled(SyncWrapper<BoxFuture<'static, ()>>),
    /// Running as its own task (dropping and sliding buffers, or when asked).
    Spawned(AbortHandle),
    Done,
}

impl ReadyState {
    /// Calls a ready function still waiting for its first poll, with
    /// `queue`'s sender and the context (kept in `ctx` when the disconnect
    /// callback needs it too); `true` if it now runs, and the heartbeat is
    /// to be armed.
    pub(super) fn start(
        &mut self,
        queue: &Queue,
        config: &StreamConfig,
        ctx: &mut Option<StreamContext>,
        span: &tracing::Span,
    ) -> bool {
        if !matches!(self, Self::Waiting(_)) {
            return false;
        }
        let Self::Waiting(sender) = std::mem::replace(self, Self::Done) else {
            return false;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(parent: span, "no tokio runtime: the ready function cannot run");
            return false;
        };
        let ctx = match &config.on_disconnect {
            Some(_) => ctx.clone(),
            None => ctx.take(),
        };
        let Some(ctx) = ctx else {
            return false;
        };
        // Its synchronous part runs here, inside hyper's task: never unwind there.
        let ready = match catch_unwind(AssertUnwindSafe(|| (config.ready)(sender, ctx))) {
            Ok(ready) => ready,
            Err(_) => {
                tracing::error!(parent: span, "the ready function panicked");
                queue.mark_panicked();
                return false;
            }
        };
        *self = if queue.policy() == Policy::Wait && !config.spawn_ready {
            Self::Polled(SyncWrapper::new(ready))
        } else {
            let task = runtime.spawn(ready.instrument(span.clone()));
            Self::Spawned(task.abort_handle())
        };
        true
    }

    /// Polls a body-polled ready function if it was woken since its last
    /// poll; `true` if it was polled.
    pub(super) fn poll(&mut self, queue: &Arc<Queue>, span: &tracing::Span) -> bool {
        // Cleared whatever the ready function: a stale wake-up must not spin the body.
        if !queue.take_ready_wake() {
            return false;
        }
        let Self::Polled(ready) = self else {
            return false;
        };
        let ready = ready.get_mut();
        // The queue is the ready function's waker: a wake-up flags it and wakes the body.
        let waker = Waker::from(queue.clone());
        let mut cx = Context::from_waker(&waker);
        let polled = {
            let _entered = span.enter();
            let _polling = ReadyPoll::enter(queue);
            catch_unwind(AssertUnwindSafe(|| ready.as_mut().poll(&mut cx)))
        };
        match polled {
            Ok(Poll::Pending) => return true,
            Ok(Poll::Ready(())) => {}
            Err(_) => {
                tracing::error!(parent: span, "the ready function panicked");
                queue.mark_panicked();
            }
        }
        self.stop(span);
        true
    }

    /// Drops or aborts the ready function (dropping its senders).
    pub(super) fn stop(&mut self, span: &tracing::Span) {
        match std::mem::replace(self, Self::Done) {
            Self::Polled(ready) => {
                // Its destructors may run inside hyper's task or a `Drop`: never unwind there.
                if catch_unwind(AssertUnwindSafe(move || drop(ready))).is_err() {
                    tracing::error!(parent: span, "the ready function panicked when dropped");
                }
            }
            Self::Spawned(task) => task.abort(),
            Self::Waiting(_) | Self::Done => {}
        }
    }
}
