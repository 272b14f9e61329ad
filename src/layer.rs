//! The tower layer (Pedestal's `start-event-stream` interceptor).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

mod response_body;

pub use response_body::{BoxError, ResponseBody};

use crate::{
    Buffer, DisconnectReason, Event, EventSender, EventStream, SseStats, StreamContext,
    config::{DEFAULT_BUFFER, DEFAULT_HEARTBEAT, StreamConfig},
    context::last_event_id_from_query,
    hub::{HubSource, Refusal, Selected},
    response::{set_stream_headers, starts_stream},
};

/// A [`Layer`] that turns a handler's 2xx responses into event streams.
///
/// The inner service runs first. A response that is not 2xx (or is 204 or
/// 205) passes through untouched and no stream starts. A 2xx response keeps
/// its status and headers, gets `Content-Type: text/event-stream;
/// charset=UTF-8`, `Cache-Control: no-cache`, `X-Accel-Buffering: no` (and
/// `Connection: close` on HTTP/1.x), and its body becomes the stream.
///
/// Built by [`start_event_stream`](crate::start_event_stream) or [`SseLayer::new`] with Pedestal's
/// defaults (heartbeat 10 s, fixed buffer of 10).
#[derive(Clone)]
#[must_use = "an SseLayer does nothing until it wraps a service"]
pub struct SseLayer {
    config: Arc<StreamConfig>,
}

impl SseLayer {
    /// A layer calling `ready` for each stream, with a 10 s heartbeat and a
    /// fixed buffer of 10.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_sse::{Buffer, SseLayer};
    ///
    /// let layer = SseLayer::new(|events: tower_sse::EventSender, _ctx| async move {
    ///     let _ = events.send("hi").await;
    /// })
    /// .heartbeat(Duration::from_secs(15))
    /// .buffer(Buffer::sliding(100))
    /// .on_client_disconnect(|ctx, reason| tracing::info!(uri = %ctx.uri(), ?reason, "stream ended"));
    /// # let _ = layer;
    /// ```
    pub fn new<F, Fut>(ready: F) -> Self
    where
        F: Fn(EventSender, StreamContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut config = StreamConfig::new(ready, DEFAULT_HEARTBEAT, Buffer::fixed(DEFAULT_BUFFER));
        config.stats = Some(SseStats::default());
        Self {
            config: Arc::new(config),
        }
    }

    /// A layer serving a hub's streams (see [`Hub::layer`](crate::hub::Hub::layer)).
    pub(crate) fn for_hub(source: HubSource) -> Self {
        let mut layer = Self::new(|_events: EventSender, _ctx: StreamContext| async {});
        Arc::make_mut(&mut layer.config).hub = Some(source);
        layer
    }

    /// Sends a heartbeat comment after each `delay` of silence; `Duration::ZERO`
    /// turns heartbeats off.
    pub fn heartbeat(mut self, delay: Duration) -> Self {
        Arc::make_mut(&mut self.config).heartbeat = delay;
        self
    }

    /// Sets each stream's buffer (a number is a fixed buffer; see [`Buffer`]).
    pub fn buffer(mut self, buffer: impl Into<Buffer>) -> Self {
        Arc::make_mut(&mut self.config).buffer = buffer.into();
        self
    }

