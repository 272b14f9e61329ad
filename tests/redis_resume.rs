//! Resume and ordering on the hub's Redis backend, against a real
//! `redis-server`: hubs with their own connections and axum servers on
//! loopback stand for nodes, and every wire is read by the independent
//! `eventsource-stream` parser.
//!
//! Uses `REDIS_URL` when set, otherwise starts a `redis-server` of its own
//! (`REDIS_SERVER` names the binary) on a free port of 127.0.0.1:
//!
//! ```text
//! cargo test --features redis --test redis_resume
//! ```
#![cfg(feature = "redis")]

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use common::*;
use eventsource_stream::Event as Received;
use futures::Stream;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    time::{Instant, timeout},
};
use tower_sse::{Event, hub::Hub};

/// A node: its streams subscribe to the comma-separated topics of the query.
async fn node(url: &str, prefix: &str) -> (Hub, SocketAddr) {
    query_node(url, prefix, 1000).await
}

/// `(id, data)` of each event up to and including the one with data `end`
/// (at most `max`); `<timeout>` or `<event NAME>` marks what went wrong.
async fn read_until(
    stream: &mut (impl Stream<Item = Received> + Unpin),
    end: &str,
    max: usize,
) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    while seen.len() < max {
        let next = timeout(Duration::from_secs(3), futures::StreamExt::next(stream));
        let Ok(Some(event)) = next.await else {
            seen.push((String::new(), "<timeout>".into()));
            break;
        };
        let done = event.event == "message" && event.data == end;
        match event.event.as_str() {
            "message" => seen.push((event.id, event.data)),
            other => seen.push((event.id, format!("<event {other}>"))),
        }
        if done {
            break;
        }
    }
    seen
}

fn datas(events: &[(String, String)]) -> Vec<&str> {
    events.iter().map(|(_, data)| data.as_str()).collect()
}

