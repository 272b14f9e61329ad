//! The fan-out hub end to end over loopback TCP: one publish reaches every
//! stream, reconnects resume from `Last-Event-ID` with no gap and no
//! duplicate, and gaps are always marked (`reset`, `lagged`).

mod common;

use std::time::Duration;

use common::*;
use eventsource_stream::Event as Received;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tower_sse::{
    Buffer, Event,
    hub::{Hub, LAGGED_EVENT, LagPolicy, PublishError, RESET_EVENT},
};

/// Opens `/events` on the comma-separated `query` topics, resuming after `last`.
async fn open(addr: std::net::SocketAddr, query: &str, last: Option<&str>) -> reqwest::Response {
    fetch_resuming(addr, &format!("/events?{query}"), last).await
}

#[tokio::test]
async fn one_publish_reaches_every_stream() {
    let hub = Hub::new();
    let addr = serve(hub_app(&hub, Buffer::fixed(16))).await;
    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(events(open(addr, "main", None).await));
    }
    subscribed(&hub, 20).await;
    for i in 0..50 {
        let id = hub
            .publish("main", Event::new(format!("m{i}")).name("chat"))
            .await
            .unwrap();
        assert_eq!(id, (i + 1).to_string());
    }
    hub.publish("other", "not for main").await.unwrap();
    for client in &mut clients {
        for i in 0..50 {
            let event = next_event(client).await.unwrap();
            assert_eq!(
                (event.event.as_str(), event.data.clone()),
                ("chat", format!("m{i}"))
            );
            assert_eq!(event.id, (i + 1).to_string());
        }
    }
}

#[tokio::test]
async fn a_reconnect_resumes_without_gap_or_duplicate() {
    let hub = Hub::new();
    let addr = serve(hub_app(&hub, Buffer::fixed(16))).await;
    let mut first = events(open(addr, "main", None).await);
    subscribed(&hub, 1).await;
    for i in 1..=5 {
        hub.publish("main", format!("e{i}")).await.unwrap();
    }
    for _ in 0..3 {
        next_event(&mut first).await.unwrap();
    }
    drop(first);
    eventually("the stream to go", || hub.subscribers() == 0).await;
    for i in 6..=8 {
        hub.publish("main", format!("e{i}")).await.unwrap();
    }
    let mut again = events(open(addr, "main", Some("3")).await);
    subscribed(&hub, 1).await;
    hub.publish("main", "e9").await.unwrap();
    let mut seen = Vec::new();
    for _ in 4..=9 {
        let event = next_event(&mut again).await.unwrap();
        seen.push((event.id, event.data));
    }
    let expected: Vec<_> = (4..=9).map(|i| (i.to_string(), format!("e{i}"))).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn an_id_older_than_history_gets_a_reset() {
    let hub = Hub::builder().history(5).build();
    let addr = serve(hub_app(&hub, Buffer::fixed(16))).await;
    for i in 1..=20 {
        hub.publish("main", format!("e{i}")).await.unwrap();
    }
    let mut stream = events(open(addr, "main", Some("2")).await);
    let reset = next_event(&mut stream).await.unwrap();
    assert_eq!(
        (reset.event.as_str(), reset.data.as_str()),
        (RESET_EVENT, "2")
    );
    subscribed(&hub, 1).await;
    hub.publish("main", "live").await.unwrap();
    let live = next_event(&mut stream).await.unwrap();
    assert_eq!((live.id.as_str(), live.data.as_str()), ("21", "live"));
    // An id inside history resumes instead.
    let mut stream = events(open(addr, "main", Some("17")).await);
    for i in 18..=21 {
        assert_eq!(next_event(&mut stream).await.unwrap().id, i.to_string());
    }
    // An id this hub never gave out is a reset too.
    let mut stream = events(open(addr, "main", Some("no-such-id")).await);
    assert_eq!(next_event(&mut stream).await.unwrap().event, RESET_EVENT);
}

#[tokio::test]
async fn history_forgets_by_age() {
    let hub = Hub::builder().max_age(Duration::from_millis(100)).build();
    let addr = serve(hub_app(&hub, Buffer::fixed(16))).await;
    hub.publish("main", "old").await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    hub.publish("main", "new").await.unwrap();
    let mut stream = events(open(addr, "main", Some("0")).await);
    let first = next_event(&mut stream).await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        (RESET_EVENT, "0")
    );
    let mut stream = events(open(addr, "main", Some("1")).await);
    let next = next_event(&mut stream).await.unwrap();
    assert_eq!((next.id.as_str(), next.data.as_str()), ("2", "new"));
}

