//! Large events over loopback TCP, as the independent `eventsource-stream`
//! parses them: data handed over whole (a `String`, `Bytes`, a
//! `&'static str`) goes out uncopied, as frames of its own between its
//! fields and its end; every kind, mixed with small events, arrives exact,
//! with and without a stall watch (which tracks each frame until written).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use tower_sse::{Event, EventSender, SseLayer, StreamContext};

/// (name, id, data) of each event sent: large ones of every kind of data,
/// one-line and not, between small ones.
fn expected() -> Vec<(String, String, String)> {
    let mut all = Vec::new();
    for i in 0..6 {
        // Around the 64 KiB from which data handed over is not copied.
        let size = 60 * 1024 + i * 3_333;
        let text: String = (0..size)
            .map(|j| char::from(b'a' + (j % 26) as u8))
            .collect();
        all.push((format!("big{i}"), format!("{i}"), text.clone()));
        all.push(("small".into(), format!("s{i}"), format!("tick {i}")));
        if i % 2 == 0 {
            let lines = format!("{}\n{}", &text[..size / 2], &text[size / 2..]);
            all.push((format!("lines{i}"), format!("l{i}"), lines));
        }
    }
    all
}

/// Sends the expected events, each big one through another kind of data.
async fn ready(events: EventSender, _ctx: StreamContext) {
    for (n, (name, id, data)) in expected().into_iter().enumerate() {
        let event = match n % 4 {
            0 => Event::new(data),
            1 => Event::new(Bytes::from(data)),
            2 => Event::from_static(Box::leak(data.into_boxed_str())),
            _ => Event::new(data.as_str()),
        };
        if events.send(event.name(name).id(id)).await.is_err() {
            return;
        }
    }
}

async fn check(layer: SseLayer) {
    let addr = serve(route_in_mode(layer)).await;
    let got = all_events(fetch(addr, "/events").await).await;
    let got: Vec<_> = got.into_iter().map(|e| (e.event, e.id, e.data)).collect();
    let want = expected();
    assert_eq!(got.len(), want.len());
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(got.0, want.0);
        assert_eq!(got.1, want.1, "{}", want.0);
        assert!(
            got.2 == want.2,
            "{}: data differs ({} vs {} bytes)",
            want.0,
            got.2.len(),
            want.2.len()
        );
    }
}

#[tokio::test]
async fn large_events_of_every_kind_arrive_exact() {
    check(SseLayer::new(ready)).await;
}

#[tokio::test]
async fn large_events_arrive_exact_under_a_stall_watch() {
    check(SseLayer::new(ready).stall_timeout(Duration::from_secs(30))).await;
}

#[tokio::test]
async fn large_events_arrive_exact_with_a_small_buffer() {
    check(SseLayer::new(ready).buffer(1)).await;
}
