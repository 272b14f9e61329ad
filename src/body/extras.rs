//! What only some streams have: a span, a stall watch, a shutdown token.

use std::pin::Pin;

use bytes::Bytes;

use tokio_util::sync::WaitForCancellationFutureOwned;

use super::NO_SPAN;
use crate::{config::StreamConfig, stall::StallWatch};

/// What only some streams have.
pub(super) struct Extras {
    /// The stream's tracing span, when enabled.
    pub(super) span: tracing::Span,
    /// Resolves when the server shuts down; `None` once it has.
    pub(super) shutdown: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// The frame handed to the connection, watched with a stall timeout.
    pub(super) stall: Option<StallWatch>,
    /// What is left of a split event (its data, its end): sent before
    /// anything else.
    pub(super) rest: [Option<Bytes>; 2],
}

impl Extras {
    pub(super) fn new(span: tracing::Span, config: &StreamConfig) -> Option<Box<Self>> {
        let extras = Self {
            shutdown: config
                .shutdown
                .as_ref()
                .map(|token| Box::pin(token.clone().cancelled_owned())),
            stall: config.stall_timeout.map(StallWatch::new),
            span,
            rest: [None, None],
        };
        let none = extras.span.is_disabled() && extras.shutdown.is_none() && extras.stall.is_none();
        (!none).then(|| Box::new(extras))
    }
}

impl Extras {
    /// For a stream that has none of the rest but now sends a split event.
    pub(super) fn empty() -> Box<Self> {
        Box::new(Self {
            span: tracing::Span::none(),
            shutdown: None,
            stall: None,
            rest: [None, None],
        })
    }

    /// The next part of a split event still to send.
    pub(super) fn next_part(&mut self) -> Option<Bytes> {
        self.rest.iter_mut().find_map(Option::take)
    }
}

pub(super) fn span_of(extras: &Option<Box<Extras>>) -> &tracing::Span {
    extras.as_ref().map_or(&NO_SPAN, |extras| &extras.span)
}
