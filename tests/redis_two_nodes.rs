//! Two hub nodes on one Redis, attacked where their interleavings are
//! hardest: a resume on the node new to a topic while another node's
//! publishing trims it, a node's reader falling behind Redis's trim, and
//! hundreds of small topics with streams of several topics that vanish and
//! resume on the other node while both nodes publish.
//!
//! Where a race must be hit every time, node 2 talks to Redis through a
//! [`Proxy`] that can hold the next command of a given name until the test
//! releases it: the test knows the command is held (a signal, not a sleep),
//! does what must happen meanwhile, and lets it go.
//!
//! Uses `REDIS_URL` when set, otherwise starts a `redis-server` of its own:
//!
//! ```text
//! cargo test --features redis --test redis_two_nodes
//! ```
#![cfg(feature = "redis")]

mod common;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use eventsource_stream::Event as Received;
use futures::{Stream, StreamExt, future::join_all};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    time::timeout,
};
use tower_sse::hub::Hub;

/// A command to hold: its RESP name (`$6\r\nXRANGE\r\n`), where to say it
/// is held, and what lets it go.
struct Hold {
    name: Vec<u8>,
    held: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// A TCP proxy in front of Redis that forwards everything, except that the
/// first command of each armed name (and whatever was sent with it) waits
/// until released.
#[derive(Clone)]
struct Proxy {
    url: String,
    holds: Arc<Mutex<Vec<Hold>>>,
}

impl Proxy {
    async fn start(redis_url: &str) -> Self {
        let upstream = redis_url
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        let holds: Arc<Mutex<Vec<Hold>>> = Arc::default();
        let shared = holds.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream.as_str()).await else {
                    continue;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let holds = shared.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        let n = match client_read.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let chunk = &buf[..n];
                        let armed = {
                            let mut holds = holds.lock().unwrap();
                            let hit = holds
                                .iter()
                                .position(|h| chunk.windows(h.name.len()).any(|w| w == h.name));
                            hit.map(|at| holds.remove(at))
                        };
                        if let Some(Hold { held, release, .. }) = armed {
                            let _ = held.send(());
                            let _ = release.await;
                        }
                        if server_write.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                });
            }
        });
        Self { url, holds }
    }

    /// Holds the next `command` sent through the proxy: the first receiver
    /// resolves once it is held, and sending on the returned sender lets it go.
    fn arm(&self, command: &str) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (held, held_rx) = oneshot::channel();
        let (release_tx, release) = oneshot::channel();
        let name = format!("${}\r\n{command}\r\n", command.len()).into_bytes();
        self.holds.lock().unwrap().push(Hold {
            name,
            held,
            release,
        });
        (held_rx, release_tx)
    }
}

/// What was published, by entry id: `(topic, data)`.
type Published = BTreeMap<(u64, u64), (String, String)>;

/// Publishes `datas` on `topic` all at once (concurrent publishes, one
/// connection): returns `(id, data)` of each, in id order.
async fn burst(hub: &Hub, topic: &str, datas: Vec<String>) -> Vec<(String, String)> {
    let ids = join_all(datas.iter().map(|d| hub.publish(topic, d.clone()))).await;
    let mut published: Vec<(String, String)> =
        ids.into_iter().map(|id| id.unwrap()).zip(datas).collect();
    published.sort_by_key(|(id, _)| stream_id(id));
    published
}

/// Events until one with data `end` (or `max`, or a silence of 5 s), each as
/// `(event, id, data)`.
async fn read_until(
    stream: &mut (impl Stream<Item = Received> + Unpin),
    end: &str,
    max: usize,
) -> Vec<(String, String, String)> {
    let mut seen = Vec::new();
    while seen.len() < max {
        let Ok(Some(event)) = timeout(Duration::from_secs(5), stream.next()).await else {
            seen.push(("<timeout>".into(), String::new(), String::new()));
            break;
        };
        let done = event.event == "message" && event.data == end;
        seen.push((event.event, event.id, event.data));
        if done {
            break;
        }
    }
    seen
}

