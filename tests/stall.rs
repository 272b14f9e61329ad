//! Clients that stay connected but stop reading: `stall_timeout` evicts them
//! on HTTP/1.1 and HTTP/2, and graceful shutdown no longer waits for them.
//! Each test prints what it measured (`-- --nocapture`).

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use common::*;
use futures::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};
use tower_sse::{CancellationToken, DisconnectReason, EventSender, SseLayer, StreamContext};

const STALL: Duration = Duration::from_millis(300);
const HEARTBEAT: Duration = Duration::from_millis(100);

/// When and why each stream ended.
type Ends = Arc<Mutex<Vec<(DisconnectReason, Instant)>>>;

/// A ready function that sends 1 KiB events as fast as the stream takes them.
async fn firehose(events: EventSender, _ctx: StreamContext) {
    let payload = "x".repeat(1000);
    while events.send(payload.as_str()).await.is_ok() {}
}

fn stalling_layer(ends: &Ends) -> SseLayer {
    stalling_layer_after(ends, STALL)
}

fn stalling_layer_after(ends: &Ends, stall: Duration) -> SseLayer {
    let ends = ends.clone();
    in_mode(SseLayer::new(firehose))
        .heartbeat(HEARTBEAT)
        .stall_timeout(stall)
        .on_client_disconnect(move |_, reason| ends.lock().unwrap().push((reason, Instant::now())))
}

