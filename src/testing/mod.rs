//! A test kit for SSE endpoints: drive any tower `Service` (an axum `Router`
//! included) in-process, without TCP, and read its stream as a browser's
//! `EventSource` would.
//!
//! Nothing here opens a socket or spawns a task, so it runs under
//! `tokio::time::pause()`: a test of heartbeats, retries or stall timeouts
//! takes no wall time (`#[tokio::test(start_paused = true)]`).
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_sse::{Event, EventSender, SseLayer, StreamContext, testing::TestClient};
//!
//! async fn ready(events: EventSender, _ctx: StreamContext) {
//!     let _ = events.send(Event::new("hello").name("greeting").id("1")).await;
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let app = Router::new().route("/events", get(|| async {}).layer(SseLayer::new(ready)));
//! let mut stream = TestClient::new(app).get("/events").await;
//! stream.expect_event("greeting", "hello").await;
//! stream.expect_end().await;
//! # }
//! ```
//!
//! - [`TestClient::get`] (or [`TestClient::send`]) calls the service and
//!   gives a [`TestStream`]: the response head, then the stream item by
//!   item ([`TestStream::next`], [`TestStream::next_event`]), with typed
//!   expectations that panic with what came instead
//!   ([`TestStream::expect_event`], [`TestStream::expect_comment`],
//!   [`TestStream::expect_end`]).
//! - [`TestStream::disconnect`] drops the response as a client that goes
//!   away; [`TestClient::reconnect`] reconnects after the announced `retry`
//!   with the `Last-Event-ID` an `EventSource` would send.
//! - [`TestStream::stop_reading`] keeps the connection open and takes
//!   nothing, as a client whose socket is full: what a stall timeout is for.
//! - [`Parser`] is the WHATWG event-stream parser underneath, for bytes read
//!   any other way.

mod parser;
mod stream;

use std::{
    convert::Infallible,
    future::poll_fn,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use tower::Service;

pub use self::{
    parser::{Item, Parser, ReceivedEvent},
    stream::{Ended, TestStream},
};
use crate::{BoxError, LAST_EVENT_ID};

/// How long an expectation waits for the stream by default (tokio time, so
/// no wall time under `tokio::time::pause()`).
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(30);

/// Calls a service in-process and reads its responses as event streams.
///
/// The service is cloned for each request, as a server does per connection.
#[derive(Clone, Debug)]
pub struct TestClient<S> {
    service: S,
    patience: Duration,
}

impl<S, B> TestClient<S>
where
    S: Service<Request<TestBody>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// A client of `service`.
    pub fn new(service: S) -> Self {
        Self {
            service,
            patience: DEFAULT_PATIENCE,
        }
    }

    /// How long each expectation of its streams waits before it fails
    /// ([`DEFAULT_PATIENCE`] unless set).
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// Sends `GET uri` and returns the response as a stream.
    ///
    /// # Panics
    ///
    /// If `uri` is not a valid URI or the service fails (a test failure).
    pub async fn get(&mut self, uri: &str) -> TestStream {
        let request = Request::get(uri)
            .body(TestBody)
            .unwrap_or_else(|err| panic!("invalid request to {uri:?}: {err}"));
        self.send_or_fail(request, &format!("on GET {uri}")).await
    }

    /// Sends `request` and returns the response as a stream.
    ///
    /// # Errors
    ///
    /// What the service returns instead of a response.
    pub async fn send(&mut self, request: Request<TestBody>) -> Result<TestStream, BoxError> {
        let mut service = self.service.clone();
        poll_fn(|cx| service.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        let uri = request.uri().clone();
        let response = service.call(request).await.map_err(Into::into)?;
        Ok(TestStream::new(uri, response, self.patience))
    }

    /// Reconnects as an `EventSource` does after `stream` ended: waits the
    /// reconnection time the stream announced with `retry` (none if it did
    /// not), then sends `GET` to the same URI with the stream's last event
    /// id as `Last-Event-ID` (none when it is empty).
    ///
    /// # Panics
    ///
    /// If the service fails (a test failure).
    pub async fn reconnect(&mut self, stream: &TestStream) -> TestStream {
        if let Some(retry) = stream.retry() {
            tokio::time::sleep(retry).await;
        }
        let mut request = Request::get(stream.uri().clone());
        if !stream.last_event_id().is_empty() {
            request = request.header(LAST_EVENT_ID, stream.last_event_id());
        }
        let request = request
            .body(TestBody)
            .unwrap_or_else(|err| panic!("invalid Last-Event-ID: {err}"));
        self.send_or_fail(request, "on reconnecting").await
    }

    /// [`send`](Self::send), failing the test if the service fails.
    async fn send_or_fail(&mut self, request: Request<TestBody>, when: &str) -> TestStream {
        match self.send(request).await {
            Ok(stream) => stream,
            Err(err) => panic!("the service failed {when}: {err}"),
        }
    }
}

/// The empty body of the kit's requests (SSE requests have none).
#[derive(Clone, Copy, Debug, Default)]
pub struct TestBody;

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        true
    }
}
