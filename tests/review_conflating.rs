//! Hostile review of the conflating buffer with real tasks on a
//! multi-thread runtime. The stream is read in-process with the test kit so
//! that the client provably holds the queue full between reads (over TCP
//! the socket's buffers would take what the test needs queued).
#![cfg(all(feature = "testing", feature = "axum"))]

use std::{sync::Arc, time::Duration};

use axum::{Router, routing::get};
use tokio::sync::Notify;
use tower_sse::{Buffer, Event, EventSender, SseLayer, StreamContext, testing::TestClient};

/// Long enough for a spawned send to reach its waiting point on a busy machine.
const SETTLE: Duration = Duration::from_millis(150);

/// Steps the test and the ready function tell each other.
#[derive(Default)]
struct Steps {
    armed: Notify,
    first_queued: Notify,
    third_sent: Notify,
    third_read: Notify,
}

// Review (defect): with a queue of 1 held full (the client does not read),
// send `b=1` waits, then send `b=2` waits behind it, in another task. The
// client takes the filler: `b=1` is queued. A third send `b=3`, after both,
// replaces `b=1` at once, while `b=2` still waits for a slot of its own (a
// waiting send is not woken when its key becomes queued). The client then
// gets `b=3` and, last, the stale `b=2`: the latest value of `b` is not what
// the client ends with (README: "the latest value is never lost";
// RELIABILITY: "never an older price after a newer one").
// Fix: when a send queues a key, wake the waiting sends of that key, so the
// second replaces the first in turn and the third replaces the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_ends_with_the_latest_value_of_each_key() {
    let steps = Arc::new(Steps::default());
    let told = steps.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let steps = told.clone();
        async move {
            events.send(Event::new("0").name("a")).await.unwrap();
            // The client took `a`; nothing is read until the test says so.
            for _ in 0..200 {
                if events.queued_events() == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            events.send(Event::new("0").name("filler")).await.unwrap();
            let first = events.clone();
            tokio::spawn(async move { first.send(Event::new("1").name("b")).await });
            tokio::time::sleep(SETTLE).await;
            let second = events.clone();
            tokio::spawn(async move { second.send(Event::new("2").name("b")).await });
            tokio::time::sleep(SETTLE).await;
            steps.armed.notify_one();
            steps.first_queued.notified().await;
            tokio::time::sleep(SETTLE).await;
            events.send(Event::new("3").name("b")).await.unwrap();
            steps.third_sent.notify_one();
            steps.third_read.notified().await;
            tokio::time::sleep(SETTLE).await;
            events.close();
        }
    };
    let key = |event: &Event| event.name_ref().map(str::to_owned);
    let layer = SseLayer::new(ready).buffer(Buffer::conflating(1, key));
    let app = Router::new().route("/events", get(|| async {}).layer(layer));
    let mut stream = TestClient::new(app).get("/events").await;
    let patience = Duration::from_secs(10);
    stream.expect_event("a", "0").await;
    tokio::time::timeout(patience, steps.armed.notified())
        .await
        .unwrap();
    stream.expect_event("filler", "0").await;
    steps.first_queued.notify_one();
    tokio::time::timeout(patience, steps.third_sent.notified())
        .await
        .unwrap();
    let mut values = Vec::new();
    values.extend(stream.next_event().await.map(|event| event.data));
    steps.third_read.notify_one();
    while let Some(event) = stream.next_event().await {
        values.push(event.data);
    }
    assert_eq!(
        values.last().map(String::as_str),
        Some("3"),
        "b arrived as {values:?}"
    );
}

