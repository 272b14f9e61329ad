//! Edge cases of the in-memory hub that a hostile review found (the
//! `DEFECT` tests failed before their fix) or tried (`attempt_*`): tests
//! over the public API, real loopback TCP and the independent
//! `eventsource-stream` parser.

mod common;

use std::{sync::mpsc, time::Duration};

use axum::{Router, routing::get};
use common::*;
use tower_sse::hub::{Hub, LagPolicy};

/// Runs `body` on a current-thread runtime with tokio's clock paused, in a
/// thread of its own; fails with `hang` unless it returns within
/// [`PATIENCE`] (a hang under a lock would never return).
fn returns_on_a_paused_clock<F>(hang: &str, body: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(body());
        let _ = done.send(());
    });
    finished.recv_timeout(PATIENCE).expect(hang);
}

/// DEFECT (fixed). `max_age` promises that an idle topic goes once its newest
/// event is older than `age`. The expiry queue popped a topic at its
/// deadline, `newest.at + age` (`Topics::expire`), but `Ring::evict` forgets
/// an event only when it is strictly older than `age`: at exactly that
/// instant nothing was evicted, the topic was scheduled again for the same
/// instant and popped again, an endless loop under the topic map lock, so
/// every later publish and subscribe hung too. Deterministic under tokio's
/// paused clock (which the hub uses).
#[test]
fn an_idle_topic_expiring_exactly_now_does_not_hang_the_hub() {
    returns_on_a_paused_clock(
        "publish never returned: the expiry queue loops under the topic map lock",
        || async {
            let hub = Hub::builder().max_age(Duration::from_secs(1)).build();
            hub.publish("idle", "old").await.unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
            // Any publish (or subscribe) runs the expiry queue first.
            hub.publish("other", "new").await.unwrap();
        },
    );
}

/// The same boundary reached by a stream arriving (acquire runs the expiry
/// queue too): a subscriber, not only a publisher, hangs.
#[test]
fn a_stream_arriving_when_a_topic_expires_exactly_now_does_not_hang() {
    returns_on_a_paused_clock(
        "Hub::stream never returned: the expiry queue loops under the topic map lock",
        || async {
            let hub = Hub::builder().max_age(Duration::from_millis(500)).build();
            hub.publish("idle", "old").await.unwrap();
            tokio::time::advance(Duration::from_millis(500)).await;
            let response = hub
                .stream(
                    &["room"],
                    tower_sse::StreamContext::from_request(
                        &http::Request::get("/events").body(()).unwrap(),
                    ),
                )
                .map(|_| ());
            assert!(response.is_ok());
        },
    );
}

// ---- Attempts that found nothing (kept as regression checks) ----

