//! Serving the hub in the tests: its layer in the mode under test, a router
//! on topics from the query, and a router whose ready function subscribes by
//! itself.

use std::time::Duration;

use axum::{Router, routing::get};
use tower_sse::{Buffer, SseLayer, hub::Hub};

use super::{eventually, in_mode, spawned};

/// A layer serving `hub`'s streams on the topics `topics` picks from the
/// URI: served from the body with [`Hub::layer`] by default, and through the
/// compatible ready function ([`Hub::ready`], with `buffer`) in the spawned
/// run, so that CI checks both paths against the same tests.
pub fn hub_layer(
    hub: &Hub,
    buffer: Buffer,
    topics: impl Fn(&axum::http::Uri) -> Vec<String> + Send + Sync + 'static,
) -> SseLayer {
    if spawned() {
        in_mode(SseLayer::new(hub.ready(move |ctx| topics(ctx.uri()))).buffer(buffer))
    } else {
        hub.layer(move |parts| Ok(topics(&parts.uri)))
    }
}

/// Streams at `/events` on the comma-separated topics of the query (`main`
/// without one), through [`hub_layer`], with a heartbeat every 200 ms.
pub fn hub_app(hub: &Hub, buffer: Buffer) -> Router {
    let topics = |uri: &axum::http::Uri| {
        uri.query()
            .unwrap_or("main")
            .split(',')
            .map(str::to_owned)
            .collect()
    };
    let layer = hub_layer(hub, buffer, topics).heartbeat(Duration::from_millis(200));
    Router::new().route("/events", get(|| async {}).layer(layer))
}

/// Streams at `/events` whose own ready function calls [`Hub::subscribe`]
/// on `topics` (duplicates included), with a heartbeat every 200 ms.
pub fn subscribing_app(hub: &Hub, topics: &'static [&'static str]) -> Router {
    let ready = {
        let hub = hub.clone();
        move |events: tower_sse::EventSender, ctx: tower_sse::StreamContext| {
            let hub = hub.clone();
            async move {
                hub.subscribe(&events, ctx.last_event_id(), topics).await;
            }
        }
    };
    let layer = SseLayer::new(ready).heartbeat(Duration::from_millis(200));
    Router::new().route("/events", get(|| async {}).layer(layer))
}

/// Waits until `hub` counts at least `n` subscribers.
pub async fn subscribed(hub: &Hub, n: usize) {
    eventually("subscriptions", || hub.subscribers() >= n).await;
}
