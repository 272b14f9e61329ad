//! Pedestal's own SSE cases, end to end over loopback TCP, checked with the
//! independent `eventsource-stream` parser.

mod common;

use std::time::Duration;

use axum::{Router, routing::get};
use common::*;
use futures::StreamExt;
use tower_http::cors::CorsLayer;
use tower_sse::{Event, EventSender, StreamContext, pedestal::send_event, start_event_stream};

#[path = "../examples/counter.rs"]
mod counter;

#[tokio::test]
async fn response_headers_with_cors() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send("one").await;
    };
    let app = Router::new()
        .route(
            "/events",
            get(|| async {}).layer(common::in_mode(start_event_stream(
                ready,
                Duration::from_secs(10),
                10,
            ))),
        )
        .layer(CorsLayer::permissive());
    let addr = serve(app).await;
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/events"))
        .header("origin", "http://example.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream; charset=UTF-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    assert_eq!(headers["connection"], "close");
    assert_eq!(headers["access-control-allow-origin"], "*");
    assert!(headers.get("content-length").is_none());
    let events = all_events(response).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "one");
}

#[tokio::test]
async fn count_stream_sends_named_events_with_ids() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 1..=3 {
            let n = i.to_string();
            send_event(&events, Some("count"), &n, Some(&n))
                .await
                .unwrap();
        }
    };
    let app = Router::new().route(
        "/count",
        get(|| async {}).layer(common::in_mode(start_event_stream(
            ready,
            Duration::from_secs(10),
            10,
        ))),
    );
    let addr = serve(app).await;
    let events = all_events(fetch(addr, "/count").await).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.event.as_str(), e.data.as_str(), e.id.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            ("count", "1", "1"),
            ("count", "2", "2"),
            ("count", "3", "3")
        ]
    );
}

#[tokio::test]
async fn ticker_values_arrive_as_message_events() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for tick in 0..5u32 {
            events.send(tick.to_string()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let app = Router::new().route(
        "/ticker",
        get(|| async {}).layer(common::in_mode(start_event_stream(
            ready,
            Duration::from_secs(10),
            10,
        ))),
    );
    let addr = serve(app).await;
    let events = all_events(fetch(addr, "/ticker").await).await;
    assert_eq!(events.len(), 5);
    for (tick, event) in events.iter().enumerate() {
        assert_eq!(event.event, "message");
        assert_eq!(event.data, tick.to_string());
        assert_eq!(event.id, "");
    }
}

#[tokio::test]
async fn multi_line_event_keeps_its_lines() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let event = Event::new("first line\nsecond line\r\nthird\rfourth").name("multi");
        events.send(event).await.unwrap();
    };
    let app = Router::new().route(
        "/multi",
        get(|| async {}).layer(common::in_mode(start_event_stream(
            ready,
            Duration::from_secs(10),
            10,
        ))),
    );
    let addr = serve(app).await;
    let (_, wire) = raw_get(addr, "/multi").await;
    assert_eq!(
        wire,
        b"event: multi\r\ndata: first line\r\ndata: second line\r\ndata: third\r\ndata: fourth\r\n\r\n"
    );
    let events = all_events(fetch(addr, "/multi").await).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event, "multi");
    assert_eq!(events[0].data, "first line\nsecond line\nthird\nfourth");
}

#[tokio::test]
async fn headers_arrive_before_the_first_event() {
    let (release, released) = tokio::sync::watch::channel(false);
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|go| *go).await;
            let _ = events.send("after headers").await;
        }
    };
    let app = Router::new().route(
        "/slow",
        get(|| async {}).layer(common::in_mode(start_event_stream(
            ready,
            Duration::from_secs(10),
            10,
        ))),
    );
    let addr = serve(app).await;
    // `send` resolves once the head is read: no event exists yet.
    let response = tokio::time::timeout(PATIENCE, fetch(addr, "/slow"))
        .await
        .expect("headers were held back until the first event");
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=UTF-8"
    );
    release.send(true).unwrap();
    let events = all_events(response).await;
    assert_eq!(events[0].data, "after headers");
}

#[tokio::test]
async fn counter_example_streams_zero_to_nine_then_ends() {
    let addr = serve(counter::app(Duration::from_millis(5))).await;
    let hello = fetch(addr, "/").await.text().await.unwrap();
    assert_eq!(hello, "Hello World!\n");
    let mut events = events(fetch(addr, "/counter").await);
    let mut seen = Vec::new();
    while let Some(event) = next_event(&mut events).await {
        assert_eq!(event.event, "counter");
        seen.push(event.data);
    }
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(seen, expected);
    assert!(events.next().await.is_none());
}