#[tokio::test]
async fn publisher_ids_are_kept_and_resumable() {
    let hub = Hub::new();
    let addr = serve(hub_app(&hub, Buffer::fixed(16))).await;
    for name in ["alpha", "beta", "gamma"] {
        assert_eq!(
            hub.publish("main", Event::new(name).id(name))
                .await
                .unwrap(),
            name
        );
    }
    let mut stream = events(open(addr, "main", Some("alpha")).await);
    assert_eq!(next_event(&mut stream).await.unwrap().id, "beta");
    assert_eq!(next_event(&mut stream).await.unwrap().id, "gamma");
    let bad = hub.publish("main", Event::new("x").name("bad\nname")).await;
    assert!(matches!(bad, Err(PublishError::Invalid(_))));
    // The refused event took no sequence number.
    assert_eq!(hub.publish("main", "next").await.unwrap(), "4");
}

#[tokio::test]
async fn several_topics_merge_in_publish_order_and_resume_from_one_id() {
    let hub = Hub::new();
    let addr = serve(hub_app(&hub, Buffer::fixed(64))).await;
    for i in 0..30 {
        hub.publish(if i % 3 == 0 { "a" } else { "b" }, format!("{i}"))
            .await
            .unwrap();
        hub.publish("c", "elsewhere").await.unwrap();
    }
    let mut stream = events(open(addr, "a,b", Some("0")).await);
    let mut data = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..30 {
        let event = next_event(&mut stream).await.unwrap();
        data.push(event.data.parse::<u32>().unwrap());
        ids.push(event.id.parse::<u64>().unwrap());
    }
    assert_eq!(data, (0..30).collect::<Vec<_>>());
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    // Resume in the middle: exactly the rest.
    let middle = ids[14].to_string();
    let mut stream = events(open(addr, "a,b", Some(&middle)).await);
    for expected in 15..30 {
        assert_eq!(
            next_event(&mut stream).await.unwrap().data,
            expected.to_string()
        );
    }
}

/// Checks a subscriber's view: ids strictly follow the published sequence,
/// and each `lagged` event stands exactly where its count of events is missing.
fn check_gaps_are_marked(received: &[Received], published: u64) -> u64 {
    let mut expected_next = 1u64;
    let mut pending_lag = 0u64;
    let mut missed_total = 0;
    for event in received {
        if event.event == LAGGED_EVENT {
            pending_lag += event.data.parse::<u64>().unwrap();
            continue;
        }
        let id: u64 = event.id.parse().unwrap();
        assert_eq!(
            id,
            expected_next + pending_lag,
            "unmarked gap or duplicate before id {id}"
        );
        missed_total += pending_lag;
        pending_lag = 0;
        expected_next = id + 1;
    }
    assert_eq!(
        expected_next - 1 + pending_lag,
        published,
        "the tail is missing"
    );
    missed_total + pending_lag
}

#[tokio::test]
async fn a_slow_subscriber_lags_visibly_and_never_slows_publishing() {
    slow_subscriber_lags_visibly(50).await;
}

#[tokio::test]
async fn with_history_zero_a_slow_subscriber_lags_visibly_past_the_live_window() {
    slow_subscriber_lags_visibly(0).await;
}

