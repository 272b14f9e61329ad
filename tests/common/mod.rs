//! Helpers shared by the end-to-end tests: a real server on loopback, a real
//! HTTP client, and the independent `eventsource-stream` parser; serving the
//! hub ([`hub`]) and a Redis for its backend ([`redis`]).
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

mod conflate;
mod hub;
#[allow(unused_imports)]
pub use self::conflate::*;
#[allow(unused_imports)]
pub use self::hub::*;

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
#[allow(unused_imports)]
pub use self::redis::*;

use axum::{Router, routing::get};
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Long enough for any step of a test on a loaded machine; every wait is bounded by it.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Serves `app` on `127.0.0.1:0` and returns its address.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// `/events`, served by `layer` as it is.
pub fn route(layer: tower_sse::SseLayer) -> Router {
    Router::new().route("/events", get(|| async {}).layer(layer))
}

/// `/events`, served by `layer` in the mode under test ([`in_mode`]).
pub fn route_in_mode(layer: tower_sse::SseLayer) -> Router {
    route(in_mode(layer))
}

/// A GET over real TCP.
pub async fn fetch(addr: SocketAddr, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap()
}

/// A GET over real TCP that resumes after `last`, sent as `Last-Event-ID`,
/// when there is one.
pub async fn fetch_resuming(addr: SocketAddr, path: &str, last: Option<&str>) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(format!("http://{addr}{path}"));
    if let Some(last) = last {
        request = request.header("last-event-id", last);
    }
    request.send().await.unwrap()
}

/// Parses a response body with the independent parser.
pub fn events(response: reqwest::Response) -> impl Stream<Item = Event> + Unpin {
    Box::pin(
        response
            .bytes_stream()
            .eventsource()
            .map(|event| event.expect("the independent parser rejected the stream")),
    )
}

/// Every event until the body ends, by the independent parser; a transport
/// or parse error is an `Err` (a dying connection must fail the test, not panic in a helper).
pub async fn try_all_events(addr: SocketAddr, path: &str) -> Result<Vec<Event>, String> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|err| format!("request failed: {err:?}"))?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let mut parsed = response.bytes_stream().eventsource();
    let mut events = Vec::new();
    while let Some(event) = parsed.next().await {
        events.push(event.map_err(|err| format!("body failed after {events:?}: {err:?}"))?);
    }
    Ok(events)
}

/// Every event until the stream ends.
pub async fn all_events(response: reqwest::Response) -> Vec<Event> {
    tokio::time::timeout(PATIENCE, events(response).collect())
        .await
        .expect("the stream did not end")
}

/// The next event, within [`PATIENCE`].
pub async fn next_event(events: &mut (impl Stream<Item = Event> + Unpin)) -> Option<Event> {
    tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("no event came")
}

/// A raw HTTP/1.1 GET: returns the head and the whole body as sent on the wire
/// (chunked framing removed), read until the server closes.
pub async fn raw_get(addr: SocketAddr, path: &str) -> (String, Vec<u8>) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut wire = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut wire))
        .await
        .expect("the stream did not end")
        .unwrap();
    let split = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8(wire[..split].to_vec()).unwrap();
    (head, dechunk(&wire[split..]))
}

/// Removes HTTP/1.1 chunked framing.
pub fn dechunk(mut wire: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = wire.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&wire[..line_end]).unwrap(), 16).unwrap();
        wire = &wire[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&wire[..size]);
        wire = &wire[size + 2..];
    }
}

/// Waits until `condition` holds, checking every 10 ms, for at most [`PATIENCE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether this run spawns every ready function: the suite runs twice in CI,
/// as is (a fixed buffer's ready function is polled by the body) and with
/// `TOWER_SSE_TEST_READY=spawned`, where every stream built through
/// [`in_mode`] or [`response_in_mode`] runs its ready function as a task of
/// its own (`spawn_ready`). Tests of one mode's own behaviour set it
/// explicitly instead.
pub fn spawned() -> bool {
    std::env::var("TOWER_SSE_TEST_READY").is_ok_and(|mode| mode == "spawned")
}

/// `layer` in the mode under test.
pub fn in_mode(layer: tower_sse::SseLayer) -> tower_sse::SseLayer {
    if spawned() {
        layer.spawn_ready()
    } else {
        layer
    }
}

/// `response` in the mode under test.
pub fn response_in_mode(response: tower_sse::SseResponse) -> tower_sse::SseResponse {
    if spawned() {
        response.spawn_ready()
    } else {
        response
    }
}
