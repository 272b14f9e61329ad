//! The conflating lag policy, read straight from a subscription (no
//! server): what a lagging stream gets, in which order, and what is counted.

use std::{
    panic::{AssertUnwindSafe, catch_unwind},
    task::{Context, Poll},
};

use bytes::Bytes;
use futures::{executor::block_on, task::noop_waker_ref};

use super::{Hub, LAGGED_EVENT, LagPolicy, Resume, Subscription};
use crate::Event;

/// One event as read from its frame: (name, id, data); name `""` for none.
fn parse(frame: &Bytes) -> (String, String, String) {
    let text = std::str::from_utf8(frame).expect("frames are UTF-8 here");
    let (mut name, mut id, mut data) = (String::new(), String::new(), String::new());
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if let Some(v) = line.strip_prefix("event: ") {
            name = v.to_owned();
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = v.to_owned();
        }
    }
    (name, id, data)
}

/// Everything the subscription has now, `limit` events per read.
fn read_all(subscription: &mut Subscription, limit: usize) -> Vec<(String, String, String)> {
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut got = Vec::new();
    loop {
        let mut out = Vec::new();
        match subscription.poll_read(&mut cx, limit, &mut out) {
            Poll::Ready(Ok(())) => got.extend(out.iter().map(parse)),
            Poll::Ready(Err(_)) => panic!("the stream was closed"),
            Poll::Pending => return got,
        }
    }
}

/// Reads once, at most `limit` events.
fn read_once(subscription: &mut Subscription, limit: usize) -> Vec<(String, String, String)> {
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut out = Vec::new();
    match subscription.poll_read(&mut cx, limit, &mut out) {
        Poll::Ready(Err(_)) => panic!("the stream was closed"),
        _ => out.iter().map(parse).collect(),
    }
}

fn publish(hub: &Hub, topic: &str, name: Option<&str>, data: &str) -> String {
    let mut event = Event::new(data.to_owned());
    if let Some(name) = name {
        event = event.name(name);
    }
    block_on(hub.publish(topic, event)).expect("published")
}

/// The events of a sequence, as `name=data` (`-=data` without a name) or
/// `L<n>` for a lag notice.
fn summary(got: &[(String, String, String)]) -> Vec<String> {
    got.iter()
        .map(|(name, _, data)| match name.as_str() {
            LAGGED_EVENT => format!("L{data}"),
            "" => format!("-={data}"),
            name => format!("{name}={data}"),
        })
        .collect()
}

/// The sequence of the module docs' example: of ten events, the ring (4)
/// holds the last four; the gap has `c`'s newest event, two events with no
/// key, and three replaced (`a1`, `b1`, `a2`).
fn publish_ten(hub: &Hub) {
    for (name, data) in [
        (Some("a"), "a1"),
        (Some("b"), "b1"),
        (None, "x1"),
        (Some("a"), "a2"),
        (Some("c"), "c1"),
        (None, "x2"),
        (Some("b"), "b2"),
        (Some("d"), "d1"),
        (Some("e"), "e1"),
        (Some("a"), "a3"),
    ] {
        publish(hub, "t", name, data);
    }
}

#[test]
fn a_lagging_stream_gets_the_newest_event_of_each_key_of_the_gap_then_the_ring() {
    let hub = Hub::builder()
        .history(4)
        .lag_policy(LagPolicy::Conflate)
        .build();
    let mut subscription = Subscription::new(&hub, &["t"], Resume::Live).unwrap();
    publish_ten(&hub);
    let got = read_all(&mut subscription, 100);
    assert_eq!(
        summary(&got),
        ["L2", "c=c1", "b=b2", "d=d1", "e=e1", "a=a3"],
        "{got:?}"
    );
    let ids: Vec<&str> = got[1..].iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids, ["5", "7", "8", "9", "10"]);
    // Two lost without a key, three replaced: every event is delivered or counted.
    assert_eq!(hub.lagged_events(), 5);
}

#[test]
fn under_notify_the_same_stream_gets_a_notice_for_the_whole_gap() {
    // The contrast: the conflating test above fails with this policy.
    let hub = Hub::builder().history(4).build();
    let mut subscription = Subscription::new(&hub, &["t"], Resume::Live).unwrap();
    publish_ten(&hub);
    let got = read_all(&mut subscription, 100);
    assert_eq!(summary(&got), ["L6", "b=b2", "d=d1", "e=e1", "a=a3"]);
}

