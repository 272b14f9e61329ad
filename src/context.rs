//! What the ready function and the disconnect callback learn about the request.

use std::{
    fmt,
    sync::{
        Arc, LazyLock, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
};

use http::{Extensions, HeaderMap, Method, Uri, Version, request::Parts, uri::PathAndQuery};

/// The header a reconnecting `EventSource` sends with the last id it saw.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The request that opened a stream: method, URI, version, headers,
/// extensions and its `Last-Event-ID`. Cheap to clone: clones share one copy.
///
/// # What a layer's context keeps
///
/// A context built from a request ([`from_parts`](Self::from_parts),
/// [`from_request`](Self::from_request), the axum extractor, so the one
/// handed to [`start_stream`](crate::start_stream)) keeps all of it. The one
/// an [`SseLayer`](crate::SseLayer) builds for each stream keeps, by default,
/// the method, URI and version and the `Last-Event-ID` header: its
/// [`headers`](Self::headers) hold that header alone (if the client sent
/// it) and its [`extensions`](Self::extensions) are empty, unless the layer
/// was told to keep them ([`SseLayer::keep_headers`](crate::SseLayer::keep_headers),
/// [`SseLayer::keep_extensions`](crate::SseLayer::keep_extensions)). A stream
/// keeps its context for as long as its ready function or its disconnect
/// callback may read it (an `async fn ready(events, _ctx)` holds it until it
/// returns), and a whole copy of the request costs about 1 KB per stream:
/// what nobody reads is not kept. BENCHMARKS.md has the figures.
///
/// ```
/// let request = http::Request::post("/events?room=lobby")
///     .header("authorization", "Bearer x")
///     .body(())
///     .unwrap();
/// let ctx = tower_sse::StreamContext::from_request(&request);
/// assert_eq!(ctx.method(), http::Method::POST);
/// assert_eq!(ctx.uri().query(), Some("room=lobby"));
/// assert_eq!(ctx.headers()["authorization"], "Bearer x");
/// ```
///
/// In a handler it is an axum extractor, to pass to
/// [`start_stream`](crate::start_stream).
#[derive(Clone)]
pub struct StreamContext {
    inner: Arc<Inner>,
}

/// What a layer's contexts keep beyond the request line and `Last-Event-ID`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Keep {
    pub(crate) headers: bool,
    pub(crate) extensions: bool,
    /// `Accept-Encoding`, which a compressing layer's stream negotiates from.
    pub(crate) accept_encoding: bool,
}

impl Keep {
    const ALL: Self = Self {
        headers: true,
        extensions: true,
        accept_encoding: true,
    };
}

static HEADERS_HINTED: AtomicBool = AtomicBool::new(false);
static EXTENSIONS_HINTED: AtomicBool = AtomicBool::new(false);

/// Says, the first time in a process, that a layer's context was read for
/// what it does not keep: an empty answer would otherwise pass unnoticed.
fn hint_once(hinted: &AtomicBool, what: &str, setting: &str) {
    if !hinted.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "StreamContext::{what}() of an SseLayer's stream: the layer keeps no request \
             {what} (but Last-Event-ID) unless built with SseLayer::{setting}()"
        );
    }
}

/// The request line inline, the rest boxed only when there is some: a
/// layer's default context is one 96-byte allocation (a whole copy of the
/// request behind axum's router is about 1,000 bytes in 10).
struct Inner {
    uri: UriRepr,
    /// The `Uri` of an origin-form request, built when first asked for.
    origin_uri: OnceLock<Box<Uri>>,
    /// An index into [`STANDARD_METHODS`], or [`OTHER_METHOD`] (then in `rest`).
    method: u8,
    version: Version,
    /// What was kept: reading what was not logs a hint, once per process.
    keep: Keep,
    rest: Option<Box<Rest>>,
}

/// How many bytes of an origin-form URI a context holds inline.
const INLINE_URI: usize = 22;

/// A request URI in fewer bytes than a `Uri`'s 88. An HTTP/1 request's is a
/// path and query alone: copied, inline when short, so that the context
/// holds no share of hyper's read buffer (a share costs 48 bytes a stream).
enum UriRepr {
    /// A path and query of at most [`INLINE_URI`] bytes.
    Short { len: u8, bytes: [u8; INLINE_URI] },
    /// A longer path and query.
    Long(Box<str>),
    /// Any other form (absolute, authority, `*`).
    Other(Box<Uri>),
}

impl UriRepr {
    fn new(uri: &Uri) -> Self {
        match (uri.scheme(), uri.authority(), uri.path_and_query()) {
            (None, None, Some(path)) => Self::origin(path.as_str()),
            _ => Self::Other(Box::new(uri.clone())),
        }
    }

    fn origin(path: &str) -> Self {
        match u8::try_from(path.len()) {
            Ok(len) if path.len() <= INLINE_URI => {
                let mut bytes = [0; INLINE_URI];
                bytes[..path.len()].copy_from_slice(path.as_bytes());
                Self::Short { len, bytes }
            }
            _ => Self::Long(path.into()),
        }
    }

