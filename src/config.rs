//! What a stream is built from: the ready function, the heartbeat, the
//! buffer and the rest of a layer's (or a response's) settings, shared by
//! every stream the layer starts.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::{
    Buffer, DisconnectReason, Event, EventSender, StreamContext,
    context::Keep,
    event::{HEARTBEAT, comment_lines},
    hub::HubSource,
    stats::SseStats,
};

pub(crate) type ReadyFn =
    Arc<dyn Fn(EventSender, StreamContext) -> BoxFuture<'static, ()> + Send + Sync>;
pub(crate) type DisconnectFn = Arc<dyn Fn(&StreamContext, DisconnectReason) + Send + Sync>;

/// Pedestal's default heartbeat delay.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Pedestal's default buffer size.
pub const DEFAULT_BUFFER: usize = 10;

/// Everything a new stream is built from.
#[derive(Clone)]
pub(crate) struct StreamConfig {
    pub(crate) ready: ReadyFn,
    pub(crate) heartbeat: Duration,
    pub(crate) buffer: Buffer,
    pub(crate) on_disconnect: Option<DisconnectFn>,
    pub(crate) shutdown: Option<CancellationToken>,
    pub(crate) shutdown_event: Option<Bytes>,
    pub(crate) stats: Option<SseStats>,
    /// Run the ready function as a task of its own, whatever the buffer.
    pub(crate) spawn_ready: bool,
    pub(crate) stall_timeout: Option<Duration>,
    /// Streams read a hub's topics instead of calling `ready`.
    pub(crate) hub: Option<HubSource>,
    /// `Connection: close` on HTTP/1.x responses (Pedestal's default).
    pub(crate) connection_close: bool,
    /// The query parameter read as `Last-Event-ID` when the header is absent.
    pub(crate) last_event_id_query: Option<Arc<str>>,
    /// The `layer` label of the streams' metrics.
    pub(crate) name: Option<Arc<str>>,
    /// The comment written as a heartbeat (Pedestal's `: `).
    pub(crate) heartbeat_comment: Bytes,
    /// Written before the first event: a `retry` field, if set.
    pub(crate) first_frame: Option<Bytes>,
    /// What a layer's stream contexts keep of the request.
    pub(crate) keep: Keep,
    /// Compress streams whose request accepts an enabled encoding.
    #[cfg(feature = "compression")]
    pub(crate) compression: Option<crate::Compression>,
}

impl StreamConfig {
    pub(crate) fn new<F, Fut>(ready: F, heartbeat: Duration, buffer: Buffer) -> Self
    where
        F: Fn(EventSender, StreamContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self {
            ready: Arc::new(move |events, ctx| Box::pin(ready(events, ctx))),
            heartbeat,
            buffer,
            on_disconnect: None,
            shutdown: None,
            shutdown_event: None,
            stats: None,
            spawn_ready: false,
            stall_timeout: None,
            hub: None,
            connection_close: true,
            last_event_id_query: None,
            name: None,
            heartbeat_comment: Bytes::from_static(HEARTBEAT),
            first_frame: None,
            keep: Keep::default(),
            #[cfg(feature = "compression")]
            compression: None,
        }
    }

    /// The heartbeat delay, unless heartbeats are off.
    pub(crate) fn heartbeat(&self) -> Option<Duration> {
        Some(self.heartbeat).filter(|delay| !delay.is_zero())
    }

    /// A heartbeat of comment lines `: {line}`, one per line of `text`.
    pub(crate) fn set_heartbeat_comment(&mut self, text: &str) {
        self.heartbeat_comment = comment_lines(text);
    }

    /// Sends `retry: delay` before the first event of every stream.
    pub(crate) fn set_retry(&mut self, delay: Duration) {
        self.first_frame = Event::default().retry(delay).encode().ok();
    }

    pub(crate) fn set_shutdown_event(&mut self, event: Event) {
        match event.encode() {
            Ok(bytes) => self.shutdown_event = Some(bytes),
            Err(err) => tracing::error!(%err, "invalid shutdown event: none will be sent"),
        }
    }
}

impl fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConfig")
            .field("heartbeat", &self.heartbeat)
            .field("buffer", &self.buffer)
            .field("on_disconnect", &self.on_disconnect.is_some())
            .field("spawn_ready", &self.spawn_ready)
            .field("stall_timeout", &self.stall_timeout)
            .field("connection_close", &self.connection_close)
            .field("last_event_id_query", &self.last_event_id_query)
            .field("name", &self.name)
            .field("keep", &self.keep)
            .finish_non_exhaustive()
    }
}
