//! The conflating lag policy's end-to-end checks (`hub_conflate.rs`,
//! `redis_conflate.rs`): what was published, and what a lagging client
//! must have received.

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::Router;
use eventsource_stream::Event as Received;
use futures::{Stream, StreamExt};
use tokio::net::TcpSocket;
use tower_sse::{
    Event,
    hub::{Hub, LAGGED_EVENT},
};

use super::PATIENCE;

/// Events of 3 KiB: a client that stops reading stalls the stream soon.
pub const PAYLOAD: usize = 3 * 1024;
/// Keys per topic (every seventh event has none): more than history holds,
/// so that the newest event of many keys is among those a lagging stream
/// missed, and has to come from the hub's memory of its keys.
pub const KEYS: u64 = 150;

/// A hub id in the hub's order: a sequence number `n` as `(n, 0)`, a Redis
/// entry id `<ms>-<seq>` as `(ms, seq)`.
pub fn order(id: &str) -> (u64, u64) {
    match id.split_once('-') {
        Some((ms, seq)) => (ms.parse().unwrap(), seq.parse().unwrap()),
        None => (id.parse().unwrap(), 0),
    }
}

/// The first word of the data, unless it is `-`: the key [`publish`] gives.
pub fn first_word(event: &Event) -> Option<String> {
    let (word, _) = event.data_ref()?.split_once(' ')?;
    (word != "-").then(|| word.to_owned())
}

/// Serves `app` on loopback with small socket send buffers (inherited by
/// the accepted sockets), so that a client that stops reading stalls the
/// stream after a few hundred KiB rather than megabytes.
pub async fn serve_small_buffers(app: Router) -> SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// What was published, in the hub's order: id -> (topic, key).
pub type Log = Arc<Mutex<BTreeMap<(u64, u64), (String, Option<String>)>>>;

/// Publishes event `n` of `topic`: key `<topic>-k<n % KEYS>` (also its
/// name), none for every seventh; the data starts with the key (`-` for
/// none) and `n`.
pub async fn publish(hub: &Hub, log: &Log, topic: &str, n: u64) {
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
    log.lock()
        .unwrap()
        .insert(order(&id), (topic.to_owned(), key.clone()));
}

/// Publishes a last event, `end` (keyed), then reads until it comes.
pub async fn read_to_end(
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
        .insert(order(&id), ("t".into(), Some("end".into())));
    loop {
        let event = next(stream, received).await;
        let end = event.event == "end";
        received.push(event);
        if end {
            return;
        }
    }
}

/// The next event, within [`PATIENCE`]; a stream that ends or goes quiet
/// fails the test, showing what came.
pub async fn next(
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
pub fn summary(received: &[Received]) -> String {
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
pub fn assert_conflated(hub: &Hub, log: &Log, received: &[Received]) {
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
        let id = order(&event.id);
        let (_, key) = log.get(&id).expect("an id the hub gave");
        // The right event under the id: its name is its key.
        assert_eq!(
            event.event,
            key.as_deref().unwrap_or("message"),
            "event {id:?}: {shown}"
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
    let got: HashSet<(u64, u64)> = ids.iter().copied().collect();
    // The newest event of each key, per topic and key.
    let mut newest: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for (&id, (topic, key)) in log.iter() {
        if let Some(key) = key {
            newest.insert((topic, key), id);
        }
    }
    for (&(topic, key), &id) in &newest {
        assert!(
            got.contains(&id),
            "the newest event of {topic}/{key} ({id:?}) was not received: {shown}"
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
                log.range((std::ops::Bound::Excluded(id), std::ops::Bound::Unbounded))
                    .any(|(later, (t, k))| t == topic
                        && k.as_ref() == Some(key)
                        && got.contains(later)),
                "{topic}/{key} {id:?} was missed and no later value came: {shown}"
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
