//! What a subscription holds, seen from inside (its lanes' private state).

use std::task::Context;

use futures::{executor::block_on, task::noop_waker_ref};

use super::*;
use crate::{Event, hub::LagPolicy};

/// Review: `LagPolicy::Conflate` promises (RELIABILITY.md, the variant's
/// docs) one event per distinct key per topic. A stream that read once
/// into a catch-up and then stopped (a stalled client) must not keep,
/// besides, the events the topic has let go. It did: every key's old
/// event, replaced twice since, stayed pinned by the stream's catch-up
/// until its next read (which a stalled client never makes).
#[test]
fn a_stalled_stream_pins_no_event_its_topic_no_longer_keeps() {
    const KEYS: usize = 50;
    let hub = Hub::builder()
        .history(4)
        .lag_policy(LagPolicy::Conflate)
        .build();
    let mut subscription = Subscription::new(&hub, &["t"], Resume::Live).unwrap();
    let publish_round = |round: usize| {
        for key in 0..KEYS {
            let event = Event::new(format!("{round} {}", "x".repeat(1000))).name(format!("k{key}"));
            block_on(hub.publish("t", event)).unwrap();
        }
    };
    publish_round(0);
    // A handle on every event of the first round.
    let first_round: Vec<Bytes> = {
        let ring = subscription.lanes[0].topic.read();
        let conflation = ring.conflation.as_deref().unwrap();
        conflation
            .latest
            .values()
            .map(|l| l.bytes.clone())
            .collect()
    };
    assert_eq!(first_round.len(), KEYS);
    // One read of one event: the rest of the gap waits in the catch-up.
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = Vec::new();
    assert!(subscription.poll_read(&mut cx, 1, &mut out).is_ready());
    drop(out);
    assert!(subscription.lanes[0].catch_up.len() > KEYS / 2);
    // The client stalls; every key is published again, twice: the topic
    // lets the first round go.
    publish_round(1);
    publish_round(2);
    let pinned = first_round.iter().filter(|b| !b.is_unique()).count();
    assert_eq!(
        pinned, 0,
        "{pinned} events the topic let go are held by a stalled stream"
    );
}

/// Review: a resume served from the rings checks that they reach back to
/// its id, then places the stream's cursors. Events evicted in between (a
/// publish on another thread) were skipped without a word: the cursor went
/// to the first event still held. The stream must get a reset instead, as a
/// resume a moment later would have.
#[test]
fn events_evicted_between_the_resume_check_and_the_start_are_not_skipped_silently() {
    let hub = Hub::builder().history(4).build();
    let mut subscription = Subscription::new(&hub, &["t"], Resume::Live).unwrap();
    let publish = |data: &str| block_on(hub.publish("t", Event::new(data))).unwrap();
    let first = publish("e1");
    for data in ["e2", "e3", "e4"] {
        publish(data);
    }
    let resume = Resume::After(first.as_str().into());
    let begun = subscription.begin_local(&resume);
    assert!(!begun.reset, "e1 is still held: resumable");
    // Another thread publishes before the stream is placed: e1..e4 go.
    for data in ["e5", "e6", "e7", "e8"] {
        publish(data);
    }
    subscription.resume = resume;
    subscription.start(begun);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = Vec::new();
    assert!(
        subscription
            .poll_read(&mut cx, usize::MAX, &mut out)
            .is_ready()
    );
    let wire: String = out
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    let delivered_missed = ["e2", "e3", "e4"]
        .iter()
        .all(|e| wire.contains(&format!("data: {e}\r\n")));
    let told = wire.contains(&format!("event: {RESET_EVENT}\r\n"));
    assert!(
        delivered_missed || told,
        "e2..e4 skipped without a reset: {wire:?}"
    );
}
