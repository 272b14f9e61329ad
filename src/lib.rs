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
//! use tower_sse::{Event, EventSender, SseLayer, StreamContext, start_event_stream};
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
//! let app = Router::new()
//!     // The builder: every setting has a method.
//!     .route(
//!         "/counter",
//!         get(|| async {}).layer(SseLayer::new(ready).heartbeat(Duration::from_secs(10)).buffer(10)),
//!     )
//!     // Pedestal's call, the same layer.
//!     .route(
//!         "/pedestal",
//!         get(|| async {}).layer(start_event_stream(ready, Duration::from_secs(10), 10)),
//!     );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await
//! # }
//! ```
//!
//! # Where things are
//!
//! - The crate root: what a handler or a router names — [`SseLayer`],
//!   [`Event`], [`EventSender`], [`Buffer`], [`StreamContext`],
//!   [`LastEventId`], [`start_stream`] and [`SseResponse`], [`EventStream`]
//!   (the body alone), [`DisconnectReason`], [`SseStats`], and the errors.
//! - [`hub`]: publish once to a topic, fan out to every subscribed stream,
//!   resume from history with `Last-Event-ID`; in memory, or with the
//!   `redis` feature on Redis Streams across machines.
//! - [`pedestal`]: the port's names (`CRLF`, `mk_data`, `send_event`,
//!   `do_heartbeat`, …) with a table from Pedestal 0.7 to this crate.
//!   [`start_event_stream`], the mission's call, is also at the root.
//!
//! # Features
//!
//! - `axum` (default): [`SseResponse`], [`hub::Refusal`] as axum responses
//!   and [`StreamContext`], [`LastEventId`] as extractors. Without it, the
//!   layer, the body and the hub work on any tower HTTP service (hyper
//!   alone: `examples/hyper.rs`).
//! - `json`: [`Event::json`].
//! - `redis`: the hub on Redis Streams.
//! - `testing`: [`testing`], a kit that drives a service in-process and
//!   reads its stream as a browser would.
//! - `metrics`: live series through the `metrics` facade (the table is in
//!   `src/telemetry.rs` and the README); [`SseLayer::name`] labels them.
//! - `gzip`, `deflate`, `br`, `zstd` (each enables `compression`):
//!   compressed streams, negotiated per request from `Accept-Encoding`
//!   and flushed at every frame (`SseLayer::compression`).
//!
//! # Beyond Pedestal
//!
//! - [`SseLayer::shutdown_on`]: end every stream cleanly on server shutdown.
//! - [`SseLayer::stall_timeout`]: evict a client that stays connected but
//!   stops reading ([`DisconnectReason::Stalled`]), on HTTP/1.1 and HTTP/2.
//! - [`SseLayer::spawn_ready`]: run the ready function as a task of its own
//!   (Pedestal's shape), so that heartbeats never wait for its CPU work.
//! - [`hub::Hub`]: [`Hub::layer`](hub::Hub::layer) and
//!   [`Hub::stream`](hub::Hub::stream) serve hub streams straight from the
//!   response body, topics chosen (or refused) per request; a snapshot
//!   function can replace every gap; topics go when nothing holds them.
//! - [`EventStream`]: with a fixed buffer it polls the ready function itself
//!   (no task per stream) and gathers what it sends into full frames, so
//!   even Pedestal's buffer of 10 makes 64 KiB writes (BENCHMARKS.md has the
//!   figures).
//!
//! # Wire format
//!
//! Each event is encoded once, whole, with CRLF line ends as in Pedestal.
//! Data is split on CRLF, LF and lone CR, so any string arrives intact (CR
//! and CRLF as LF); a name or id that cannot be written on one line is an
//! [`EventError`], never a panic or a corrupted stream.
//!
//! # Internals: the life of an event
//!
//! Each hop is a file and a type, in the order an event takes them:
//!
//! 1. `sender.rs`, [`EventSender::send`]: the ready function hands over an
//!    [`Event`].
//! 2. `event.rs`, [`Event::encode`]: the event becomes its wire bytes, once,
//!    checked (a bad name or id is an [`EventError`] here, at the call site);
//!    the encoder itself is `event/encode.rs`. Its data ([`EventData`],
//!    `event/data.rs`) is copied once on the way: a `String` or `Bytes` when
//!    the event is encoded, a one-line `&str` (or [`Event::json`]'s output)
//!    when the event is built, straight into its wire form, which sending
//!    then hands on without another copy. One line of 64 KiB or more handed
//!    over whole is not copied: `send` queues it as its own frame between
//!    the event's other fields and its end (`frame.rs`, `Encoded`).
//! 3. `queue/push.rs`, `Queue::push`: the bytes wait in the stream's bounded
//!    queue (`queue.rs`, `Queue`); the [`Buffer`] policy (`buffer.rs`)
//!    decides what a full queue does (wait, drop the newest, drop the oldest;
//!    a conflating buffer replaces the queued event of the same key, through
//!    its index in `queue/conflate.rs`).
//! 4. `body.rs`, [`EventStream`]'s `poll_frame`: the body polls a
//!    body-polled ready function (`body/ready.rs`, `ReadyState`, woken
//!    through the queue: `queue/wake.rs`), takes what is queued into one
//!    frame (`frame.rs`, `FrameBuilder`, up to 64 KiB), and writes a
//!    heartbeat comment after each silence; `stall.rs` watches a reader that
//!    stopped.
//!    On a compressed stream (feature `compression`), each frame goes
//!    through the stream's compressor and is flushed
//!    (`compression/encoder.rs`; the encoding was negotiated from
//!    `Accept-Encoding` when the stream was made, `compression/negotiate.rs`).
//! 5. `layer/response_body.rs`, [`ResponseBody`]: the layer's body hands the frame to
//!    hyper, which writes it to the socket.
//!
//! A hub event takes another road to the same body: `hub/mod.rs`,
//! `Hub::publish` encodes it once into its topic's ring (`hub/topic.rs`,
//! `Ring`); each stream's `Subscription` (`hub/subscription.rs`) reads the
//! rings with its own cursors, and the body (step 4) takes its frames from
//! there instead of from a queue. On Redis, `Hub::publish` appends to a
//! Redis stream instead (`hub/redis.rs`, `Backend::publish`); each node's
//! reader (`hub/redis/reader.rs`) fills its rings from there, and an id
//! older than the rings is replayed from Redis (`hub/redis/replay.rs`). The settings every stream is built from
//! are in `config.rs`; the response headers and [`start_stream`] in
//! `response.rs`.
#![deny(missing_docs, unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(rust_2018_idioms, clippy::all)]

