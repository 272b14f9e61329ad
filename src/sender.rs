//! The application's handle on a stream: [`EventSender`] and its errors.

use std::{fmt, sync::Arc};

use crate::{
    event::{Event, EventError},
    queue::{Queue, Rejected},
    telemetry,
};

/// Sends events to one client's stream; the Rust form of Pedestal's event channel.
///
/// Cheap to clone: hand clones to other tasks or threads. The stream ends
/// when every sender is dropped (queued events are delivered first) or when
/// [`close`](EventSender::close) is called; after the client goes away, every
/// send returns [`SendError::Closed`].
///
/// Events are encoded (and checked) by the sender, so a bad event is an
/// [`SendError::Invalid`] at the call site and never reaches the wire.
pub struct EventSender {
    queue: Arc<Queue>,
    /// `sse_event_payload_bytes` (nothing without the `metrics` feature).
    payload: telemetry::Histogram,
}

impl EventSender {
    /// Asks the body for one heartbeat at its next poll (Pedestal's
    /// `do-heartbeat`, [`crate::pedestal::do_heartbeat`]).
    pub(crate) fn request_heartbeat(&self) -> Result<(), SendError> {
        self.queue
            .request_heartbeat()
            .map_err(|_| SendError::Closed)
    }

    pub(crate) fn new(queue: Arc<Queue>) -> Self {
        Self {
            queue,
            payload: telemetry::Histogram::payload(),
        }
    }

    /// Sends an event, waiting for room in a fixed buffer (core.async's `>!!`).
    ///
    /// With a dropping or sliding buffer it never waits: when full, an event is
    /// dropped and counted (see [`dropped`](Self::dropped)). With a
    /// [conflating](crate::Buffer::conflating) buffer it replaces the queued
    /// event of its key, or else waits for room as with a fixed buffer.
    ///
    /// # Errors
    ///
    /// [`SendError::Closed`] once the stream has ended; [`SendError::Invalid`]
    /// when the event cannot be encoded.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before it completes, the event was
    /// not queued.
    ///
    /// # Examples
    ///
    /// ```
    /// # async fn ready(events: tower_sse::EventSender) {
    /// use tower_sse::Event;
    /// if events.send(Event::new("hello").name("greeting")).await.is_err() {
    ///     return; // the client went away
    /// }
    /// # }
    /// ```
    pub async fn send(&self, event: impl Into<Event>) -> Result<(), SendError> {
        let event = event.into();
        // The buffer's key (user code) runs before the queue's lock.
        let key = self.queue.key_of(&event);
        let encoded = event.into_encoded().map_err(SendError::Invalid)?;
        let len = encoded.len();
        self.queue
            .push_keyed(encoded, key)
            .await
            .map_err(|_| SendError::Closed)?;
        self.payload.bytes(len);
        tracing::trace!(bytes = len, "event queued");
        Ok(())
    }

    /// Queues bytes already encoded (by the hub, which encodes each event once
    /// for every subscriber), waiting in line for room whatever the buffer's
    /// policy (see `Queue::push_waiting`): with a dropping or sliding buffer
    /// too, the hub never has an event dropped, its own or another's.
    pub(crate) async fn send_encoded(&self, bytes: bytes::Bytes) -> Result<(), SendError> {
        self.queue
            .push_waiting(bytes)
            .await
            .map_err(|_| SendError::Closed)
    }