// A key function that panics (user code) panics the ready function's task:
// the events queued before it are delivered and the stream ends, over
// loopback, read by the independent parser; nothing hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_a_panicking_key_function_ends_the_stream_after_what_was_queued() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        events.send(Event::new("1").name("a")).await.unwrap();
        let _ = events.send(Event::new("boom").name("a")).await;
        unreachable!("the key function panicked");
    };
    let key = |event: &Event| {
        assert_ne!(event.data_ref(), Some("boom"), "the key function panics");
        event.name_ref().map(str::to_owned)
    };
    let layer = SseLayer::new(ready).buffer(Buffer::conflating(4, key));
    let app = Router::new().route("/events", get(|| async {}).layer(layer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let response = reqwest::get(format!("http://{addr}/events")).await.unwrap();
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let parsed: Vec<_> = tokio::time::timeout(
        Duration::from_secs(10),
        response.bytes_stream().eventsource().collect::<Vec<_>>(),
    )
    .await
    .expect("the stream ended");
    let data: Vec<String> = parsed
        .into_iter()
        .filter_map(|event| event.ok().map(|event| event.data))
        .collect();
    assert_eq!(data, ["1"]);
}

/// Values sent per key, in order, by the one task that owns the key: what
/// the client must end with.
type LastSent = std::sync::Mutex<std::collections::BTreeMap<String, u64>>;

// Many tasks, each owning a key, send with short timeouts (cancelled
// waiting sends, some after their grant), `try_send` and, from a plain
// thread, `blocking_send`, while unkeyed events wait in line; the client
// reads over loopback with pauses. Each key's values must arrive in order
// and end with the last value whose send succeeded; every unkeyed event
// must arrive; the queue must end empty (no slot leaked by a cancel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_cancelled_and_racing_sends_keep_the_latest_value_of_each_key() {
    let last_sent: Arc<LastSent> = Arc::default();
    let sent = last_sent.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let sent = sent.clone();
        async move {
            let mut tasks = Vec::new();
            for task in 0..6u64 {
                let (events, sent) = (events.clone(), sent.clone());
                tasks.push(tokio::spawn(async move {
                    let key = format!("k{task}");
                    for value in 0..300u64 {
                        let event =
                            Event::new(format!("{value} {}", "~".repeat(4096))).name(key.as_str());
                        let ok = if value % 3 == 0 {
                            events.try_send(event).is_ok()
                        } else {
                            let patience = Duration::from_micros(50 * (value % 7));
                            matches!(
                                tokio::time::timeout(patience, events.send(event)).await,
                                Ok(Ok(()))
                            )
                        };
                        if ok {
                            sent.lock().unwrap().insert(key.clone(), value);
                        }
                        if value % 50 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                }));
            }
            let (thread_events, thread_sent) = (events.clone(), sent.clone());
            let thread = std::thread::spawn(move || {
                for value in 0..200u64 {
                    let event = Event::new(value.to_string()).name("blocking");
                    thread_events.blocking_send(event).unwrap();
                    thread_sent.lock().unwrap().insert("blocking".into(), value);
                }
            });
            for news in 0..50u64 {
                events.send(format!("news {news}")).await.unwrap();
            }
            for task in tasks {
                task.await.unwrap();
            }
            tokio::task::spawn_blocking(move || thread.join().unwrap())
                .await
                .unwrap();
            assert!(events.queued_events() <= 8);
            eprintln!("replaced {}", events.dropped());
        }
    };
    let key = |event: &Event| event.name_ref().map(str::to_owned);
    let layer = SseLayer::new(ready).buffer(Buffer::conflating(8, key));
    let app = Router::new().route("/events", get(|| async {}).layer(layer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let response = reqwest::get(format!("http://{addr}/events")).await.unwrap();
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    let mut parsed = response.bytes_stream().eventsource();
    let mut last_seen = std::collections::BTreeMap::<String, u64>::new();
    let mut news = Vec::new();
    let mut read = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout_at(deadline, parsed.next())
            .await
            .expect("the stream ended");
        let Some(event) = next else { break };
        let event = event.unwrap();
        read += 1;
        if read % 64 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if event.event == "message" {
            news.push(event.data);
            continue;
        }
        let value: u64 = event.data.split(' ').next().unwrap().parse().unwrap();
        if let Some(before) = last_seen.insert(event.event.clone(), value) {
            assert!(before < value, "{}: {before} then {value}", event.event);
        }
    }
    let expected_news: Vec<String> = (0..50).map(|n| format!("news {n}")).collect();
    eprintln!("read {read} events");
    assert_eq!(news, expected_news);
    assert_eq!(last_seen, *last_sent.lock().unwrap());
}
