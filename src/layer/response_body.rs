//! The body of an [`SseService`](crate::SseService) response.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::EventStream;

pin_project! {
    /// The body of an [`SseService`] response: the handler's own body when it
    /// passed through, or the event stream.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Passthrough { #[pin] body: B },
        Stream { #[pin] stream: EventStream },
        /// A refusal's text.
        Full { bytes: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn passthrough(body: B) -> Self {
        Self {
            kind: Kind::Passthrough { body },
        }
    }

    pub(super) fn stream(stream: EventStream) -> Self {
        Self {
            kind: Kind::Stream { stream },
        }
    }

    pub(super) fn full(bytes: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                bytes: Some(bytes).filter(|b| !b.is_empty()),
            },
        }
    }
}

impl<B: fmt::Debug> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Passthrough { body } => f.debug_tuple("Passthrough").field(body).finish(),
            Kind::Stream { stream } => f.debug_tuple("Stream").field(stream).finish(),
            Kind::Full { bytes } => f.debug_tuple("Full").field(bytes).finish(),
        }
    }
}

/// The error of a [`ResponseBody`]: the handler body's own error, or a
/// [`StreamError`](crate::StreamError), boxed (as tower-http's bodies do).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Passthrough { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Stream { stream } => stream.poll_frame(cx).map_err(Into::into),
            KindProj::Full { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Passthrough { body } => body.is_end_stream(),
            Kind::Stream { stream } => stream.is_end_stream(),
            Kind::Full { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Passthrough { body } => body.size_hint(),
            Kind::Stream { .. } => SizeHint::default(),
            Kind::Full { bytes } => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
