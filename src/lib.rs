//! Server-Sent Events for axum and any tower HTTP server: a port of Clojure
//! Pedestal's `io.pedestal.http.sse`.
//!
//! A [`SseLayer`] wraps a handler. When the handler answers 2xx, the response
//! becomes an event stream and the application's *ready function* is called
//! with an [`EventSender`]; events it sends are encoded, buffered, and written
//! to the client, with a heartbeat comment in every silence. The stream ends
//! when every sender is dropped or the client goes away; then the
//! on-disconnect callback fires once.
//!
//! # Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_sse::{Event, EventSender, StreamContext, start_event_stream};
//!
//! async fn ready(events: EventSender, _ctx: StreamContext) {
//!     for i in 0..10 {
//!         if events.send(Event::new(i.to_string()).name("counter")).await.is_err() {
//!             return; // the client went away
//!         }
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let app = Router::new().route(
//!     "/counter",
//!     get(|| async {}).layer(start_event_stream(ready, Duration::from_secs(10), 10)),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! # From Pedestal
//!
//! | Pedestal | tower-sse |
//! |---|---|
//! | `CRLF`, `EVENT_FIELD`, `DATA_FIELD`, `ID_FIELD`, `COMMENT_FIELD` | [`CRLF`], [`EVENT_FIELD`], [`DATA_FIELD`], [`ID_FIELD`], [`COMMENT_FIELD`] |
//! | `get-bytes` | [`get_bytes`] |
//! | `mk-data` | [`mk_data`], [`Event::encode`] |
//! | `send-event` | [`send_event`], [`EventSender::send`], [`EventSender::try_send`], [`EventSender::blocking_send`] |
//! | `do-heartbeat` | [`do_heartbeat`] |
//! | `start-event-stream` | [`start_event_stream`], [`SseLayer`] |
//! | `start-stream` | [`start_stream`] |
//! | `:on-client-disconnect` | [`SseLayer::on_client_disconnect`] |
//! | `bufferfn-or-n` | [`Buffer`] |
//! | `end-event-stream`, `sse-setup` | deprecated [`end_event_stream`], [`sse_setup`] |
//! | active-streams gauge | [`active_streams`], [`SseStats`] |
//!
//! # Beyond Pedestal
//!
//! - [`SseLayer::shutdown_on`]: end every stream cleanly on server shutdown.
//! - [`SseLayer::stall_timeout`]: evict a client that stays connected but
//!   stops reading ([`DisconnectReason::Stalled`]), on HTTP/1.1 and HTTP/2.
//! - [`SseLayer::spawn_ready`]: run the ready function as a task of its own
//!   (Pedestal's shape), so that heartbeats never wait for its CPU work.
//! - [`Hub`]: publish once to a topic, fan out to every subscribed stream,
//!   and resume reconnecting clients from history with `Last-Event-ID`
//!   ([`LastEventId`] extractor). [`Hub::layer`] and [`Hub::stream`] serve
//!   hub streams straight from the response body, topics chosen (or
//!   refused, [`Refusal`]) per request; a snapshot function can replace
//!   every gap ([`HubBuilder::snapshot`]); topics go when nothing holds them.
//!   With the `redis` feature, on Redis Streams across machines
//!   ([`HubBuilder::build_redis`](crate::HubBuilder)), in one id order.
//! - [`EventStream`]: the body alone, for hyper or any tower server. With a
//!   fixed buffer it polls the ready function itself (no task per stream)
//!   and gathers what it sends into full frames, so even Pedestal's buffer
//!   of 10 makes 64 KiB writes (BENCHMARKS.md has the figures).
//!
//! # Wire format
//!
//! Each event is encoded once, whole, with CRLF line ends as in Pedestal.
//! Data is split on CRLF, LF and lone CR, so any string arrives intact (CR
//! and CRLF as LF); a name or id that cannot be written on one line is an
//! [`EventError`], never a panic or a corrupted stream.
#![deny(missing_docs, unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(rust_2018_idioms, clippy::all)]

mod body;
mod buffer;
mod context;
mod event;
mod frame;
mod hub;
mod layer;
mod queue;
mod sender;
mod stall;
mod stats;
mod stream;
mod sync;

pub use body::{DisconnectReason, EventStream, StreamError};
pub use buffer::Buffer;
pub use context::{LAST_EVENT_ID, LastEventId, StreamContext};
pub use event::{
    COMMENT_FIELD, CRLF, DATA_FIELD, EVENT_FIELD, Event, EventError, ID_FIELD, RETRY_FIELD,
    get_bytes, mk_data,
};
pub use hub::{
    Hub, HubBuilder, LAGGED_EVENT, LagPolicy, MAX_LAST_EVENT_ID_LEN, PublishError, RESET_EVENT,
    Refusal,
};
#[allow(deprecated)]
pub use layer::{
    BoxError, ResponseBody, ResponseFuture, SseLayer, SseService, end_event_stream, sse_setup,
    start_event_stream,
};
pub use sender::{EventSender, SendError, TrySendError, do_heartbeat, send_event};
pub use stats::{SseStats, active_streams};
pub use stream::{DEFAULT_BUFFER, DEFAULT_HEARTBEAT, SseResponse, start_stream};
/// The shutdown signal taken by [`SseLayer::shutdown_on`] (re-exported from `tokio-util`).
///
/// A pre-1.0 crate's type in this crate's API, kept on purpose: it is the
/// token tokio's own documentation uses for graceful shutdown, the one an
/// axum application already hands to `with_graceful_shutdown`
/// (`token.cancelled_owned()`), and the re-export spares a dependency line
/// that must match ours. A `tokio-util` 0.8 would mean a breaking release
/// of this crate (its semver is tied to tokio-util's 0.7).
pub use tokio_util::sync::CancellationToken;
