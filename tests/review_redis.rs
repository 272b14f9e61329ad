//! Hostile review of `EventData` through the Redis hub, which clears the
//! publisher's id before it encodes: every kind of data, dressed with every
//! field, over real loopback TCP, read by the independent parser. Needs
//! `REDIS_URL` (skipped otherwise, as `tests/redis.rs`).
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tower_sse::{Event, EventError, hub::PublishError};

fn matrix() -> Vec<Event> {
    let long_name = "n".repeat(80);
    let mut events = Vec::new();
    for text in ["", "one", " lead", "\u{e9}t\u{e9}", &"z".repeat(70_000)] {
        for kind in [
            Event::new(text),
            Event::new(text.to_owned()),
            Event::new(Bytes::copy_from_slice(text.as_bytes())),
        ] {
            events.push(kind.clone());
            events.push(kind.clone().name("update").id("publisher's"));
            events.push(kind.clone().id(""));
            events.push(kind.clone().comment("a\nb").retry(Duration::from_millis(7)));
            events.push(kind.clone().name(long_name.as_str()).id("x"));
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_redis_publish_of_every_representation_is_exact() {
    let Ok(url) = std::env::var("REDIS_URL") else {
        eprintln!("skipped: set REDIS_URL=redis://127.0.0.1:PORT to run the Redis tests");
        return;
    };
    let prefix = prefix("review_wire");
    let (hub, addr) = redis_node(&url, &prefix, 1000, |_uri| vec!["wire".to_owned()]).await;
    let response = fetch(addr, "/events").await;
    subscribed(&hub, 1).await;
    let mut parsed = events(response);
    let matrix = matrix();
    let mut ids = Vec::new();
    for event in &matrix {
        let bad = Event::new(Bytes::from_static(b"\xff")).name("bad");
        assert!(matches!(
            hub.publish("wire", bad).await,
            Err(PublishError::Invalid(EventError::DataNotUtf8))
        ));
        ids.push(hub.publish("wire", event.clone()).await.unwrap());
    }
    for (index, (event, id)) in matrix.iter().zip(&ids).enumerate() {
        let got = next_event(&mut parsed).await.unwrap();
        assert_eq!(got.event, event.name_ref().unwrap_or("message"), "{index}");
        assert_eq!(got.data, event.data_ref().unwrap(), "{index}");
        // The hub's id replaces the publisher's, empty or not.
        assert_eq!(&got.id, id, "{index}");
        assert_ne!(got.id, "publisher's");
    }
}