#[test]
fn conflate_by_keys_with_the_given_function() {
    let hub = Hub::builder()
        .history(2)
        .conflate_by(|event: &Event| event.data_ref()?.split_once(':').map(|(k, _)| k.into()))
        .build();
    let mut subscription = Subscription::new(&hub, &["t"], Resume::Live).unwrap();
    for data in ["a:1", "b:1", "a:2", "none", "b:2", "c:1", "c:2"] {
        publish(&hub, "t", Some("price"), data);
    }
    // The ring holds c:1 and c:2; the gap's newest are a:2 and b:2; c:1 is
    // in the ring, sent as it is (the ring delivers what it holds).
    let got = read_all(&mut subscription, 100);
    assert_eq!(
        summary(&got),
        ["L1", "price=a:2", "price=b:2", "price=c:1", "price=c:2"]
    );
    // a:1 and b:1 replaced, "none" lost.
    assert_eq!(hub.lagged_events(), 3);
}

#[test]
fn a_catch_up_longer_than_a_read_goes_on_in_the_next_reads() {
    let hub = Hub::builder()
        .history(2)
        .lag_policy(LagPolicy::Conflate)
        .build();
    let mut subscription = Subscription::new(&hub, &["t"], Resume::Live).unwrap();
    for key in ["a", "b", "c", "d", "e", "f", "g"] {
        publish(&hub, "t", Some(key), key);
    }
    // Gap: a..e (five keys, each once); ring: f, g. Two per read.
    let first = read_once(&mut subscription, 2);
    assert_eq!(summary(&first), ["a=a", "b=b"]);
    let second = read_once(&mut subscription, 2);
    assert_eq!(summary(&second), ["c=c", "d=d"]);
    let rest = read_all(&mut subscription, 2);
    assert_eq!(summary(&rest), ["e=e", "f=f", "g=g"]);
    assert_eq!(hub.lagged_events(), 0, "nothing was replaced or lost");
}

#[test]
fn a_key_published_again_during_a_catch_up_replaces_its_waiting_value() {
    let hub = Hub::builder()
        .history(2)
        .lag_policy(LagPolicy::Conflate)
        .build();
    let mut subscription = Subscription::new(&hub, &["t"], Resume::Live).unwrap();
    for key in ["a", "b", "c", "d", "e"] {
        publish(&hub, "t", Some(key), &format!("{key}1"));
    }
    // Gap: a1 b1 c1; ring: d1 e1. One read of one event: a1.
    assert_eq!(summary(&read_once(&mut subscription, 1)), ["a=a1"]);
    // b and c again, and enough to push them out of the ring too: the
    // waiting b1 and c1 are replaced by b2 and c2 (no key twice from a gap).
    for data in ["b2", "c2", "f1", "g1"] {
        publish(&hub, "t", Some(&data[..1]), data);
    }
    let got = read_all(&mut subscription, 100);
    assert_eq!(
        summary(&got),
        ["d=d1", "e=e1", "b=b2", "c=c2", "f=f1", "g=g1"]
    );
    // b1 and c1 replaced.
    assert_eq!(hub.lagged_events(), 2);
}

#[test]
fn two_topics_that_both_lag_keep_the_hub_order() {
    let hub = Hub::builder()
        .history(2)
        .lag_policy(LagPolicy::Conflate)
        .build();
    let mut subscription = Subscription::new(&hub, &["t", "u"], Resume::Live).unwrap();
    let mut order = Vec::new();
    for i in 0..6 {
        for (topic, key) in [("t", "x"), ("u", "y"), ("t", &*format!("k{i}")), ("u", "z")] {
            order.push(publish(&hub, topic, Some(key), &format!("{topic}{key}{i}")));
        }
    }
    let got = read_all(&mut subscription, 100);
    let ids: Vec<u64> = got.iter().map(|(_, id, _)| id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    // The newest value of every key of both topics, once each.
    let mut keys: Vec<&str> = got.iter().map(|(name, ..)| name.as_str()).collect();
    let last = |key: &str| got.iter().rev().find(|(n, ..)| n == key).unwrap().2.clone();
    assert_eq!(last("x"), "tx5");
    assert_eq!(last("y"), "uy5");
    assert_eq!(last("z"), "uz5");
    keys.sort_unstable();
    let count = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), count, "a key twice: {got:?}");
    // x, y, z and k0..k5.
    assert_eq!(count, 9);
    assert_eq!(hub.lagged_events(), 24 - 9);
}

