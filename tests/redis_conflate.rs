//! The conflating lag policy on Redis Streams, against a real
//! `redis-server`: the conflation key is stored with each entry (field
//! `key`), so a node that did not publish an event conflates it alike. One
//! hub publishes; another, with its own connections and its own axum server
//! on loopback, serves a client that stops reading.
//!
//! Against `REDIS_URL`, or a `redis-server` of the test's own
//! (`common::Redis`, as the other Redis tests).
#![cfg(feature = "redis")]

mod common;

use axum::{Router, routing::get};
use common::*;
use eventsource_stream::Event as Received;
use futures::Stream;
use tower_sse::hub::{Hub, LAGGED_EVENT};

/// Each topic's history (and Redis trim), in events.
const HISTORY: usize = 64;

/// Two nodes on one Redis under a prefix of their own: one that publishes,
/// keying events by [`first_word`], and one whose key function never keys
/// anything (it publishes nothing: the keys it conflates by come from
/// Redis), serving a client on `topics` (comma-separated).
async fn nodes(
    url: &str,
    test: &str,
    topics: &str,
) -> (Hub, Hub, impl Stream<Item = Received> + Unpin + use<>) {
    let prefix = prefix(test);
    let publisher = Hub::builder()
        .history(HISTORY)
        .key_prefix(&prefix)
        .conflate_by(first_word)
        .build_redis(url)
        .await
        .unwrap();
    let server = Hub::builder()
        .history(HISTORY)
        .key_prefix(&prefix)
        .conflate_by(|_| None)
        .build_redis(url)
        .await
        .unwrap();
    let picked: Vec<String> = topics.split(',').map(str::to_owned).collect();
    let layer = server.layer(move |_| Ok(picked.clone()));
    let app = Router::new().route("/events", get(|| async {}).layer(in_mode(layer)));
    let addr = serve_small_buffers(app).await;
    let stream = events(fetch(addr, "/events").await);
    eventually("the subscription", || server.subscribers() == 1).await;
    (publisher, server, stream)
}

/// The client of the serving node stops reading while 1,000 events (3 MiB)
/// are published to each of `topics` on the other node, then reads
/// everything.
async fn stalled_client(test: &str, topics: &[&str]) {
    let redis = Redis::start().await;
    let (publisher, server, mut stream) = nodes(&redis.url, test, &topics.join(",")).await;
    let log = Log::default();
    for n in 0..1_000u64 {
        for topic in topics {
            publish(&publisher, &log, topic, n).await;
        }
    }
    let mut received = Vec::new();
    read_to_end(&publisher, &log, &mut stream, &mut received).await;
    assert_conflated(&server, &log, &received);
    let data = received.iter().filter(|e| e.event != LAGGED_EVENT).count();
    println!("{data} events received: {}", summary(&received));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_stalled_client_of_another_node_gets_the_newest_value_of_every_key() {
    stalled_client("conflate-one", &["t"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_topics_a_stalled_client_gets_every_key_of_both_in_the_hubs_order() {
    stalled_client("conflate-two", &["t", "u"]).await;
}
