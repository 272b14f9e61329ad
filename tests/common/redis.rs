//! The tests of the hub's Redis backend: a Redis to test against, a key
//! prefix of each test's own, and nodes (hubs on that Redis, each with its
//! own axum server on loopback).

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Router, routing::get};
use tower_sse::{Buffer, hub::Hub};

use super::{events, fetch_resuming, hub_layer, serve};

/// The Redis under test: `REDIS_URL`, or a `redis-server` of the test's own.
pub struct Redis {
    /// Where it listens.
    pub url: String,
    child: Option<Child>,
}

impl Redis {
    /// `REDIS_URL`, or a new `redis-server` on a free loopback port.
    pub async fn start() -> Self {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Self { url, child: None };
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let child =
            Command::new(std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into()))
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server not found (set REDIS_URL or REDIS_SERVER)");
        let (url, child) = (format!("redis://127.0.0.1:{port}"), Some(child));
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Self { url, child };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not start");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A key prefix of its own for each test, so tests never see each other's streams.
pub fn prefix(test: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("tower-sse-test:{test}:{}:", nanos.as_nanos())
}

/// A Redis entry id as `(milliseconds, sequence)`, which orders ids.
pub fn stream_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').expect("a Redis entry id");
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// A node: a hub on the Redis at `url`, its keys under `prefix`, keeping (and
/// trimming Redis to) `history` events per topic. It serves `/events` and
/// `/events/{topic}` through [`hub_layer`] (a fixed buffer of 10 where that
/// takes one) with a heartbeat every 100 ms, on the topics `topics` picks
/// from the URI.
pub async fn redis_node(
    url: &str,
    prefix: &str,
    history: usize,
    topics: impl Fn(&axum::http::Uri) -> Vec<String> + Send + Sync + 'static,
) -> (Hub, SocketAddr) {
    let hub = Hub::builder()
        .history(history)
        .key_prefix(prefix)
        .build_redis(url)
        .await
        .unwrap();
    let layer = hub_layer(&hub, Buffer::fixed(10), topics).heartbeat(Duration::from_millis(100));
    let app = Router::new()
        .route("/events", get(|| async {}).layer(layer.clone()))
        .route("/events/{topic}", get(|| async {}).layer(layer));
    (hub, serve(app).await)
}

/// A [`redis_node`] whose streams subscribe to the comma-separated topics of
/// the query (`/events?a,b`).
pub async fn query_node(url: &str, prefix: &str, history: usize) -> (Hub, SocketAddr) {
    let topics = |uri: &axum::http::Uri| {
        let query = uri.query().unwrap_or_default();
        query.split(',').map(str::to_owned).collect()
    };
    redis_node(url, prefix, history, topics).await
}

/// A stream of a [`query_node`]'s `topics` (comma-separated), resuming after
/// `last` when given.
pub async fn open_topics(
    addr: SocketAddr,
    topics: &str,
    last: Option<&str>,
) -> impl futures::Stream<Item = eventsource_stream::Event> + Unpin + use<> {
    events(fetch_resuming(addr, &format!("/events?{topics}"), last).await)
}
