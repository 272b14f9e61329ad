//! `Last-Event-ID` at the hub, end to end over loopback TCP: the extractor
//! reads the header, and an id longer than the hub's cap (or not UTF-8) is
//! neither looked up nor echoed, whether the hub serves the stream or a
//! ready function calls `Hub::subscribe` itself.

mod common;

#[cfg(feature = "axum")]
use axum::{Router, routing::get};
use common::*;
use tower_sse::{
    Buffer,
    hub::{Hub, RESET_EVENT},
};

#[cfg(feature = "axum")]
#[tokio::test]
async fn last_event_id_extractor_reads_the_header() {
    use tower_sse::LastEventId;
    async fn handler(LastEventId(last): LastEventId) -> String {
        last.unwrap_or_else(|| "none".to_owned())
    }
    let addr = serve(Router::new().route("/", get(handler))).await;
    assert_eq!(fetch(addr, "/").await.text().await.unwrap(), "none");
    let with = reqwest::Client::new()
        .get(format!("http://{addr}/"))
        .header("last-event-id", "42")
        .send()
        .await
        .unwrap();
    assert_eq!(with.text().await.unwrap(), "42");
}

/// The hub's cap on a `Last-Event-ID` it looks up or echoes.
const CAP: usize = tower_sse::hub::MAX_LAST_EVENT_ID_LEN;

async fn open_with(addr: std::net::SocketAddr, last: &[u8]) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("http://{addr}/events?main"))
        .header(
            "last-event-id",
            reqwest::header::HeaderValue::from_bytes(last).unwrap(),
        )
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_over_long_last_event_id_gets_a_short_reset_then_live_events() {
    let hub = Hub::builder().history(5).build();
    let addr = serve(hub_app(&hub, Buffer::fixed(16))).await;
    for i in 1..=3 {
        hub.publish("main", format!("e{i}")).await.unwrap();
    }
    // 64 KiB of digits: no browser sends it, and any prefix of it would look
    // like an id this hub handed out.
    let huge = "1".repeat(64 * 1024);
    let response = open_with(addr, huge.as_bytes()).await;
    assert_eq!(response.status(), 200);
    let mut stream = events(response);
    let reset = next_event(&mut stream).await.unwrap();
    assert_eq!(reset.event, RESET_EVENT);
    assert!(
        reset.data.len() <= CAP,
        "the reset echoed {} bytes of the id",
        reset.data.len()
    );
    assert_eq!(reset.data, "", "an id over the cap is not echoed at all");
    subscribed(&hub, 1).await;
    hub.publish("main", "live").await.unwrap();
    let live = next_event(&mut stream).await.unwrap();
    assert_eq!(
        (live.event.as_str(), live.id.as_str(), live.data.as_str()),
        ("message", "4", "live")
    );
}

#[tokio::test]
async fn ids_up_to_the_cap_are_echoed_and_longer_or_non_utf8_ones_are_unknown() {
    let hub = Hub::new();
    let addr = serve(hub_app(&hub, Buffer::fixed(16))).await;
    hub.publish("main", "before").await.unwrap();
    let at_cap = "x".repeat(CAP);
    // Zeros parse as the sequence number 0, which this hub could resume from:
    // over the cap they must not be parsed at all.
    let zeros = "0".repeat(CAP + 1);
    let cases: [(&[u8], &str); 4] = [
        (at_cap.as_bytes(), &at_cap),
        (zeros.as_bytes(), ""),
        (&zeros.as_bytes()[..CAP], ""),
        (b"caf\xe9", ""),
    ];
    for (n, (sent, echoed)) in cases.into_iter().enumerate() {
        let mut stream = events(open_with(addr, sent).await);
        let first = next_event(&mut stream).await.unwrap();
        if n == 2 {
            // 256 zeros are within the cap: sequence number 0, a resume
            // from the start of history.
            assert_eq!((first.id.as_str(), first.data.as_str()), ("1", "before"));
            continue;
        }
        assert_eq!(
            (first.event.as_str(), first.data.as_str()),
            (RESET_EVENT, echoed),
            "case {n}"
        );
    }
}

#[tokio::test]
async fn subscribe_called_directly_caps_the_id_too() {
    let hub = Hub::new();
    let addr = serve(subscribing_app(&hub, &["main"])).await;
    hub.publish("main", "before").await.unwrap();
    let huge = "1".repeat(64 * 1024);
    let mut stream = events(open_with(addr, huge.as_bytes()).await);
    let reset = next_event(&mut stream).await.unwrap();
    assert_eq!(reset.event, RESET_EVENT);
    assert!(
        reset.data.len() <= CAP,
        "the reset echoed {} bytes of the id",
        reset.data.len()
    );
    subscribed(&hub, 1).await;
    hub.publish("main", "live").await.unwrap();
    assert_eq!(next_event(&mut stream).await.unwrap().data, "live");
}
