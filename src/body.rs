//! The streaming response body: queued events, heartbeats in silence, and the
//! end-of-stream bookkeeping.

use std::{
    convert::Infallible,
    fmt,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::{
    task::AbortHandle,
    time::{Instant, Sleep},
};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tracing::Instrument;

use crate::{
    StreamContext,
    channel::{Ended, Shared},
    event::HEARTBEAT,
    sender::EventSender,
    stats::{self, SseStats, StreamTotals},
    stream::{DisconnectFn, ReadyFn, StreamConfig},
};

/// Why a stream ended, as given to the on-disconnect callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Every sender was dropped, or one called [`EventSender::close`]: the
    /// queued events were delivered and the body ended cleanly.
    Completed,
    /// The client went away (the body was dropped before its end).
    ClientDisconnected,
    /// A task holding a sender panicked; the queued events were delivered and
    /// the body ended cleanly.
    Panicked,
    /// The server is shutting down (see [`SseLayer::shutdown_on`](crate::SseLayer::shutdown_on)):
    /// the queued events and the shutdown event were delivered, then the body
    /// ended cleanly.
    Shutdown,
}

/// The body of an event stream: an [`http_body::Body`] that yields encoded
/// events, interleaves heartbeat comments during silence, and ends when every
/// sender is gone.
///
/// Built by [`SseLayer`](crate::SseLayer) and [`start_stream`](crate::start_stream);
/// usable directly as the body of any hyper or tower response. Dropping it
/// ends the stream: senders get `Closed`, the ready function's task is
/// stopped, and the disconnect callback fires once.
pub struct EventStream {
    shared: Arc<Shared>,
    /// The ready function and its sender, until the first poll spawns it.
    ready: Option<(ReadyFn, EventSender)>,
    task: Option<AbortHandle>,
    heartbeat: Option<Duration>,
    /// Wakes the body for a heartbeat; re-armed only when it fires, against
    /// `last_write`, so events never touch the timer.
    timer: Option<Pin<Box<Sleep>>>,
    last_write: Instant,
    /// Reused between polls to gather queued events into one frame.
    scratch: Vec<Bytes>,
    ctx: StreamContext,
    on_disconnect: Option<DisconnectFn>,
    /// Resolves when the server shuts down; `None` once it has.
    shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Written last when the server shuts down; `Some` until it is written.
    shutdown_event: Option<Bytes>,
    shutting_down: bool,
    stats: Option<SseStats>,
    span: tracing::Span,
    totals: StreamTotals,
    finished: bool,
}

impl EventStream {
    pub(crate) fn new(config: &StreamConfig, ctx: StreamContext) -> Self {
        let (policy, capacity) = config.buffer.resolve();
        let shared = Arc::new(Shared::new(policy, capacity));
        let span = tracing::debug_span!("sse_stream", uri = %ctx.uri());
        tracing::debug!(parent: &span, ?policy, capacity, "stream opened");
        stats::stream_opened(config.stats.as_ref());
        Self {
            ready: Some((config.ready.clone(), EventSender::new(shared.clone()))),
            shared,
            task: None,
            heartbeat: Some(config.heartbeat).filter(|delay| !delay.is_zero()),
            timer: None,
            last_write: Instant::now(),
            scratch: Vec::new(),
            ctx,
            on_disconnect: config.on_disconnect.clone(),
            shutdown: config
                .shutdown
                .as_ref()
                .map(|token| Box::pin(token.clone().cancelled_owned())),
            shutdown_event: config.shutdown_event.clone(),
            shutting_down: false,
            stats: config.stats.clone(),
            span,
            totals: StreamTotals::default(),
            finished: false,
        }
    }

    /// Spawns the ready function and arms the heartbeat, inside the runtime
    /// that first polls the body.
    fn start(&mut self) {
        let Some((ready, sender)) = self.ready.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = ready(sender, self.ctx.clone()).instrument(self.span.clone());
                self.task = Some(runtime.spawn(task).abort_handle());
            }
            Err(_) => {
                tracing::error!(parent: &self.span, "no tokio runtime: the ready function cannot run");
                return;
            }
        }
        if let Some(delay) = self.heartbeat {
            self.last_write = Instant::now();
            self.timer = Some(Box::pin(tokio::time::sleep_until(self.last_write + delay)));
        }
    }

    /// Polls the heartbeat timer; `Some` when a heartbeat is due now.
    fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> Option<Bytes> {
        let delay = self.heartbeat?;
        let timer = self.timer.as_mut()?;
        while timer.as_mut().poll(cx).is_ready() {
            let due = self.last_write + delay;
            let now = Instant::now();
            if now >= due {
                self.last_write = now;
                timer.as_mut().reset(now + delay);
                return Some(Bytes::from_static(HEARTBEAT));
            }
            timer.as_mut().reset(due);
        }
        None
    }

    fn finish(&mut self, reason: DisconnectReason) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.shared.close_receiver();
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.timer = None;
        self.shutdown = None;
        self.totals.dropped = self.shared.dropped();
        let totals = self.totals;
        stats::stream_closed(self.stats.as_ref(), totals);
        tracing::debug!(
            parent: &self.span,
            ?reason,
            events = totals.events,
            bytes = totals.bytes,
            dropped = totals.dropped,
            "stream closed"
        );
        if let Some(callback) = self.on_disconnect.take() {
            let ctx = &self.ctx;
            // The callback may run inside hyper's task or a `Drop`: never let it unwind there.
            if catch_unwind(AssertUnwindSafe(|| callback(ctx, reason))).is_err() {
                tracing::error!(parent: &self.span, "on_client_disconnect callback panicked");
            }
        }
    }
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        this.start();
        if let Some(shutdown) = &mut this.shutdown {
            if shutdown.as_mut().poll(cx).is_ready() {
                // Accept nothing more; what is queued still goes out, then the shutdown event.
                this.shutdown = None;
                this.shutting_down = true;
                this.shared.close();
                tracing::debug!(parent: &this.span, "server shutting down: ending the stream");
            }
        }
        let bytes = match this.shared.poll_recv(cx, HEARTBEAT, &mut this.scratch) {
            Poll::Ready(Ok(batch)) => {
                this.totals.events += batch.events as u64;
                batch.bytes
            }
            Poll::Ready(Err(_)) if this.shutting_down && this.shutdown_event.is_some() => {
                this.shutdown_event.take().unwrap_or_default()
            }
            Poll::Ready(Err(ended)) => {
                this.finish(match ended {
                    _ if this.shutting_down => DisconnectReason::Shutdown,
                    Ended::Completed => DisconnectReason::Completed,
                    Ended::Panicked => DisconnectReason::Panicked,
                });
                return Poll::Ready(None);
            }
            Poll::Pending => match this.poll_heartbeat(cx) {
                Some(heartbeat) => heartbeat,
                None => return Poll::Pending,
            },
        };
        if this.heartbeat.is_some() {
            this.last_write = Instant::now();
        }
        this.totals.bytes += bytes.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.finish(DisconnectReason::ClientDisconnected);
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("ctx", &self.ctx)
            .field("heartbeat", &self.heartbeat)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}