mod body;
mod buffer;
#[cfg(feature = "compression")]
mod compression;
mod config;
mod context;
mod event;
mod frame;
pub mod hub;
mod layer;
pub mod pedestal;
mod queue;
mod response;
mod sender;
mod stall;
mod stats;
mod sync;
mod telemetry;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use body::{DisconnectReason, EventStream, StreamError};
pub use buffer::Buffer;
#[cfg(feature = "compression")]
#[cfg_attr(docsrs, doc(cfg(feature = "compression")))]
pub use compression::{Compression, CompressionLevel};
pub use config::{DEFAULT_BUFFER, DEFAULT_HEARTBEAT};
pub use context::{LAST_EVENT_ID, LastEventId, StreamContext};
pub use event::{Event, EventData, EventError};
pub use layer::{BoxError, ResponseBody, ResponseFuture, SseLayer, SseService};
pub use pedestal::start_event_stream;
pub use response::{SseResponse, start_stream};
pub use sender::{EventSender, SendError, TrySendError};
pub use stats::{SseStats, active_streams};
/// The shutdown signal taken by [`SseLayer::shutdown_on`] (re-exported from `tokio-util`).
///
/// A pre-1.0 crate's type in this crate's API, kept on purpose: it is the
/// token tokio's own documentation uses for graceful shutdown, the one an
/// axum application already hands to `with_graceful_shutdown`
/// (`token.cancelled_owned()`), and the re-export spares a dependency line
/// that must match ours. A `tokio-util` 0.8 would mean a breaking release
/// of this crate (its semver is tied to tokio-util's 0.7).
pub use tokio_util::sync::CancellationToken;
