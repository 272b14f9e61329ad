//! The layer's knobs over loopback TCP: `Last-Event-ID` from a query
//! parameter, `Connection: close` turned off so a reconnect reuses the
//! connection, the heartbeat's text, and a `retry` before the first event.

mod common;

use std::time::Duration;

use axum::{Router, routing::get};
use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tower_sse::{Event, EventSender, SseLayer, StreamContext, hub::Hub};

async fn news(hub: &Hub, query: &str) -> Router {
    let layer = hub
        .layer(|_parts| Ok(vec!["news".to_owned()]))
        .last_event_id_query(query);
    Router::new().route("/news", get(|| async {}).layer(layer))
}

#[tokio::test]
async fn a_query_parameter_resumes_like_the_header_and_the_header_wins() {
    let hub = Hub::builder().history(10).build();
    let mut ids = Vec::new();
    for data in ["one", "two", "three"] {
        hub.publish("news", Event::new(data)).await.unwrap();
    }
    let addr = serve(news(&hub, "lastEventID").await).await;
    // Id 0 is before every event the hub gave: the whole history, and its ids.
    let mut stream = events(fetch(addr, "/news?lastEventID=0").await);
    for _ in 0..3 {
        ids.push(next_event(&mut stream).await.unwrap().id);
    }
    drop(stream);

    let resumed = format!("/news?x=1&lastEventID={}", ids[0]);
    let mut stream = events(fetch(addr, &resumed).await);
    assert_eq!(next_event(&mut stream).await.unwrap().data, "two");
    assert_eq!(next_event(&mut stream).await.unwrap().data, "three");
    drop(stream);

    let response = reqwest::Client::new()
        .get(format!("http://{addr}{resumed}"))
        .header("last-event-id", &ids[1])
        .send()
        .await
        .unwrap();
    let mut stream = events(response);
    let first = next_event(&mut stream).await.unwrap();
    assert_eq!(first.data, "three", "the header must win over the query");
}

#[tokio::test]
async fn without_the_knob_the_query_is_not_read() {
    let hub = Hub::builder().history(10).build();
    hub.publish("news", Event::new("one")).await.unwrap();
    let layer = hub.layer(|_parts| Ok(vec!["news".to_owned()]));
    let addr = serve(Router::new().route("/news", get(|| async {}).layer(layer))).await;
    let mut stream = events(fetch(addr, "/news?lastEventID=0").await);
    hub.publish("news", Event::new("live")).await.unwrap();
    assert_eq!(next_event(&mut stream).await.unwrap().data, "live");
}

fn one_event() -> SseLayer {
    SseLayer::new(|events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send(Event::new("hello")).await;
    })
}

/// Reads one whole chunked response (head and body up to the last chunk)
/// from `socket`; returns the head.
async fn read_response(socket: &mut TcpStream) -> String {
    let mut wire = Vec::new();
    let mut buf = [0; 4096];
    while !wire.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
            .await
            .expect("the response did not end")
            .unwrap();
        assert!(n > 0, "the connection closed mid-response");
        wire.extend_from_slice(&buf[..n]);
    }
    let split = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    String::from_utf8(wire[..split].to_vec()).unwrap()
}

async fn get_on(socket: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    read_response(socket).await
}

#[tokio::test]
async fn connection_close_off_lets_the_reconnect_reuse_the_connection() {
    let layer = one_event().connection_close(false);
    let addr = serve(Router::new().route("/e", get(|| async {}).layer(layer))).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = get_on(&mut socket, "/e").await;
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    // The same connection serves the reconnect.
    let again = get_on(&mut socket, "/e").await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
}

#[tokio::test]
async fn connection_close_by_default_ends_the_connection_with_the_stream() {
    let addr = serve(Router::new().route("/e", get(|| async {}).layer(one_event()))).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = get_on(&mut socket, "/e").await;
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "the connection stayed open: {read:?}"
    );
}

#[tokio::test]
async fn the_heartbeat_comment_can_say_ping() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        tokio::time::sleep(Duration::from_millis(120)).await;
        let _ = events.send(Event::new("after")).await;
    };
    let layer = in_mode(SseLayer::new(ready))
        .heartbeat(Duration::from_millis(50))
        .heartbeat_comment("ping");
    let addr = serve(Router::new().route("/e", get(|| async {}).layer(layer))).await;
    let (_head, body) = raw_get(addr, "/e").await;
    let body = String::from_utf8(body).unwrap();
    assert!(body.starts_with(": ping\r\n"), "{body:?}");
    assert!(body.ends_with("data: after\r\n\r\n"), "{body:?}");
    assert!(!body.contains(": \r\n"), "a default heartbeat: {body:?}");
    // The independent parser sees the one event, the comments ignored.
    let events = all_events(fetch(addr, "/e").await).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "after");
}

#[tokio::test]
async fn a_retry_goes_out_before_the_first_event() {
    let layer = in_mode(one_event()).retry(Duration::from_millis(2500));
    let addr = serve(Router::new().route("/e", get(|| async {}).layer(layer))).await;
    let (_head, body) = raw_get(addr, "/e").await;
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "retry: 2500\r\n\r\ndata: hello\r\n\r\n"
    );
    let events = all_events(fetch(addr, "/e").await).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "hello");
}
