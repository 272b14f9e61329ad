//! The event-stream response: its headers, and [`start_stream`] with its
//! [`SseResponse`], for streams started from inside a handler (Pedestal's
//! `start-stream`).

use std::{fmt, future::Future, sync::Arc, time::Duration};

use http::{
    HeaderMap, HeaderValue, StatusCode, Version,
    header::{CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE},
};
use tokio_util::sync::CancellationToken;

use crate::{
    Buffer, DisconnectReason, Event, EventSender, EventStream, StreamContext,
    config::{DEFAULT_HEARTBEAT, StreamConfig},
    hub::Subscription,
    stats::SseStats,
};

/// Whether a wrapped handler's status starts a stream: any 2xx but 204 and
/// 205, which tell a client there is no body (204 also stops `EventSource`
/// from reconnecting).
pub(crate) fn starts_stream(status: StatusCode) -> bool {
    status.is_success() && status != StatusCode::NO_CONTENT && status != StatusCode::RESET_CONTENT
}

/// Sets the headers of an event-stream response, keeping every other header.
pub(crate) fn set_stream_headers(headers: &mut HeaderMap, version: Version, close: bool) {
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=UTF-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    headers.remove(CONTENT_LENGTH);
    // Pedestal closes HTTP/1 connections after the stream (unless turned
    // off); HTTP/2 forbids the header.
    if version > Version::HTTP_11 {
        headers.remove(CONNECTION);
    } else if close {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Starts an event stream from inside an ordinary handler, like Pedestal's
/// `start-stream`: the handler decides (authentication, validation, which
/// ready function) and returns the stream as its response.
///
/// `ready` is called once, concurrently with the stream, with the stream's
/// [`EventSender`] and `ctx` (polled by the body with a fixed buffer, as a
/// task of its own otherwise: see [`EventStream`]). A heartbeat comment goes out after each
/// `heartbeat` of silence (`Duration::ZERO` turns heartbeats off).
///
/// ```no_run
/// use std::time::Duration;
/// use axum::{Router, routing::get, response::IntoResponse};
/// use tower_sse::{EventSender, StreamContext, start_stream};
///
/// async fn ready(events: EventSender, _ctx: StreamContext) {
///     let _ = events.send("hello").await;
/// }
///
/// async fn handler(ctx: StreamContext) -> impl IntoResponse {
///     start_stream(ready, ctx, Duration::from_secs(10), 10)
///         .on_client_disconnect(|_ctx, reason| tracing::info!(?reason, "gone"))
/// }
///
/// let app: Router = Router::new().route("/events", get(handler));
/// ```
pub fn start_stream<F, Fut>(
    ready: F,
    ctx: StreamContext,
    heartbeat: Duration,
    buffer: impl Into<Buffer>,
) -> SseResponse
where
    F: Fn(EventSender, StreamContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    SseResponse {
        config: StreamConfig::new(ready, heartbeat, buffer.into()),
        ctx,
        subscription: None,
    }
}

/// An event-stream response from [`start_stream`]; with the `axum` feature (a
/// default), axum's `IntoResponse`; [`into_http`](SseResponse::into_http)
/// gives a plain `http::Response`.
#[must_use = "an SseResponse does nothing until it is returned as a response"]
pub struct SseResponse {
    config: StreamConfig,
    ctx: StreamContext,
    /// A hub stream's place in its topics ([`Hub::stream`](crate::hub::Hub::stream)).
    subscription: Option<Subscription>,
}

impl fmt::Debug for SseResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseResponse")
            .field("config", &self.config)
            .field("ctx", &self.ctx)
            .field("hub", &self.subscription.is_some())
            .finish()
    }
}

impl SseResponse {
    /// A hub stream's response (see [`Hub::stream`](crate::hub::Hub::stream)).
    pub(crate) fn for_subscription(ctx: StreamContext, subscription: Option<Subscription>) -> Self {
        let ready = |_events: EventSender, _ctx: StreamContext| async {};
        Self {
            config: StreamConfig::new(ready, DEFAULT_HEARTBEAT, Buffer::fixed(1)),
            ctx,
            subscription,
        }
    }

