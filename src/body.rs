//! The streaming response body: queued events, heartbeats in silence, and the
//! end-of-stream bookkeeping. The ready function it calls, polls and stops
//! is in `ready.rs`.

use std::{
    fmt,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::{
    StreamContext,
    buffer::{Policy, Resolved},
    config::StreamConfig,
    frame::{Encoded, FrameBuilder},
    hub::Lagged,
    hub::Subscription,
    queue::{Ended, Queue},
    sender::EventSender,
    stall::Out,
    stats,
    telemetry::StreamMetrics,
};

mod extras;
mod ready;
mod reason;

use extras::{Extras, span_of};
use ready::ReadyState;
pub use reason::{DisconnectReason, StreamError};

pin_project! {
    /// The body of an event stream: an [`http_body::Body`] that yields encoded
    /// events, interleaves heartbeat comments during silence, and ends when every
    /// sender is gone.
    ///
    /// Built by [`SseLayer`](crate::SseLayer) and [`start_stream`](crate::start_stream);
    /// usable directly as the body of any hyper or tower response. Dropping it
    /// ends the stream: senders get `Closed`, the ready function is stopped, and
    /// the disconnect callback fires once.
    ///
    /// # Where the ready function runs
    ///
    /// With a fixed buffer (the default), the body polls the ready function's
    /// future itself, as axum's `Sse` polls its stream: no task is spawned, and
    /// each time the connection asks for data the body lets the ready function
    /// refill the buffer again and again into one frame (up to 64 KiB, 256
    /// refills, or as many as tokio's cooperative budget allows in one poll),
    /// so even a small buffer makes full writes.
    ///
    /// The ready function is then polled only while the connection wants
    /// data: when the client (or an HTTP/2 flow-control window) stops
    /// reading, it is not polled at all, not only when its buffer is full.
    /// Work it must go on doing regardless (draining a `broadcast` receiver,
    /// keeping an `interval`'s schedule with `try_send`) belongs in a task of
    /// its own, holding the sender:
    ///
    /// ```
    /// use tower_sse::{EventSender, SseLayer, StreamContext};
    ///
    /// async fn produce(events: EventSender) {
    ///     let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    ///     loop {
    ///         ticks.tick().await;
    ///         match events.try_send("tick") {
    ///             Ok(()) | Err(tower_sse::TrySendError::Full(_)) => {}
    ///             Err(_) => return,
    ///         }
    ///     }
    /// }
    ///
    /// let layer = SseLayer::new(|events: EventSender, _ctx: StreamContext| async move {
    ///     tokio::spawn(produce(events));
    /// });
    /// # let _ = layer;
    /// ```
    ///
    /// While a body-polled ready function runs between two `.await`s (CPU
    /// work, a blocking call), the body writes nothing, heartbeats included:
    /// its poll is the connection's task. A ready function that works for
    /// 1.5 s leaves a 1.5 s silence at any heartbeat
    /// (`tests/spawned.rs`). Give such work to `spawn_blocking`, or run the
    /// whole ready function as a task of its own with
    /// [`SseLayer::spawn_ready`](crate::SseLayer::spawn_ready) (or
    /// [`SseResponse::spawn_ready`](crate::SseResponse::spawn_ready)): it then
    /// feeds the bounded buffer from its own task, goes on while the client
    /// is slow until the buffer is full, and heartbeats never wait for it.
    ///
    /// With a dropping or sliding buffer, whose point is that a slow client
    /// never holds the application back, the ready function runs as a task of
    /// its own anyway. Either way it is dropped (or aborted) when the stream
    /// ends, and a panic in it, or in any task holding one of its senders,
    /// ends the stream with [`DisconnectReason::Panicked`].
    ///
    /// The body is `!Unpin` (its heartbeat timer is inline): pin it
    /// (`Box::pin`, `std::pin::pin!`) to poll it by hand.
    pub struct EventStream {
        state: State,
        // Inline rather than boxed: one allocation less per stream.
        #[pin]
        timer: Option<Sleep>,
    }

    impl PinnedDrop for EventStream {
        fn drop(this: Pin<&mut Self>) {
            this.project().state.finish(DisconnectReason::ClientDisconnected);
        }
    }
}

/// Everything of a stream but its timer (which is pinned).
struct State {
    source: Source,
    config: Arc<StreamConfig>,
    /// Kept for the disconnect callback only; otherwise handed to the ready
    /// function, so that a context nobody keeps costs nothing.
    ctx: Option<StreamContext>,
    /// A span, a stall watch, a shutdown token: one allocation for what a
    /// stream has of them, none without any (8 bytes where three boxes took
    /// 24, so that the body fits a smaller allocation).
    extras: Option<Box<Extras>>,
    events: u64,
    bytes: u64,
    /// The layer's `retry` field (`config.first_frame`) is still to be written.
    first_pending: bool,
    /// Of `events`, those the stats and metrics have not been told of yet
    /// (at most a frame's: `u32` keeps the body in a smaller allocation).
    events_uncounted: u32,
    /// What the stats and metrics have been told of drops.
    dropped_counted: u64,
    metrics: StreamMetrics,
    phase: Phase,
    /// The compressor of every frame, when the request chose an encoding.
    #[cfg(feature = "compression")]
    compressed: Option<Box<crate::compression::StreamCompressor>>,
}

/// Where a stream's events come from.
enum Source {
    /// The per-stream queue the ready function's senders feed.
    Queue {
        queue: Arc<Queue>,
        ready_fn: ReadyState,
    },
    /// A hub's topics, read by the body itself.
    Hub {
        subscription: Box<Subscription>,
        started: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Streaming,
    /// Shutting down: queued events, then the shutdown event, then the end.
    ShuttingDown {
        event_sent: bool,
    },
    Finished,
}

/// How many times one poll lets a body-polled ready function refill the
/// buffer before the frame goes out (with the 64 KiB cap, what bounds a poll).
const MAX_REFILLS: usize = 256;

static NO_SPAN: tracing::Span = tracing::Span::none();

impl EventStream {
    pub(crate) fn new(
        config: Arc<StreamConfig>,
        ctx: StreamContext,
        subscription: Option<Subscription>,
    ) -> Self {
        // A HEAD request gets the stream's headers and no body: no stream
        // starts, so nothing is counted, called or called back.
        let head = ctx.method() == Method::HEAD;
        let buffer = if head || subscription.is_some() {
            Resolved {
                policy: Policy::Wait,
                capacity: 1,
                key: None,
            }
        } else {
            config.buffer.resolve()
        };
        let (policy, capacity) = (buffer.policy, buffer.capacity);
        let source = match subscription {
            Some(subscription) => Source::Hub {
                subscription: Box::new(subscription),
                started: false,
            },
            None => {
                let queue = Arc::new(Queue::from_buffer(buffer));
                Source::Queue {
                    ready_fn: ReadyState::Waiting(EventSender::new(queue.clone())),
                    queue,
                }
            }
        };
        let span = if head {
            tracing::Span::none()
        } else {
            let layer = config.name.as_deref().unwrap_or_default();
            tracing::debug_span!("sse_stream", uri = %ctx.uri_display(), layer)
        };
        if !head {
            tracing::debug!(parent: &span, ?policy, capacity, "stream opened");
            stats::stream_opened(config.stats.as_ref());
        }
        let metrics = if head {
            StreamMetrics::none()
        } else {
            StreamMetrics::opened(config.name.as_deref())
        };
        #[cfg(feature = "compression")]
        let compressed =
            crate::compression::StreamCompressor::for_request(&config, ctx.kept_headers());
        let state = State {
            #[cfg(feature = "compression")]
            compressed,
            first_pending: !head && config.first_frame.is_some(),
            source,
            ctx: Some(ctx),
            extras: Extras::new(span, &config),
            config,
            events: 0,
            bytes: 0,
            events_uncounted: 0,
            dropped_counted: 0,
            metrics,
            phase: if head {
                Phase::Finished
            } else {
                Phase::Streaming
            },
        };
        Self { state, timer: None }
    }

    /// The stream's `Content-Encoding`, if it is compressed.
    #[cfg(feature = "compression")]
    pub(crate) fn content_encoding(&self) -> Option<&'static str> {
        self.state.compressed.as_ref().map(|c| c.content_encoding())
    }
}

impl State {
    fn span(&self) -> &tracing::Span {
        span_of(&self.extras)
    }

    /// Calls the ready function and arms the heartbeat, inside the runtime
    /// that first polls the body.
    fn start(&mut self, mut timer: Pin<&mut Option<Sleep>>) {
        let Source::Queue { queue, ready_fn } = &mut self.source else {
            let Source::Hub { started, .. } = &mut self.source else {
                return;
            };
            if std::mem::replace(started, true) {
                return;
            }
            // A hub stream: nothing to call; the context is for the callback only.
            if self.config.on_disconnect.is_none() {
                self.ctx = None;
            }
            if let Some(delay) = self.config.heartbeat().or(self.config.stall_timeout) {
                timer.set(Some(tokio::time::sleep(delay)));
            }
            return;
        };
        let span = span_of(&self.extras);
        if !ready_fn.start(queue, &self.config, &mut self.ctx, span) {
            return;
        }
        if let Some(delay) = self.config.heartbeat().or(self.config.stall_timeout) {
            timer.set(Some(tokio::time::sleep(delay)));
        }
    }

    /// Polls a body-polled ready function if it was woken since its last
    /// poll; `true` if it was polled.
    fn poll_ready_fn(&mut self) -> bool {
        let Source::Queue { queue, ready_fn } = &mut self.source else {
            return false;
        };
        ready_fn.poll(queue, span_of(&self.extras))
    }

    /// Drops or aborts the ready function (dropping its senders).
    fn stop_ready_fn(&mut self) {
        if let Source::Queue { ready_fn, .. } = &mut self.source {
            ready_fn.stop(span_of(&self.extras));
        }
    }

    /// Polls the heartbeat timer; `Some` when a heartbeat is due now.
    fn poll_heartbeat(
        &mut self,
        timer: Pin<&mut Option<Sleep>>,
        cx: &mut Context<'_>,
    ) -> Option<Bytes> {
        let delay = self.config.heartbeat()?;
        let mut timer = timer.as_pin_mut()?;
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        timer.reset(Instant::now() + delay);
        Some(self.config.heartbeat_comment.clone())
    }

    /// Gathers one frame: what is queued and, for a body-polled ready
    /// function, what it queues as the buffer drains, never waiting for more.
    fn poll_events(&mut self, cx: &mut Context<'_>) -> Poll<Result<Encoded, Ended>> {
        let mut frame = FrameBuilder::default();
        if let Source::Hub { subscription, .. } = &mut self.source {
            if self.phase != Phase::Streaming {
                // Shutting down: a hub stream has nothing queued.
                return Poll::Ready(Err(Ended::Completed));
            }
            let mut read = Vec::new();
            match subscription.poll_read(cx, usize::MAX, &mut read) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(Lagged)) => return Poll::Ready(Err(Ended::Lagged)),
                Poll::Pending => return Poll::Pending,
            }
            let mut rest: usize = read.iter().map(Bytes::len).sum();
            for bytes in read {
                rest -= bytes.len();
                if bytes != self.config.heartbeat_comment {
                    self.add_events(1);
                }
                frame.push(bytes, rest);
            }
            return Poll::Ready(Ok(frame.take()));
        }
        for _ in 0..MAX_REFILLS {
            let polled = self.poll_ready_fn();
            let Source::Queue { queue, .. } = &self.source else {
                break;
            };
            match queue.poll_recv(cx, &self.config.heartbeat_comment, &mut frame) {
                Poll::Ready(Ok(taken)) => {
                    let woken = queue.ready_woken();
                    self.add_events(taken);
                    if frame.is_full() || !woken {
                        break;
                    }
                    if taken == 0 && polled {
                        // Polled, it queued nothing and woke itself at once: it
                        // yielded (or spent tokio's budget for this poll).
                        break;
                    }
                }
                Poll::Ready(Err(ended)) => return Poll::Ready(Err(ended)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if frame.is_empty() {
            // Let the connection's task yield; the wake-up brings it back.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Ok(frame.take()))
    }

    /// The first frame of an event; a split event's others go out next
    /// (joined into one frame when the stream is compressed).
    fn first_part(&mut self, encoded: Encoded) -> Bytes {
        #[cfg(feature = "compression")]
        if self.compressed.is_some() {
            return encoded.into_whole();
        }
        let (first, rest) = encoded.into_frames();
        if let Some(rest) = rest {
            self.extras.get_or_insert_with(Extras::empty).rest = rest.map(Some);
        }
        first
    }

    fn add_events(&mut self, taken: usize) {
        let taken = u32::try_from(taken).unwrap_or(u32::MAX);
        self.events += u64::from(taken);
        self.events_uncounted = self.events_uncounted.saturating_add(taken);
    }

    /// Counts `len` bytes handed to the connection (a frame, or nothing at
    /// the end) in the stats and metrics, with the events and drops since
    /// the last count.
    fn count_written(&mut self, len: u64) {
        let events = u64::from(std::mem::take(&mut self.events_uncounted));
        // Only dropping, sliding and conflating buffers drop (reading it takes the lock).
        let dropped = match &self.source {
            Source::Queue { queue, .. } if queue.policy() != Policy::Wait => {
                let dropped = queue.dropped();
                let new = dropped - self.dropped_counted;
                self.dropped_counted = dropped;
                new
            }
            _ => 0,
        };
        stats::frame_written(self.config.stats.as_ref(), events, len, dropped);
        self.metrics.written(events, len, dropped);
    }

    fn finish(&mut self, reason: DisconnectReason) {
        if self.phase == Phase::Finished {
            return;
        }
        self.phase = Phase::Finished;
        if let Source::Queue { queue, .. } = &self.source {
            queue.close_receiver();
        }
        self.stop_ready_fn();
        if let Source::Hub { subscription, .. } = &mut self.source {
            // Leaves the topics now, not when the body is dropped.
            subscription.close();
        }
        if let Some(extras) = &mut self.extras {
            extras.shutdown = None;
        }
        // What the last frame did not count (a fixed buffer never drops).
        self.count_written(0);
        stats::stream_closed(
            self.config.stats.as_ref(),
            reason == DisconnectReason::Stalled,
        );
        self.metrics.closed(reason);
        tracing::debug!(
            parent: self.span(),
            ?reason,
            events = self.events,
            bytes = self.bytes,
            dropped = self.dropped_counted,
            "stream closed"
        );
        if let (Some(callback), Some(ctx)) = (&self.config.on_disconnect, &self.ctx) {
            // The callback may run inside hyper's task or a `Drop`: never let it unwind there.
            if catch_unwind(AssertUnwindSafe(|| callback(ctx, reason))).is_err() {
                tracing::error!(parent: self.span(), "on_client_disconnect callback panicked");
            }
        }
        self.ctx = None;
    }
}

impl Body for EventStream {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let mut this = self.project();
        let state = &mut *this.state;
        if state.phase == Phase::Finished {
            return Poll::Ready(None);
        }
        state.start(this.timer.as_mut());
        let shutdown = state.extras.as_mut().and_then(|e| e.shutdown.as_mut());
        if let Some(shutdown) = shutdown {
            if shutdown.as_mut().poll(cx).is_ready() {
                // Accept nothing more; what is queued still goes out, then the shutdown event.
                if let Some(extras) = &mut state.extras {
                    extras.shutdown = None;
                }
                state.phase = Phase::ShuttingDown { event_sent: false };
                if let Source::Queue { queue, .. } = &state.source {
                    queue.close();
                }
                tracing::debug!(parent: state.span(), "server shutting down: ending the stream");
            }
        }
        if let Some(stall) = state.extras.as_mut().and_then(|e| e.stall.as_mut()) {
            match stall.poll_out(cx) {
                Out::Clear(None) => {}
                Out::Clear(Some(handed_at)) => {
                    // Written: the heartbeat counts its silence from the hand-over.
                    if let (Some(timer), Some(delay)) =
                        (this.timer.as_mut().as_pin_mut(), state.config.heartbeat())
                    {
                        timer.reset(handed_at + delay);
                    }
                }
                Out::Waiting(deadline) => {
                    // Nothing more until it is written: hyper's buffer never
                    // fills, so it polls again at the release or the deadline.
                    if let Some(mut timer) = this.timer.as_mut().as_pin_mut() {
                        timer.as_mut().reset(deadline);
                        if timer.poll(cx).is_ready() {
                            cx.waker().wake_by_ref();
                        }
                    }
                    return Poll::Pending;
                }
                Out::Stalled => {
                    let timeout = stall.timeout();
                    tracing::debug!(parent: state.span(), ?timeout, "client stalled: ending the stream");
                    state.finish(DisconnectReason::Stalled);
                    this.timer.set(None);
                    return Poll::Ready(Some(Err(StreamError::Stalled(timeout))));
                }
            }
        }
        // The rest of a split event, then the layer's `retry`, before anything else.
        let first = match state.extras.as_mut().and_then(|e| e.next_part()) {
            Some(part) => Some(part),
            None => std::mem::take(&mut state.first_pending)
                .then(|| state.config.first_frame.clone())
                .flatten(),
        };
        let bytes = match first {
            Some(bytes) => bytes,
            None => match state.poll_events(cx) {
                Poll::Ready(Ok(encoded)) => state.first_part(encoded),
                Poll::Ready(Err(ended)) => match (state.phase, &state.config.shutdown_event) {
                    (Phase::ShuttingDown { event_sent: false }, Some(event)) => {
                        state.phase = Phase::ShuttingDown { event_sent: true };
                        event.clone()
                    }
                    (phase, _) => {
                        state.finish(match ended {
                            _ if phase != Phase::Streaming => DisconnectReason::Shutdown,
                            Ended::Completed => DisconnectReason::Completed,
                            Ended::Panicked => DisconnectReason::Panicked,
                            Ended::Lagged => DisconnectReason::Lagged,
                        });
                        this.timer.set(None);
                        // A compressed stream's trailer goes out before the end.
                        #[cfg(feature = "compression")]
                        if let Some(trailer) = state.compressed.take().and_then(|c| c.finish()) {
                            return Poll::Ready(Some(Ok(Frame::data(trailer))));
                        }
                        return Poll::Ready(None);
                    }
                },
                Poll::Pending => match state.poll_heartbeat(this.timer.as_mut(), cx) {
                    Some(heartbeat) => heartbeat,
                    None => return Poll::Pending,
                },
            },
        };
        #[cfg(feature = "compression")]
        let bytes = match &mut state.compressed {
            Some(compressed) => match compressed.frame(&bytes) {
                Ok(bytes) => bytes,
                Err(err) => {
                    tracing::error!(parent: state.span(), %err, "compression failed: ending the stream");
                    state.finish(DisconnectReason::CompressionFailed);
                    this.timer.set(None);
                    return Poll::Ready(Some(Err(StreamError::Compression(err.to_string()))));
                }
            },
            None => bytes,
        };
        if let (Some(timer), Some(delay)) = (this.timer.as_pin_mut(), state.config.heartbeat()) {
            // A later deadline only updates the timer entry (no re-registration).
            timer.reset(Instant::now() + delay);
        }
        state.bytes += bytes.len() as u64;
        state.count_written(bytes.len() as u64);
        let bytes = match state.extras.as_mut().and_then(|e| e.stall.as_mut()) {
            Some(stall) => stall.hand_over(bytes),
            None => bytes,
        };
        Poll::Ready(Some(Ok(Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.state.phase == Phase::Finished
    }
}

impl fmt::Debug for EventStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStream")
            .field("ctx", &self.state.ctx)
            .field("heartbeat", &self.state.config.heartbeat)
            .field("finished", &(self.state.phase == Phase::Finished))
            .finish_non_exhaustive()
    }
}
