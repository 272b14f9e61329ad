//! Hub streams served from the body (`Hub::layer`): topics chosen from the
//! request and refused with a response, topics that go when nothing holds
//! them, and a hub that stops growing at `max_topics`.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use common::*;
use http::StatusCode;
#[cfg(feature = "testing")]
use tower_sse::testing::{TestBody, TestClient};
use tower_sse::{
    Buffer,
    hub::{Hub, PublishError, RESET_EVENT, Refusal},
};

/// Streams at `/topics/{name}`, one topic each, from the URI.
fn app(hub: &Hub) -> Router {
    let layer = hub_layer(hub, Buffer::fixed(16), |uri| {
        vec![uri.path().rsplit('/').next().unwrap_or_default().to_owned()]
    });
    Router::new().route("/topics/{name}", get(|| async {}).layer(layer))
}

/// Opens a stream in-process (no TCP) with the test kit, reads its first
/// item if one comes within `wait`, and ends it.
#[cfg(feature = "testing")]
async fn open_and_close(app: &Router, path: &str, wait: Duration) -> StatusCode {
    let mut stream = TestClient::new(app.clone()).get(path).await;
    let _ = tokio::time::timeout(wait, stream.next()).await;
    stream.status()
}

#[tokio::test]
async fn a_refused_request_gets_the_refusal_and_never_reaches_the_handler() {
    let hub = Hub::new();
    let called = Arc::new(AtomicUsize::new(0));
    let handler = {
        let called = called.clone();
        move || async move {
            called.fetch_add(1, Ordering::Relaxed);
        }
    };
    let layer = hub.layer(|parts| {
        let room = parts.uri.path().rsplit('/').next().unwrap_or_default();
        match parts.headers.get("x-user") {
            None => Err(StatusCode::UNAUTHORIZED.into()),
            Some(_) if room.starts_with("public-") => Ok(vec![room.to_owned()]),
            Some(_) => Err(Refusal::new(StatusCode::FORBIDDEN, "members only\n")),
        }
    });
    let addr = serve(Router::new().route("/rooms/{room}", get(handler).layer(layer))).await;
    let client = reqwest::Client::new();
    let get = |path: &str, user: bool| {
        let mut request = client.get(format!("http://{addr}{path}"));
        if user {
            request = request.header("x-user", "ann");
        }
        request.send()
    };

    let forbidden = get("/rooms/staff", true).await.unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(forbidden.text().await.unwrap(), "members only\n");
    let anonymous = get("/rooms/public-lobby", false).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.text().await.unwrap(), "Unauthorized\n");
    assert_eq!(called.load(Ordering::Relaxed), 0, "the handler ran");
    assert_eq!(hub.topics(), 0, "a refused request took a topic");

    let mut stream = events(get("/rooms/public-lobby", true).await.unwrap());
    eventually("the stream to subscribe", || hub.subscribers() == 1).await;
    assert_eq!(called.load(Ordering::Relaxed), 1);
    hub.publish("public-lobby", "hi").await.unwrap();
    hub.publish("staff", "secret").await.unwrap();
    hub.publish("public-lobby", "bye").await.unwrap();
    let first = next_event(&mut stream).await.unwrap();
    let second = next_event(&mut stream).await.unwrap();
    assert_eq!((first.data.as_str(), second.data.as_str()), ("hi", "bye"));
}

#[cfg(feature = "testing")]
#[tokio::test]
async fn a_head_request_gets_the_head_and_takes_no_place_in_the_hub() {
    let hub = Hub::new();
    let request = http::Request::head("/topics/a").body(TestBody).unwrap();
    let response = TestClient::new(app(&hub)).send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=UTF-8"
    );
    assert_eq!((hub.topics(), hub.subscribers()), (0, 0));
}

