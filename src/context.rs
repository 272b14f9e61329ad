//! What the ready function and the disconnect callback learn about the request.

use std::{fmt, sync::Arc};

use http::{Extensions, HeaderMap, Method, Uri, Version, request::Parts};

/// The header a reconnecting `EventSource` sends with the last id it saw.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The request that opened a stream: method, URI, version, headers,
/// extensions and its `Last-Event-ID`. Cheap to clone.
///
/// A stream hands its context to the ready function and keeps a copy only
/// for a disconnect callback. A ready function that drops it frees the
/// copied request: a closure whose future does not capture it
/// (`|events, _ctx| async move { .. }`), or an explicit `drop(ctx)`; an
/// `async fn ready(events, _ctx)` keeps its arguments until it returns.
///
/// The stream layer builds it for the ready function; in a handler it is an
/// axum extractor, to pass to [`start_stream`](crate::start_stream).
#[derive(Clone)]
pub struct StreamContext {
    inner: Arc<Inner>,
}

struct Inner {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    extensions: Extensions,
}

impl StreamContext {
    /// Copies what the stream needs from request parts.
    pub fn from_parts(parts: &Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                version: parts.version,
                headers: parts.headers.clone(),
                extensions: parts.extensions.clone(),
            }),
        }
    }

    /// Copies what the stream needs from a request (its body is not used).
    pub fn from_request<B>(request: &http::Request<B>) -> Self {
        Self {
            inner: Arc::new(Inner {
                method: request.method().clone(),
                uri: request.uri().clone(),
                version: request.version(),
                headers: request.headers().clone(),
                extensions: request.extensions().clone(),
            }),
        }
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.inner.method
    }

    /// The request URI (path and query, as the server received it).
    pub fn uri(&self) -> &Uri {
        &self.inner.uri
    }

    /// The request's HTTP version.
    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// The request headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// The request extensions (for example what an authentication layer inserted).
    pub fn extensions(&self) -> &Extensions {
        &self.inner.extensions
    }

    /// The `Last-Event-ID` the client sent when reconnecting, if any and if it
    /// is valid UTF-8 (browsers send UTF-8).
    ///
    /// It is the header whole, as long as the client made it (hyper bounds
    /// the request head): an application with ids of its own should bound
    /// what it looks up or sends back. A [`Hub`](crate::hub::Hub) looks at no more
    /// than [`MAX_LAST_EVENT_ID_LEN`](crate::hub::MAX_LAST_EVENT_ID_LEN) bytes.
    ///
    /// ```
    /// let request = http::Request::builder()
    ///     .header("last-event-id", "41")
    ///     .body(())
    ///     .unwrap();
    /// let ctx = tower_sse::StreamContext::from_request(&request);
    /// assert_eq!(ctx.last_event_id(), Some("41"));
    /// ```
    pub fn last_event_id(&self) -> Option<&str> {
        last_event_id(&self.inner.headers)
    }
}

/// Copies the query parameter `name` into the `Last-Event-ID` header when
/// the request has none (see [`SseLayer::last_event_id_query`](crate::SseLayer::last_event_id_query)).
pub(crate) fn last_event_id_from_query<B>(request: &mut http::Request<B>, name: &str) {
    if request.headers().contains_key(LAST_EVENT_ID) {
        return;
    }
    let Some(value) = request
        .uri()
        .query()
        .and_then(|query| query_param(query, name))
    else {
        return;
    };
    if let Ok(value) = http::HeaderValue::try_from(value) {
        request.headers_mut().insert(LAST_EVENT_ID, value);
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` is a
/// space, as in forms); `None` if absent or not UTF-8 once decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key)? == name).then(|| percent_decode(value))?
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        rest = tail;
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = rest.get(..2).and_then(|hex| std::str::from_utf8(hex).ok());
                match hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                    Some(decoded) => {
                        bytes.push(decoded);
                        rest = &rest[2..];
                    }
                    None => bytes.push(b'%'),
                }
            }
            _ => bytes.push(byte),
        }
    }
    String::from_utf8(bytes).ok()
}

fn last_event_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(LAST_EVENT_ID)
        .and_then(|value| std::str::from_utf8(value.as_bytes()).ok())
}

impl fmt::Debug for StreamContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamContext")
            .field("method", &self.inner.method)
            .field("uri", &self.inner.uri)
            .field("version", &self.inner.version)
            .field("last_event_id", &self.last_event_id())
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for StreamContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}

/// The request's `Last-Event-ID` header, as an axum extractor (never rejects).
///
/// As [`StreamContext::last_event_id`]: the header whole if it is UTF-8,
/// whatever its length (a [`Hub`](crate::hub::Hub) caps what it uses at
/// [`MAX_LAST_EVENT_ID_LEN`](crate::hub::MAX_LAST_EVENT_ID_LEN) bytes).
///
/// ```
/// use axum::{Router, routing::get};
/// use tower_sse::LastEventId;
///
/// async fn handler(LastEventId(last): LastEventId) -> String {
///     format!("resuming after {}", last.as_deref().unwrap_or("nothing"))
/// }
/// let app: Router = Router::new().route("/", get(handler));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LastEventId(pub Option<String>);

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for LastEventId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(last_event_id(&parts.headers).map(str::to_owned)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(
            query_param("a=1&lastEventID=42", "lastEventID").as_deref(),
            Some("42")
        );
        assert_eq!(
            query_param("lastEventID=a%2Fb+c%3D", "lastEventID").as_deref(),
            Some("a/b c=")
        );
        assert_eq!(
            query_param("last%45ventID=7", "lastEventID").as_deref(),
            Some("7")
        );
        assert_eq!(
            query_param("lastEventID", "lastEventID").as_deref(),
            Some("")
        );
        assert_eq!(query_param("x=1", "lastEventID"), None);
        assert_eq!(query_param("lastEventID=%FF", "lastEventID"), None);
        assert_eq!(
            query_param("lastEventID=100%", "lastEventID").as_deref(),
            Some("100%")
        );
        assert_eq!(
            query_param("lastEventID=1&lastEventID=2", "lastEventID").as_deref(),
            Some("1")
        );
    }

    #[test]
    fn the_header_wins_over_the_query() {
        let mut request = http::Request::get("/e?lastEventID=5")
            .header(LAST_EVENT_ID, "9")
            .body(())
            .unwrap();
        last_event_id_from_query(&mut request, "lastEventID");
        assert_eq!(request.headers()[LAST_EVENT_ID], "9");
        let mut request = http::Request::get("/e?lastEventID=5").body(()).unwrap();
        last_event_id_from_query(&mut request, "lastEventID");
        assert_eq!(request.headers()[LAST_EVENT_ID], "5");
        let mut request = http::Request::get("/e?lastEventID=a%0Ab").body(()).unwrap();
        last_event_id_from_query(&mut request, "lastEventID");
        assert!(request.headers().get(LAST_EVENT_ID).is_none());
    }
}
