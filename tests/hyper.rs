//! `examples/hyper.rs`: a stream served by hyper alone, with no axum router,
//! read over loopback TCP with the independent `eventsource-stream` parser.
//! It runs with or without the crate's default `axum` feature
//! (`cargo test --no-default-features --test hyper`).

mod common;

use std::time::Duration;

use common::*;

#[path = "../examples/hyper.rs"]
mod hyper_example;

#[tokio::test]
async fn hyper_alone_serves_the_stream() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(hyper_example::serve(listener, Duration::from_millis(5)));

    let response = fetch(addr, "/ticks").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream; charset=UTF-8");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["connection"], "close");
    let events = tokio::time::timeout(Duration::from_secs(10), all_events(response))
        .await
        .expect("the stream did not end");
    let received: Vec<(&str, &str)> = events
        .iter()
        .map(|event| (event.event.as_str(), event.data.as_str()))
        .collect();
    assert_eq!(
        received,
        [
            ("tick", "0 for /ticks"),
            ("tick", "1 for /ticks"),
            ("tick", "2 for /ticks"),
            ("tick", "3 for /ticks"),
            ("tick", "4 for /ticks"),
        ]
    );
}
