//! Heartbeats: they fill silences only, their timer restarts after each
//! write (on paused time, in-process), they reach a client over loopback TCP
//! without dispatching events, and `do_heartbeat` writes one at once.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use tower_sse::{EventSender, SseLayer, StreamContext, pedestal::do_heartbeat, start_stream};

/// The body of a stream started in-process, for tests on paused time
/// (pinned: `EventStream` holds its heartbeat timer inline).
fn body(
    ready: impl Fn(EventSender, StreamContext) -> futures::future::BoxFuture<'static, ()>
    + Send
    + Sync
    + 'static,
    heartbeat: Duration,
) -> std::pin::Pin<Box<tower_sse::EventStream>> {
    let request = http::Request::new(());
    Box::pin(
        common::response_in_mode(start_stream(
            ready,
            StreamContext::from_request(&request),
            heartbeat,
            10,
        ))
        .into_http()
        .into_body(),
    )
}

#[tokio::test(start_paused = true)]
async fn heartbeats_fill_silence_only() {
    let mut body = body(
        |events, _| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(35)).await;
                for i in 0..20 {
                    let _ = events.send(i.to_string()).await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            })
        },
        Duration::from_secs(10),
    );
    let start = tokio::time::Instant::now();
    let mut frames = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        frames.push((start.elapsed().as_secs(), data));
    }
    let heartbeats: Vec<u64> = frames
        .iter()
        .filter(|(_, data)| &data[..] == b": \r\n")
        .map(|(at, _)| *at)
        .collect();
    // Silence for 35 s: heartbeats at 10, 20 and 30 s; then an event every 5 s: none.
    assert_eq!(heartbeats, [10, 20, 30]);
    assert_eq!(frames.len(), 3 + 20);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_timer_restarts_after_each_write() {
    let mut body = body(
        |events, _| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(7)).await;
                let _ = events.send("x").await;
                tokio::time::sleep(Duration::from_secs(25)).await;
            })
        },
        Duration::from_secs(10),
    );
    let start = tokio::time::Instant::now();
    let mut times = Vec::new();
    while let Some(frame) = body.frame().await {
        frame.unwrap();
        times.push(start.elapsed().as_secs());
    }
    // Event at 7 s, then heartbeats 10 s after the last write: 17 and 27 s.
    assert_eq!(times, [7, 17, 27]);
}

#[tokio::test]
async fn heartbeats_arrive_over_tcp_and_are_not_events() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        tokio::time::sleep(Duration::from_millis(450)).await;
        let _ = events.send("done").await;
    };
    let layer = SseLayer::new(ready).heartbeat(Duration::from_millis(100));
    let addr = serve(route_in_mode(layer)).await;
    let (_, wire) = raw_get(addr, "/events").await;
    let text = String::from_utf8(wire).unwrap();
    let heartbeats = text.matches(": \r\n").count();
    assert!(
        (2..=5).contains(&heartbeats),
        "{heartbeats} heartbeats in {text:?}"
    );
    assert!(text.ends_with("data: done\r\n\r\n"));
    let events = all_events(fetch(addr, "/events").await).await;
    assert_eq!(events.len(), 1, "heartbeats must not dispatch events");
}

#[tokio::test]
async fn do_heartbeat_writes_one_comment_now() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        do_heartbeat(&events).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = events.send("x").await;
    };
    let addr = serve(route_in_mode(SseLayer::new(ready))).await;
    let (_, wire) = raw_get(addr, "/events").await;
    assert_eq!(wire, b": \r\ndata: x\r\n\r\n");
}
