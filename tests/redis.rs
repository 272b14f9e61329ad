//! The hub on Redis Streams, against a real `redis-server`: two hubs with
//! their own connections and their own axum servers stand for two nodes.
//!
//! Skipped unless `REDIS_URL` is set (`.ci/run` starts a server and sets it):
//!
//! ```text
//! redis-server --port 6390 --save "" &
//! REDIS_URL=redis://127.0.0.1:6390 cargo test --features redis --test redis
//! ```
#![cfg(feature = "redis")]

mod common;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::*;
use tower_sse::{
    Event,
    hub::{Hub, PublishError, RESET_EVENT},
};

/// The Redis to test against, or `None` (with a message) to skip.
fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("TOWER_SSE_REDIS_TESTS").is_none(),
                "TOWER_SSE_REDIS_TESTS is set but REDIS_URL is not"
            );
            eprintln!("skipped: set REDIS_URL=redis://127.0.0.1:PORT to run the Redis tests");
            None
        }
    }
}

/// A node whose streams subscribe to `room`.
async fn node(url: &str, prefix: &str, history: usize) -> (Hub, SocketAddr) {
    node_with_topics(url, prefix, history, &["room"]).await
}

/// A node whose streams subscribe to `topics` (duplicates included).
async fn node_with_topics(
    url: &str,
    prefix: &str,
    history: usize,
    topics: &'static [&'static str],
) -> (Hub, SocketAddr) {
    redis_node(url, prefix, history, |_uri| {
        topics.iter().map(|t| (*t).to_owned()).collect()
    })
    .await
}

async fn open(addr: SocketAddr, last: Option<&str>) -> reqwest::Response {
    fetch_resuming(addr, "/events", last).await
}

#[tokio::test]
async fn an_event_published_on_one_node_reaches_clients_of_the_other() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix("fanout");
    let (node_a, _) = node(&url, &prefix, 1000).await;
    let (node_b, addr_b) = node(&url, &prefix, 1000).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(events(open(addr_b, None).await));
    }
    eventually("subscriptions on B", || node_b.subscribers() == 3).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            node_a
                .publish("room", Event::new(format!("m{i}")).name("chat"))
                .await
                .unwrap(),
        );
    }
    for client in &mut clients {
        for (i, id) in ids.iter().enumerate() {
            let event = next_event(client).await.unwrap();
            assert_eq!(
                (event.event.as_str(), event.data.clone()),
                ("chat", format!("m{i}"))
            );
            assert_eq!(&event.id, id, "the Redis entry id is the SSE id");
        }
    }
    assert!(ids.windows(2).all(|w| stream_id(&w[0]) < stream_id(&w[1])));
}

#[tokio::test]
async fn a_client_moving_to_another_node_gets_exactly_what_it_missed() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix("move");
    let (node_a, addr_a) = node(&url, &prefix, 1000).await;
    let (node_b, addr_b) = node(&url, &prefix, 1000).await;
    let mut on_a = events(open(addr_a, None).await);
    eventually("subscription on A", || node_a.subscribers() == 1).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(node_a.publish("room", format!("e{i}")).await.unwrap());
    }
    let mut last = String::new();
    for id in &ids[..4] {
        let event = next_event(&mut on_a).await.unwrap();
        assert_eq!(&event.id, id);
        last = event.id;
    }
    drop(on_a);
    // More while the client is away, from both nodes.
    for i in 10..15 {
        let node = if i % 2 == 0 { &node_a } else { &node_b };
        ids.push(node.publish("room", format!("e{i}")).await.unwrap());
    }
    let mut on_b = events(open(addr_b, Some(&last)).await);
    eventually("subscription on B", || node_b.subscribers() == 1).await;
    ids.push(node_b.publish("room", "e15").await.unwrap());
    for (i, id) in ids.iter().enumerate().skip(4) {
        let event = next_event(&mut on_b).await.unwrap();
        assert_eq!(
            (&event.id, event.data.clone()),
            (id, format!("e{i}")),
            "gap or duplicate"
        );
    }
}

#[tokio::test]
async fn an_id_redis_trimmed_gets_a_reset() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix("trim");
    let (node_a, _) = node(&url, &prefix, 10).await;
    let (_node_b, addr_b) = node(&url, &prefix, 10).await;
    let first = node_a.publish("room", "first").await.unwrap();
    for i in 0..500 {
        node_a.publish("room", format!("e{i}")).await.unwrap();
    }
    let mut stream = events(open(addr_b, Some(&first)).await);
    let reset = next_event(&mut stream).await.unwrap();
    assert_eq!(
        (reset.event.as_str(), reset.data.as_str()),
        (RESET_EVENT, first.as_str())
    );
    // Garbage is a reset too.
    let mut stream = events(open(addr_b, Some("not-an-id")).await);
    assert_eq!(next_event(&mut stream).await.unwrap().event, RESET_EVENT);
}