#[test]
fn a_panicking_key_function_reaches_the_publisher_and_leaves_the_hub_working() {
    let hub = Hub::builder()
        .history(2)
        .conflate_by(|event: &Event| {
            assert_ne!(event.data_ref(), Some("boom"), "the key function panics");
            event.name_ref().map(str::to_owned)
        })
        .build();
    let mut subscription = Subscription::new(&hub, &["t"], Resume::Live).unwrap();
    let panicked = catch_unwind(AssertUnwindSafe(|| publish(&hub, "t", Some("a"), "boom")));
    assert!(panicked.is_err());
    for data in ["a1", "b1", "a2", "c1", "d1"] {
        publish(&hub, "t", Some(&data[..1]), data);
    }
    let got = read_all(&mut subscription, 100);
    assert_eq!(summary(&got), ["b=b1", "a=a2", "c=c1", "d=d1"]);
    let ids: Vec<&str> = got.iter().map(|(_, id, _)| id.as_str()).collect();
    assert_eq!(ids, ["2", "3", "4", "5"], "the panicking event took no id");
}

#[test]
fn the_key_sees_the_event_as_published_without_the_hubs_id() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hub = Hub::builder()
        .conflate_by({
            let seen = seen.clone();
            move |event: &Event| {
                seen.lock().unwrap().push(event.id_ref().map(str::to_owned));
                None
            }
        })
        .build();
    publish(&hub, "t", None, "one");
    block_on(hub.publish("t", Event::new("two").id("mine"))).unwrap();
    assert_eq!(*seen.lock().unwrap(), [None, Some("mine".to_owned())]);
}

