//! A response read as an event stream: [`TestStream`].

use std::{
    collections::VecDeque,
    fmt,
    future::{Future, poll_fn},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, Uri};
use http_body::{Body, Frame};

use super::{Item, Parser, ReceivedEvent};
use crate::BoxError;

/// How much a client that stopped reading lets pile up, as a socket's
/// buffers would, before the server can write no more.
const SOCKET_BUFFER: usize = 256 * 1024;

type PollBody = dyn FnMut(&mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> + Send;

/// How a stream ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum Ended {
    /// The body ended cleanly: an `EventSource` would reconnect after its
    /// reconnection time.
    Completed,
    /// The body failed (for example [`StreamError::Stalled`](crate::StreamError)):
    /// the server closed the connection or reset the stream.
    Failed(BoxError),
    /// The client went away first ([`TestStream::disconnect`]).
    Disconnected,
}

/// A response being read as an `EventSource` reads it. From
/// [`TestClient`](super::TestClient).
///
/// Each read waits at most the client's patience (tokio time), then panics:
/// a test that expects an event that never comes fails instead of hanging.
pub struct TestStream {
    uri: Uri,
    status: StatusCode,
    headers: HeaderMap,
    body: Option<Box<PollBody>>,
    parser: Parser,
    items: VecDeque<Item>,
    ended: Option<Ended>,
    patience: Duration,
}