    /// The path and query of an origin-form URI.
    fn origin_str(&self) -> Option<&str> {
        match self {
            // Copied from a `&str` whole: always UTF-8.
            Self::Short { len, bytes } => std::str::from_utf8(&bytes[..usize::from(*len)]).ok(),
            Self::Long(path) => Some(path),
            Self::Other(_) => None,
        }
    }
}

// As the `Uri` would print, without building it.
impl fmt::Display for UriRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.origin_str()) {
            (Self::Other(uri), _) => fmt::Display::fmt(uri, f),
            (_, path) => f.write_str(path.unwrap_or_default()),
        }
    }
}

impl fmt::Debug for UriRepr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Default)]
struct Rest {
    /// A method outside [`STANDARD_METHODS`].
    method: Option<Method>,
    headers: HeaderMap,
    extensions: Extensions,
}

/// The methods a context stores as one byte instead of a 24-byte `Method`.
static STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::CONNECT,
    Method::PATCH,
    Method::TRACE,
];
const OTHER_METHOD: u8 = u8::MAX;

/// What `headers()` and `extensions()` give when nothing was kept.
static NO_HEADERS: LazyLock<HeaderMap> = LazyLock::new(HeaderMap::new);
static NO_EXTENSIONS: LazyLock<Extensions> = LazyLock::new(Extensions::new);

impl StreamContext {
    /// Copies what the stream needs from request parts: all of it.
    pub fn from_parts(parts: &Parts) -> Self {
        Self::new(
            &parts.method,
            &parts.uri,
            parts.version,
            &parts.headers,
            &parts.extensions,
            Keep::ALL,
        )
    }

    /// Copies what the stream needs from a request (its body is not used):
    /// all of it but the body.
    pub fn from_request<B>(request: &http::Request<B>) -> Self {
        Self::kept(request, Keep::ALL)
    }

    /// A layer's context: the request line, `Last-Event-ID`, and what `keep` names.
    pub(crate) fn kept<B>(request: &http::Request<B>, keep: Keep) -> Self {
        Self::new(
            request.method(),
            request.uri(),
            request.version(),
            request.headers(),
            request.extensions(),
            keep,
        )
    }

    fn new(
        method: &Method,
        uri: &Uri,
        version: Version,
        headers: &HeaderMap,
        extensions: &Extensions,
        keep: Keep,
    ) -> Self {
        let mut rest = Rest::default();
        let index = STANDARD_METHODS
            .iter()
            .position(|standard| standard == method);
        let method = match index.and_then(|index| u8::try_from(index).ok()) {
            Some(index) => index,
            None => {
                rest.method = Some(method.clone());
                OTHER_METHOD
            }
        };
        if keep.headers {
            rest.headers = headers.clone();
        } else {
            if let Some(value) = headers.get(LAST_EVENT_ID) {
                rest.headers.insert(LAST_EVENT_ID, value.clone());
            }
            if keep.accept_encoding {
                for value in headers.get_all(http::header::ACCEPT_ENCODING) {
                    rest.headers
                        .append(http::header::ACCEPT_ENCODING, value.clone());
                }
            }
        }
        if keep.extensions {
            rest.extensions = extensions.clone();
        }
        let empty = rest.method.is_none() && rest.headers.is_empty() && rest.extensions.is_empty();
        Self {
            inner: Arc::new(Inner {
                uri: UriRepr::new(uri),
                origin_uri: OnceLock::new(),
                method,
                version,
                keep,
                rest: (!empty).then(|| Box::new(rest)),
            }),
        }
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        match STANDARD_METHODS.get(usize::from(self.inner.method)) {
            Some(standard) => standard,
            None => self
                .inner
                .rest
                .as_ref()
                .and_then(|rest| rest.method.as_ref())
                .unwrap_or(&STANDARD_METHODS[0]),
        }
    }

    /// The request URI (path and query, as the server received it).
    pub fn uri(&self) -> &Uri {
        match &self.inner.uri {
            UriRepr::Other(uri) => uri,
            origin => self.inner.origin_uri.get_or_init(|| {
                let path = origin.origin_str().unwrap_or("/");
                // It was a valid path and query when copied.
                Box::new(
                    PathAndQuery::try_from(path)
                        .map(Uri::from)
                        .unwrap_or_default(),
                )
            }),
        }
    }

