//! `tower_sse::testing`: its parser agrees with the independent
//! `eventsource-stream` on arbitrary streams cut into arbitrary chunks, and
//! the kit drives real services in-process under paused time (heartbeats,
//! disconnects, reconnects with `Last-Event-ID`, a reader that stops).
#![cfg(all(feature = "testing", feature = "axum"))]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use proptest::prelude::*;
use tower_sse::{
    DisconnectReason, Event, EventSender, SseLayer, StreamContext, StreamError,
    hub::Hub,
    testing::{Item, Parser, TestClient},
};

/// One line of an event stream, from a vocabulary that covers the fields,
/// comments, odd spacing, unknown fields and non-ASCII text.
fn line() -> impl Strategy<Value = String> {
    let value = "[a-z é:\u{1F600}]{0,6}";
    prop_oneof![
        value.prop_map(|v| format!("data: {v}")),
        value.prop_map(|v| format!("data:{v}")),
        Just("data".to_owned()),
        value.prop_map(|v| format!("event: {v}")),
        value.prop_map(|v| format!("id: {v}")),
        Just("id".to_owned()),
        "[0-9]{1,4}".prop_map(|v| format!("retry: {v}")),
        value.prop_map(|v| format!(": {v}")),
        value.prop_map(|v| format!("other: {v}")),
        Just(String::new()),
    ]
}

fn wire(lines: &[String], ends: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(match ends[i % ends.len()] % 2 {
            0 => b"\n".as_slice(),
            _ => b"\r\n".as_slice(),
        });
    }
    wire
}

fn chunks(wire: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut % (wire.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for cut in cuts {
        chunks.push(wire[start..cut].to_vec());
        start = cut;
    }
    chunks.push(wire[start..].to_vec());
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The kit's parser and `eventsource-stream` dispatch the same events
    /// (type, data, last id) and the same retry, however the bytes are cut.
    #[test]
    fn the_parser_agrees_with_eventsource_stream(
        lines in proptest::collection::vec(line(), 0..24),
        ends in proptest::collection::vec(any::<u8>(), 1..4),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let wire = wire(&lines, &ends);
        let chunks = chunks(&wire, &cuts);

        let mut parser = Parser::new();
        let ours: Vec<(String, String, String)> = chunks
            .iter()
            .flat_map(|chunk| parser.feed(chunk))
            .filter_map(|item| match item {
                Item::Event(event) => Some((event.event, event.data, event.id)),
                Item::Comment(_) => None,
            })
            .collect();

        let theirs: Vec<eventsource_stream::Event> = futures::executor::block_on(
            futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>))
                .eventsource()
                .map(|event| event.expect("eventsource-stream rejected the bytes"))
                .collect(),
        );
        let theirs: Vec<(String, String, String)> = theirs
            .into_iter()
            .map(|event| (event.event, event.data, event.id))
            .collect();
        prop_assert_eq!(ours, theirs);
    }
}

/// The spec notes' cases that `eventsource-stream` does not cover, or
/// covers differently: a lone CR, an id with NUL, a BOM, a retry that is not
/// all digits, an event cut off by the end.
#[test]
fn the_parser_follows_the_spec_notes() {
    let mut parser = Parser::new();
    let items = parser.feed(
        b"\xEF\xBB\xBFdata: a\rdata: b\r\rid: 1\0\ndata: c\n\nretry: 5s\nretry: 300\ndata:  d\n\nevent: cut\ndata: e",
    );
    let events: Vec<_> = items
        .into_iter()
        .map(|item| match item {
            Item::Event(event) => (event.event, event.data, event.id),
            Item::Comment(comment) => panic!("no comment was sent: {comment:?}"),
        })
        .collect();
    let expected = [
        ("message", "a\nb", ""),
        ("message", "c", ""),
        ("message", " d", ""),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(event, data, id)| (event.to_string(), data.to_string(), id.to_string()))
        .collect();
    assert_eq!(events, expected);
    assert_eq!(parser.retry(), Some(Duration::from_millis(300)));
}

type Reasons = Arc<Mutex<Vec<DisconnectReason>>>;