    /// Calls `f` once when each stream ends, with the request context and why
    /// it ended (Pedestal's `:on-client-disconnect`). A panic in `f` is
    /// caught and logged.
    pub fn on_client_disconnect<F>(mut self, f: F) -> Self
    where
        F: Fn(&StreamContext, DisconnectReason) + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).on_disconnect = Some(Arc::new(f));
        self
    }

    /// Keeps each request's headers in its stream's [`StreamContext`], for
    /// a ready function or disconnect callback that reads
    /// [`StreamContext::headers`] (a cookie, an `Authorization`). Without it a
    /// layer's context keeps, of the headers, `Last-Event-ID` alone: a copy
    /// of every header costs each stream a few hundred bytes for as long as
    /// the context lives (see [`StreamContext`]).
    ///
    /// ```
    /// use tower_sse::{EventSender, SseLayer, StreamContext};
    ///
    /// async fn ready(events: EventSender, ctx: StreamContext) {
    ///     let user = ctx.headers().get("x-user").and_then(|v| v.to_str().ok());
    ///     let _ = events.send(format!("hello {}", user.unwrap_or("guest"))).await;
    /// }
    ///
    /// let layer = SseLayer::new(ready).keep_headers();
    /// # let _ = layer;
    /// ```
    pub fn keep_headers(mut self) -> Self {
        Arc::make_mut(&mut self.config).keep.headers = true;
        self
    }

    /// Keeps each request's extensions in its stream's [`StreamContext`],
    /// for a ready function or disconnect callback that reads
    /// [`StreamContext::extensions`] (what an authentication layer inserted,
    /// axum's `MatchedPath`). Without it a layer's context has none: a copy
    /// of them costs each stream about 500 bytes behind axum's router.
    ///
    /// ```
    /// use tower_sse::{EventSender, SseLayer, StreamContext};
    ///
    /// #[derive(Clone)]
    /// struct User(String);
    ///
    /// async fn ready(events: EventSender, ctx: StreamContext) {
    ///     if let Some(User(name)) = ctx.extensions().get::<User>() {
    ///         let _ = events.send(format!("hello {name}")).await;
    ///     }
    /// }
    ///
    /// let layer = SseLayer::new(ready).keep_extensions();
    /// # let _ = layer;
    /// ```
    pub fn keep_extensions(mut self) -> Self {
        Arc::make_mut(&mut self.config).keep.extensions = true;
        self
    }

    /// Ends every stream of this layer when `token` is cancelled, so that
    /// `axum::serve(..).with_graceful_shutdown(..)` can complete.
    ///
    /// On cancellation each stream stops accepting events (senders get
    /// `Closed`), writes what is already queued and then the
    /// [`shutdown_event`](Self::shutdown_event) if one is set, and ends
    /// cleanly; the disconnect callback gets [`DisconnectReason::Shutdown`].
    ///
    /// ```no_run
    /// use axum::{Router, routing::get};
    /// use tower_sse::{CancellationToken, Event, SseLayer};
    /// use std::time::Duration;
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let shutdown = CancellationToken::new();
    /// let layer = SseLayer::new(|events: tower_sse::EventSender, _ctx| async move {
    ///     let _ = events.send("hello").await;
    ///     events.closed().await;
    /// })
    /// .shutdown_on(shutdown.clone())
    /// // Ask browsers to come back in 5 s (to another instance, say).
    /// .shutdown_event(Event::default().retry(Duration::from_secs(5)));
    ///
    /// let app = Router::new().route("/events", get(|| async {}).layer(layer));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// let stop = shutdown.clone();
    /// tokio::spawn(async move {
    ///     let _ = tokio::signal::ctrl_c().await;
    ///     stop.cancel();
    /// });
    /// axum::serve(listener, app)
    ///     .with_graceful_shutdown(shutdown.cancelled_owned())
    ///     .await
    /// # }
    /// ```
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        Arc::make_mut(&mut self.config).shutdown = Some(token);
        self
    }

    /// The last event each stream writes when the server shuts down (for
    /// example a `retry` hint). An invalid event is logged and not sent.
    pub fn shutdown_event(mut self, event: Event) -> Self {
        Arc::make_mut(&mut self.config).set_shutdown_event(event);
        self
    }

    /// Runs each stream's ready function as a task of its own
    /// (`tokio::spawn`) feeding the bounded buffer, as Pedestal's
    /// `go` block does, instead of polling it from the response body.
    ///
    /// Dropping and sliding buffers always run it so. With a fixed buffer
    /// the body polls it by default, which is faster (no task, full frames;
    /// BENCHMARKS.md has the figures) but ties it to the connection: it runs
    /// only while the connection asks for data, and while it runs (CPU work
    /// between two `.await`s) the body writes nothing, heartbeats included.
    /// Spawned, it goes on while the client is slow (until the buffer is
    /// full), and heartbeats never wait for it. Everything else is the same:
    /// it is aborted when the stream ends, and a panic in it ends the stream
    /// with [`DisconnectReason::Panicked`].
    ///
    /// ```
    /// use tower_sse::{EventSender, SseLayer, StreamContext};
    ///
    /// let layer = SseLayer::new(|events: EventSender, _ctx: StreamContext| async move {
    ///     let report = tokio::task::block_in_place(|| "a long computation".to_owned());
    ///     let _ = events.send(report).await;
    /// })
    /// .spawn_ready();
    /// # let _ = layer;
    /// ```
    pub fn spawn_ready(mut self) -> Self {
        Arc::make_mut(&mut self.config).spawn_ready = true;
        self
    }

    /// Ends a stream whose client stays connected but stops reading: when a
    /// frame handed to the connection is not written for `timeout`, the
    /// body fails with [`StreamError::Stalled`](crate::StreamError), hyper
    /// closes the connection (HTTP/1) or resets the stream (HTTP/2), and the
    /// disconnect callback gets [`DisconnectReason::Stalled`]. An
    /// `EventSource` then reconnects (and, with a [`Hub`](crate::hub::Hub),
    /// resumes from history). Off by default; `Duration::ZERO` turns it off.
    ///
    /// With a stall timeout the body hands the connection one frame at a
    /// time, each frame tracked until hyper has written it (a wake-up per
    /// frame), so that hyper never stops polling the body; frames still
    /// gather up to 64 KiB. "Written" means accepted by the socket: a client
    /// that stops reading is noticed once the kernel's buffers are full
    /// (a few hundred KiB to a few MiB), then within `timeout`. A graceful
    /// shutdown no longer waits for such a client: its stream ends within
    /// `timeout` of the signal.
    ///
    /// What it cannot see, because hyper then stops polling the body:
    /// - on HTTP/2, a stream whose next frame hyper holds back for want of
    ///   flow-control room, which happens when the client stops granting
    ///   room just as the stream's previous frame was written. With one
    ///   stream per connection that is rare; on a connection shared by
    ///   several streams whose client stops reading, about half of them
    ///   were left open in a test (the others were evicted);
    /// - on HTTP/1, a connection whose IO does not do vectored writes (some
    ///   TLS wrappers): hyper copies each frame into its own buffer, so a
    ///   frame counts as written before it reaches the socket. A plain
    ///   `TcpStream` (what `axum::serve` uses) does vectored writes.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_sse::SseLayer;
    ///
    /// let layer = SseLayer::new(|events: tower_sse::EventSender, _ctx| async move {
    ///     let _ = events.send("hi").await;
    /// })
    /// .heartbeat(Duration::from_secs(15))
    /// .stall_timeout(Duration::from_secs(30));
    /// # let _ = layer;
    /// ```
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.config).stall_timeout = Some(timeout).filter(|d| !d.is_zero());
        self
    }

    /// Whether an HTTP/1.x stream's response says `Connection: close`: yes
    /// by default, as Pedestal's does.
    ///
    /// With `Connection: close` the server closes the TCP connection when
    /// the stream ends, so the browser's reconnect opens a new one (a new
    /// TLS handshake too), and nothing can reuse a connection whose last
    /// response was cut short. `connection_close(false)` leaves the header
    /// out: a stream that ends cleanly (its chunked body finished) leaves
    /// the connection open for the next request, the reconnect included,
    /// which saves a handshake per reconnect; a stream cut short (the
    /// client went away, a stall) still ends its connection. HTTP/2 never
    /// sends the header.
    ///
    /// ```
    /// let layer = tower_sse::SseLayer::new(|_events, _ctx| async {}).connection_close(false);
    /// # let _ = layer;
    /// ```
    pub fn connection_close(mut self, close: bool) -> Self {
        Arc::make_mut(&mut self.config).connection_close = close;
        self
    }

    /// Reads `Last-Event-ID` from the query parameter `name` when the
    /// request has no such header (the header wins when both are there), as
    /// Mercure's `lastEventID`: the first page load can resume, where
    /// `EventSource` cannot send the header.
    ///
    /// The layer copies the (percent-decoded) value into the request's
    /// `Last-Event-ID` header before anything else sees the request, so the
    /// handler, [`StreamContext::last_event_id`], the [`LastEventId`]
    /// extractor and a hub's resume all read it. A value that cannot be a
    /// header (a line break, invalid UTF-8) is ignored, as if it were absent.
    ///
    /// ```
    /// // new EventSource("/events?lastEventID=" + encodeURIComponent(saved))
    /// let layer = tower_sse::SseLayer::new(|_events, _ctx| async {})
    ///     .last_event_id_query("lastEventID");
    /// # let _ = layer;
    /// ```
    ///
    /// [`LastEventId`]: crate::LastEventId
    pub fn last_event_id_query(mut self, name: &str) -> Self {
        Arc::make_mut(&mut self.config).last_event_id_query = Some(name.into());
        self
    }

    /// The text of each heartbeat comment: `: ping` for `"ping"`, instead of
    /// Pedestal's empty `: ` (the default), for proxies and clients that look
    /// for one. `EventSource` ignores comments either way; a line break in
    /// `text` makes several comment lines.
    ///
    /// ```
    /// let layer = tower_sse::SseLayer::new(|_events, _ctx| async {}).heartbeat_comment("ping");
    /// # let _ = layer;
    /// ```
    pub fn heartbeat_comment(mut self, text: &str) -> Self {
        Arc::make_mut(&mut self.config).set_heartbeat_comment(text);
        self
    }

    /// Sends `retry: delay` (whole milliseconds) at the start of every
    /// stream, before its first event: how long a browser waits before it
    /// reconnects. Without it, browsers use their own delay (about 3 s)
    /// unless an event sets one.
    ///
    /// ```
    /// use std::time::Duration;
    /// let layer = tower_sse::SseLayer::new(|_events, _ctx| async {}).retry(Duration::from_secs(5));
    /// # let _ = layer;
    /// ```
    pub fn retry(mut self, delay: Duration) -> Self {
        Arc::make_mut(&mut self.config).set_retry(delay);
        self
    }

    /// Names the layer: the `layer` label of its streams' metrics (feature
    /// `metrics`; see the table in the crate docs) and a field of their
    /// tracing spans.
    ///
    /// ```
    /// let layer = tower_sse::SseLayer::new(|_events, _ctx| async {}).name("prices");
    /// # let _ = layer;
    /// ```
    pub fn name(mut self, name: &str) -> Self {
        Arc::make_mut(&mut self.config).name = Some(name.into());
        self
    }

    /// Compresses each stream whose request accepts one of `compression`'s
    /// encodings (negotiated from `Accept-Encoding`; see [`Compression`]):
    /// every frame, heartbeats included, goes through the stream's
    /// compressor and is flushed, so each event is decodable as soon as it
    /// is written. Off by default.
    ///
    /// Each compressed stream keeps its compressor's window and tables while
    /// it lives: tens to hundreds of KiB (the table is in [`Compression`]'s
    /// module docs and BENCHMARKS.md). The counters and metrics count the
    /// compressed bytes.
    ///
    /// ```
    /// use tower_sse::{Compression, SseLayer};
    ///
    /// let layer = SseLayer::new(|events: tower_sse::EventSender, _ctx| async move {
    ///     let _ = events.send(r#"{"symbol":"ACME","price":101.5}"#).await;
    /// })
    /// .compression(Compression::default());
    /// # let _ = layer;
    /// ```
    ///
    /// [`Compression`]: crate::Compression
    #[cfg(feature = "compression")]
    #[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
    pub fn compression(mut self, compression: crate::Compression) -> Self {
        let config = Arc::make_mut(&mut self.config);
        config.compression = Some(compression);
        // The stream negotiates from it (a lean context keeps it too).
        config.keep.accept_encoding = true;
        self
    }

    /// The counters of this layer's streams (shared by its clones).
    pub fn stats(&self) -> SseStats {
        self.config.stats.clone().unwrap_or_default()
    }
}