#[test]
fn a_snapshot_function_is_not_called_on_lag_under_conflate() {
    let called = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let hub = Hub::builder()
        .history(4)
        .lag_policy(LagPolicy::Conflate)
        .snapshot({
            let called = called.clone();
            move |_topic| {
                called.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async { Event::new("snapshot").name("snapshot") }
            }
        })
        .build();
    let mut subscription = Subscription::new(&hub, &["t"], Resume::Live).unwrap();
    publish_ten(&hub);
    let got = read_all(&mut subscription, 100);
    assert_eq!(
        summary(&got),
        ["L2", "c=c1", "b=b2", "d=d1", "e=e1", "a=a3"]
    );
    assert_eq!(called.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// Under `Conflate`, a `Last-Event-ID` still in history resumes right
/// after it, every event replayed (no conflation: nothing was lost).
#[test]
fn under_conflate_a_resume_within_history_replays_every_event_after_the_id() {
    let hub = Hub::builder()
        .history(10)
        .lag_policy(LagPolicy::Conflate)
        .build();
    let ids: Vec<String> = ["a1", "a2", "b1", "a3"]
        .iter()
        .map(|data| publish(&hub, "t", Some(&data[..1]), data))
        .collect();
    let resume = Resume::After(ids[0].clone().into_boxed_str());
    let mut subscription = Subscription::new(&hub, &["t"], resume).unwrap();
    let got = read_all(&mut subscription, 100);
    assert_eq!(summary(&got), ["a=a2", "b=b1", "a=a3"]);
    assert_eq!(hub.lagged_events(), 0);
}

/// Under `Conflate`, an id older than history still gets the snapshot (a
/// snapshot replaces a reset whatever the lag policy), then live events.
#[test]
fn under_conflate_an_id_older_than_history_gets_the_snapshot() {
    let hub = Hub::builder()
        .history(2)
        .lag_policy(LagPolicy::Conflate)
        .snapshot(|_topic| async { Event::new("now").name("snapshot") })
        .build();
    let first = publish(&hub, "t", Some("a"), "a1");
    for data in ["a2", "b1", "a3"] {
        publish(&hub, "t", Some(&data[..1]), data);
    }
    let resume = Resume::After(first.into_boxed_str());
    let mut subscription = Subscription::new(&hub, &["t"], resume).unwrap();
    let got = read_all(&mut subscription, 100);
    assert_eq!(summary(&got), ["snapshot=now"]);
    publish(&hub, "t", Some("b"), "b2");
    assert_eq!(summary(&read_all(&mut subscription, 100)), ["b=b2"]);
}

/// Review: random interleavings of publishes (keys a, b, c and none, one
/// or two topics, history 0 to 5, some with a 2 ms `max_age`) and reads of
/// 1 to 3 events, live or resumed from an id: hub order, published =
/// received + `lagged_events`, notices = keyless events missed, and the
/// last event of each key received is its newest.
#[test]
fn review_random_interleavings_keep_every_promise() {
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut lagged_rounds = 0;
    for round in 0..4000 {
        let history = [0usize, 1, 2, 3, 5][rnd(5) as usize];
        let aged = round % 20 == 0;
        let mut builder = Hub::builder()
            .history(history)
            .lag_policy(LagPolicy::Conflate);
        if aged {
            builder = builder.max_age(std::time::Duration::from_millis(2));
        }
        let hub = builder.build();
        let topics: &[&str] = if rnd(2) == 0 { &["t"] } else { &["t", "u"] };
        let mut published = Vec::new(); // (id, topic, name, data)
        let pre = rnd(6);
        for _ in 0..pre {
            let topic = topics[rnd(topics.len() as u64) as usize];
            let name = ["a", "b", "c", ""][rnd(4) as usize];
            let data = format!("{topic}{}", published.len());
            let id = publish(&hub, topic, (!name.is_empty()).then_some(name), &data);
            published.push((
                id.parse::<u64>().unwrap(),
                topic.to_owned(),
                name.to_owned(),
                data,
            ));
        }
        let resume_at = if pre > 0 && rnd(2) == 0 {
            Some(published[rnd(pre) as usize].0)
        } else {
            None
        };
        let live_from = published.len();
        let resume = match resume_at {
            Some(id) => Resume::After(id.to_string().into()),
            None => Resume::Live,
        };
        let mut sub = Subscription::new(&hub, topics, resume).unwrap();
        let mut got = Vec::new();
        let steps = 5 + rnd(40);
        for _ in 0..steps {
            let r = rnd(7);
            if r > 2 {
                let topic = topics[rnd(topics.len() as u64) as usize];
                let name = ["a", "b", "c", ""][rnd(4) as usize];
                let data = format!("{topic}{}", published.len());
                let id = publish(&hub, topic, (!name.is_empty()).then_some(name), &data);
                published.push((
                    id.parse::<u64>().unwrap(),
                    topic.to_owned(),
                    name.to_owned(),
                    data,
                ));
            } else if r == 0 && aged {
                std::thread::sleep(std::time::Duration::from_millis(3));
            } else {
                got.extend(read_once(&mut sub, 1 + rnd(3) as usize));
            }
        }
        got.extend(read_all(&mut sub, 100));
        let reset = got.iter().any(|(n, ..)| n == crate::hub::RESET_EVENT);
        let expected: Vec<_> = match (reset, resume_at) {
            (false, Some(id)) => published.iter().filter(|p| p.0 > id).cloned().collect(),
            _ => published[live_from..].to_vec(),
        };
        let notices: u64 = got
            .iter()
            .filter(|(n, ..)| n == LAGGED_EVENT)
            .map(|(_, _, d)| d.parse::<u64>().unwrap())
            .sum();
        let events: Vec<_> = got
            .iter()
            .filter(|(n, ..)| n != LAGGED_EVENT && n != crate::hub::RESET_EVENT)
            .collect();
        let ids: Vec<u64> = events
            .iter()
            .map(|(_, id, _)| id.parse().unwrap())
            .collect();
        let ctx = format!(
            "round {round} history {history} aged {aged} topics {topics:?} resume {resume_at:?} reset {reset}\nexpected {expected:?}\ngot {got:?}"
        );
        if hub.lagged_events() > 0 {
            lagged_rounds += 1;
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "order: {ctx}");
        assert_eq!(
            expected.len() as u64,
            events.len() as u64 + hub.lagged_events(),
            "count: {ctx}"
        );
        let keyless_pub = expected.iter().filter(|p| p.2.is_empty()).count() as u64;
        let keyless_got = events.iter().filter(|(n, ..)| n.is_empty()).count() as u64;
        assert_eq!(keyless_pub - keyless_got, notices, "notices: {ctx}");
        for topic in topics {
            for key in ["a", "b", "c"] {
                let newest = expected.iter().rev().find(|p| &p.1 == topic && p.2 == key);
                let last = events
                    .iter()
                    .rev()
                    .find(|(n, _, d)| n == key && d.starts_with(topic));
                assert_eq!(
                    newest.map(|p| p.3.clone()),
                    last.map(|(_, _, d)| d.clone()),
                    "newest of {topic}/{key}: {ctx}"
                );
            }
        }
    }
    assert!(lagged_rounds > 500, "{lagged_rounds}");
}
