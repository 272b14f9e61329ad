//! A hub with a snapshot function sends the topic's state in place of a
//! gap (`reset`, `lagged`), stamped with an id, then every event after it:
//! checked under a running publisher.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use common::*;
use eventsource_stream::Event as Received;
use tower_sse::{
    Buffer, Event,
    hub::{Hub, LAGGED_EVENT, RESET_EVENT},
};

const PAD: usize = 1024;

/// A hub whose topic's state is the newest number published; its snapshot
/// is that number, as an event named `snapshot`.
fn hub(history: usize, state: &Arc<AtomicU64>) -> Hub {
    let state = state.clone();
    Hub::builder()
        .history(history)
        .snapshot(move |_topic| {
            let now = state.load(Ordering::SeqCst);
            async move { Event::new(now.to_string()).name("snapshot") }
        })
        .build()
}

/// Publishes 1, 2, 3, ... (padded), updating the state first, until `last`.
fn publisher(hub: &Hub, state: &Arc<AtomicU64>, last: u64, pause_every: u64) {
    let (hub, state) = (hub.clone(), state.clone());
    tokio::spawn(async move {
        for n in 1..=last {
            state.store(n, Ordering::SeqCst);
            let data = format!("{n} {}", "x".repeat(PAD));
            hub.publish("feed", Event::new(data)).await.unwrap();
            if n % pause_every == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    });
}

fn number(event: &Received) -> u64 {
    event.data.split(' ').next().unwrap().parse().unwrap()
}

fn app(hub: &Hub) -> Router {
    let layer = hub_layer(hub, Buffer::fixed(16), |_| vec!["feed".to_owned()]);
    Router::new().route("/events", get(|| async {}).layer(layer))
}

async fn open(addr: std::net::SocketAddr, last: Option<&str>) -> reqwest::Response {
    fetch_resuming(addr, "/events", last).await
}

/// Checks a received sequence: every snapshot says `S`, and the first event
/// after it above `S` is `S + 1`; events go up by one otherwise; no reset,
/// no lag notice. Returns how many snapshots it saw.
fn check(received: &[Received]) -> usize {
    let mut snapshots = 0;
    let mut expected: Option<u64> = None;
    for event in received {
        assert_ne!(event.event, RESET_EVENT, "a reset despite the snapshot");
        assert_ne!(
            event.event, LAGGED_EVENT,
            "a lag notice despite the snapshot"
        );
        if event.event == "snapshot" {
            snapshots += 1;
            assert!(!event.id.is_empty(), "a snapshot without an id");
            expected = Some(event.data.parse::<u64>().unwrap() + 1);
            continue;
        }
        let n = number(event);
        match expected {
            // Published while the snapshot was taken: in it and after it.
            Some(next) if n < next => {}
            Some(next) => {
                assert_eq!(n, next, "an event fell between snapshot and stream");
                expected = Some(n + 1);
            }
            None => expected = Some(n + 1),
        }
    }
    snapshots
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_older_than_history_gets_a_snapshot_then_every_event_after_it() {
    let state = Arc::new(AtomicU64::new(0));
    let hub = hub(1000, &state);
    let addr = serve(app(&hub)).await;
    publisher(&hub, &state, 20_000, 2);
    eventually("history to move past id 1", || {
        state.load(Ordering::SeqCst) > 1100
    })
    .await;
    for round in 0..5 {
        let mut stream = events(open(addr, Some("1")).await);
        let mut received = Vec::new();
        while received.len() < 100 {
            received.push(next_event(&mut stream).await.unwrap());
        }
        assert_eq!(received[0].event, "snapshot", "round {round}");
        assert_eq!(check(&received), 1);
        // The snapshot's id resumes: every event after it, none before.
        let stamp = received[0].id.clone();
        let after: u64 = received[0].data.parse().unwrap();
        let mut resumed = events(open(addr, Some(&stamp)).await);
        let first = next_event(&mut resumed).await.unwrap();
        assert_eq!(
            first.event, "message",
            "resuming from the snapshot's id: {}",
            first.event
        );
        assert!(
            number(&first) <= after + 1,
            "resuming from the snapshot's id skipped {}..{}",
            after + 1,
            number(&first)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_falls_behind_gets_a_snapshot_instead_of_a_gap() {
    let state = Arc::new(AtomicU64::new(0));
    let hub = hub(500, &state);
    let addr = serve(app(&hub)).await;
    let mut stream = events(open(addr, None).await);
    eventually("the stream to subscribe", || hub.subscribers() == 1).await;
    publisher(&hub, &state, 20_000, 200);
    let mut received = vec![next_event(&mut stream).await.unwrap()];
    // Stop reading while the publisher runs far past the history.
    eventually("the publisher to finish", || {
        state.load(Ordering::SeqCst) == 20_000
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let at = |e: &Received| match e.event.as_str() {
        "snapshot" => e.data.parse::<u64>().unwrap(),
        _ => number(e),
    };
    while received.last().is_none_or(|e| at(e) < 20_000) {
        assert!(tokio::time::Instant::now() < deadline, "the stream stopped");
        received.push(next_event(&mut stream).await.unwrap());
    }
    let snapshots = check(&received);
    println!(
        "{} events, {snapshots} snapshots, {} lagged",
        received.len(),
        hub.lagged_events()
    );
    assert!(snapshots >= 1, "the stream never fell behind");
    assert!(
        received.len() > snapshots + 100,
        "few events besides snapshots"
    );
    assert!(hub.lagged_events() > 0);
}

/// A snapshot function that panics costs its stream a reset, nothing more.
#[tokio::test]
async fn a_panicking_snapshot_function_gives_a_reset_and_the_stream_goes_on() {
    let hub = Hub::builder()
        .history(2)
        .snapshot(|_topic| async { panic!("no snapshot today") })
        .build();
    let addr = serve(app(&hub)).await;
    for i in 0..5 {
        hub.publish("feed", format!("{i} old")).await.unwrap();
    }
    let mut stream = events(open(addr, Some("1")).await);
    let first = next_event(&mut stream).await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        (RESET_EVENT, "")
    );
    hub.publish("feed", "5 new").await.unwrap();
    assert_eq!(next_event(&mut stream).await.unwrap().data, "5 new");
    // The server is fine: another stream works.
    let mut other = events(open(addr, None).await);
    eventually("the second stream", || hub.subscribers() == 2).await;
    hub.publish("feed", "6 new").await.unwrap();
    assert_eq!(next_event(&mut other).await.unwrap().data, "6 new");
}
