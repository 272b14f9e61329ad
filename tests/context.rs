//! What a stream's `StreamContext` reports, end to end over loopback TCP:
//! a layer's keeps the request line and `Last-Event-ID` unless told to keep
//! headers and extensions, and its ready function and disconnect callback
//! share one copy.

mod common;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering::SeqCst},
};

use axum::{
    Router,
    extract::Request,
    middleware::{self, Next},
    routing::any,
};
use common::*;
use tower_sse::{DisconnectReason, EventSender, SseLayer, StreamContext};

/// An extension an outer layer inserts into each request, counting its live copies.
#[derive(Debug)]
struct User(Arc<AtomicUsize>);

impl User {
    fn new(copies: &Arc<AtomicUsize>) -> Self {
        copies.fetch_add(1, SeqCst);
        Self(copies.clone())
    }
}

impl Clone for User {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, SeqCst);
        Self(self.0.clone())
    }
}

impl Drop for User {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// One line describing what a context reports.
fn describe(ctx: &StreamContext) -> String {
    let mut headers: Vec<&str> = ctx.headers().keys().map(|name| name.as_str()).collect();
    headers.sort_unstable();
    format!(
        "{} {} {:?} last={:?} headers={} user={}",
        ctx.method(),
        ctx.uri(),
        ctx.version(),
        ctx.last_event_id(),
        headers.join(","),
        ctx.extensions().get::<User>().is_some(),
    )
}

/// `/events` behind `layer`, with a `User` extension inserted outside it;
/// the ready function sends what its context reports, then waits for the end.
fn app(layer: SseLayer, copies: &Arc<AtomicUsize>) -> Router {
    let copies = copies.clone();
    Router::new()
        .route("/events", any(|| async {}).layer(in_mode(layer)))
        .layer(middleware::from_fn(
            move |mut request: Request, next: Next| {
                request.extensions_mut().insert(User::new(&copies));
                next.run(request)
            },
        ))
}

async fn report(events: EventSender, ctx: StreamContext) {
    let _ = events.send(describe(&ctx)).await;
    events.closed().await;
}

async fn first_event(addr: std::net::SocketAddr, request: reqwest::RequestBuilder) -> String {
    let _ = addr;
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut events = events(response);
    next_event(&mut events).await.expect("an event").data
}

#[tokio::test]
async fn a_layer_context_keeps_the_request_line_and_last_event_id() {
    let copies = Arc::new(AtomicUsize::new(0));
    let addr = serve(app(SseLayer::new(report), &copies)).await;
    let client = reqwest::Client::new();
    let request = client
        .post(format!("http://{addr}/events?room=lobby"))
        .header("x-user", "ada")
        .header("last-event-id", "41");
    assert_eq!(
        first_event(addr, request).await,
        "POST /events?room=lobby HTTP/1.1 last=Some(\"41\") headers=last-event-id user=false"
    );
    let request = client.get(format!("http://{addr}/events"));
    assert_eq!(
        first_event(addr, request).await,
        "GET /events HTTP/1.1 last=None headers= user=false"
    );
}

#[tokio::test]
async fn keep_headers_and_keep_extensions_keep_them() {
    let copies = Arc::new(AtomicUsize::new(0));
    let layer = SseLayer::new(report).keep_headers().keep_extensions();
    let addr = serve(app(layer, &copies)).await;
    let request = reqwest::Client::new()
        .get(format!("http://{addr}/events"))
        .header("x-user", "ada");
    let data = first_event(addr, request).await;
    assert!(
        data.starts_with("GET /events HTTP/1.1 last=None headers="),
        "{data}"
    );
    assert!(
        data.contains("x-user") && data.ends_with("user=true"),
        "{data}"
    );
    let headers = SseLayer::new(report).keep_headers();
    let addr = serve(app(headers, &copies)).await;
    let request = reqwest::Client::new()
        .get(format!("http://{addr}/events"))
        .header("x-user", "ada");
    let data = first_event(addr, request).await;
    assert!(
        data.contains("x-user") && data.ends_with("user=false"),
        "{data}"
    );
}

/// HTTP/2 requests carry a scheme and an authority: the context keeps them.
#[tokio::test]
async fn an_http2_context_keeps_the_whole_uri() {
    let copies = Arc::new(AtomicUsize::new(0));
    let addr = serve(app(SseLayer::new(report), &copies)).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let request = client
        .get(format!("http://{addr}/events?a=1"))
        .header("last-event-id", "7");
    assert_eq!(
        first_event(addr, request).await,
        format!(
            "GET http://{addr}/events?a=1 HTTP/2.0 last=Some(\"7\") headers=last-event-id user=false"
        )
    );
}

#[tokio::test]
async fn the_ready_function_and_the_callback_share_one_copy() {
    let copies = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<(String, DisconnectReason)>>> = Arc::default();
    let saw = seen.clone();
    let layer = SseLayer::new(report)
        .keep_headers()
        .keep_extensions()
        .on_client_disconnect(move |ctx, reason| saw.lock().unwrap().push((describe(ctx), reason)));
    let addr = serve(app(layer, &copies)).await;
    let request = reqwest::Client::new()
        .get(format!("http://{addr}/events?x=1"))
        .header("last-event-id", "9");
    let response = request.send().await.unwrap();
    let mut stream = events(response);
    let sent = next_event(&mut stream).await.expect("an event").data;
    // The ready function holds its context (it is waiting in `closed()`),
    // the body holds it for the callback: one copy of the request between them.
    eventually("the handler's copy to go", || copies.load(SeqCst) == 1).await;
    drop(stream);
    eventually("the callback", || !seen.lock().unwrap().is_empty()).await;
    let (described, reason) = seen.lock().unwrap()[0].clone();
    assert_eq!(described, sent);
    assert_eq!(reason, DisconnectReason::ClientDisconnected);
    eventually("the context's end", || copies.load(SeqCst) == 0).await;
}
