//! `examples/metrics.rs` scraped over loopback while streams run: the
//! Prometheus text shows active streams, events and bytes moving, then the
//! closed counter by reason once the clients leave, and the hub's series.
#![cfg(all(feature = "metrics", feature = "axum"))]

mod common;

use std::net::SocketAddr;

use common::*;
use tower_sse::hub::Hub;

#[path = "../examples/metrics.rs"]
mod metrics_example;

/// The value of the sample `name` whose labels include every one of
/// `labels`, from Prometheus text.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(key, val)| label_text.contains(&format!("{key}=\"{val}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

async fn scrape(addr: SocketAddr) -> String {
    fetch(addr, "/metrics").await.text().await.unwrap()
}

#[tokio::test]
async fn prometheus_shows_the_streams_live_and_how_they_closed() {
    let handle = metrics_example::install();
    let hub = Hub::builder().history(100).build();
    let addr = serve(metrics_example::app(handle, hub.clone())).await;
    let ticks = [("layer", "ticks")];

    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut stream = events(fetch(addr, "/ticks").await);
        next_event(&mut stream).await.unwrap();
        streams.push(stream);
    }
    let first = scrape(addr).await;
    assert_eq!(
        sample(&first, "sse_active_streams", &ticks),
        Some(3.0),
        "{first}"
    );
    assert_eq!(
        sample(&first, "sse_streams_opened_total", &ticks),
        Some(3.0)
    );
    let events_then = sample(&first, "sse_events_sent_total", &ticks).unwrap();
    let bytes_then = sample(&first, "sse_sent_bytes_total", &ticks).unwrap();
    assert!(events_then >= 3.0, "{first}");

    for stream in &mut streams {
        for _ in 0..3 {
            next_event(stream).await.unwrap();
        }
    }
    let second = scrape(addr).await;
    let events_now = sample(&second, "sse_events_sent_total", &ticks).unwrap();
    let bytes_now = sample(&second, "sse_sent_bytes_total", &ticks).unwrap();
    println!(
        "while running: events {events_then} -> {events_now}, bytes {bytes_then} -> {bytes_now}"
    );
    assert!(events_now >= events_then + 9.0, "{second}");
    assert!(bytes_now > bytes_then, "{second}");
    assert_eq!(sample(&second, "sse_active_streams", &ticks), Some(3.0));

    drop(streams);
    let closed = [("layer", "ticks"), ("reason", "client_disconnected")];
    let mut last = String::new();
    for _ in 0..200 {
        last = scrape(addr).await;
        if sample(&last, "sse_streams_closed_total", &closed) == Some(3.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        sample(&last, "sse_streams_closed_total", &closed),
        Some(3.0),
        "{last}"
    );
    assert_eq!(
        sample(&last, "sse_active_streams", &ticks),
        Some(0.0),
        "{last}"
    );

    // The hub: a publish, delivered to one stream.
    let mut news = events(fetch(addr, "/news").await);
    let published = reqwest::Client::new()
        .post(format!("http://{addr}/news"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(published.text().await.unwrap(), "published\n");
    assert_eq!(next_event(&mut news).await.unwrap().data, "hello");
    let hub_text = scrape(addr).await;
    assert_eq!(
        sample(&hub_text, "sse_hub_published_total", &[]),
        Some(1.0),
        "{hub_text}"
    );
    assert_eq!(
        sample(&hub_text, "sse_active_streams", &[("layer", "news")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&hub_text, "sse_hub_delivery_seconds_count", &[]),
        Some(1.0),
        "{hub_text}"
    );
    assert!(sample(&hub_text, "sse_event_payload_bytes_count", &[]).unwrap() >= 1.0);
}
