//! The two places a ready function can run, side by side: polled by the
//! body (the default for fixed buffers) or as a task of its own
//! (`spawn_ready`), over real loopback TCP.

mod common;

use std::time::{Duration, Instant};

use axum::{Router, routing::get};
use common::*;
use tower_sse::{Buffer, EventSender, SseLayer, StreamContext};

const HEARTBEAT: Duration = Duration::from_millis(100);
const WORK: Duration = Duration::from_millis(1500);

/// Sends one event, then works for 1.5 s without awaiting, then one more.
async fn busy(events: EventSender, _ctx: StreamContext) {
    if events.send("start").await.is_err() {
        return;
    }
    // CPU work between two awaits, handing the worker's other tasks over
    // as tokio asks of blocking work.
    tokio::task::block_in_place(|| std::thread::sleep(WORK));
    let _ = events.send("done").await;
}

/// The longest silence on the wire, from the request to the last event.
async fn longest_silence(layer: SseLayer) -> Duration {
    let app = Router::new().route(
        "/events",
        get(|| async {}).layer(layer.heartbeat(HEARTBEAT)),
    );
    let addr = serve(app).await;
    let mut last = Instant::now();
    let mut response = fetch(addr, "/events").await;
    let mut longest = Duration::ZERO;
    let mut seen = Vec::new();
    while !seen.windows(4).any(|w| w == b"done") {
        let chunk = tokio::time::timeout(PATIENCE, response.chunk())
            .await
            .expect("nothing written")
            .unwrap()
            .expect("ended before the last event");
        let now = Instant::now();
        longest = longest.max(now - last);
        last = now;
        seen.extend_from_slice(&chunk);
    }
    longest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_ready_function_never_holds_heartbeats_back() {
    let spawned = longest_silence(SseLayer::new(busy).spawn_ready()).await;
    println!("spawned: longest silence {spawned:?} at a {HEARTBEAT:?} heartbeat");
    assert!(
        spawned < HEARTBEAT * 4,
        "heartbeats stopped for {spawned:?} while the ready function worked"
    );
}

/// The documented trade-off of the default: while a body-polled ready
/// function works between two awaits, the body writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_polled_ready_function_holds_heartbeats_back_while_it_works() {
    let polled = longest_silence(SseLayer::new(busy)).await;
    println!("body-polled: longest silence {polled:?} at a {HEARTBEAT:?} heartbeat");
    assert!(polled >= WORK - HEARTBEAT, "longest silence {polled:?}");
}

/// Spawned, a fixed buffer's ready function goes on while the client does
/// not read, until the buffer is full; polled by the body, it waits.
#[tokio::test]
async fn a_spawned_ready_function_fills_the_buffer_while_the_client_waits() {
    for spawn in [true, false] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let ready = move |events: EventSender, _ctx: StreamContext| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(events.clone());
            }
            async move {
                let mut i = 0;
                while events.send(i.to_string()).await.is_ok() {
                    i += 1;
                }
            }
        };
        let mut layer = SseLayer::new(ready).buffer(Buffer::fixed(8));
        if spawn {
            layer = layer.spawn_ready();
        }
        let app = Router::new().route("/events", get(|| async {}).layer(layer));
        // Only the response head is read; the body is never asked for.
        let response = fetch(serve(app).await, "/events").await;
        let sender = rx.await.unwrap();
        // The connection drains the buffer until the socket's buffers are
        // full: give it until then (bounded), then look.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        tokio::time::sleep(Duration::from_millis(200)).await;
        while spawn && sender.queued_events() < 8 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let queued = sender.queued_events();
        println!("spawn_ready {spawn}: {queued} events queued while the client waits");
        if spawn {
            assert_eq!(
                queued, 8,
                "the spawned ready function should fill its buffer"
            );
        } else {
            assert!(queued <= 8);
        }
        drop(response);
    }
}