/// HTTP/2 (h2c, prior knowledge): two hub streams on one connection, a
/// silent and a busy topic per stream, every event once and in order.
#[tokio::test]
async fn attempt_http2_multi_topic_streams_get_every_event_in_order() {
    let hub = Hub::builder().history(10_000).build();
    let layer = hub.layer(|_| Ok(vec!["busy".to_owned(), "silent".to_owned()]));
    let addr = serve(Router::new().route("/events", get(|| async {}).layer(layer))).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = client
            .get(format!("http://{addr}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        streams.push(events(response));
    }
    eventually("both streams counted", || hub.subscribers() == 2).await;
    let publisher = {
        let hub = hub.clone();
        tokio::spawn(async move {
            for i in 0..2_000u32 {
                let topic = if i % 97 == 0 { "silent" } else { "busy" };
                hub.publish(topic, i.to_string()).await.unwrap();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    for stream in &mut streams {
        for i in 0..2_000u32 {
            let event = next_event(stream).await.unwrap();
            assert_eq!(event.data, i.to_string());
        }
    }
    publisher.await.unwrap();
}

/// Publish racing subscribe: the moment `subscribers()` counts a stream, an
/// event published reaches it (1,000 rounds, streams coming and going on a
/// topic whose last stream just left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_an_event_published_once_counted_always_arrives() {
    let hub = Hub::new();
    let layer = hub.layer(|_| Ok(vec!["t".to_owned()]));
    let addr = serve(Router::new().route("/events", get(|| async {}).layer(layer))).await;
    let client = reqwest::Client::new();
    for round in 0..300u32 {
        let response = client
            .get(format!("http://{addr}/events"))
            .send()
            .await
            .unwrap();
        eventually("counted", || hub.subscribers() == 1).await;
        hub.publish("t", round.to_string()).await.unwrap();
        let mut stream = events(response);
        let event = next_event(&mut stream).await.unwrap();
        assert_eq!(event.data, round.to_string());
        drop(stream);
        eventually("gone", || hub.subscribers() == 0).await;
    }
}

/// LagPolicy::Close on a body-served stream with a client that stops
/// reading: the stream ends and leaves the hub.
#[tokio::test]
async fn attempt_lag_close_frees_the_stream() {
    let hub = Hub::builder()
        .history(16)
        .lag_policy(LagPolicy::Close)
        .build();
    let layer = hub.layer(|_| Ok(vec!["t".to_owned()]));
    let addr = serve(Router::new().route("/events", get(|| async {}).layer(layer))).await;
    let response = fetch(addr, "/events").await;
    eventually("counted", || hub.subscribers() == 1).await;
    for i in 0..5_000u32 {
        hub.publish("t", "x".repeat(1024) + &i.to_string())
            .await
            .unwrap();
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let received = all_events(response).await;
    assert!(received.len() < 5_000);
    eventually("left", || hub.subscribers() == 0).await;
}

/// Shutdown with hub streams: a stream waiting on a silent topic and one
/// with a snapshot still pending (a snapshot function that never ends) both
/// get the shutdown event, end, and leave the hub.
#[tokio::test]
async fn attempt_shutdown_ends_waiting_and_snapshotting_hub_streams() {
    let hub = Hub::builder()
        .history(4)
        .snapshot(|_topic: String| futures::future::pending::<tower_sse::Event>())
        .build();
    let token = tower_sse::CancellationToken::new();
    let layer = hub
        .layer(|_| Ok(vec!["t".to_owned()]))
        .shutdown_on(token.clone())
        .shutdown_event(tower_sse::Event::new("bye").name("shutdown"));
    let addr = serve(Router::new().route("/events", get(|| async {}).layer(layer))).await;
    let waiting = fetch(addr, "/events").await;
    // An unknown id: a snapshot, which never comes.
    let snapshotting = reqwest::Client::new()
        .get(format!("http://{addr}/events"))
        .header("last-event-id", "nope")
        .send()
        .await
        .unwrap();
    eventually("both counted", || hub.subscribers() == 2).await;
    token.cancel();
    for response in [waiting, snapshotting] {
        let received = all_events(response).await;
        assert_eq!(received.last().map(|e| e.event.as_str()), Some("shutdown"));
    }
    eventually("left", || hub.subscribers() == 0).await;
}

/// A stalled client (stops reading) on a hub stream under a publish flood
/// is evicted by `stall_timeout` and leaves the hub.
#[tokio::test]
async fn attempt_stall_timeout_evicts_a_stalled_hub_stream() {
    let hub = Hub::builder().history(64).build();
    let layer = hub
        .layer(|_| Ok(vec!["t".to_owned()]))
        .stall_timeout(Duration::from_millis(300));
    let addr = serve(Router::new().route("/events", get(|| async {}).layer(layer))).await;
    let response = fetch(addr, "/events").await;
    eventually("counted", || hub.subscribers() == 1).await;
    let big = "x".repeat(32 * 1024);
    for _ in 0..400 {
        hub.publish("t", big.clone()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        if hub.subscribers() == 0 {
            break;
        }
    }
    eventually("evicted", || hub.subscribers() == 0).await;
    drop(response);
}