impl fmt::Debug for SseLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Layer<S> for SseLayer {
    type Service = SseService<S>;

    fn layer(&self, inner: S) -> SseService<S> {
        SseService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service built by [`SseLayer`].
#[derive(Clone)]
pub struct SseService<S> {
    inner: S,
    config: Arc<StreamConfig>,
}

impl<S: fmt::Debug> fmt::Debug for SseService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseService")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SseService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        if let Some(name) = &self.config.last_event_id_query {
            last_event_id_from_query(&mut request, name);
        }
        let ctx = StreamContext::kept(&request, self.config.keep);
        let selected = match &self.config.hub {
            None => None,
            Some(source) => {
                let (parts, body) = request.into_parts();
                match source.select(&parts) {
                    Ok(selected) => {
                        let request = Request::from_parts(parts, body);
                        return ResponseFuture {
                            kind: FutureKind::Inner {
                                inner: self.inner.call(request),
                            },
                            stream: Some((self.config.clone(), ctx, Some(selected))),
                        };
                    }
                    Err(refusal) => {
                        return ResponseFuture {
                            kind: FutureKind::Refused {
                                refusal: Some(refusal),
                            },
                            stream: None,
                        };
                    }
                }
            }
        };
        ResponseFuture {
            kind: FutureKind::Inner {
                inner: self.inner.call(request),
            },
            stream: Some((self.config.clone(), ctx, selected)),
        }
    }
}

