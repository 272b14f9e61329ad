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
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use common::*;
use eventsource_stream::Event as Received;
use futures::{Stream, StreamExt};
use tokio::net::TcpSocket;
use tower_sse::{
    Buffer, Event, SseLayer,
    hub::{Hub, LAGGED_EVENT, LagPolicy},
};

/// Each topic's history, in events: how far a stream may fall behind.
const HISTORY: usize = 64;
/// Events of 3 KiB: a client that stops reading stalls the stream soon.
const PAYLOAD: usize = 3 * 1024;
/// Keys per topic (every seventh event has none): more than history holds,
/// so that the newest event of many keys is among those a lagging stream
/// missed, and has to come from the hub's memory of its keys.
const KEYS: u64 = 150;

/// Serves `app` on loopback with small socket send buffers (see `hub_lag.rs`).
async fn serve_small_buffers(app: Router) -> SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

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

/// The first word of the data, unless it is `-`.
fn first_word(event: &Event) -> Option<String> {
    let (word, _) = event.data_ref()?.split_once(' ')?;
    (word != "-").then(|| word.to_owned())
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

/// What was published, in the hub's order: id -> (topic, key).
type Log = Arc<Mutex<BTreeMap<u64, (String, Option<String>)>>>;

/// Publishes event `n` of `topic`: key `<topic>-k<n % KEYS>` (also its
/// name), none for every seventh; the data starts with the key (`-` for
/// none) and `n`.
async fn publish(hub: &Hub, log: &Log, topic: &str, n: u64) {
    let key = (n % 7 != 3).then(|| format!("{topic}-k{}", n % KEYS));
    let data = format!(
        "{} {n} {}",
        key.as_deref().unwrap_or("-"),
        "x".repeat(PAYLOAD)
    );
    let mut event = Event::new(data);
    if let Some(key) = &key {
        event = event.name(key.clone());
    }
    let id = hub.publish(topic, event).await.unwrap();
    let id: u64 = id.parse().unwrap();
    log.lock()
        .unwrap()
        .insert(id, (topic.to_owned(), key.clone()));
}

/// Publishes a last event, `end` (keyed), then reads until it comes.
async fn read_to_end(
    hub: &Hub,
    log: &Log,
    stream: &mut (impl Stream<Item = Received> + Unpin),
    received: &mut Vec<Received>,
) {
    let id = hub
        .publish("t", Event::new("end 0").name("end"))
        .await
        .unwrap();
    log.lock()
        .unwrap()
        .insert(id.parse().unwrap(), ("t".into(), Some("end".into())));
    loop {
        let event = next(stream, received).await;
        let end = event.event == "end";
        received.push(event);
        if end {
            return;
        }
    }
}

async fn next(
    stream: &mut (impl Stream<Item = Received> + Unpin),
    received: &[Received],
) -> Received {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the stream ended; got {}", summary(received)),
        Err(_) => panic!("no event came (lost?); got {}", summary(received)),
    }
}

/// The received sequence in short: `e<id>` for an event, `L<n>` for a notice.
fn summary(received: &[Received]) -> String {
    let mut parts: Vec<String> = received
        .iter()
        .map(|e| {
            if e.event == LAGGED_EVENT {
                format!("L{}", e.data)
            } else {
                format!("e{}", e.id)
            }
        })
        .collect();
    if parts.len() > 80 && std::env::var("FULL").is_err() {
        let tail = parts.split_off(parts.len() - 40);
        parts.truncate(40);
        parts.push("…".into());
        parts.extend(tail);
    }
    parts.join(" ")
}

/// What every conflating stream must have received.
fn assert_conflated(hub: &Hub, log: &Log, received: &[Received]) {
    let log = log.lock().unwrap();
    let shown = summary(received);
    let mut announced = 0u64;
    let mut ids = Vec::new();
    for event in received {
        if event.event == LAGGED_EVENT {
            let count: u64 = event.data.parse().expect("a lagged count");
            assert!(count > 0, "an empty lagged notice: {shown}");
            announced += count;
            continue;
        }
        let id: u64 = event.id.parse().expect("a hub id");
        let (_, key) = log.get(&id).expect("an id the hub gave");
        // The right event under the id: its name is its key.
        assert_eq!(
            event.event,
            key.as_deref().unwrap_or("message"),
            "event {id}: {shown}"
        );
        assert_eq!(
            event.data.split(' ').next(),
            Some(key.as_deref().unwrap_or("-"))
        );
        ids.push(id);
    }
    // The hub's order, across topics; nothing twice.
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "out of order or repeated: {shown}"
    );
    let got: HashSet<u64> = ids.iter().copied().collect();
    // The newest event of each key, per topic and key.
    let mut newest: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for (&id, (topic, key)) in log.iter() {
        if let Some(key) = key {
            newest.insert((topic, key), id);
        }
    }
    for (&(topic, key), &id) in &newest {
        assert!(
            got.contains(&id),
            "the newest event of {topic}/{key} ({id}) was not received: {shown}"
        );
    }
    // Every missed event with a key was replaced by a later one of its key
    // that was received; those without a key were announced, exactly.
    let mut keyless_missed = 0;
    let mut missed = 0;
    for (&id, (topic, key)) in log.iter().filter(|(id, _)| !got.contains(id)) {
        missed += 1;
        match key {
            None => keyless_missed += 1,
            Some(key) => assert!(
                log.range(id + 1..).any(|(later, (t, k))| t == topic
                    && k.as_ref() == Some(key)
                    && got.contains(later)),
                "{topic}/{key} {id} was missed and no later value came: {shown}"
            ),
        }
    }
    assert_eq!(
        announced, keyless_missed,
        "lagged notices must count exactly the missed events without a key: {shown}"
    );
    // Every event delivered or counted, once.
    assert_eq!(
        log.len() as u64,
        ids.len() as u64 + hub.lagged_events(),
        "published = received + lagged: {shown}"
    );
    assert_eq!(missed, hub.lagged_events());
    assert!(
        missed > keyless_missed,
        "the client should have lagged and had events replaced: {shown}"
    );
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
