//! Why a stream ended ([`DisconnectReason`]) and why its body failed
//! ([`StreamError`]).

use std::{fmt, time::Duration};

#[allow(unused_imports)] // for the docs
use crate::EventSender;

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
    /// The client stayed connected but stopped reading: a frame handed to
    /// the connection was not written for the stall timeout (see
    /// [`SseLayer::stall_timeout`](crate::SseLayer::stall_timeout)). The
    /// body ended with [`StreamError::Stalled`], so the connection was
    /// closed (HTTP/1) or the stream reset (HTTP/2).
    Stalled,
    /// A hub stream fell behind its topics' history under
    /// [`LagPolicy::Close`](crate::hub::LagPolicy::Close): the body ended cleanly
    /// and the client reconnects, resuming from `Last-Event-ID`.
    Lagged,
    /// The stream's compressor failed: the body ended with
    /// [`StreamError::Compression`].
    #[cfg(feature = "compression")]
    CompressionFailed,
}

/// Why an event stream's body failed. The connection is closed (HTTP/1) or
/// the stream reset (HTTP/2), and an `EventSource` reconnects.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// The client stopped reading: a frame was not written for this long
    /// (the stream's stall timeout).
    Stalled(Duration),
    /// The stream's compressor failed (see [`Compression`](crate::Compression)):
    /// the body ends rather than send bytes the client cannot decode.
    #[cfg(feature = "compression")]
    Compression(String),
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stalled(timeout) => {
                write!(f, "client stalled: nothing written for {timeout:?}")
            }
            #[cfg(feature = "compression")]
            Self::Compression(err) => write!(f, "compression failed: {err}"),
        }
    }
}

impl std::error::Error for StreamError {}