/// Defect 1, deterministic: a1 b1 a2 b2 land in Redis in one transaction
/// while both nodes' readers are blocked. Every stream, live or resumed, on
/// either node, must deliver entry-id order, and resuming after any id E
/// anywhere must give exactly the entries after E.
#[tokio::test]
async fn interleaved_topics_are_delivered_and_resumed_in_entry_id_order_on_every_node() {
    let redis = Redis::start().await;
    let prefix = prefix("interleave");
    let (_hub1, addr1) = node(&redis.url, &prefix).await;
    let (_hub2, addr2) = node(&redis.url, &prefix).await;
    let client = ::redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Entries in the hub's format (field `sse`: the event encoded without an
    // id), with explicit ids unique and increasing across the topics.
    let base = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let topics = ["a", "b", "a", "b", "a", "b", "a"];
    let all: Vec<(String, String)> = ["wa", "wb", "a1", "b1", "a2", "b2", "end"]
        .iter()
        .enumerate()
        .map(|(seq, data)| (format!("{base}-{}", seq + 1), (*data).to_owned()))
        .collect();
    let xadd = |i: usize| {
        let mut cmd = ::redis::cmd("XADD");
        let stored = Event::new(all[i].1.as_str()).encode().unwrap();
        cmd.arg(format!("{prefix}{}", topics[i]))
            .arg(&all[i].0)
            .arg("sse")
            .arg(stored.as_ref());
        cmd
    };
    for i in 0..2 {
        xadd(i).query_async::<String>(&mut conn).await.unwrap();
    }
    // Resuming after `wa` on each node: `wb` shows the node follows both topics.
    let mut live = Vec::new();
    for addr in [addr1, addr2] {
        let mut stream = open_topics(addr, "a,b", Some(&all[0].0)).await;
        assert_eq!(read_until(&mut stream, "wb", 1).await, all[1..2]);
        live.push(stream);
    }
    // Both readers are blocked in XREAD: one transaction, then the marker.
    let mut multi = ::redis::pipe();
    multi.atomic();
    for i in 2..6 {
        multi.add_command(xadd(i));
    }
    multi.query_async::<()>(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    xadd(6).query_async::<String>(&mut conn).await.unwrap();

    let mut problems = Vec::new();
    let mut delivered = Vec::new();
    for (n, stream) in live.iter_mut().enumerate() {
        let seen = read_until(stream, "end", 10).await;
        if seen != all[2..] {
            problems.push(format!("node {} live: {:?}", n + 1, datas(&seen)));
        }
        delivered.push(seen);
    }
    if delivered[0] != delivered[1] {
        problems.push("the two nodes delivered different orders".into());
    }
    // Resume after every id node 1 delivered, on both nodes.
    let mut resume_from = vec![all[1].clone()];
    resume_from.extend(delivered[0].iter().filter(|(_, d)| d != "end").cloned());
    for (last, last_data) in &resume_from {
        let want: Vec<_> = all
            .iter()
            .filter(|(id, _)| stream_id(id) > stream_id(last))
            .cloned()
            .collect();
        for (n, addr) in [addr1, addr2].into_iter().enumerate() {
            let mut stream = open_topics(addr, "a,b", Some(last)).await;
            let seen = read_until(&mut stream, "end", 10).await;
            if seen != want {
                let (seen, want) = (datas(&seen), datas(&want));
                problems.push(format!(
                    "node {} after {last_data}: {seen:?}, want {want:?}",
                    n + 1
                ));
            }
        }
    }
    let order = datas(&all);
    assert!(
        problems.is_empty(),
        "entries in id order {order:?}:\n{}",
        problems.join("\n")
    );
}

/// Defect 1 through the public API only: two tasks publish to two topics at
/// once. Both nodes deliver every event once, in entry-id order, and a stream
/// resuming on node 2 after an id node 1 delivered gets exactly what node 1
/// delivered after it.
#[tokio::test]
async fn concurrent_publishers_on_two_topics_resume_on_the_other_node_without_loss() {
    const EACH: usize = 200;
    let redis = Redis::start().await;
    let prefix = prefix("concurrent");
    let (hub1, addr1) = node(&redis.url, &prefix).await;
    let (_hub2, addr2) = node(&redis.url, &prefix).await;
    let wa = hub1.publish("a", "wa").await.unwrap();
    // On the current code two topics' ids in one millisecond can be equal.
    tokio::time::sleep(Duration::from_millis(2)).await;
    hub1.publish("b", "wb").await.unwrap();
    let mut live = Vec::new();
    for addr in [addr1, addr2] {
        let mut stream = open_topics(addr, "a,b", Some(&wa)).await;
        assert_eq!(datas(&read_until(&mut stream, "wb", 1).await), ["wb"]);
        live.push(stream);
    }
    let publisher = |topic: &'static str| {
        let hub = hub1.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let data = format!("{topic}{i}");
                ids.push((hub.publish(topic, data.as_str()).await.unwrap(), data));
            }
            ids
        })
    };
    let (a, b) = (publisher("a"), publisher("b"));
    let mut published = a.await.unwrap();
    published.extend(b.await.unwrap());
    published.push((hub1.publish("a", "end").await.unwrap(), "end".into()));
    published.sort();

    let mut problems = Vec::new();
    let mut delivered = Vec::new();
    for (n, stream) in live.iter_mut().enumerate() {
        let seen = read_until(stream, "end", 3 * EACH).await;
        let mut sorted = seen.clone();
        sorted.sort();
        if sorted != published {
            problems.push(format!("node {}: not each event once", n + 1));
        }
        let steps: Vec<_> = seen
            .windows(2)
            .map(|w| (stream_id(&w[0].0), stream_id(&w[1].0)))
            .collect();
        let back = steps.iter().filter(|(x, y)| x > y).count();
        let ties = steps.iter().filter(|(x, y)| x == y).count();
        if back + ties > 0 {
            problems.push(format!(
                "node {}: {back} steps back in id order, {ties} equal ids",
                n + 1
            ));
        }
        delivered.push(seen);
    }
    if delivered[0] != delivered[1] {
        problems.push("the two nodes delivered different orders".into());
    }
    // Resume on node 2 after every 25th event node 1 delivered.
    for (i, (last, data)) in delivered[0].iter().enumerate().step_by(25) {
        let mut stream = open_topics(addr2, "a,b", Some(last)).await;
        let seen = read_until(&mut stream, "end", 3 * EACH).await;
        let want = &delivered[0][i + 1..];
        if data != "end" && seen != want {
            let lost = want.iter().filter(|e| !seen.contains(e)).count();
            let extra = seen.iter().filter(|e| !want.contains(e)).count();
            let (got, want) = (seen.len(), want.len());
            problems.push(format!(
                "node 2 after {data}: {got} events, want {want} (lost {lost}, extra {extra})"
            ));
        }
    }
    assert!(delivered[0].len() > 300, "{} events", delivered[0].len());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Defect 2: a node that first follows a topic because a stream resumes on it
