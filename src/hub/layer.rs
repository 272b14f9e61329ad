//! Hub streams served by [`SseLayer`]: topics chosen from the request before
//! the stream starts, a refusal as an ordinary response.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header::CONTENT_TYPE, request::Parts};

use super::{Hub, Resume, Subscription, TooManyTopics, distinct};
use crate::{SseLayer, SseResponse, StreamContext};

/// Picks a stream's topics from its request, or refuses it.
pub(crate) type SelectFn = dyn Fn(&Parts) -> Result<Vec<String>, Refusal> + Send + Sync;

/// What a hub layer needs to serve a stream.
#[derive(Clone)]
pub(crate) struct HubSource {
    pub(crate) hub: Hub,
    pub(crate) select: Arc<SelectFn>,
}

/// The topics a request asked for, and where it resumes; kept from the
/// request until the handler has answered.
pub(crate) struct Selected {
    topics: Vec<String>,
    resume: Resume,
}

impl HubSource {
    /// Runs the topic choice on the request head.
    pub(crate) fn select(&self, parts: &Parts) -> Result<Selected, Refusal> {
        let topics = (self.select)(parts)?;
        Ok(Selected {
            topics,
            resume: Resume::from_headers(&parts.headers),
        })
    }

    /// Subscribes a stream to what it selected; a refusal when the hub is full.
    pub(crate) fn subscribe(&self, selected: Selected) -> Result<Subscription, Refusal> {
        self.hub.subscription(&selected.topics, selected.resume)
    }
}

impl fmt::Debug for HubSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSource")
            .field("hub", &self.hub)
            .finish_non_exhaustive()
    }
}

/// A hub layer's answer to a request it will not stream: a status and a
/// short plain-text body (see [`Hub::layer`]).
///
/// ```
/// use http::StatusCode;
/// use tower_sse::hub::Refusal;
///
/// let forbidden: Refusal = StatusCode::FORBIDDEN.into();
/// let explained = Refusal::new(StatusCode::NOT_FOUND, "no such room\n");
/// assert_eq!(explained.status(), StatusCode::NOT_FOUND);
/// # let _ = forbidden;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use = "a Refusal does nothing until returned"]
pub struct Refusal {
    status: StatusCode,
    body: Bytes,
}