/// A raw HTTP/1.1 client with a small receive buffer, so that it stalls the
/// connection quickly once it stops reading; returns it once the head and a
/// first event were read.
async fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.len() < 2048 {
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("no response")
            .unwrap();
        assert!(n > 0, "closed before the first events");
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

/// Reads what the server had written, then expects the connection closed.
async fn drains_to_the_end(mut stream: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server kept the stalled connection open");
}

async fn wait_for_end(ends: &Ends) -> (DisconnectReason, Instant) {
    eventually("the stream to end", || !ends.lock().unwrap().is_empty()).await;
    ends.lock().unwrap()[0]
}

/// The eviction must come within the stall timeout and one heartbeat of
/// the stall (the socket's buffers fill within milliseconds at this rate).
fn assert_evicted_in_time(stopped: Instant, ended: Instant, what: &str) {
    let after = ended - stopped;
    println!("{what}: evicted {after:?} after the client stopped reading (timeout {STALL:?})");
    assert!(
        after <= STALL + HEARTBEAT + Duration::from_millis(700),
        "{what}: evicted only after {after:?}"
    );
}

/// Serves `app`, stalls a raw HTTP/1.1 client on it, and expects the
/// stream evicted in time, counted, and the connection closed.
async fn expect_http1_eviction(app: Router, ends: &Ends, stats: &tower_sse::SseStats, what: &str) {
    let stream = small_window_client(serve(app).await).await;
    let stopped = Instant::now();
    let (reason, ended) = wait_for_end(ends).await;
    assert_eq!(reason, DisconnectReason::Stalled);
    assert_evicted_in_time(stopped, ended, what);
    assert_eq!(stats.streams_stalled(), 1);
    drains_to_the_end(stream).await;
}

#[tokio::test]
async fn a_stalled_http1_client_is_evicted() {
    let ends = Ends::default();
    let layer = stalling_layer(&ends);
    let stats = layer.stats();
    let app = Router::new().route("/events", get(|| async {}).layer(layer));
    expect_http1_eviction(app, &ends, &stats, "HTTP/1.1").await;
}

#[tokio::test]
async fn a_stalled_http2_client_is_evicted() {
    let ends = Ends::default();
    let layer = stalling_layer(&ends);
    let stats = layer.stats();
    let addr = serve(Router::new().route("/events", get(|| async {}).layer(layer))).await;

    // An HTTP/2 client whose application stops reading the stream: its
    // flow-control window closes, and the server's frames stay unwritten.
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client
        .get(format!("http://{addr}/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(PATIENCE, body.next()).await.unwrap();
    assert!(matches!(first, Some(Ok(_))));
    let stopped = Instant::now();
    let (reason, ended) = wait_for_end(&ends).await;
    assert_eq!(reason, DisconnectReason::Stalled);
    assert_evicted_in_time(stopped, ended, "HTTP/2");
    assert_eq!(stats.streams_stalled(), 1);

    // Reading again, the client finds the stream reset after what was sent.
    let outcome = tokio::time::timeout(PATIENCE, async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                return true;
            }
        }
        false
    })
    .await
    .expect("the stream neither ended nor failed");
    assert!(
        outcome,
        "the stalled stream ended cleanly instead of being reset"
    );
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn start_stream_takes_a_stall_timeout_too() {
    let ends = Ends::default();
    let recorded = ends.clone();
    let stats = tower_sse::SseStats::default();
    let counted = stats.clone();
    let handler = move |ctx: StreamContext| {
        let ends = recorded.clone();
        let stats = counted.clone();
        async move {
            response_in_mode(tower_sse::start_stream(firehose, ctx, HEARTBEAT, 10))
                .stall_timeout(STALL)
                .stats(&stats)
                .on_client_disconnect(move |_, reason| {
                    ends.lock().unwrap().push((reason, Instant::now()))
                })
        }
    };
    let app = Router::new().route("/events", get(handler));
    expect_http1_eviction(app, &ends, &stats, "start_stream, HTTP/1.1").await;
}

#[tokio::test]
async fn a_reader_that_keeps_up_is_never_evicted() {
    // Longer than the other tests' timeout: on a busy machine a reader
    // descheduled for 300 ms has stalled, as far as the server can tell.
    let stall = Duration::from_secs(2);
    let ends = Ends::default();
    let layer = stalling_layer_after(&ends, stall);
    let addr = serve(Router::new().route("/events", get(|| async {}).layer(layer))).await;
    let mut events = events(fetch(addr, "/events").await);
    let started = Instant::now();
    let mut received = 0;
    while started.elapsed() < stall * 2 {
        assert!(next_event(&mut events).await.is_some());
        received += 1;
    }
    println!(
        "a reader that keeps up: {received} events in {:?}",
        stall * 2
    );
    assert!(
        ends.lock().unwrap().is_empty(),
        "evicted a reader that kept up"
    );
}

#[tokio::test]
async fn an_idle_stream_with_a_stall_timeout_keeps_its_heartbeats() {
    let layer = in_mode(SseLayer::new(|events: EventSender, _| async move {
        events.closed().await;
    }))
    .heartbeat(Duration::from_millis(50))
    .stall_timeout(Duration::from_millis(200));
    let addr = serve(Router::new().route("/events", get(|| async {}).layer(layer))).await;
    let mut response = fetch(addr, "/events").await;
    let mut heartbeats = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(600) {
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the idle stream ended");
        heartbeats += chunk.windows(3).filter(|w| w == b": \r").count();
    }
    assert!(
        heartbeats >= 6,
        "{heartbeats} heartbeats in 600 ms at 50 ms"
    );
}

/// Without a stall timeout a stalled client holds graceful shutdown open
/// (hyper waits for the body); with one, `serve` returns within it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_does_not_wait_for_a_stalled_client() {
    for stall_timeout in [None, Some(STALL)] {
        let ends = Ends::default();
        let shutdown = CancellationToken::new();
        let recorded = ends.clone();
        let mut layer = in_mode(SseLayer::new(firehose))
            .heartbeat(HEARTBEAT)
            .shutdown_on(shutdown.clone())
            .on_client_disconnect(move |_, reason| {
                recorded.lock().unwrap().push((reason, Instant::now()))
            });
        if let Some(timeout) = stall_timeout {
            layer = layer.stall_timeout(timeout);
        }
        let app = Router::new().route("/events", get(|| async {}).layer(layer));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        let stream = small_window_client(addr).await;
        // Let the buffers fill, then ask the server to stop.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let signalled = Instant::now();
        shutdown.cancel();
        let returned = tokio::time::timeout(STALL * 5, server).await;
        match stall_timeout {
            None => {
                assert!(
                    returned.is_err(),
                    "serve returned although a client was stalled"
                );
                println!(
                    "shutdown, no stall timeout: serve still waiting after {:?}",
                    STALL * 5
                );
            }
            Some(_) => {
                returned
                    .expect("serve did not return within the stall timeout")
                    .unwrap()
                    .unwrap();
                let took = signalled.elapsed();
                println!(
                    "shutdown, stall timeout {STALL:?}: serve returned {took:?} after the signal"
                );
                assert!(took <= STALL + Duration::from_millis(700));
                assert_eq!(ends.lock().unwrap()[0].0, DisconnectReason::Stalled);
            }
        }
        drop(stream);
    }
}
