//! Edge cases of the hub on Redis that a hostile review found (the
//! `DEFECT` tests failed before their fix) or tried (`attempt_*`), against a
//! real `redis-server` (`REDIS_URL`, or one of the test's own).
#![cfg(feature = "redis")]

mod common;

use std::{net::SocketAddr, time::Duration};

use axum::{Router, routing::get};
use common::*;
use tower_sse::hub::{Hub, RESET_EVENT};

/// A node serving `/events/{topic}`: the topic is the last path segment,
/// percent-decoded (as an axum `Path` extractor would give it).
async fn node(url: &str, prefix: &str) -> (Hub, SocketAddr) {
    redis_node(url, prefix, 1000, |uri| {
        let segment = uri.path().rsplit('/').next().unwrap_or_default();
        vec![percent_decode(segment)]
    })
    .await
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(byte) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// DEFECT (fixed). RESET_EVENT's docs: an id that "cannot be resumed from: older
/// than the history holds, unknown, or unusable" gets a reset, then live
/// events. On Redis a well-formed id *newer than the hub's clock* (a bogus
/// or foreign id, or one from a Redis that lost its data) is taken as a
/// resume point in the local ring (`Backend::start`, src/hub/redis.rs:231-236:
/// every floor is <= it), so `high_water` is set far in the future
/// (src/hub/subscription.rs:364) and every later event is skipped as
/// "delivered already" (subscription.rs:546): the stream is open, counted,
/// heartbeating, and silent for good. The in-memory hub guards the same
/// case (`seq <= published`, subscription.rs:343).
#[tokio::test]
async fn an_id_newer_than_the_hub_clock_gets_a_reset_or_live_events() {
    let redis = Redis::start().await;
    let url = redis.url.clone();
    let prefix = prefix("future-id");
    let (hub, addr) = node(&url, &prefix).await;
    // The hub has a clock and the topic has history.
    hub.publish("room", "before").await.unwrap();
    let response = fetch_resuming(addr, "/events/room", Some("99999999999999-0")).await;
    let mut stream = events(response);
    eventually("counted", || hub.subscribers() == 1).await;
    hub.publish("room", "live").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), stream_next(&mut stream))
        .await
        .expect("no reset and no live event within 5 s: the stream is silent for good");
    assert!(
        event.event == RESET_EVENT || event.data == "live",
        "unexpected event {event:?}"
    );
}

async fn stream_next(
    stream: &mut (impl futures::Stream<Item = eventsource_stream::Event> + Unpin),
) -> eventsource_stream::Event {
    use futures::StreamExt;
    stream.next().await.expect("the stream ended")
}

/// DEFECT (fixed). A topic is the key `<prefix><topic>`, and the hub's clock is the
/// key `<prefix>\0clock` (src/hub/redis.rs:152-154): a topic named
/// "\0clock" *is* the clock key (a string). A stream subscribing to it makes
/// the node's reader `XREAD` that key with the others
/// (redis.rs:518 via `xread`, 588-590); Redis answers WRONGTYPE for the
/// whole command, the reader logs and retries forever (redis.rs:540-545),
/// and no stream of the node, on any topic, gets another event. One
/// client choosing a topic (`/events/%00clock`) stops delivery for all.
#[tokio::test]
async fn a_topic_named_like_the_clock_key_does_not_stop_other_topics() {
    let redis = Redis::start().await;
    let url = redis.url.clone();
    let prefix = prefix("clock-topic");
    let (hub, addr) = node(&url, &prefix).await;
    let mut victim = events(fetch_resuming(addr, "/events/room", None).await);
    eventually("victim counted", || hub.subscribers() == 1).await;
    hub.publish("room", "first").await.unwrap();
    assert_eq!(next_event(&mut victim).await.unwrap().data, "first");
    // The attacker: a topic spelled like the clock key.
    let attacker = fetch_resuming(addr, "/events/%00clock", None).await;
    eventually("attacker counted", || hub.subscribers() == 2).await;
    // Let the reader's round in flight (`XREAD BLOCK` 250 ms) end: the
    // next one reads the new topic too.
    tokio::time::sleep(Duration::from_secs(1)).await;
    hub.publish("room", "second").await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), stream_next(&mut victim))
        .await
        .expect("the victim's stream got nothing: the reader fails on the clock key");
    assert_eq!(event.data, "second");
    drop(attacker);
}

// ---- Attempts that found nothing (kept as regression checks) ----

/// Two nodes; a stream of a silent and a busy topic on node B while node A
/// publishes: every event in order, no lost wake-up for the silent topic.
#[tokio::test]
async fn attempt_a_silent_topic_does_not_hold_back_a_multi_topic_stream() {
    let redis = Redis::start().await;
    let url = redis.url.clone();
    let prefix = prefix("silent");
    let (a, _) = node(&url, &prefix).await;
    let b = Hub::builder()
        .history(1000)
        .key_prefix(&prefix)
        .build_redis(&url)
        .await
        .unwrap();
    let layer = b
        .layer(|_| Ok(vec!["busy".to_owned(), "silent".to_owned()]))
        .heartbeat(Duration::from_millis(100));
    let addr = serve(Router::new().route("/events", get(|| async {}).layer(layer))).await;
    let mut stream = events(fetch_resuming(addr, "/events", None).await);
    eventually("counted", || b.subscribers() == 1).await;
    for i in 0..300u32 {
        let topic = if i == 150 { "silent" } else { "busy" };
        a.publish(topic, i.to_string()).await.unwrap();
    }
    for i in 0..300u32 {
        assert_eq!(next_event(&mut stream).await.unwrap().data, i.to_string());
    }
    // One more on the silent topic only, after a pause: it must arrive.
    tokio::time::sleep(Duration::from_millis(600)).await;
    a.publish("silent", "last").await.unwrap();
    assert_eq!(next_event(&mut stream).await.unwrap().data, "last");
}

/// A node unfollowing and following a topic again while streams come and
/// go, with a publisher on another node: every stream counted gets the
/// event published after it was counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_streams_coming_and_going_on_one_topic_miss_nothing() {
    let redis = Redis::start().await;
    let url = redis.url.clone();
    let prefix = prefix("churn");
    let (a, _) = node(&url, &prefix).await;
    let (b, addr) = node(&url, &prefix).await;
    for round in 0..60u32 {
        let mut stream = events(fetch_resuming(addr, "/events/t", None).await);
        eventually("counted", || b.subscribers() == 1).await;
        a.publish("t", round.to_string()).await.unwrap();
        assert_eq!(
            next_event(&mut stream).await.unwrap().data,
            round.to_string()
        );
        drop(stream);
        eventually("gone", || b.subscribers() == 0).await;
    }
}