impl Refusal {
    /// A refusal with `status` and `body` (sent as `text/plain`).
    pub fn new(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response the client gets.
    pub(crate) fn into_response(self) -> Response<Bytes> {
        let mut response = Response::new(self.body);
        *response.status_mut() = self.status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for Refusal {
    fn into_response(self) -> axum::response::Response {
        Refusal::into_response(self).map(axum::body::Body::from)
    }
}

impl From<StatusCode> for Refusal {
    fn from(status: StatusCode) -> Self {
        let reason = status.canonical_reason().unwrap_or_default();
        Self::new(status, format!("{reason}\n"))
    }
}

impl From<(StatusCode, &'static str)> for Refusal {
    fn from((status, body): (StatusCode, &'static str)) -> Self {
        Self::new(status, body)
    }
}

impl From<(StatusCode, String)> for Refusal {
    fn from((status, body): (StatusCode, String)) -> Self {
        Self::new(status, body)
    }
}

impl Hub {
    /// Subscribes a new stream to `topics` (each counted once) from `resume`.
    fn subscription<T: AsRef<str>>(
        &self,
        topics: &[T],
        resume: Resume,
    ) -> Result<Subscription, Refusal> {
        Subscription::new(self, &distinct(topics), resume).map_err(|TooManyTopics(max)| {
            tracing::warn!(max, "too many topics: stream refused");
            Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "too many topics\n")
        })
    }

    /// A hub stream as a handler's response, for topics the handler chose
    /// (after any `async` check it needs), resuming from the request's
    /// `Last-Event-ID`: the same stream as [`Hub::layer`] serves, read
    /// straight from the body. Set its heartbeat, shutdown and stall
    /// handling on the [`SseResponse`].
    ///
    /// # Errors
    ///
    /// A `503 Service Unavailable` refusal when a topic is new and the hub
    /// holds [`max_topics`](crate::hub::HubBuilder::max_topics) already.
    ///
    /// ```no_run
    /// use axum::{Router, extract::{Path, State}, routing::get};
    /// use http::StatusCode;
    /// use tower_sse::{SseResponse, StreamContext, hub::{Hub, Refusal}};
    ///
    /// async fn may_read(room: &str) -> bool { room != "staff" }
    ///
    /// async fn events(
    ///     State(hub): State<Hub>,
    ///     Path(room): Path<String>,
    ///     ctx: StreamContext,
    /// ) -> Result<SseResponse, Refusal> {
    ///     if !may_read(&room).await {
    ///         return Err(StatusCode::FORBIDDEN.into());
    ///     }
    ///     Ok(hub.stream(&[room], ctx)?.heartbeat(std::time::Duration::from_secs(15)))
    /// }
    ///
    /// let app: Router = Router::new()
    ///     .route("/rooms/{room}/events", get(events))
    ///     .with_state(Hub::new());
    /// ```
    pub fn stream<T: AsRef<str>>(
        &self,
        topics: &[T],
        ctx: StreamContext,
    ) -> Result<SseResponse, Refusal> {
        // A HEAD request opens no stream, and so takes no place in the hub.
        let subscription = if ctx.method() == http::Method::HEAD {
            None
        } else {
            Some(self.subscription(topics, Resume::from_headers(ctx.kept_headers()))?)
        };
        Ok(SseResponse::for_subscription(ctx, subscription))
    }

    /// A layer serving this hub's streams straight from the response body:
    /// each stream's body reads its topics' histories itself, with no task,
    /// buffer or [`EventSender`](crate::EventSender) per stream, so a
    /// published event costs each stream a pointer copy until it is written.
    ///
    /// `select` runs on each request's head **before** the wrapped handler
    /// and picks the stream's topics (each counted once), or refuses the
    /// request: authorization per topic belongs here (or in the handler,
    /// whose non-2xx answer also passes through with no stream). The
    /// stream resumes from the request's `Last-Event-ID` as
    /// [`Hub::subscribe`] does, and the [`LagPolicy`](crate::hub::LagPolicy) is
    /// applied as it reads: a stream that falls behind gets one
    /// [`LAGGED_EVENT`](crate::hub::LAGGED_EVENT) per gap, never dropped.
    ///
    /// The result is an [`SseLayer`]: set the heartbeat, a disconnect
    /// callback, shutdown and stall handling as usual. Its
    /// [`buffer`](SseLayer::buffer) and [`spawn_ready`](SseLayer::spawn_ready)
    /// do not apply (the topic's history is the buffer).
    ///
    /// ```no_run
    /// use axum::{Router, routing::get};
    /// use http::StatusCode;
    /// use tower_sse::hub::Hub;
    ///
    /// let hub = Hub::new();
    /// // GET /rooms/{room}/events, for members only.
    /// let events = hub.layer(|parts| {
    ///     let room = parts.uri.path().split('/').nth(2).unwrap_or_default();
    ///     let user = parts.headers.get("x-user").and_then(|v| v.to_str().ok());
    ///     match user {
    ///         Some(_) if room.starts_with("public-") => Ok(vec![room.to_owned()]),
    ///         Some(_) => Err((StatusCode::FORBIDDEN, "members only\n").into()),
    ///         None => Err(StatusCode::UNAUTHORIZED.into()),
    ///     }
    /// });
    /// let app: Router = Router::new().route("/rooms/{room}/events", get(|| async {}).layer(events));
    /// ```
    pub fn layer<F>(&self, select: F) -> SseLayer
    where
        F: Fn(&Parts) -> Result<Vec<String>, Refusal> + Send + Sync + 'static,
    {
        SseLayer::for_hub(HubSource {
            hub: self.clone(),
            select: Arc::new(select),
        })
    }
}