/// Defect 3 of issue 12: 10,000 short subscriptions to distinct topics
/// left 10,000 topics behind.
#[cfg(feature = "testing")]
#[tokio::test]
async fn topics_with_no_stream_and_no_history_go() {
    let hub = Hub::new();
    let app = app(&hub);
    // Over TCP, a few; in-process, many.
    let addr = serve(app.clone()).await;
    for i in 0..50 {
        let response = fetch(addr, &format!("/topics/tcp-{i}")).await;
        assert_eq!(response.status(), StatusCode::OK);
        drop(response);
    }
    for i in 0..10_000 {
        open_and_close(&app, &format!("/topics/t{i}"), Duration::ZERO).await;
    }
    eventually("every topic to go", || hub.topics() == 0).await;
    assert_eq!(hub.subscribers(), 0);
}

/// Topics published to keep their history until `max_age`, then go, even
/// if nothing touches them again: the hub stays flat over 100,000
/// short-lived topics.
#[cfg(feature = "testing")]
#[tokio::test]
async fn expired_topics_go_and_memory_stays_flat_over_100_000_topics() {
    let age = Duration::from_millis(50);
    let hub = Hub::builder().max_age(age).build();
    let app = app(&hub);
    let mut most = 0;
    let started = tokio::time::Instant::now();
    for i in 0..100_000 {
        let topic = format!("short-{i}");
        hub.publish(&topic, "one event").await.unwrap();
        if i % 1000 == 0 {
            // A stream now and then, resuming from before the event.
            let path = format!("/topics/{topic}");
            open_and_close(&app, &path, Duration::from_millis(1)).await;
            most = most.max(hub.topics());
        }
    }
    let elapsed = started.elapsed();
    // What can still be alive: the topics published within one `max_age`.
    let rate = 100_000.0 / elapsed.as_secs_f64();
    println!("{} topics at most, {rate:.0} topics/s", most);
    tokio::time::sleep(age * 2).await;
    // Expired topics go at the next touch of the hub.
    hub.publish("last", "x").await.unwrap();
    assert_eq!(hub.topics(), 1, "expired topics stayed");
    assert!(
        (most as f64) < rate * age.as_secs_f64() * 4.0 + 1000.0,
        "{most} topics alive at once at {rate:.0} topics/s"
    );
}

/// `max_age` holds when a stream resumes, however long nothing touched
/// the topic.
#[tokio::test]
async fn max_age_holds_on_read() {
    let hub = Hub::builder().max_age(Duration::from_millis(100)).build();
    let addr = serve(app(&hub)).await;
    hub.publish("quiet", "old").await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut request = reqwest::Client::new().get(format!("http://{addr}/topics/quiet"));
    request = request.header("last-event-id", "0");
    let mut stream = events(request.send().await.unwrap());
    let first = next_event(&mut stream).await.unwrap();
    assert_eq!(
        (first.event.as_str(), first.data.as_str()),
        (RESET_EVENT, "0")
    );
}

#[tokio::test]
async fn max_topics_refuses_new_topics_with_a_typed_error_until_room_is_made() {
    let hub = Hub::builder().max_topics(2).build();
    let addr = serve(app(&hub)).await;
    let a = fetch(addr, "/topics/a").await;
    let b = fetch(addr, "/topics/b").await;
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    eventually("two topics", || hub.topics() == 2).await;

    let refused = fetch(addr, "/topics/c").await;
    if spawned() {
        // Through `Hub::ready` the stream has started already: it ends at once, empty.
        assert_eq!(refused.status(), StatusCode::OK);
        assert!(all_events(refused).await.is_empty());
    } else {
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    match hub.publish("c", "x").await {
        Err(PublishError::TooManyTopics(2)) => {}
        other => panic!("expected TooManyTopics(2), got {other:?}"),
    }
    // Existing topics still take events and streams.
    hub.publish("a", "x").await.unwrap();
    assert_eq!(fetch(addr, "/topics/b").await.status(), StatusCode::OK);

    drop(b);
    eventually("b to go", || hub.topics() == 1).await;
    hub.publish("c", "now there is room").await.unwrap();
    assert_eq!(hub.topics(), 2);
}
