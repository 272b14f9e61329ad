//! Hostile review of `EventData` on the wire: every kind of data, dressed
//! with every field, through every sending path (send, a clone sent first,
//! the same event sent twice, try_send, blocking_send from a thread, hub
//! publish), over real loopback TCP, read by the independent
//! `eventsource-stream` parser; and bytes that are not UTF-8 refused on
//! each path with a typed error, the stream intact after them.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tower_sse::{Event, EventError, SendError, SseLayer, TrySendError, hub::Hub};

/// What the client must see: (event type, data, last id, retry).
type Seen = (String, String, String, Option<Duration>);

fn texts() -> Vec<String> {
    vec![
        String::new(),
        "one".into(),
        " leading space".into(),
        "\u{e9}t\u{e9}".into(),
        "y".repeat(70_000),
    ]
}

/// Each text as each representation, dressed with each set of fields.
fn matrix() -> Vec<Event> {
    let long_name = "n".repeat(80);
    let mut events = Vec::new();
    for text in texts() {
        let kinds = [
            Event::new(text.as_str()),
            Event::new(text.clone()),
            Event::new(Bytes::from(text.clone().into_bytes())),
        ];
        for kind in kinds {
            events.push(kind.clone());
            events.push(kind.clone().name("update").id("7"));
            events.push(kind.clone().id(""));
            events.push(
                kind.clone()
                    .comment("a\nb\rc")
                    .retry(Duration::from_millis(1234)),
            );
            events.push(kind.clone().name(long_name.as_str()).id("8"));
            events.push(
                kind.clone()
                    .comment("c")
                    .name("n")
                    .id("9")
                    .retry(Duration::from_millis(5)),
            );
        }
    }
    events
}

/// What the parser must report for `events`, in order (the last id persists).
fn expected(events: &[Event], retries: &[Option<Duration>]) -> Vec<Seen> {
    let mut last_id = String::new();
    let mut retry = None;
    events
        .iter()
        .zip(retries)
        .map(|(event, sent_retry)| {
            if let Some(id) = event.id_ref() {
                last_id = id.to_owned();
            }
            if sent_retry.is_some() {
                retry = *sent_retry;
            }
            (
                event.name_ref().unwrap_or("message").to_owned(),
                event.data_ref().unwrap().to_owned(),
                last_id.clone(),
                retry,
            )
        })
        .collect()
}

fn retries() -> Vec<Option<Duration>> {
    let mut retries = Vec::new();
    for _ in texts() {
        for _ in 0..3 {
            retries.extend([
                None,
                None,
                None,
                Some(Duration::from_millis(1234)),
                None,
                Some(Duration::from_millis(5)),
            ]);
        }
    }
    retries
}

fn seen(events: Vec<eventsource_stream::Event>) -> Vec<Seen> {
    let mut retry = None;
    events
        .into_iter()
        .map(|event| {
            if event.retry.is_some() {
                retry = event.retry;
            }
            (event.event, event.data, event.id, retry)
        })
        .collect()
}

fn not_utf8() -> Event {
    Event::new(Bytes::from_static(b"bad \xff\xfe")).name("bad")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_every_representation_and_field_through_every_path_is_exact() {
    let layer = SseLayer::new(|events: tower_sse::EventSender, _ctx| async move {
        let matrix = matrix();
        // send: a clone first (the buffer is shared), then the event itself.
        for event in &matrix {
            let clone = event.clone();
            events.send(clone).await.unwrap();
            events.send(event.clone()).await.unwrap();
            assert!(matches!(
                events.send(not_utf8()).await,
                Err(SendError::Invalid(EventError::DataNotUtf8))
            ));
        }
        // try_send, waiting for room when the buffer is full.
        for event in &matrix {
            loop {
                match events.try_send(event.clone()) {
                    Ok(()) => break,
                    Err(TrySendError::Full(_)) => {
                        tokio::time::sleep(Duration::from_millis(1)).await
                    }
                    Err(other) => panic!("try_send: {other}"),
                }
            }
            assert!(matches!(
                events.try_send(not_utf8()),
                Err(TrySendError::Invalid(EventError::DataNotUtf8))
            ));
        }
        // blocking_send from a plain thread.
        let thread = std::thread::spawn(move || {
            for event in matrix {
                events.blocking_send(event).unwrap();
                assert!(matches!(
                    events.blocking_send(not_utf8()),
                    Err(SendError::Invalid(EventError::DataNotUtf8))
                ));
            }
        });
        tokio::task::spawn_blocking(move || thread.join().unwrap())
            .await
            .unwrap();
    })
    .spawn_ready()
    .buffer(4);
    let addr = serve(route(layer)).await;
    let got = seen(all_events(fetch(addr, "/events").await).await);
    let matrix = matrix();
    let retries = retries();
    let mut sent = Vec::new();
    let mut sent_retries = Vec::new();
    for (event, retry) in matrix.iter().zip(&retries) {
        sent.extend([event.clone(), event.clone()]);
        sent_retries.extend([*retry, *retry]);
    }
    for _ in 0..2 {
        sent.extend(matrix.iter().cloned());
        sent_retries.extend(retries.iter().copied());
    }
    let want = expected(&sent, &sent_retries);
    assert_eq!(got.len(), want.len());
    for (index, (got, want)) in got.iter().zip(&want).enumerate() {
        assert_eq!(got, want, "event {index}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_hub_publish_of_every_representation_is_exact() {
    let hub = Hub::new();
    let addr = serve(hub_app(&hub, 64.into())).await;
    let response = fetch(addr, "/events?wire").await;
    subscribed(&hub, 1).await;
    let mut parsed = events(response);
    let mut ids = Vec::new();
    let matrix = matrix();
    for event in &matrix {
        assert!(matches!(
            hub.publish("wire", not_utf8()).await,
            Err(tower_sse::hub::PublishError::Invalid(
                EventError::DataNotUtf8
            ))
        ));
        ids.push(hub.publish("wire", event.clone()).await.unwrap());
    }
    for (index, (event, id)) in matrix.iter().zip(&ids).enumerate() {
        let got = next_event(&mut parsed).await.unwrap();
        assert_eq!(got.event, event.name_ref().unwrap_or("message"), "{index}");
        assert_eq!(got.data, event.data_ref().unwrap(), "{index}");
        assert_eq!(&got.id, id, "{index}");
    }
}
