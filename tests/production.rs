//! `examples/production.rs` and what docs/production.md claims of it, over
//! loopback TCP: `axum::serve` keeps connections that send half a request
//! open; the example's header-read timeout closes them while its streams
//! run on; its graceful shutdown ends every stream and is bounded.

mod common;

use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower_sse::{CancellationToken, EventSender, SseLayer, StreamContext};

#[path = "../examples/production.rs"]
mod production;

/// How many connections send half a request (`TOWER_SSE_HALF_REQUESTS`
/// overrides: docs/production.md gives the figures for 1,000).
fn half_requests() -> usize {
    std::env::var("TOWER_SSE_HALF_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200)
}

/// Opens `n` connections that each send a request line and one header,
/// never the blank line that ends the head.
async fn half_request(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut connections = Vec::with_capacity(n);
    for _ in 0..n {
        let mut connection = TcpStream::connect(addr).await.unwrap();
        connection
            .write_all(b"GET /ticks HTTP/1.1\r\nhost: localhost\r\n")
            .await
            .unwrap();
        connections.push(connection);
    }
    connections
}

/// How many of `connections` the server has closed (a read gives EOF or an
/// error at once rather than waiting).
async fn closed(connections: &mut [TcpStream]) -> usize {
    let mut closed = 0;
    for connection in connections {
        let mut byte = [0; 1];
        match tokio::time::timeout(Duration::from_millis(5), connection.read(&mut byte)).await {
            Ok(Ok(0) | Err(_)) => closed += 1,
            Ok(Ok(_)) => panic!("a response to half a request"),
            Err(_) => {}
        }
    }
    closed
}

#[tokio::test]
async fn half_requests_stay_open_under_axum_serve_but_not_with_a_header_timeout() {
    let n = half_requests();
    let wait = Duration::from_millis(1500);

    let shutdown = CancellationToken::new();
    let addr = serve(production::app(&shutdown)).await;
    let mut plain = half_request(addr, n).await;
    tokio::time::sleep(wait).await;
    let closed_by_axum = closed(&mut plain).await;
    drop(plain);

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let header_timeout = Duration::from_millis(300);
    tokio::spawn(production::serve(
        listener,
        production::app(&shutdown),
        shutdown.clone(),
        header_timeout,
        Duration::from_secs(5),
    ));
    let mut bounded = half_request(addr, n).await;
    // A stream outlives the header timeout: its head was read in time.
    let mut ticks = events(fetch(addr, "/ticks").await);
    tokio::time::sleep(wait).await;
    let closed_with_timeout = closed(&mut bounded).await;
    for expected in ["0", "1"] {
        assert_eq!(next_event(&mut ticks).await.unwrap().data, expected);
    }
    println!(
        "half requests: {n} sent; {closed_by_axum} closed by axum::serve after {wait:?}, \
         {closed_with_timeout} closed with a {header_timeout:?} header timeout"
    );
    assert_eq!(closed_by_axum, 0, "axum::serve closed half requests");
    assert_eq!(closed_with_timeout, n, "the header timeout left some open");
    shutdown.cancel();
}

#[tokio::test]
async fn graceful_shutdown_ends_every_stream_then_returns() {
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(production::serve(
        listener,
        production::app(&shutdown),
        shutdown.clone(),
        Duration::from_secs(10),
        Duration::from_secs(5),
    ));
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut stream = events(fetch(addr, "/ticks").await);
        assert_eq!(next_event(&mut stream).await.unwrap().data, "0");
        streams.push(stream);
    }
    let signalled = Instant::now();
    shutdown.cancel();
    for mut stream in streams {
        // Ticks sent before the signal, then the end (the shutdown event
        // carries only a retry, which dispatches nothing).
        while let Some(event) = next_event(&mut stream).await {
            assert_eq!(event.event, "tick");
        }
    }
    let all_closed = server.await.unwrap().unwrap();
    println!("graceful shutdown of 20 streams: {:?}", signalled.elapsed());
    assert!(all_closed, "the server gave up waiting");
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

/// A stream that ignores the signal (no `shutdown_on`) and a client that
/// stays: the shutdown still returns after `grace`, saying it gave up.
#[tokio::test]
async fn graceful_shutdown_is_bounded() {
    let shutdown = CancellationToken::new();
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send("forever").await;
        events.closed().await;
    };
    let app = Router::new().route("/forever", get(|| async {}).layer(SseLayer::new(ready)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let grace = Duration::from_millis(500);
    let server = tokio::spawn(production::serve(
        listener,
        app,
        shutdown.clone(),
        Duration::from_secs(10),
        grace,
    ));
    let mut stream = events(fetch(addr, "/forever").await);
    assert_eq!(next_event(&mut stream).await.unwrap().data, "forever");
    let signalled = Instant::now();
    shutdown.cancel();
    let all_closed = server.await.unwrap().unwrap();
    assert!(!all_closed, "a stream that ignores the signal closed");
    assert!(signalled.elapsed() >= grace);
    assert!(signalled.elapsed() < grace * 4, "{:?}", signalled.elapsed());
}