impl fmt::Debug for TestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestStream")
            .field("uri", &self.uri)
            .field("status", &self.status)
            .field("items", &self.items)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl TestStream {
    pub(super) fn new<B>(uri: Uri, response: Response<B>, patience: Duration) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let (head, body) = response.into_parts();
        let mut body = Box::pin(body);
        let poll = move |cx: &mut Context<'_>| {
            body.as_mut()
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(Into::into)))
        };
        Self {
            uri,
            status: head.status,
            headers: head.headers,
            body: Some(Box::new(poll)),
            parser: Parser::new(),
            items: VecDeque::new(),
            ended: None,
            patience,
        }
    }

    /// The URI requested.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The response's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The last event id so far, as an `EventSource` keeps it (empty: none).
    pub fn last_event_id(&self) -> &str {
        self.parser.last_event_id()
    }

    /// The reconnection time the stream announced with `retry`, if any.
    pub fn retry(&self) -> Option<Duration> {
        self.parser.retry()
    }

    /// How the stream ended, once it has.
    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// The next event or comment; `None` once the stream has ended.
    ///
    /// # Panics
    ///
    /// If nothing comes within the client's patience.
    pub async fn next(&mut self) -> Option<Item> {
        let (patience, uri) = (self.patience, self.uri.clone());
        within(patience, &uri, "nothing came", self.read_item()).await
    }

    /// The next event, skipping comments (as a browser does); `None` once
    /// the stream has ended.
    ///
    /// # Panics
    ///
    /// If no event comes within the client's patience.
    pub async fn next_event(&mut self) -> Option<ReceivedEvent> {
        let (patience, uri) = (self.patience, self.uri.clone());
        let next = async {
            loop {
                match self.read_item().await {
                    Some(Item::Event(event)) => return Some(event),
                    Some(Item::Comment(_)) => continue,
                    None => return None,
                }
            }
        };
        within(patience, &uri, "no event came", next).await
    }

    /// Reads the next event, skipping comments, and checks its type and
    /// data. Returns it, for its id.
    ///
    /// # Panics
    ///
    /// If the next event has another type or data, or the stream ends, or
    /// nothing comes within the client's patience.
    pub async fn expect_event(&mut self, event: &str, data: &str) -> ReceivedEvent {
        match self.next_event().await {
            Some(received) if received.event == event && received.data == data => received,
            other => panic!(
                "{}: expected event {event:?} with data {data:?}, got {other:?}",
                self.uri
            ),
        }
    }

    /// Reads the next item and checks that it is a comment (a heartbeat is
    /// `""`). Returns its text.
    ///
    /// # Panics
    ///
    /// If the next item is an event, or the stream ends, or nothing comes
    /// within the client's patience.
    pub async fn expect_comment(&mut self) -> String {
        match self.next().await {
            Some(Item::Comment(comment)) => comment,
            other => panic!("{}: expected a comment, got {other:?}", self.uri),
        }
    }

    /// Checks that the stream ends cleanly with nothing more.
    ///
    /// # Panics
    ///
    /// If an item comes first, the body fails, or it does not end within
    /// the client's patience.
    pub async fn expect_end(&mut self) {
        if let Some(item) = self.next().await {
            panic!("{}: expected the end, got {item:?}", self.uri);
        }
        match &self.ended {
            Some(Ended::Failed(err)) => {
                panic!("{}: expected a clean end, the body failed: {err}", self.uri)
            }
            Some(Ended::Disconnected) => {
                panic!("{}: expected the end, disconnected first", self.uri)
            }
            _ => {}
        }
    }

    /// Checks that the stream fails with nothing more, and returns the error.
    ///
    /// # Panics
    ///
    /// If an item comes first, the stream ends cleanly, or it does not end
    /// within the client's patience.
    pub async fn expect_error(&mut self) -> &BoxError {
        if let Some(item) = self.next().await {
            panic!("{}: expected an error, got {item:?}", self.uri);
        }
        match &self.ended {
            Some(Ended::Failed(err)) => err,
            other => panic!(
                "{}: expected an error, the stream ended: {other:?}",
                self.uri
            ),
        }
    }

    /// Reads everything up to the end (see [`ended`](Self::ended) for how).
    ///
    /// # Panics
    ///
    /// If the stream does not end within the client's patience.
    pub async fn read_to_end(&mut self) -> Vec<Item> {
        let (patience, uri) = (self.patience, self.uri.clone());
        let all = async {
            let mut items = Vec::new();
            while let Some(item) = self.read_item().await {
                items.push(item);
            }
            items
        };
        within(patience, &uri, "the stream did not end", all).await
    }

    /// Goes away, as a client that closes the connection: the server sees
    /// the response dropped. What was read stays ([`last_event_id`](Self::last_event_id),
    /// [`retry`](Self::retry)), so the stream can be reconnected with
    /// [`TestClient::reconnect`](super::TestClient::reconnect).
    pub fn disconnect(&mut self) {
        self.body = None;
        self.items.clear();
        self.ended.get_or_insert(Ended::Disconnected);
    }

    /// Stays connected but takes nothing for `duration`, as a client whose
    /// socket buffers are full: the server may write up to 256 KiB more
    /// (what the buffers would hold), none of which is released until the
    /// reader reads again. What was written is then read as usual.
    ///
    /// Made for testing a stall timeout: the stream may end meanwhile
    /// ([`ended`](Self::ended)).
    pub async fn stop_reading(&mut self, duration: Duration) {
        let deadline = tokio::time::Instant::now() + duration;
        let mut held: Vec<Bytes> = Vec::new();
        let mut held_len = 0;
        while self.ended.is_none() && held_len < SOCKET_BUFFER {
            let next = Self::poll_body_once(&mut self.body);
            let Ok(frame) = tokio::time::timeout_at(deadline, next).await else {
                break;
            };
            match frame {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        held_len += data.len();
                        held.push(data);
                    }
                }
                other => self.end(other),
            }
        }
        tokio::time::sleep_until(deadline).await;
        for data in held {
            self.items.extend(self.parser.feed(&data));
        }
    }

    async fn read_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.items.pop_front() {
                return Some(item);
            }
            if self.ended.is_some() {
                return None;
            }
            match Self::poll_body_once(&mut self.body).await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.items.extend(self.parser.feed(&data));
                    }
                }
                other => self.end(other),
            }
        }
    }

    fn end(&mut self, last: Option<Result<Frame<Bytes>, BoxError>>) {
        self.body = None;
        self.ended = Some(match last {
            Some(Err(err)) => Ended::Failed(err),
            _ => Ended::Completed,
        });
    }

    async fn poll_body_once(
        body: &mut Option<Box<PollBody>>,
    ) -> Option<Result<Frame<Bytes>, BoxError>> {
        match body {
            Some(body) => poll_fn(|cx| body(cx)).await,
            None => None,
        }
    }
}

/// Waits for `read` at most `patience` (tokio time), or fails the test
/// saying what did not happen.
async fn within<T>(patience: Duration, uri: &Uri, what: &str, read: impl Future<Output = T>) -> T {
    match tokio::time::timeout(patience, read).await {
        Ok(value) => value,
        Err(_) => panic!("{uri}: {what} within {patience:?}"),
    }
}