#[tokio::test]
async fn history_zero_delivers_live_events_and_replays_nothing() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix("history-zero");
    let (node_a, _) = node(&url, &prefix, 0).await;
    let (node_b, addr_b) = node(&url, &prefix, 0).await;
    node_a
        .publish("room", "before anyone subscribed")
        .await
        .unwrap();
    // An id that is no Redis id gets a reset once B follows the topic and
    // the stream's live cursor is set: after it, nothing published is missed.
    let mut stream = events(open(addr_b, Some("not-an-id")).await);
    assert_eq!(next_event(&mut stream).await.unwrap().event, RESET_EVENT);
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(node_a.publish("room", format!("live {i}")).await.unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        let event = next_event(&mut stream).await.unwrap();
        assert_eq!(
            (event.event.as_str(), event.id.as_str(), event.data.clone()),
            ("message", id.as_str(), format!("live {i}")),
            "event {i}"
        );
    }
    assert_eq!(node_b.lagged_events(), 0);
    drop(stream);
    eventually("the stream to go", || node_b.subscribers() == 0).await;
    // Nothing is replayed, neither from B's ring nor from Redis (by C, which
    // never followed the topic): a reset echoing the id, then live events.
    let (node_c, addr_c) = node(&url, &prefix, 0).await;
    for (name, hub, addr) in [("B", &node_b, addr_b), ("C", &node_c, addr_c)] {
        for last in [ids[10].as_str(), ids[49].as_str()] {
            let mut stream = events(open(addr, Some(last)).await);
            let reset = next_event(&mut stream).await.unwrap();
            assert_eq!(
                (reset.event.as_str(), reset.data.as_str()),
                (RESET_EVENT, last),
                "node {name} resuming from {last}"
            );
            let live = node_a.publish("room", "after the reconnect").await.unwrap();
            let event = next_event(&mut stream).await.unwrap();
            assert_eq!(
                (event.id.as_str(), event.data.as_str()),
                (live.as_str(), "after the reconnect")
            );
            drop(stream);
            eventually("the stream to go", || hub.subscribers() == 0).await;
        }
    }
}

#[tokio::test]
async fn a_topic_listed_twice_delivers_each_event_once() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix("twice");
    let (node_a, _) = node(&url, &prefix, 1000).await;
    let (node_b, addr_b) = node_with_topics(&url, &prefix, 1000, &["room", "room"]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(node_a.publish("room", format!("e{i}")).await.unwrap());
    }
    // B never followed the topic: the resume is a replay from Redis, then live.
    let mut stream = events(open(addr_b, Some(&ids[2])).await);
    eventually("subscription on B", || node_b.subscribers() == 1).await;
    let mut expected: Vec<(String, String)> = ids
        .iter()
        .enumerate()
        .skip(3)
        .map(|(i, id)| (id.clone(), format!("e{i}")))
        .collect();
    let mut seen = Vec::new();
    for _ in 0..expected.len() {
        let event = next_event(&mut stream).await.unwrap();
        seen.push((event.id, event.data));
    }
    assert_eq!(seen, expected, "duplicate or gap in the replay");
    // Now B follows the topic: live events, once each.
    expected.clear();
    seen.clear();
    for i in 10..15 {
        let id = node_a.publish("room", format!("e{i}")).await.unwrap();
        expected.push((id, format!("e{i}")));
    }
    for _ in 0..expected.len() {
        let event = next_event(&mut stream).await.unwrap();
        seen.push((event.id, event.data));
    }
    assert_eq!(seen, expected, "duplicate or gap in live events");
}

/// The hub's cap on a `Last-Event-ID` it looks up or echoes.
const CAP: usize = tower_sse::hub::MAX_LAST_EVENT_ID_LEN;