pin_project! {
    /// The response future of [`SseService`].
    pub struct ResponseFuture<F> {
        #[pin]
        kind: FutureKind<F>,
        stream: Option<(Arc<StreamConfig>, StreamContext, Option<Selected>)>,
    }
}

pin_project! {
    #[project = FutureKindProj]
    enum FutureKind<F> {
        Inner { #[pin] inner: F },
        /// A hub layer refused the request: the handler is not called.
        Refused { refusal: Option<Refusal> },
    }
}

impl<F: fmt::Debug> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("ResponseFuture");
        if let FutureKind::Inner { inner } = &self.kind {
            debug.field("inner", inner);
        }
        debug.finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = match this.kind.project() {
            FutureKindProj::Inner { inner } => ready!(inner.poll(cx))?,
            FutureKindProj::Refused { refusal } => {
                let refusal = refusal
                    .take()
                    .unwrap_or_else(|| Refusal::from(http::StatusCode::INTERNAL_SERVER_ERROR));
                return Poll::Ready(Ok(refusal.into_response().map(ResponseBody::full)));
            }
        };
        let Some((config, ctx, selected)) = this.stream.take() else {
            // Polled again after completion: a caller bug; answer as if passed through.
            return Poll::Ready(Ok(response.map(ResponseBody::passthrough)));
        };
        if !starts_stream(response.status()) {
            return Poll::Ready(Ok(response.map(ResponseBody::passthrough)));
        }
        // A HEAD request opens no stream, and so takes no place in the hub.
        let subscription = match (&config.hub, selected) {
            (Some(source), Some(selected)) if ctx.method() != http::Method::HEAD => {
                match source.subscribe(selected) {
                    Ok(subscription) => Some(subscription),
                    Err(refusal) => {
                        return Poll::Ready(Ok(refusal.into_response().map(ResponseBody::full)));
                    }
                }
            }
            _ => None,
        };
        let (mut parts, _handler_body) = response.into_parts();
        set_stream_headers(&mut parts.headers, ctx.version(), config.connection_close);
        #[cfg(feature = "compression")]
        let compressing = config.clone();
        let stream = EventStream::new(config, ctx, subscription);
        #[cfg(feature = "compression")]
        crate::compression::set_headers(
            &mut parts.headers,
            &compressing,
            stream.content_encoding(),
        );
        Poll::Ready(Ok(Response::from_parts(
            parts,
            ResponseBody::stream(stream),
        )))
    }
}
