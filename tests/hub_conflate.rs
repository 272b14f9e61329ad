//! The hub's conflating lag policy (`LagPolicy::Conflate`), end to end over
//! loopback TCP and read by the independent parser: a client that stops
//! reading, or reads slowly, falls behind the history; it must then get the
//! newest value of every key, in the hub's order, with the events it missed
//! that had no key announced exactly, and every event published either
//! delivered or counted in `Hub::lagged_events`.
//!
//! (That a stream gets at most one event per key from one gap is checked
//! exactly, read by read, by the unit tests in `src/hub/tests.rs`; over TCP
//! the reads are not observable, but a key sent twice from one gap would
//! break the count: `published == received + lagged`.)

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
    Buffer, SseLayer,
    hub::{Hub, LAGGED_EVENT, LagPolicy},
};

/// Each topic's history, in events: how far a stream may fall behind.
const HISTORY: usize = 64;

/// How the hub is built and its streams served.
#[derive(Clone, Copy)]
enum Setup {
    /// `lag_policy(Conflate)`: keyed by the event's name; served from the body.
    ByName,
    /// `conflate_by` the data's first word; served from the body.
    ByFunction,
    /// Keyed by name, served through `Hub::ready` with a fixed buffer.
    Ready,
}

/// A hub, and a client stream on `topics` (comma-separated).
async fn hub_stream(setup: Setup, topics: String) -> (Hub, impl Stream<Item = Received> + Unpin) {
    let builder = Hub::builder().history(HISTORY);
    let hub = match setup {
        Setup::ByName | Setup::Ready => builder.lag_policy(LagPolicy::Conflate).build(),
        Setup::ByFunction => builder.conflate_by(first_word).build(),
    };
    let pick = |query: Option<&str>| -> Vec<String> {
        query.unwrap_or("t").split(',').map(str::to_owned).collect()
    };
    let layer = match setup {
        Setup::Ready => {
            SseLayer::new(hub.ready(move |ctx| pick(ctx.uri().query()))).buffer(Buffer::fixed(8))
        }
        Setup::ByName | Setup::ByFunction => hub.layer(move |parts| Ok(pick(parts.uri.query()))),
    };
    let app = Router::new().route("/events", get(|| async {}).layer(in_mode(layer)));
    let addr = serve_small_buffers(app).await;
    let stream = events(fetch(addr, &format!("/events?{topics}")).await);
    eventually("the subscription", || hub.subscribers() == 1).await;
    (hub, stream)
}

/// The client stops reading while 2,000 events (6 MiB) are published to
/// each of `topics`, then reads everything.
async fn stalled_client(setup: Setup, topics: &[&str]) {
    let (hub, mut stream) = hub_stream(setup, topics.join(",")).await;
    let log = Log::default();
    for n in 0..2_000u64 {
        for topic in topics {
            publish(&hub, &log, topic, n).await;
        }
        if n % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut received = Vec::new();
    read_to_end(&hub, &log, &mut stream, &mut received).await;
    assert_conflated(&hub, &log, &received);
    let data = received.iter().filter(|e| e.event != LAGGED_EVENT).count();
    println!("{data} events received: {}", summary(&received));
}

/// The client reads about one event per millisecond while events are
/// published about twenty times as fast, for 600 events.
async fn slow_client(setup: Setup, topics: &'static [&'static str]) {
    let (hub, mut stream) = hub_stream(setup, topics.join(",")).await;
    let log = Log::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (hub, log, stop) = (hub.clone(), log.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(SeqCst) {
                for _ in 0..20 {
                    for topic in topics {
                        publish(&hub, &log, topic, n).await;
                    }
                    n += 1;
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
    read_to_end(&hub, &log, &mut stream, &mut received).await;
    assert_conflated(&hub, &log, &received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_gets_the_newest_value_of_every_key() {
    stalled_client(Setup::ByName, &["t"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_gets_the_newest_value_of_every_key() {
    slow_client(Setup::ByName, &["t"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflate_by_a_stalled_client_gets_the_newest_value_of_every_key() {
    stalled_client(Setup::ByFunction, &["t"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_ready_a_stalled_client_gets_the_newest_value_of_every_key() {
    stalled_client(Setup::Ready, &["t"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_topics_a_stalled_client_gets_every_key_of_both_in_the_hubs_order() {
    stalled_client(Setup::ByFunction, &["t", "u"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_topics_a_slow_client_gets_every_key_of_both_in_the_hubs_order() {
    slow_client(Setup::ByName, &["t", "u"]).await;
}