#[tokio::test]
async fn an_over_long_last_event_id_gets_a_short_reset_then_live_events() {
    let Some(url) = redis_url() else { return };
    let prefix = prefix("long-id");
    let (node_a, addr_a) = node(&url, &prefix, 100).await;
    let first = node_a.publish("room", "before").await.unwrap();
    // 64 KiB of digits (no Redis id), then a real Redis id padded with
    // zeros to 64 KiB: its sequence part parses as 0, yet it is no id Redis
    // gave out.
    let digits = "1".repeat(64 * 1024);
    let (ms, _) = first.split_once('-').unwrap();
    let padded = format!("{ms}-{}", "0".repeat(64 * 1024 - ms.len() - 1));
    for huge in [digits, padded] {
        assert_eq!(huge.len(), 64 * 1024);
        let mut stream = events(open(addr_a, Some(&huge)).await);
        let reset = next_event(&mut stream).await.unwrap();
        assert_eq!(reset.event, RESET_EVENT, "{}...", &huge[..20]);
        assert!(
            reset.data.len() <= CAP,
            "the reset echoed {} bytes of the id",
            reset.data.len()
        );
        assert_eq!(reset.data, "", "an id over the cap is not echoed at all");
        eventually("subscription", || node_a.subscribers() == 1).await;
        let live = node_a.publish("room", "live").await.unwrap();
        let event = next_event(&mut stream).await.unwrap();
        assert_eq!((event.id, event.data.as_str()), (live, "live"));
        drop(stream);
        eventually("the stream to go", || node_a.subscribers() == 0).await;
    }
}

/// A `redis-server` of the test's own, which it can stop and start again.
struct OwnRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16, dir: PathBuf) -> Self {
        let child =
            Command::new(std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()))
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                ])
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server not found (set REDIS_SERVER)");
        Self {
            port,
            dir,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) {
        eventually_async(|| async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
        })
        .await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM lets it finish its append-only file.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn eventually_async<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn streams_survive_a_redis_restart_and_continue_without_gap() {
    if redis_url().is_none() {
        return;
    }
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("tower-sse-redis-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut redis = OwnRedis::start(port, dir.clone());
    redis.wait_ready().await;
    let url = redis.url();
    let prefix = prefix("restart");
    let (node_a, _) = node(&url, &prefix, 1000).await;
    let (node_b, addr_b) = node(&url, &prefix, 1000).await;
    let response = open(addr_b, None).await;
    eventually("subscription on B", || node_b.subscribers() == 1).await;
    let mut body = response.bytes_stream();
    use futures::StreamExt;
    let mut wire = Vec::new();
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(node_a.publish("room", format!("before {i}")).await.unwrap());
    }
    let until = |wire: &Vec<u8>, needle: &str| String::from_utf8_lossy(wire).contains(needle);
    while !until(&wire, "before 4") {
        wire.extend_from_slice(
            &tokio::time::timeout(PATIENCE, body.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }

    redis.stop();
    let outage = tokio::time::Instant::now();
    let refused = node_a.publish("room", "during the outage").await;
    assert!(
        matches!(refused, Err(PublishError::Unavailable(_))),
        "{refused:?}"
    );
    // The stream stays open: heartbeats keep coming while Redis is away.
    let heartbeats_before = String::from_utf8_lossy(&wire).matches(": \r\n").count();
    while tokio::time::Instant::now() < outage + Duration::from_millis(600) {
        if let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_millis(100), body.next()).await
        {
            wire.extend_from_slice(&chunk.unwrap());
        }
    }
    let heartbeats = String::from_utf8_lossy(&wire).matches(": \r\n").count() - heartbeats_before;
    assert!(
        heartbeats >= 3,
        "only {heartbeats} heartbeats during the outage"
    );

    let redis = OwnRedis::start(port, dir);
    redis.wait_ready().await;
    // Publishing works again once the connection manager has reconnected.
    let mut i = 0;
    while published.len() < 10 {
        match node_a.publish("room", format!("after {i}")).await {
            Ok(id) => {
                published.push(id);
                i += 1;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        assert!(
            outage.elapsed() < PATIENCE * 2,
            "publishing never recovered"
        );
    }
    while !until(&wire, "after 4") {
        let chunk = tokio::time::timeout(PATIENCE, body.next())
            .await
            .expect("the stream did not continue after the restart")
            .unwrap()
            .unwrap();
        wire.extend_from_slice(&chunk);
    }
    drop(body);
    // The whole wire, parsed independently: every published event once, in order.
    let parsed: Vec<_> = futures::executor::block_on(
        eventsource_stream::Eventsource::eventsource(futures::stream::iter([Ok::<
            _,
            std::convert::Infallible,
        >(wire)]))
        .map(|e| e.unwrap())
        .collect(),
    );
    let ids: Vec<String> = parsed.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids, published, "gap or duplicate across the restart");
}
