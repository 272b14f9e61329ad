//! Lag notices of the hub, end to end over loopback TCP and read by the
//! independent parser: through its compatible path (`Hub::ready` over an
//! `EventSender`) with dropping and sliding buffers (defect 5 of issue 12:
//! notices were themselves dropped, or came one per event), and served
//! from the body (`Hub::layer`).
//!
//! A client that cannot keep up must see every gap in the hub's ids announced
//! by a `lagged` notice (counting at least the gap) before the next event it
//! gets, every notice the hub counted must reach it, and notices must stay
//! rare: at most one per buffer's worth of events, never one per event.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use common::*;
use eventsource_stream::Event as Received;
use futures::Stream;
use tower_sse::{
    Buffer, Event, SseLayer,
    hub::{Hub, LAGGED_EVENT},
};

/// Each stream's buffer, in events.
const CAPACITY: usize = 8;
/// Each topic's history, in events: how far a stream may fall behind.
const HISTORY: usize = 64;
/// Events of at least 2 KiB go out one per frame: the body drains the
/// buffer one event at a time, the hardest case for batching notices.
const PAYLOAD: usize = 3 * 1024;

/// A hub with a small history, served through `Hub::ready` with `buffer`,
/// or from the body (`Hub::layer`) without one.
async fn hub_stream(buffer: Option<Buffer>) -> (Hub, impl Stream<Item = Received> + Unpin) {
    let hub = Hub::builder().history(HISTORY).build();
    let layer = match buffer {
        Some(buffer) => SseLayer::new(hub.ready(|_| vec!["t".into()])).buffer(buffer),
        None => hub.layer(|_| Ok(vec!["t".into()])),
    };
    let app = Router::new().route("/events", get(|| async {}).layer(in_mode(layer)));
    let addr = serve_small_buffers(app).await;
    let stream = events(fetch(addr, "/events").await);
    eventually("the subscription", || hub.subscribers() == 1).await;
    (hub, stream)
}

fn payload() -> String {
    "x".repeat(PAYLOAD)
}

/// Publishes `end`, then reads until it comes (each event within
/// [`PATIENCE`]); a stream that ends first fails the test.
async fn read_to_end(
    hub: &Hub,
    stream: &mut (impl Stream<Item = Received> + Unpin),
    received: &mut Vec<Received>,
) {
    hub.publish("t", Event::new("end").name("end"))
        .await
        .unwrap();
    loop {
        let event = next(stream, received).await;
        let end = event.event == "end";
        received.push(event);
        if end {
            return;
        }
    }
}

/// Every gap in the ids (the hub's sequence, from 1) is announced, before
/// the next event, by notices counting at least the gap; and the notices
/// received add up to what the hub counted (none was lost). Returns the
/// number of notices and of events.
fn assert_every_gap_announced(hub: &Hub, received: &[Received]) -> (usize, usize) {
    let mut expected = 1u64;
    let mut announced = 0u64;
    let mut total_announced = 0u64;
    let (mut notices, mut data) = (0, 0);
    for event in received {
        if event.event == LAGGED_EVENT {
            let count: u64 = event.data.parse().expect("a lagged count");
            assert!(count > 0, "an empty lagged notice");
            announced += count;
            total_announced += count;
            notices += 1;
            continue;
        }
        data += 1;
        let id: u64 = event.id.parse().expect("a hub id");
        assert!(id >= expected, "id {id} repeated or out of order");
        let gap = id - expected;
        assert!(
            announced >= gap,
            "a gap of {gap} before id {id} was announced as {announced}: {}",
            summary(received)
        );
        announced = 0;
        expected = id + 1;
    }
    assert_eq!(
        total_announced,
        hub.lagged_events(),
        "notices were lost: {}",
        summary(received)
    );
    (notices, data)
}

/// Notices are not one per event: each is followed by several events before
/// the next (a buffer's worth where history holds them), and they are few.
fn assert_notices_are_sparse(received: &[Received]) {
    let kinds: Vec<bool> = received.iter().map(|e| e.event == LAGGED_EVENT).collect();
    let notices = kinds.iter().filter(|&&lag| lag).count();
    let data = kinds.len() - notices;
    // Between two notices, how many events.
    let mut between = Vec::new();
    let mut run = None;
    for &lag in &kinds {
        match (lag, run) {
            (true, Some(n)) => {
                between.push(n);
                run = Some(0);
            }
            (true, None) => run = Some(0),
            (false, Some(n)) => run = Some(n + 1),
            (false, None) => {}
        }
    }
    assert!(
        between.iter().all(|&n| n > 1),
        "two notices with one event or none between them ({between:?}): {}",
        summary(received)
    );
    assert!(
        notices * 4 <= data,
        "{notices} notices for {data} events: {}",
        summary(received)
    );
}

/// The client stops reading while 2,000 events (6 MiB) are published, then
/// reads everything.
async fn stalled_client(buffer: Option<Buffer>) {
    let (hub, mut stream) = hub_stream(buffer).await;
    let published = 2_000u64;
    for i in 0..published {
        hub.publish("t", payload()).await.unwrap();
        if i % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut received = Vec::new();
    read_to_end(&hub, &mut stream, &mut received).await;
    let (notices, data) = assert_every_gap_announced(&hub, &received);
    assert!(hub.lagged_events() > 0, "the client should have lagged");
    assert_notices_are_sparse(&received);
    println!("{notices} notices, {data} events: {}", summary(&received));
}

/// The client reads about one event per millisecond while events are
/// published about twenty times as fast, for 600 events.
async fn slow_client(buffer: Option<Buffer>) {
    let (hub, mut stream) = hub_stream(buffer).await;
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (hub, stop) = (hub.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(SeqCst) {
                for _ in 0..20 {
                    hub.publish("t", payload()).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut received = Vec::new();
    let mut data = 0;
    while data < 600 {
        let event = next(&mut stream, &received).await;
        data += usize::from(event.event != LAGGED_EVENT);
        received.push(event);
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, SeqCst);
    publisher.await.unwrap();
    read_to_end(&hub, &mut stream, &mut received).await;
    let (notices, data) = assert_every_gap_announced(&hub, &received);
    assert!(hub.lagged_events() > 0, "the client should have lagged");
    assert_notices_are_sparse(&received);
    println!("{notices} notices, {data} events: {}", summary(&received));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_buffer_a_stalled_client_sees_every_gap_announced() {
    stalled_client(Some(Buffer::dropping(CAPACITY))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_buffer_a_stalled_client_sees_every_gap_announced() {
    stalled_client(Some(Buffer::sliding(CAPACITY))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_buffer_a_slow_client_gets_few_notices_and_every_gap_announced() {
    slow_client(Some(Buffer::dropping(CAPACITY))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_buffer_a_slow_client_gets_few_notices_and_every_gap_announced() {
    slow_client(Some(Buffer::sliding(CAPACITY))).await;
}

/// A fixed buffer, for comparison: the hub waits for room there already.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_buffer_a_slow_client_gets_few_notices_and_every_gap_announced() {
    slow_client(Some(Buffer::fixed(CAPACITY))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_from_the_body_a_stalled_client_sees_every_gap_announced() {
    stalled_client(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_from_the_body_a_slow_client_gets_few_notices_and_every_gap_announced() {
    slow_client(None).await;
}