/// A stream opening on node 2 (new to the topic, so it replays from Redis)
/// with a `Last-Event-ID` while node 1's publishing trims the topic past
/// that id. The replay's check that Redis lost nothing after the id and its
/// read must not be separable: the stream gets a reset, or exactly the
/// events after the id, in order. Node 2's `XRANGE` is held right after its
/// check, and its reader's next `XREAD` too (so that its ring keeps what it
/// had); node 1 trims meanwhile.
#[tokio::test]
async fn a_resume_racing_a_trim_by_the_other_node_gets_a_reset_or_every_missed_event() {
    const HISTORY: usize = 10;
    let redis = Redis::start().await;
    let prefix = prefix("resume-trim");
    let proxy = Proxy::start(&redis.url).await;
    let (hub1, _addr1) = query_node(&redis.url, &prefix, HISTORY).await;
    let (_hub2, addr2) = query_node(&proxy.url, &prefix, HISTORY).await;
    let mut published = Vec::new();
    for i in 0..HISTORY {
        let id = hub1.publish("hot", format!("e{i}")).await.unwrap();
        published.push((id, format!("e{i}")));
    }
    published.push((hub1.publish("cold", "c0").await.unwrap(), "c0".into()));
    let (last, _) = published[4].clone();

    let (replaying, release_replay) = proxy.arm("XRANGE");
    let client = tokio::spawn(async move { open_topics(addr2, "hot,cold", Some(&last)).await });
    timeout(PATIENCE, replaying)
        .await
        .expect("node 2 never replayed from Redis")
        .unwrap();
    let (reading, release_reader) = proxy.arm("XREAD");
    timeout(PATIENCE, reading)
        .await
        .expect("node 2's reader never read again")
        .unwrap();
    // Node 2 has checked that nothing after e4 is lost; node 1 now trims
    // e5.. away (MAXLEN ~ 10 removes whole nodes of 100 entries).
    let datas = (0..400).map(|i| format!("b{i}")).collect();
    published.extend(burst(&hub1, "hot", datas).await);
    let _ = release_replay.send(());
    let mut stream = timeout(PATIENCE, client).await.unwrap().unwrap();
    // The replay's first page decides: a reset, or the events after e4.
    let first = next_event(&mut stream).await.expect("the stream ended");
    let _ = release_reader.send(());
    if first.event == "reset" {
        // Documented: an id Redis trimmed past gets a reset, then live events.
        let end = hub1.publish("hot", "end").await.unwrap();
        let seen = read_until(&mut stream, "end", 1_000).await;
        let ids: Vec<_> = seen.iter().map(|(_, id, _)| stream_id(id)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        assert_eq!(seen.last().unwrap().1, end, "{seen:?}");
        return;
    }
    published.push((hub1.publish("hot", "end").await.unwrap(), "end".into()));
    let mut seen = vec![(first.event, first.id, first.data)];
    seen.extend(read_until(&mut stream, "end", 1_000).await);
    let want: Vec<&str> = published[5..].iter().map(|(_, d)| d.as_str()).collect();
    let got: Vec<&str> = seen.iter().map(|(_, _, d)| d.as_str()).collect();
    assert!(
        got == want,
        "no reset, yet not every event after e4: got {} events, starting {:?}; want {} starting {:?}",
        got.len(),
        &seen[..seen.len().min(8)],
        want.len(),
        &want[..8]
    );
}

/// A node's reader that falls behind Redis's trim (node 1 publishes a burst
/// that trims the topic while node 2's `XREAD` is held) must not lose events
/// silently: under `LagPolicy::Notify` a live stream on node 2 gets every
/// event, or a `lagged` notice counting exactly what it missed, in order.
/// `Hub::lagged_events` counts the same.
#[tokio::test]
#[ignore = "defect: a node's reader that falls behind Redis's MAXLEN ~ trim reads on from what is left; \
            the trimmed entries never reach its ring, so no `lagged` counts them (e.g. 101 of 300 \
            events received or announced; with nothing in the ring to evict, a silent gap). Redis \
            gives no per-topic count to size the gap without a change to the stored entries"]
async fn a_reader_behind_the_trim_announces_every_event_it_missed() {
    const HISTORY: usize = 10;
    const BURST: usize = 300;
    let redis = Redis::start().await;
    let prefix = prefix("reader-trim");
    let proxy = Proxy::start(&redis.url).await;
    let (hub1, _addr1) = query_node(&redis.url, &prefix, HISTORY).await;
    let (hub2, addr2) = query_node(&proxy.url, &prefix, HISTORY).await;
    let mut stream = open_topics(addr2, "t", None).await;
    subscribed(&hub2, 1).await;
    // Node 2 follows `t`: its stream gets what node 1 publishes.
    hub1.publish("t", "w").await.unwrap();
    assert_eq!(read_until(&mut stream, "w", 1).await[0].2, "w");

    let (held, release) = proxy.arm("XREAD");
    timeout(PATIENCE, held)
        .await
        .expect("node 2's reader never read again")
        .unwrap();
    let datas = (0..BURST).map(|i| format!("b{i}")).collect();
    let published = burst(&hub1, "t", datas).await;
    let _ = release.send(());
    let end = &published.last().unwrap().1;
    let seen = read_until(&mut stream, end, BURST + 10).await;

    let mut received = 0;
    let mut announced = 0;
    let mut last = (0, 0);
    for (event, id, data) in &seen {
        match event.as_str() {
            "message" => {
                let key = stream_id(id);
                assert!(key > last, "out of order or twice: {data} ({id})");
                last = key;
                received += 1;
            }
            "lagged" => announced += data.parse::<usize>().unwrap(),
            other => panic!("unexpected {other}: {seen:?}"),
        }
    }
    assert_eq!(seen.last().unwrap().2, *end, "{seen:?}");
    assert_eq!(
        (received + announced, hub2.lagged_events()),
        (BURST, announced as u64),
        "received {received}, announced {announced} of {BURST} published"
    );
}

/// Hundreds of small topics, two nodes publishing at once, streams of five
/// topics each that read part of their events on one node, vanish, and
/// resume with `Last-Event-ID` on the other: each stream, over both
/// connections, gets exactly its topics' events in id order, once.
#[tokio::test]
async fn streams_of_many_topics_resume_on_the_other_node_while_both_publish() {
    const TOPICS: usize = 300;
    const STREAMS: usize = 24;
    const PER_NODE: usize = 600;
    let redis = Redis::start().await;
    let prefix = prefix("many-topics");
    let (hub1, addr1) = query_node(&redis.url, &prefix, 1_000).await;
    let (hub2, addr2) = query_node(&redis.url, &prefix, 1_000).await;
    let topic = |i: usize| format!("t{}", i % TOPICS);
    // Stream s follows topics s, s+61, s+122, s+183, s+244 (mod 300).
    let topics_of =
        |s: usize| -> Vec<String> { (0..5).map(|k| topic(s * 7 + k * 61)).collect::<Vec<_>>() };
    // Every stream starts after a marker on its first topic, so that what it
    // must get is defined by ids alone.
    let mut starts = Vec::new();
    for s in 0..STREAMS {
        let id = hub1.publish(&topics_of(s)[0], "start").await.unwrap();
        starts.push(id);
    }
    let mut first = Vec::new();
    for (s, start) in starts.iter().enumerate() {
        let addr = if s % 2 == 0 { addr1 } else { addr2 };
        first.push(open_topics(addr, &topics_of(s).join(","), Some(start)).await);
    }
    subscribed(&hub1, STREAMS / 2).await;
    subscribed(&hub2, STREAMS / 2).await;

    // Both nodes publish round the topics at once.
    let log: Arc<Mutex<Published>> = Arc::default();
    let publisher = |hub: Hub, node: usize| {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..PER_NODE {
                let t = topic(i * 13 + node * 5);
                let data = format!("n{node}-{i}");
                let id = hub.publish(&t, data.clone()).await.unwrap();
                log.lock().unwrap().insert(stream_id(&id), (t, data));
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    let publishers = [publisher(hub1.clone(), 1), publisher(hub2.clone(), 2)];

    // Each stream reads a few events, vanishes, and resumes on the other node.
    let mut halves = Vec::new();
    for (s, mut stream) in first.into_iter().enumerate() {
        let n = 3 + s % 5;
        let mut got = Vec::new();
        while got.len() < n {
            let event = next_event(&mut stream).await.expect("the stream ended");
            assert_eq!(event.event, "message", "stream {s}: {event:?}");
            got.push((event.id, event.data));
        }
        drop(stream);
        halves.push(got);
    }
    for publisher in publishers {
        timeout(PATIENCE * 3, publisher).await.unwrap().unwrap();
    }
    // A marker on every topic after everything: the end of each stream.
    for t in 0..TOPICS {
        hub1.publish(&topic(t), "end").await.unwrap();
    }
    let log = log.lock().unwrap().clone();

    let mut problems = Vec::new();
    let resumed = join_all(halves.into_iter().enumerate().map(|(s, got)| {
        let addr = if s % 2 == 0 { addr2 } else { addr1 };
        let topics = topics_of(s);
        async move {
            let last = got.last().unwrap().0.clone();
            let mut stream = open_topics(addr, &topics.join(","), Some(&last)).await;
            // Five `end`s, one per topic, close the stream's events.
            let mut rest = Vec::new();
            let mut ends = 0;
            while ends < 5 {
                let Ok(Some(event)) = timeout(Duration::from_secs(5), stream.next()).await else {
                    rest.push(("<timeout>".to_owned(), String::new()));
                    break;
                };
                if event.event != "message" {
                    rest.push((format!("<{}>", event.event), event.data));
                    break;
                }
                if event.data == "end" {
                    ends += 1;
                }
                rest.push((event.id, event.data));
            }
            (s, got, rest)
        }
    }))
    .await;
    for (s, got, rest) in resumed {
        let topics: HashSet<String> = topics_of(s).into_iter().collect();
        let start = stream_id(&starts[s]);
        let want: Vec<(String, String)> = log
            .iter()
            .filter(|(id, (t, _))| **id > start && topics.contains(t))
            .map(|(id, (_, d))| (format!("{}-{}", id.0, id.1), d.clone()))
            .collect();
        let seen: Vec<(String, String)> = got
            .into_iter()
            .chain(rest.into_iter().filter(|(_, d)| d != "end"))
            .collect();
        if seen != want {
            let at = seen
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(seen.len().min(want.len()));
            problems.push(format!(
                "stream {s}: {} events, want {}; first difference at {at}: got {:?}, want {:?}",
                seen.len(),
                want.len(),
                seen.get(at),
                want.get(at)
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