/// replays from Redis while its reader starts from where the topic ended at
/// follow time; what both read must reach the stream once, in order.
#[tokio::test]
async fn resuming_on_a_node_new_to_the_topic_neither_duplicates_nor_reorders() {
    const READ: usize = 30;
    let redis = Redis::start().await;
    let prefix = prefix("fresh");
    let (hub1, _) = node(&redis.url, &prefix).await;
    let (_hub2, addr2) = node(&redis.url, &prefix).await;
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut rounds = 0;
    // Each round a topic node 2 never followed, published to every ~1 ms.
    while rounds < 40 && started.elapsed() < Duration::from_secs(15) && failures.len() < 3 {
        let topic = format!("t{rounds}");
        rounds += 1;
        let ids = Arc::new(Mutex::new(Vec::new()));
        let publisher = tokio::spawn({
            let (hub, topic, ids) = (hub1.clone(), topic.clone(), ids.clone());
            async move {
                for n in 0..20_000u64 {
                    let id = hub.publish(&topic, n.to_string()).await.unwrap();
                    ids.lock().unwrap().push(id);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        });
        eventually("events to resume from", || ids.lock().unwrap().len() >= 3).await;
        let first = ids.lock().unwrap()[0].clone();
        let mut stream = open_topics(addr2, &topic, Some(&first)).await;
        let seen = read_until(&mut stream, &READ.to_string(), 2 * READ).await;
        publisher.abort();
        let numbers = datas(&seen);
        let in_order = seen
            .windows(2)
            .all(|w| stream_id(&w[0].0) < stream_id(&w[1].0));
        let want: Vec<String> = (1..=READ).map(|n| n.to_string()).collect();
        if numbers != want || !in_order {
            failures.push(format!("{topic}: data {numbers:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds (each after event 0, want 1..={READ}) went wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
/// Defect 3: once no stream subscribes to a topic, the node's `XREAD` stops
/// naming it. Watched with `MONITOR` on a connection of the test's own.
#[tokio::test]
async fn a_node_stops_reading_topics_nobody_subscribes_to() {
    const TOPICS: usize = 100;
    let redis = Redis::start().await;
    let prefix = prefix("idle");
    let (hub, addr) = node(&redis.url, &prefix).await;
    let keys: Vec<String> = (0..TOPICS)
        .map(|i| format!("\"{prefix}idle{i}\""))
        .collect();
    let host = redis
        .url
        .trim_start_matches("redis://")
        .trim_end_matches('/');
    let mut monitor = tokio::net::TcpStream::connect(host).await.unwrap();
    monitor.write_all(b"MONITOR\r\n").await.unwrap();
    let mut lines = BufReader::new(monitor).lines();
    // The node's XREADs naming any of the topics, and how many each names.
    let mut next_xread = async |until: Instant| loop {
        let wait = until.saturating_duration_since(Instant::now());
        let Ok(line) = timeout(wait, lines.next_line()).await else {
            return None;
        };
        let line = line.unwrap().expect("MONITOR ended");
        let named = keys.iter().filter(|key| line.contains(key.as_str()));
        let named = if line.contains("\"XREAD\"") {
            named.count()
        } else {
            0
        };
        if named > 0 {
            return Some(named);
        }
    };
    let mut streams = Vec::new();
    for i in 0..TOPICS {
        streams.push(open_topics(addr, &format!("idle{i}"), None).await);
    }
    eventually("the subscriptions", || hub.subscribers() == TOPICS).await;
    // The method works: the node reads all the topics while streams want them.
    let deadline = Instant::now() + PATIENCE;
    while next_xread(deadline).await.expect("no XREAD names them all") < TOPICS {}
    drop(streams);
    eventually("the streams to go", || hub.subscribers() == 0).await;
    let closed = Instant::now();
    let mut quiet_since = closed;
    let mut named = 0;
    // Passes after a second of XREADs (or none) naming none of them.
    while quiet_since.elapsed() < Duration::from_secs(1) {
        assert!(
            closed.elapsed() < Duration::from_secs(5),
            "5 s after its last subscriber left, the node still XREADs {named} of the {TOPICS} topics"
        );
        if let Some(n) = next_xread(quiet_since + Duration::from_secs(1)).await {
            named = n;
            quiet_since = Instant::now();
        }
    }
}

/// A live stream of several topics starts at the present, even when one of
/// its topics is new to Redis and the node holds history of another.
#[tokio::test]
async fn a_live_stream_joining_a_new_topic_gets_no_history() {
    let redis = Redis::start().await;
    let prefix = prefix("live-new-topic");
    let (hub, addr) = node(&redis.url, &prefix).await;
    let mut history = open_topics(addr, "a", None).await;
    eventually("the first stream", || hub.subscribers() == 1).await;
    for i in 0..20 {
        hub.publish("a", format!("old {i}")).await.unwrap();
    }
    let old = read_until(&mut history, "old 19", 20).await;
    assert_eq!(old.last().map(|(_, data)| data.as_str()), Some("old 19"));
    let mut live = open_topics(addr, "a,b", None).await;
    eventually("the second stream", || hub.subscribers() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.publish("a", "new").await.unwrap();
    let seen = read_until(&mut live, "new", 25).await;
    let data: Vec<&str> = seen.iter().map(|(_, data)| data.as_str()).collect();
    assert_eq!(data, ["new"], "a live stream got history");
}

/// 1,000 resumes of a two-topic stream, alternating between two nodes,
/// under a running publisher: every event exactly once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_resumes_alternating_between_nodes_deliver_every_event_once_in_order() {
    let resumes: usize = std::env::var("TOWER_SSE_RESUMES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let redis = Redis::start().await;
    let prefix = prefix("thousand");
    // History enough that however far the client falls behind the
    // publisher, it resumes rather than resets.
    let (hub1, addr1) = query_node(&redis.url, &prefix, 100_000).await;
    let (_hub2, addr2) = query_node(&redis.url, &prefix, 100_000).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let (hub, stop) = (hub1.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let topic = if n % 2 == 0 { "a" } else { "b" };
                hub.publish(topic, n.to_string()).await.unwrap();
                n += 1;
                // About 300 events/s: slower than the client reads, so it
                // keeps up on a loaded machine too.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            n
        })
    };
    let started = std::time::Instant::now();
    let mut last: Option<String> = None;
    let mut received: Vec<(String, u64)> = Vec::new();
    for i in 0..resumes {
        let addr = if i % 2 == 0 { addr1 } else { addr2 };
        let mut stream = open_topics(addr, "a,b", last.as_deref()).await;
        for _ in 0..3 {
            let event = tokio::time::timeout(
                Duration::from_secs(5),
                futures::StreamExt::next(&mut stream),
            )
            .await
            .unwrap_or_else(|_| panic!("resume {i}: no event within 5 s"))
            .expect("the stream ended");
            assert_eq!(
                event.event, "message",
                "resume {i}: {} {}",
                event.event, event.data
            );
            received.push((event.id.clone(), event.data.parse().unwrap()));
            last = Some(event.id);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.await.unwrap();
    let elapsed = started.elapsed();
    println!(
        "{resumes} resumes, {} events received of {published} published, in {elapsed:?}",
        received.len()
    );
    let first = received[0].1;
    for (k, pair) in received.windows(2).enumerate() {
        let ((id_a, a), (id_b, b)) = (&pair[0], &pair[1]);
        assert_eq!(
            *b,
            a + 1,
            "after event {a} (#{k}) came {b}: lost or repeated"
        );
        assert!(
            stream_id(id_b) > stream_id(id_a),
            "ids out of order at #{k}"
        );
    }
    assert_eq!(
        received.len() as u64,
        received.last().unwrap().1 - first + 1
    );
}