    /// Sends an event if there is room now, never waiting (core.async's `put!`).
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] gives the event back when a fixed buffer is full
    /// (or a conflating one, and no event of its key is queued);
    /// [`TrySendError::Closed`] once the stream has ended;
    /// [`TrySendError::Invalid`] when the event cannot be encoded.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn tick(events: &tower_sse::EventSender) {
    /// use tower_sse::TrySendError;
    /// match events.try_send("tick") {
    ///     Ok(()) => {}
    ///     // The client is slow: skip this tick. (A ready function polled by
    ///     // its body, with a fixed buffer, is not even polled while the client
    ///     // does not read: run such a loop in a task of its own; see `EventStream`.)
    ///     Err(TrySendError::Full(_event)) => {}
    ///     Err(other) => eprintln!("not sent: {other}"),
    /// }
    /// # }
    /// ```
    // The event comes back whole when there is no room, as tokio's
    // `TrySendError<T>` gives back its `T`, whatever its size.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, event: impl Into<Event>) -> Result<(), TrySendError> {
        let event = event.into();
        let bytes = event.encode().map_err(TrySendError::Invalid)?;
        let len = bytes.len();
        match self.queue.try_push_keyed(bytes, self.queue.key_of(&event)) {
            Ok(()) => {
                self.payload.bytes(len);
                tracing::trace!(bytes = len, "event queued");
                Ok(())
            }
            Err(Rejected::Full) => Err(TrySendError::Full(event)),
            Err(Rejected::Closed) => Err(TrySendError::Closed),
        }
    }

    /// Sends an event from a plain (non-async) thread, blocking it until there is room.
    ///
    /// Do not call it from async code: blocking a runtime thread can stall
    /// the very stream it waits on (inside the ready function of a stream
    /// with a fixed buffer, whose body polls that function, it always
    /// deadlocks). Use [`send`](Self::send) there.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    ///
    /// # Examples
    ///
    /// ```
    /// # fn ready(events: tower_sse::EventSender) {
    /// std::thread::spawn(move || {
    ///     for i in 0..3 {
    ///         if events.blocking_send(i.to_string()).is_err() {
    ///             break;
    ///         }
    ///     }
    /// });
    /// # }
    /// ```
    pub fn blocking_send(&self, event: impl Into<Event>) -> Result<(), SendError> {
        // Outside tokio's budget: called (against the advice above) from a
        // task whose budget is spent, a budgeted send could only yield, and
        // `block_on` would poll it again forever.
        futures::executor::block_on(tokio::task::coop::unconstrained(self.send(event)))
    }

    /// Stops the stream for every sender: queued events are still delivered,
    /// then the response body ends cleanly. Further sends return `Closed`.
    pub fn close(&self) {
        self.queue.close();
    }

    /// Waits until the stream accepts no more events: the client went away,
    /// or [`close`](Self::close) was called.
    ///
    /// ```
    /// # async fn ready(events: tower_sse::EventSender) {
    /// tokio::select! {
    ///     _ = events.closed() => { /* client gone: stop the work */ }
    ///     _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
    /// }
    /// # }
    /// ```
    // Not an `async fn`: the queue's future as it is is 16 bytes, where an
    // `async fn` wrapping it made an idle ready function's future 80 bytes.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + '_ {
        self.queue.closed()
    }

    /// Whether the stream accepts no more events.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// How many events the buffer policy has dropped on this stream so far
    /// (with a conflating buffer: how many queued events were replaced).
    pub fn dropped(&self) -> u64 {
        self.queue.dropped()
    }

    /// How many events are queued and not yet handed to the connection.
    pub fn queued_events(&self) -> usize {
        self.queue.queued().0
    }

    /// How many encoded bytes are queued and not yet handed to the connection.
    pub fn queued_bytes(&self) -> usize {
        self.queue.queued().1
    }

    /// The buffer's capacity in events.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.queue.add_sender();
        Self {
            queue: self.queue.clone(),
            payload: self.payload.clone(),
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        self.queue.remove_sender();
    }
}

impl fmt::Debug for EventSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventSender")
            .field("closed", &self.is_closed())
            .field("capacity", &self.capacity())
            .finish()
    }
}

/// Why [`EventSender::send`] did not queue an event.
#[derive(Debug)]
#[non_exhaustive]
pub enum SendError {
    /// The stream has ended (the client went away or the stream was closed).
    Closed,
    /// The event cannot be encoded.
    Invalid(EventError),
}

/// Why [`EventSender::try_send`] did not queue an event.
#[derive(Debug)]
#[non_exhaustive]
pub enum TrySendError {
    /// A fixed buffer is full (or a conflating one, and no event of its key
    /// is queued); the event is given back.
    Full(Event),
    /// The stream has ended (the client went away or the stream was closed).
    Closed,
    /// The event cannot be encoded.
    Invalid(EventError),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("event stream closed"),
            Self::Invalid(err) => write!(f, "invalid event: {err}"),
        }
    }
}

impl fmt::Display for TrySendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Full(_) => f.write_str("event buffer full"),
            Self::Closed => f.write_str("event stream closed"),
            Self::Invalid(err) => write!(f, "invalid event: {err}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Invalid(err) => Some(err),
            Self::Closed => None,
        }
    }
}

impl std::error::Error for TrySendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Invalid(err) => Some(err),
            _ => None,
        }
    }
}