fn counter(reasons: &Reasons) -> Router {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0..3 {
            let event = Event::new(i.to_string()).name("count").id(i.to_string());
            if events.send(event).await.is_err() {
                return;
            }
            if i < 2 {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
        }
    };
    let reasons = reasons.clone();
    let layer = SseLayer::new(ready)
        .heartbeat(Duration::from_secs(15))
        .on_client_disconnect(move |_ctx, reason| reasons.lock().unwrap().push(reason));
    Router::new().route("/count", get(|| async {}).layer(layer))
}

/// Three events a minute apart with heartbeats between them: three minutes
/// of stream time, read under a paused clock in (almost) no wall time.
#[tokio::test(start_paused = true)]
async fn heartbeats_and_events_under_paused_time() {
    let wall = Instant::now();
    let reasons = Reasons::default();
    let mut stream = TestClient::new(counter(&reasons))
        .patience(Duration::from_secs(90))
        .get("/count")
        .await;
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"],
        "text/event-stream; charset=UTF-8"
    );
    let started = tokio::time::Instant::now();
    stream.expect_event("count", "0").await;
    // Heartbeats at 15, 30 and 45 s; the event at 60 s.
    for _ in 0..3 {
        assert_eq!(stream.expect_comment().await, "");
    }
    let second = stream.expect_event("count", "1").await;
    assert_eq!(second.id, "1");
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    stream.expect_event("count", "2").await;
    stream.expect_end().await;
    assert_eq!(*reasons.lock().unwrap(), [DisconnectReason::Completed]);
    assert!(
        wall.elapsed() < Duration::from_secs(5),
        "{:?}",
        wall.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_disconnect_is_seen_by_the_server() {
    let reasons = Reasons::default();
    let mut stream = TestClient::new(counter(&reasons)).get("/count").await;
    stream.expect_event("count", "0").await;
    stream.disconnect();
    assert_eq!(
        *reasons.lock().unwrap(),
        [DisconnectReason::ClientDisconnected]
    );
}

/// A client goes away and reconnects as an `EventSource` does: after the
/// announced retry, with `Last-Event-ID`; the hub resumes after it.
#[tokio::test(start_paused = true)]
async fn a_reconnect_resumes_after_the_last_id() {
    let hub = Hub::builder().history(100).build();
    let layer = hub.layer(|_parts| Ok(vec!["news".to_owned()]));
    let app = Router::new().route("/news", get(|| async {}).layer(layer));
    let mut client = TestClient::new(app);

    let mut stream = client.get("/news").await;
    let retry = Duration::from_secs(2);
    hub.publish("news", Event::new("one").retry(retry))
        .await
        .unwrap();
    let first = stream.expect_event("message", "one").await;
    assert_eq!(stream.retry(), Some(retry));
    stream.disconnect();

    hub.publish("news", Event::new("two")).await.unwrap();
    let before = tokio::time::Instant::now();
    let mut again = client.reconnect(&stream).await;
    assert_eq!(before.elapsed(), retry);
    // Resumed after "one": "two" comes first, not "one" again.
    let second = again.expect_event("message", "two").await;
    assert_ne!(second.id, first.id);
}

/// A reader that stops reading is evicted by the stall timeout, and what
/// was written before is still read, then the error.
#[tokio::test(start_paused = true)]
async fn a_reader_that_stops_reading_is_evicted() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let data = "x".repeat(1024);
        while events.send(Event::new(data.clone())).await.is_ok() {}
    };
    let layer = SseLayer::new(ready).stall_timeout(Duration::from_secs(1));
    let app = Router::new().route("/fast", get(|| async {}).layer(layer));
    let mut stream = TestClient::new(app).get("/fast").await;
    stream.expect_event("message", &"x".repeat(1024)).await;
    stream.stop_reading(Duration::from_secs(5)).await;
    assert!(
        stream.ended().is_some(),
        "the stalled reader was not evicted"
    );
    let items = stream.read_to_end().await;
    assert!(!items.is_empty());
    let err = stream.expect_error().await;
    let stalled = std::iter::successors(Some(&**err as &(dyn std::error::Error + 'static)), |e| {
        e.source()
    })
    .any(|e| {
        matches!(
            e.downcast_ref::<StreamError>(),
            Some(StreamError::Stalled(_))
        )
    });
    assert!(stalled, "not a stall: {err}");
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "expected event \"count\" with data \"7\"")]
async fn a_failed_expectation_says_what_came() {
    let reasons = Reasons::default();
    let mut stream = TestClient::new(counter(&reasons)).get("/count").await;
    stream.expect_event("count", "7").await;
}