/// A subscriber stalls while 4,000 events are published to a hub keeping
/// `history` events: every gap it sees is marked by a `lagged` count.
async fn slow_subscriber_lags_visibly(history: usize) {
    const PUBLISHED: u64 = 4_000;
    let hub = Hub::builder().history(history).build();
    let addr = serve(hub_app(&hub, Buffer::fixed(4))).await;
    let response = open(addr, "main", None).await;
    subscribed(&hub, 1).await;
    let mut body = response.bytes_stream();
    // Read a little, then stall while the hub publishes everything.
    let _ = body.next().await;
    let started = tokio::time::Instant::now();
    for i in 0..PUBLISHED {
        hub.publish("main", Event::new("x".repeat(2000)).comment(i.to_string()))
            .await
            .unwrap();
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let publish_time = started.elapsed();
    hub.publish("main", Event::new("the end").name("end"))
        .await
        .unwrap();
    // Now read everything, with the independent parser.
    let mut events =
        Box::pin(eventsource_stream::Eventsource::eventsource(body).map(|e| e.unwrap()));
    let mut received = Vec::new();
    loop {
        let event = next_event(&mut events).await.unwrap();
        let end = event.event == "end";
        received.push(event);
        if end {
            break;
        }
    }
    let missed = check_gaps_are_marked(&received, PUBLISHED + 1);
    assert!(missed > 0, "this subscriber should have lagged");
    assert_eq!(hub.lagged_events(), missed);
    println!(
        "published {PUBLISHED} in {publish_time:?}; the stalled subscriber missed {missed}, all marked"
    );
}

#[tokio::test]
async fn lag_policy_close_ends_the_lagging_stream() {
    let hub = Hub::builder()
        .history(2_000)
        .lag_policy(LagPolicy::Close)
        .build();
    let small = Hub::builder()
        .history(20)
        .lag_policy(LagPolicy::Close)
        .build();
    for hub in [hub, small.clone()] {
        let addr = serve(hub_app(&hub, Buffer::fixed(2))).await;
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        subscribed(&hub, 1).await;
        for _ in 0..1_000 {
            hub.publish("main", "x".repeat(4000)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if hub.lagged_events() > 0 {
            // It lagged: the stream was closed for it.
            eventually("the lagging stream to close", || hub.subscribers() == 0).await;
        } else {
            // History was deep enough: the reader is still subscribed.
            assert_eq!(hub.subscribers(), 1);
        }
        drop(socket);
    }
    assert!(small.lagged_events() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_under_concurrency_is_exact() {
    const PUBLISHERS: u64 = 4;
    const PER_PUBLISHER: u64 = 400;
    const SUBSCRIBERS: usize = 12;
    const TOTAL: u64 = PUBLISHERS * PER_PUBLISHER;
    let hub = Hub::builder().history(TOTAL as usize).build();
    let addr = serve(hub_app(&hub, Buffer::fixed(8))).await;

    let subscribers: Vec<_> = (0..SUBSCRIBERS)
        .map(|n| {
            tokio::spawn(async move {
                // A cheap deterministic pseudo-random sequence per subscriber.
                let mut state = 0x9E37_79B9_7F4A_7C15u64.wrapping_mul(n as u64 + 1);
                let mut next_random = move |bound: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % bound
                };
                let mut received: Vec<Received> = Vec::new();
                let mut last = "0".to_owned();
                let mut reconnects = 0;
                while received.last().is_none_or(|e| e.id != TOTAL.to_string()) {
                    let mut stream = events(open(addr, "main", Some(&last)).await);
                    let take = 1 + next_random(300);
                    for _ in 0..take {
                        let Some(event) = next_event(&mut stream).await else {
                            break;
                        };
                        assert_ne!(event.event, RESET_EVENT, "history covers everything");
                        last = event.id.clone();
                        let done = last == TOTAL.to_string();
                        received.push(event);
                        if done {
                            break;
                        }
                    }
                    reconnects += 1;
                }
                (received, reconnects)
            })
        })
        .collect();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let hub = hub.clone();
            tokio::spawn(async move {
                for i in 0..PER_PUBLISHER {
                    hub.publish("main", format!("p{p}-{i}")).await.unwrap();
                    if i % 16 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    let mut reconnects_total = 0;
    for subscriber in subscribers {
        let (received, reconnects) = tokio::time::timeout(PATIENCE * 3, subscriber)
            .await
            .expect("a subscriber never caught up")
            .unwrap();
        let ids: Vec<u64> = received.iter().map(|e| e.id.parse().unwrap()).collect();
        assert_eq!(ids, (1..=TOTAL).collect::<Vec<_>>(), "gap or duplicate");
        reconnects_total += reconnects;
    }
    println!(
        "{SUBSCRIBERS} subscribers, {TOTAL} events from {PUBLISHERS} publishers, {reconnects_total} reconnects: exact"
    );
}

#[tokio::test]
async fn history_zero_delivers_live_events_and_resets_every_resume() {
    let hub = Hub::builder().history(0).build();
    let addr = serve(hub_app(&hub, Buffer::fixed(16))).await;
    hub.publish("main", "before anyone subscribed")
        .await
        .unwrap();
    let mut stream = events(open(addr, "main", None).await);
    subscribed(&hub, 1).await;
    // A burst, published without yielding: a subscriber that keeps up gets
    // every one of them, and nothing from before it subscribed.
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(hub.publish("main", format!("live {i}")).await.unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        let event = next_event(&mut stream).await.unwrap();
        assert_eq!(
            (event.event.as_str(), event.id.as_str(), event.data.clone()),
            ("message", id.as_str(), format!("live {i}")),
            "event {i}"
        );
    }
    assert_eq!(hub.lagged_events(), 0);
    drop(stream);
    eventually("the stream to go", || hub.subscribers() == 0).await;
    // Nothing is replayed: a resume from the newest id, or from any other,
    // gets a reset echoing it, then live events.
    for last in [ids[49].as_str(), ids[10].as_str()] {
        let mut stream = events(open(addr, "main", Some(last)).await);
        // The reset comes once the stream's live cursor is set.
        let reset = next_event(&mut stream).await.unwrap();
        assert_eq!(
            (reset.event.as_str(), reset.data.as_str()),
            (RESET_EVENT, last),
            "resuming from {last}"
        );
        let live = hub.publish("main", "after the reconnect").await.unwrap();
        let event = next_event(&mut stream).await.unwrap();
        assert_eq!(
            (event.id.as_str(), event.data.as_str()),
            (live.as_str(), "after the reconnect")
        );
        drop(stream);
        eventually("the stream to go", || hub.subscribers() == 0).await;
    }
}

#[tokio::test]
async fn a_topic_listed_twice_delivers_each_event_once() {
    let hub = Hub::new();
    let addr = serve(hub_app(&hub, Buffer::fixed(16))).await;
    // Through `Hub::ready`: the topics function returns ["main", "main"]
    // (and ["b", "main", "b", "main"]).
    let mut twice = events(open(addr, "main,main", None).await);
    let mut mixed = events(open(addr, "b,main,b,main", None).await);
    subscribed(&hub, 2).await;
    for i in 1..=6 {
        let topic = if i % 3 == 0 { "b" } else { "main" };
        hub.publish(topic, format!("e{i}")).await.unwrap();
    }
    hub.publish("end", "not subscribed").await.unwrap();
    hub.publish("main", "last").await.unwrap();
    let ids = |expected: &[u64]| expected.iter().map(u64::to_string).collect::<Vec<_>>();
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_event(&mut twice).await.unwrap().id);
    }
    assert_eq!(seen, ids(&[1, 2, 4, 5, 8]), "duplicate or gap");
    let mut seen = Vec::new();
    for _ in 0..7 {
        seen.push(next_event(&mut mixed).await.unwrap().id);
    }
    assert_eq!(seen, ids(&[1, 2, 3, 4, 5, 6, 8]), "duplicate or gap");
    // A resume replays each event once too.
    let mut again = events(open(addr, "main,main", Some("2")).await);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(next_event(&mut again).await.unwrap().id);
    }
    assert_eq!(seen, ids(&[4, 5, 8]), "duplicate or gap on resume");
}

#[tokio::test]
async fn subscribe_called_directly_with_a_topic_twice_delivers_each_event_once() {
    let hub = Hub::new();
    let addr = serve(subscribing_app(&hub, &["main", "main"])).await;
    let mut stream = events(open(addr, "", None).await);
    subscribed(&hub, 1).await;
    for i in 1..=3 {
        hub.publish("main", format!("e{i}")).await.unwrap();
    }
    for i in 1..=3 {
        let event = next_event(&mut stream).await.unwrap();
        assert_eq!(
            (event.id, event.data),
            (i.to_string(), format!("e{i}")),
            "duplicate or gap"
        );
    }
}
