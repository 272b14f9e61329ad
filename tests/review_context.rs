//! Hostile review of the lean `StreamContext`: request lines a browser never
//! sends (extension methods, absolute-form and `*` targets, HTTP/1.0), over
//! raw loopback TCP, with `uri()` compared with the `Uri` the inner service
//! saw, and the body read by the independent `eventsource-stream` parser.

mod common;

use std::sync::{Arc, Mutex};

use axum::{Router, extract::Request, routing::any};
use common::*;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tower_sse::{EventSender, SseLayer, StreamContext};

/// Sends `head` (a request line and headers) and returns the events of the
/// response body, which the ready function ends after one event.
async fn events_for(addr: std::net::SocketAddr, head: &str) -> Vec<String> {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut wire = Vec::new();
    tokio::time::timeout(PATIENCE, socket.read_to_end(&mut wire))
        .await
        .expect("the response did not end")
        .unwrap();
    let split = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let status = String::from_utf8_lossy(&wire[..split]).into_owned();
    assert!(status.contains(" 200 "), "{status}");
    let body = if status
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&wire[split..])
    } else {
        wire[split..].to_vec()
    };
    let parsed: Vec<_> = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(body))])
        .eventsource()
        .collect()
        .await;
    parsed
        .into_iter()
        .map(|event| event.unwrap().data)
        .collect()
}

async fn report(events: EventSender, ctx: StreamContext) {
    let line = format!(
        "{} {} {:?} last={:?} | {:?}",
        ctx.method(),
        ctx.uri(),
        ctx.version(),
        ctx.last_event_id(),
        ctx
    );
    let _ = events.send(line).await;
}

/// Every path behind `layer`; the inner service records the `Uri` it got.
fn app(layer: SseLayer, seen: Arc<Mutex<Vec<String>>>) -> Router {
    Router::new().fallback_service(
        any(move |request: Request| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(format!(
                    "{} {} {:?}",
                    request.method(),
                    request.uri(),
                    request.version()
                ));
            }
        })
        .layer(in_mode(layer)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_unusual_request_lines_match_the_request() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = SseLayer::new(report).last_event_id_query("lastEventID");
    let addr = serve(app(layer, seen.clone())).await;
    let cases = [
        ("PURGE /events?x=1 HTTP/1.1", "PURGE /events?x=1 HTTP/1.1"),
        ("get /events HTTP/1.1", "get /events HTTP/1.1"),
        (
            "GET http://example.com:8080/a/b?lastEventID=42 HTTP/1.1",
            "GET http://example.com:8080/a/b?lastEventID=42 HTTP/1.1",
        ),
        ("OPTIONS * HTTP/1.1", "OPTIONS * HTTP/1.1"),
        (
            "GET /?lastEventID=a%2Fb HTTP/1.0",
            "GET /?lastEventID=a%2Fb HTTP/1.0",
        ),
    ];
    for (line, want) in cases {
        let close = if line.ends_with("1.0") {
            ""
        } else {
            "Connection: close\r\n"
        };
        let head = format!("{line}\r\nHost: {addr}\r\n{close}\r\n");
        let got = events_for(addr, &head).await;
        assert_eq!(got.len(), 1, "{line}: {got:?}");
        let inner = seen.lock().unwrap().pop().unwrap();
        let (reported, debug) = got[0].split_once(" | ").unwrap();
        // The context reports the request line the inner service saw.
        let wanted_version = if want.ends_with("1.0") {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        let reported_line = reported.split(" last=").next().unwrap();
        assert_eq!(reported_line, inner, "{line}");
        assert!(
            reported_line.ends_with(wanted_version),
            "{line}: {reported}"
        );
        let target = want.split(' ').nth(1).unwrap();
        assert!(debug.contains(&format!("uri: {target}")), "{line}: {debug}");
        if target.contains("lastEventID=42") {
            assert!(reported.ends_with("last=Some(\"42\")"), "{reported}");
        }
        if target.contains("a%2Fb") {
            assert!(reported.ends_with("last=Some(\"a/b\")"), "{reported}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_the_header_wins_over_the_query_and_a_bad_query_value_is_ignored() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = SseLayer::new(report).last_event_id_query("lastEventID");
    let addr = serve(app(layer, seen)).await;
    let head = format!(
        "GET /e?lastEventID=1 HTTP/1.1\r\nHost: {addr}\r\nLast-Event-ID: 2\r\nConnection: close\r\n\r\n"
    );
    let got = events_for(addr, &head).await;
    assert!(got[0].contains("last=Some(\"2\")"), "{got:?}");
    // A line break in the query value cannot become a header: no id.
    let head =
        format!("GET /e?lastEventID=a%0Ab HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let got = events_for(addr, &head).await;
    assert!(got[0].contains("last=None"), "{got:?}");
}
