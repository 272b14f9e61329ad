//! Pedestal's names, for code ported from `io.pedestal.http.sse` (0.7).
//!
//! Each item here keeps the name it has in Pedestal 0.7's API and does what
//! Pedestal's does, on this crate's types: the wire constants, `get-bytes`,
//! `mk-data`, `send-event`, `do-heartbeat`, `start-event-stream` and the two
//! deprecated functions. Pedestal 0.8 made some of these private and moved to
//! LF line ends; this port keeps 0.7's public surface and CRLF.
//!
//! New code reaches for the crate root instead: [`SseLayer`] (built by
//! [`start_event_stream`], which the root re-exports), [`Event::encode`],
//! [`EventSender::send`].
//!
//! | Pedestal 0.7 | here | the crate's own way |
//! |---|---|---|
//! | `CRLF`, `EVENT_FIELD`, `DATA_FIELD`, `ID_FIELD`, `COMMENT_FIELD` | [`CRLF`], [`EVENT_FIELD`], [`DATA_FIELD`], [`ID_FIELD`], [`COMMENT_FIELD`] (and [`RETRY_FIELD`]) | [`Event::encode`] writes them |
//! | `get-bytes` | [`get_bytes`] | `Bytes::from` |
//! | `mk-data` | [`mk_data`] | [`Event::encode`] |
//! | `send-event` | [`send_event`] | [`EventSender::send`], [`EventSender::try_send`], [`EventSender::blocking_send`] |
//! | `do-heartbeat` | [`do_heartbeat`] | the layer's heartbeat |
//! | `start-event-stream` | [`start_event_stream`] (also at the root) | [`SseLayer::new`] |
//! | `sse-setup`, `end-event-stream` | deprecated [`sse_setup`], [`end_event_stream`] | [`start_event_stream`], [`EventSender::close`] |

use std::time::Duration;

use bytes::Bytes;

use crate::{Buffer, Event, EventError, EventSender, SendError, SseLayer, StreamContext};

/// Line terminator written after every field, as in Pedestal.
pub const CRLF: &[u8] = b"\r\n";
/// Prefix of the field naming the event type.
pub const EVENT_FIELD: &[u8] = b"event: ";
/// Prefix of each data line.
pub const DATA_FIELD: &[u8] = b"data: ";
/// Prefix of the event id field.
pub const ID_FIELD: &[u8] = b"id: ";
/// Prefix of a comment line (heartbeats are comments).
pub const COMMENT_FIELD: &[u8] = b": ";
/// Prefix of the reconnection-delay field (not in the seed; part of the SSE spec).
pub const RETRY_FIELD: &[u8] = b"retry: ";

/// Encodes a string as UTF-8 bytes, like Pedestal's `get-bytes`.
///
/// ```
/// assert_eq!(&tower_sse::pedestal::get_bytes("hé")[..], "hé".as_bytes());
/// ```
pub fn get_bytes(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Encodes one event from a name, data and id, like Pedestal's `mk-data`.
///
/// # Errors
///
/// [`EventError`] when the name or id cannot be written on one line (see
/// [`Event::encode`]).
///
/// ```
/// let bytes = tower_sse::pedestal::mk_data(Some("count"), "1", Some("7")).unwrap();
/// assert_eq!(&bytes[..], b"event: count\r\nid: 7\r\ndata: 1\r\n\r\n");
/// assert!(tower_sse::pedestal::mk_data(Some("bad\nname"), "1", None).is_err());
/// ```
pub fn mk_data(name: Option<&str>, data: &str, id: Option<&str>) -> Result<Bytes, EventError> {
    let mut event = Event::new(data);
    if let Some(name) = name {
        event = event.name(name);
    }
    if let Some(id) = id {
        event = event.id(id);
    }
    event.into_frame()
}

/// Sends an event built from a name, data and id, like Pedestal's `send-event`.
///
/// Pedestal's `put-fn` argument maps onto the sender's own methods:
/// [`EventSender::send`] (waits), [`EventSender::try_send`] (never waits) and
/// [`EventSender::blocking_send`] (plain threads); this function waits.
///
/// # Errors
///
/// As [`EventSender::send`].
///
/// ```
/// # async fn ready(events: tower_sse::EventSender) {
/// tower_sse::pedestal::send_event(&events, Some("count"), "1", Some("1")).await.ok();
/// # }
/// ```
pub async fn send_event(
    sender: &EventSender,
    name: Option<&str>,
    data: &str,
    id: Option<&str>,
) -> Result<(), SendError> {
    let mut event = Event::new(data);
    if let Some(name) = name {
        event = event.name(name);
    }
    if let Some(id) = id {
        event = event.id(id);
    }
    sender.send(event).await
}

/// Writes one heartbeat comment (`: `) now, like Pedestal's `do-heartbeat`.
///
/// The heartbeat goes out at the body's next poll, ahead of queued events and
/// outside the buffer (several requests before that poll give one heartbeat).
///
/// # Errors
///
/// [`SendError::Closed`] once the stream has ended.
///
/// ```
/// # fn ready(events: tower_sse::EventSender) {
/// tower_sse::pedestal::do_heartbeat(&events).ok();
/// # }
/// ```
pub fn do_heartbeat(sender: &EventSender) -> Result<(), SendError> {
    sender.request_heartbeat()
}

/// Wraps a handler so that its successful responses become event streams,
/// like Pedestal's `start-event-stream`.
///
/// The ready function is called once, concurrently with the stream, with
/// the stream's [`EventSender`] and the request's [`StreamContext`]; with a
/// fixed buffer the response body polls it (no task per stream), with a
/// dropping or sliding buffer it runs as a task of its own (see
/// [`EventStream`](crate::EventStream)). Heartbeat: a comment after each
/// `heartbeat` of silence (`Duration::ZERO` turns heartbeats off). Buffer:
/// anything `Into<Buffer>` (a number is a fixed buffer).
///
/// ```no_run
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use tower_sse::{Event, EventSender, StreamContext, start_event_stream};
///
/// async fn ready(events: EventSender, _ctx: StreamContext) {
///     for i in 0..10 {
///         if events.send(Event::new(i.to_string()).name("counter")).await.is_err() {
///             return;
///         }
///         tokio::time::sleep(Duration::from_secs(1)).await;
///     }
/// }
///
/// let app: Router = Router::new().route(
///     "/counter",
///     get(|| async {}).layer(start_event_stream(ready, Duration::from_secs(10), 10)),
/// );
/// ```
pub fn start_event_stream<F, Fut>(
    ready: F,
    heartbeat: Duration,
    buffer: impl Into<Buffer>,
) -> SseLayer
where
    F: Fn(EventSender, StreamContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    SseLayer::new(ready).heartbeat(heartbeat).buffer(buffer)
}

/// Pedestal's old name for [`start_event_stream`].
#[deprecated(
    since = "0.1.0",
    note = "Pedestal deprecated sse-setup in its 0.7.0; use start_event_stream"
)]
pub fn sse_setup<F, Fut>(ready: F, heartbeat: Duration, buffer: impl Into<Buffer>) -> SseLayer
where
    F: Fn(EventSender, StreamContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    start_event_stream(ready, heartbeat, buffer)
}

/// Ends the stream a sender belongs to (queued events are still delivered),
/// like Pedestal's `end-event-stream`.
#[deprecated(
    since = "0.1.0",
    note = "Pedestal deprecated end-event-stream in its 0.4.0; use EventSender::close or drop the senders"
)]
pub fn end_event_stream(sender: &EventSender) {
    sender.close();
}