    /// Sends a heartbeat comment after each `delay` of silence;
    /// `Duration::ZERO` turns heartbeats off.
    pub fn heartbeat(mut self, delay: Duration) -> Self {
        self.config.heartbeat = delay;
        self
    }

    /// Calls `f` once when the stream ends, with the request context and why
    /// it ended (Pedestal's `:on-client-disconnect`). A panic in `f` is caught
    /// and logged.
    pub fn on_client_disconnect<F>(mut self, f: F) -> Self
    where
        F: Fn(&StreamContext, DisconnectReason) + Send + Sync + 'static,
    {
        self.config.on_disconnect = Some(Arc::new(f));
        self
    }

    /// Ends the stream when `token` is cancelled, as [`SseLayer::shutdown_on`](crate::SseLayer::shutdown_on) does.
    pub fn shutdown_on(mut self, token: CancellationToken) -> Self {
        self.config.shutdown = Some(token);
        self
    }

    /// The last event written when the server shuts down, as
    /// [`SseLayer::shutdown_event`](crate::SseLayer::shutdown_event) does.
    pub fn shutdown_event(mut self, event: Event) -> Self {
        self.config.set_shutdown_event(event);
        self
    }

    /// Runs the ready function as a task of its own, as
    /// [`SseLayer::spawn_ready`](crate::SseLayer::spawn_ready) does.
    pub fn spawn_ready(mut self) -> Self {
        self.config.spawn_ready = true;
        self
    }

    /// Ends the stream when the client stops reading, as
    /// [`SseLayer::stall_timeout`](crate::SseLayer::stall_timeout) does.
    pub fn stall_timeout(mut self, timeout: Duration) -> Self {
        self.config.stall_timeout = Some(timeout).filter(|d| !d.is_zero());
        self
    }

    /// Whether an HTTP/1.x response says `Connection: close`, as
    /// [`SseLayer::connection_close`](crate::SseLayer::connection_close) does.
    pub fn connection_close(mut self, close: bool) -> Self {
        self.config.connection_close = close;
        self
    }

    /// The text of each heartbeat comment, as
    /// [`SseLayer::heartbeat_comment`](crate::SseLayer::heartbeat_comment) does.
    pub fn heartbeat_comment(mut self, text: &str) -> Self {
        self.config.set_heartbeat_comment(text);
        self
    }

    /// Sends `retry: delay` before the first event, as
    /// [`SseLayer::retry`](crate::SseLayer::retry) does.
    pub fn retry(mut self, delay: Duration) -> Self {
        self.config.set_retry(delay);
        self
    }

    /// Names the stream's metrics (their `layer` label), as
    /// [`SseLayer::name`](crate::SseLayer::name) does.
    pub fn name(mut self, name: &str) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// Compresses the stream if the request accepts one of `compression`'s
    /// encodings, as [`SseLayer::compression`](crate::SseLayer::compression) does.
    #[cfg(feature = "compression")]
    #[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
    pub fn compression(mut self, compression: crate::Compression) -> Self {
        self.config.compression = Some(compression);
        self
    }

    /// Counts this stream in `stats` (for example a layer's, or one shared by handlers).
    pub fn stats(mut self, stats: &SseStats) -> Self {
        self.config.stats = Some(stats.clone());
        self
    }

    /// The response as a plain `http::Response`, for servers other than axum.
    pub fn into_http(self) -> http::Response<EventStream> {
        let version = self.ctx.version();
        let close = self.config.connection_close;
        let config = Arc::new(self.config);
        let mut response = http::Response::new(EventStream::new(
            config.clone(),
            self.ctx,
            self.subscription,
        ));
        set_stream_headers(response.headers_mut(), version, close);
        #[cfg(feature = "compression")]
        {
            let encoding = response.body().content_encoding();
            crate::compression::set_headers(response.headers_mut(), &config, encoding);
        }
        response
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for SseResponse {
    fn into_response(self) -> axum::response::Response {
        self.into_http().map(axum::body::Body::new)
    }
}
