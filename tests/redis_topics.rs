//! Topics that come and go on the hub's Redis backend: 100,000 short-lived
//! topics leave nothing behind, on the node or in Redis.
//!
//! ```text
//! cargo test --features redis,testing --test redis_topics
//! ```
#![cfg(all(feature = "redis", feature = "testing"))]

mod common;

use std::time::Duration;

use axum::{Router, routing::get};
use common::*;
use http::Request;
use tower_sse::{
    hub::Hub,
    testing::{TestBody, TestClient},
};

/// Each of `TOWER_SSE_TOPICS` (100,000) topics gets one event and one stream
/// that resumes from before it (a replay from Redis: the node follows the
/// topic, reads the event, and leaves); 64 at a time, in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_topics_leave_nothing_on_the_node_or_in_redis() {
    let topics: usize = std::env::var("TOWER_SSE_TOPICS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let redis = Redis::start().await;
    let prefix = prefix("short");
    let age = Duration::from_secs(1);
    let hub = Hub::builder()
        .key_prefix(&prefix)
        .max_age(age)
        .build_redis(&redis.url)
        .await
        .unwrap();
    let layer = hub.layer(|parts| {
        Ok(vec![
            parts
                .uri
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
        ])
    });
    let app = Router::new().route("/t/{name}", get(|| async {}).layer(layer));
    let started = std::time::Instant::now();
    let workers = 64;
    let mut most = 0;
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (hub, app) = (hub.clone(), app.clone());
            tokio::spawn(async move {
                let mut most = 0;
                for i in (w..topics).step_by(workers) {
                    let topic = format!("s{i}");
                    let id = hub
                        .publish(&topic, format!("only event of {topic}"))
                        .await
                        .unwrap();
                    // An id just before it (within `max_age`).
                    let ms: u64 = id.split_once('-').unwrap().0.parse().unwrap();
                    let request = Request::get(format!("/t/{topic}"))
                        .header("last-event-id", format!("{}-0", ms - 1))
                        .body(TestBody)
                        .unwrap();
                    let mut stream = TestClient::new(app.clone())
                        .patience(PATIENCE)
                        .send(request)
                        .await
                        .unwrap();
                    let replayed = stream
                        .expect_event("message", &format!("only event of {topic}"))
                        .await;
                    assert_eq!(replayed.id, id);
                    most = most.max(hub.topics());
                }
                most
            })
        })
        .collect();
    for task in tasks {
        most = most.max(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    eventually("every topic to go from the node", || hub.topics() == 0).await;
    // Redis forgets each stream key `max_age` after its last event.
    tokio::time::sleep(age + Duration::from_millis(500)).await;
    let client = ::redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    println!(
        "{topics} topics in {elapsed:?}: at most {most} on the node at once; {} keys left in Redis",
        keys.len()
    );
    assert!(most <= workers * 2, "{most} topics alive at once");
    // The hub's clock stays.
    assert!(
        keys.len() <= 1,
        "keys left: {:?}",
        &keys[..keys.len().min(5)]
    );
}