    /// Prints as [`uri`](Self::uri) does, without building the `Uri`.
    pub(crate) fn uri_display(&self) -> impl fmt::Display + '_ {
        &self.inner.uri
    }

    /// The request's HTTP version.
    pub fn version(&self) -> Version {
        self.inner.version
    }

    /// The request headers: all of them in a context built from a request;
    /// in a layer's, `Last-Event-ID` alone (and `Accept-Encoding` when the
    /// layer compresses) unless the layer keeps them
    /// ([`SseLayer::keep_headers`](crate::SseLayer::keep_headers)).
    pub fn headers(&self) -> &HeaderMap {
        if !self.inner.keep.headers {
            hint_once(&HEADERS_HINTED, "headers", "keep_headers");
        }
        self.kept_headers()
    }

    /// The headers kept, without the hint (`Last-Event-ID` is always kept).
    pub(crate) fn kept_headers(&self) -> &HeaderMap {
        self.inner
            .rest
            .as_ref()
            .map_or(&NO_HEADERS, |rest| &rest.headers)
    }

    /// The request extensions (for example what an authentication layer
    /// inserted): all of them in a context built from a request; in a
    /// layer's, none unless the layer keeps them
    /// ([`SseLayer::keep_extensions`](crate::SseLayer::keep_extensions)).
    pub fn extensions(&self) -> &Extensions {
        if !self.inner.keep.extensions {
            hint_once(&EXTENSIONS_HINTED, "extensions", "keep_extensions");
        }
        self.inner
            .rest
            .as_ref()
            .map_or(&NO_EXTENSIONS, |rest| &rest.extensions)
    }

    /// The `Last-Event-ID` the client sent when reconnecting, if any and if it
    /// is valid UTF-8 (browsers send UTF-8). Every context keeps it.
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
        last_event_id(self.kept_headers())
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
            .field("method", self.method())
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
    fn a_context_reports_every_method_and_uri_form() {
        let propfind = Method::from_bytes(b"PROPFIND").unwrap();
        let methods = STANDARD_METHODS.iter().chain([&propfind]);
        for method in methods {
            let request = http::Request::builder()
                .method(method.clone())
                .uri("/a/b?c=d")
                .body(())
                .unwrap();
            let ctx = StreamContext::kept(&request, Keep::default());
            assert_eq!(ctx.method(), method);
            assert_eq!(ctx.uri(), "/a/b?c=d");
        }
        let long = format!("/{}?q=é", "x".repeat(40));
        let inline_edge = format!("/{}", "y".repeat(INLINE_URI - 1));
        let over_edge = format!("/{}", "y".repeat(INLINE_URI));
        for uri in [&*long, &*inline_edge, &*over_edge, "/%E2%82%AC?a=b"] {
            let request = http::Request::get(uri).body(()).unwrap();
            let expected = request.uri().clone();
            let ctx = StreamContext::kept(&request, Keep::default());
            drop(request);
            assert_eq!(ctx.uri(), &expected, "{uri}");
            assert_eq!(ctx.uri_display().to_string(), expected.to_string());
        }
        for uri in ["http://example.com/x?y", "*", "https://h:8080/", "/"] {
            let request = http::Request::get(uri).body(()).unwrap();
            let ctx = StreamContext::kept(&request, Keep::default());
            assert_eq!(ctx.uri(), &Uri::from_static(uri), "{uri}");
            assert_eq!(ctx.uri_display().to_string(), uri);
            assert!(format!("{ctx:?}").contains(uri), "{ctx:?}");
        }
    }

    /// A layer's context is one allocation of 72 bytes (an 80-byte glibc
    /// chunk): the idle share of the quick start (BENCHMARKS.md) counts on it.
    #[test]
    fn a_layer_context_is_one_small_allocation() {
        assert!(
            std::mem::size_of::<ArcInner>() <= 72,
            "{}",
            std::mem::size_of::<ArcInner>()
        );
        // What the allocation holds, as `Arc` lays it out.
        #[allow(dead_code)]
        struct ArcInner(usize, usize, Inner);
    }

    #[test]
    fn a_layer_context_keeps_last_event_id_and_what_it_was_told_to() {
        let mut request = http::Request::get("/e")
            .version(Version::HTTP_2)
            .header(LAST_EVENT_ID, "7")
            .header("x-user", "ada")
            .body(())
            .unwrap();
        request.extensions_mut().insert(42_u32);
        let lean = StreamContext::kept(&request, Keep::default());
        assert_eq!(lean.version(), Version::HTTP_2);
        assert_eq!(lean.last_event_id(), Some("7"));
        assert_eq!(lean.headers().len(), 1);
        assert!(lean.extensions().is_empty());
        let headers = Keep {
            headers: true,
            ..Keep::default()
        };
        let kept = StreamContext::kept(&request, headers);
        assert_eq!(kept.headers()["x-user"], "ada");
        assert_eq!(kept.last_event_id(), Some("7"));
        assert!(kept.extensions().is_empty());
        let whole = StreamContext::from_request(&request);
        assert_eq!(whole.headers().len(), 2);
        assert_eq!(whole.extensions().get::<u32>(), Some(&42));
        let (parts, ()) = request.into_parts();
        let whole = StreamContext::from_parts(&parts);
        assert_eq!(whole.headers().len(), 2);
        assert_eq!(whole.extensions().get::<u32>(), Some(&42));
        // Nothing to keep: no header map, no extensions, no method to box.
        let bare = StreamContext::kept(&http::Request::new(()), Keep::ALL);
        assert!(bare.inner.rest.is_none());
        assert!(bare.headers().is_empty() && bare.last_event_id().is_none());
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
