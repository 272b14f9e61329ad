//! How streams live and end: disconnects, buffers, passthrough, bad input
//! and clean-up, end to end over loopback TCP (heartbeats are in
//! `heartbeats.rs`).

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::get};
use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
#[cfg(feature = "axum")]
use tower_sse::start_stream;
use tower_sse::{
    Buffer, DisconnectReason, Event, EventError, EventSender, SendError, SseLayer, StreamContext,
    TrySendError,
};

type Ends = Arc<Mutex<Vec<DisconnectReason>>>;

/// A layer that records each stream's end.
fn recorded(layer: SseLayer) -> (SseLayer, Ends) {
    let ends: Ends = Arc::default();
    let seen = ends.clone();
    let layer = layer.on_client_disconnect(move |_ctx, reason| seen.lock().unwrap().push(reason));
    (layer, ends)
}

#[tokio::test]
async fn a_thousand_events_through_a_buffer_of_ten() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0..1000 {
            events
                .send(Event::new(i.to_string()).id(i.to_string()))
                .await
                .unwrap();
        }
    };
    let (layer, ends) = recorded(SseLayer::new(ready).buffer(10));
    let stats = layer.stats();
    let addr = serve(route_in_mode(layer)).await;
    let events = all_events(fetch(addr, "/events").await).await;
    let ids: Vec<usize> = events.iter().map(|e| e.id.parse().unwrap()).collect();
    assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    eventually("the stream's end", || ends.lock().unwrap().len() == 1).await;
    assert_eq!(*ends.lock().unwrap(), [DisconnectReason::Completed]);
    assert_eq!(stats.events_sent(), 1000);
    assert_eq!(stats.active_streams(), 0);
}

/// `SseStats` moves while a stream runs: events and bytes are counted as
/// frames are handed to the connection, not when the stream ends.
#[tokio::test]
async fn stats_count_events_and_bytes_while_the_stream_runs() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0..3 {
            let _ = events.send(Event::new(i.to_string())).await;
        }
        events.closed().await; // open until the client leaves
    };
    let layer = SseLayer::new(ready);
    let stats = layer.stats();
    let addr = serve(route_in_mode(layer)).await;
    let mut events = events(fetch(addr, "/events").await);
    for _ in 0..3 {
        next_event(&mut events).await.unwrap();
    }
    assert_eq!(stats.active_streams(), 1);
    assert_eq!(stats.events_sent(), 3);
    // "data: 0\r\n\r\n" is 11 bytes; heartbeats may add to it.
    assert!(stats.bytes_sent() >= 33, "{}", stats.bytes_sent());
    drop(events);
    eventually("the stream's end", || stats.streams_closed() == 1).await;
    assert_eq!(stats.events_sent(), 3);
}

#[tokio::test]
async fn senders_in_other_tasks_and_threads_keep_the_stream_open() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let from_task = events.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                from_task.send(format!("task {i}")).await.unwrap();
            }
        });
        std::thread::spawn(move || {
            for i in 0..50 {
                events.blocking_send(format!("thread {i}")).unwrap();
            }
        });
    };
    let addr = serve(route_in_mode(SseLayer::new(ready).buffer(3))).await;
    let events = all_events(fetch(addr, "/events").await).await;
    let from = |who: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.data.starts_with(who))
            .map(|e| e.data.clone())
            .collect()
    };
    assert_eq!(
        from("task"),
        (0..50).map(|i| format!("task {i}")).collect::<Vec<_>>()
    );
    assert_eq!(
        from("thread"),
        (0..50).map(|i| format!("thread {i}")).collect::<Vec<_>>()
    );
}

/// Sends 0..100 at once (no await point: on this single-threaded runtime the
/// body cannot drain in between), then ends.
async fn burst(events: EventSender, dropped: Arc<AtomicUsize>) {
    for i in 0..100 {
        match events.try_send(i.to_string()) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    dropped.store(events.dropped() as usize, SeqCst);
}

async fn burst_received(buffer: Buffer) -> (Vec<u32>, usize, u64) {
    let dropped = Arc::new(AtomicUsize::new(usize::MAX));
    let counted = dropped.clone();
    let ready = move |events, _ctx| burst(events, counted.clone());
    let layer = SseLayer::new(ready).buffer(buffer);
    let stats = layer.stats();
    let addr = serve(route_in_mode(layer)).await;
    let events = all_events(fetch(addr, "/events").await).await;
    eventually("the stream's end", || stats.streams_closed() == 1).await;
    let data = events.iter().map(|e| e.data.parse().unwrap()).collect();
    (data, dropped.load(SeqCst), stats.events_dropped())
}

#[tokio::test]
async fn fixed_buffer_refuses_when_full() {
    let (data, dropped, _) = burst_received(Buffer::fixed(5)).await;
    assert_eq!(data, [0, 1, 2, 3, 4]);
    assert_eq!(dropped, 0);
}

#[tokio::test]
async fn dropping_buffer_drops_the_newest() {
    let (data, dropped, stats_dropped) = burst_received(Buffer::dropping(5)).await;
    assert_eq!(data, [0, 1, 2, 3, 4]);
    assert_eq!((dropped, stats_dropped), (95, 95));
}

#[tokio::test]
async fn sliding_buffer_drops_the_oldest() {
    let (data, dropped, stats_dropped) = burst_received(Buffer::sliding(5)).await;
    assert_eq!(data, [95, 96, 97, 98, 99]);
    assert_eq!((dropped, stats_dropped), (95, 95));
}

#[tokio::test]
async fn buffer_function_is_called_once_per_stream() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let buffer = move || {
        counted.fetch_add(1, SeqCst);
        Buffer::fixed(2)
    };
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        assert_eq!(events.capacity(), 2);
        let _ = events.send("x").await;
    };
    let addr = serve(route_in_mode(SseLayer::new(ready).buffer(buffer))).await;
    for _ in 0..3 {
        assert_eq!(all_events(fetch(addr, "/events").await).await.len(), 1);
    }
    assert_eq!(calls.load(SeqCst), 3);
}

#[tokio::test]
async fn client_disconnect_closes_senders_and_fires_once() {
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let closed_tx = closed_tx.clone();
        async move {
            let watcher = events.clone();
            // A task that only watches: `closed()` must resolve, and sends fail.
            tokio::spawn(async move {
                watcher.closed().await;
                let after = watcher.send("too late").await;
                closed_tx
                    .send(matches!(after, Err(SendError::Closed)))
                    .unwrap();
            });
            let mut i = 0u64;
            while events.send(i.to_string()).await.is_ok() {
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let (layer, ends) = recorded(SseLayer::new(ready));
    let stats = layer.stats();
    let addr = serve(route_in_mode(layer)).await;
    let mut events = events(fetch(addr, "/events").await);
    for _ in 0..3 {
        next_event(&mut events).await.unwrap();
    }
    drop(events);
    let closed = tokio::time::timeout(PATIENCE, closed_rx.recv())
        .await
        .unwrap();
    assert_eq!(closed, Some(true));
    eventually("the callback", || !ends.lock().unwrap().is_empty()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        *ends.lock().unwrap(),
        [DisconnectReason::ClientDisconnected]
    );
    assert_eq!(stats.active_streams(), 0);
}

/// Counts drops of the ready function's future.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

#[tokio::test]
async fn nothing_keeps_running_after_the_client_leaves() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let guard = DropFlag(flag.clone());
        async move {
            let _guard = guard;
            let _ = events.send("hello").await;
            // Never returns by itself, and never sends again.
            std::future::pending::<()>().await;
        }
    };
    let (layer, ends) = recorded(SseLayer::new(ready).heartbeat(Duration::from_millis(20)));
    let addr = serve(route_in_mode(layer)).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks(); // the server's accept loop
    let mut events = events(fetch(addr, "/events").await);
    assert_eq!(next_event(&mut events).await.unwrap().data, "hello");
    assert!(metrics.num_alive_tasks() > baseline);
    drop(events);
    eventually("the ready function to be dropped", || dropped.load(SeqCst)).await;
    eventually("every task to end", || {
        metrics.num_alive_tasks() == baseline
    })
    .await;
    assert_eq!(
        *ends.lock().unwrap(),
        [DisconnectReason::ClientDisconnected]
    );
}

#[tokio::test]
async fn close_delivers_queued_events_then_ends() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0..5 {
            events.send(i.to_string()).await.unwrap();
        }
        let other = events.clone();
        events.close();
        assert!(matches!(other.send("late").await, Err(SendError::Closed)));
        assert!(other.is_closed());
        // The stream ends although this task and its senders live on.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    };
    let (layer, ends) = recorded(SseLayer::new(ready));
    let addr = serve(route_in_mode(layer)).await;
    let events = all_events(fetch(addr, "/events").await).await;
    assert_eq!(events.len(), 5);
    eventually("the callback", || !ends.lock().unwrap().is_empty()).await;
    assert_eq!(*ends.lock().unwrap(), [DisconnectReason::Completed]);
}

#[tokio::test]
async fn a_panicking_ready_function_ends_its_stream_cleanly() {
    let ready = |events: EventSender, ctx: StreamContext| async move {
        let _ = events.send("before").await;
        if ctx.uri().path() == "/events" {
            panic!("the application failed");
        }
    };
    let (layer, ends) = recorded(SseLayer::new(ready));
    let addr = serve(route_in_mode(layer)).await;
    let events = all_events(fetch(addr, "/events").await).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].data, "before");
    eventually("the callback", || !ends.lock().unwrap().is_empty()).await;
    assert_eq!(*ends.lock().unwrap(), [DisconnectReason::Panicked]);
    // The server is still serving.
    assert_eq!(all_events(fetch(addr, "/events").await).await.len(), 1);
}

#[tokio::test]
async fn a_panicking_callback_is_contained() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send("x").await;
    };
    let layer = SseLayer::new(ready).on_client_disconnect(|_, _| panic!("callback failed"));
    let stats = layer.stats();
    let addr = serve(route_in_mode(layer)).await;
    for _ in 0..3 {
        assert_eq!(all_events(fetch(addr, "/events").await).await.len(), 1);
    }
    eventually("every stream to close", || stats.streams_closed() == 3).await;
}

#[tokio::test]
async fn non_2xx_responses_pass_through_and_start_no_stream() {
    let started = Arc::new(AtomicUsize::new(0));
    let counted = started.clone();
    let ready = move |_events: EventSender, _ctx: StreamContext| {
        counted.fetch_add(1, SeqCst);
        async {}
    };
    let layer = SseLayer::new(ready);
    let stats = layer.stats();
    let app = Router::new()
        .route(
            "/denied",
            get(|| async {
                (
                    StatusCode::UNAUTHORIZED,
                    [("www-authenticate", "Bearer")],
                    "no",
                )
            })
            .layer(common::in_mode(layer.clone())),
        )
        .route(
            "/gone",
            get(|| async { StatusCode::NO_CONTENT }).layer(layer.clone()),
        )
        .route(
            "/missing",
            get(|| async { StatusCode::NOT_FOUND }).layer(layer),
        );
    let addr = serve(app).await;

    let denied = fetch(addr, "/denied").await;
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        denied.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(denied.text().await.unwrap(), "no");
    assert_eq!(fetch(addr, "/gone").await.status(), 204);
    assert_eq!(fetch(addr, "/missing").await.status(), 404);
    assert_eq!(started.load(SeqCst), 0);
    assert_eq!(stats.streams_opened(), 0);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn start_stream_inside_a_handler() {
    async fn ready(events: EventSender, ctx: StreamContext) {
        let user = ctx.headers()["x-user"].to_str().unwrap().to_owned();
        let _ = events
            .send(Event::new(format!("hello {user}")).name("greeting"))
            .await;
    }
    async fn handler(ctx: StreamContext) -> axum::response::Response {
        use axum::response::IntoResponse;
        if !ctx.headers().contains_key("x-user") {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        common::response_in_mode(start_stream(ready, ctx, Duration::from_secs(10), 10))
            .into_response()
    }
    let addr = serve(Router::new().route("/hello", get(handler))).await;
    assert_eq!(fetch(addr, "/hello").await.status(), 401);
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/hello"))
        .header("x-user", "ada")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream; charset=UTF-8"
    );
    let events = all_events(response).await;
    assert_eq!(events[0].event, "greeting");
    assert_eq!(events[0].data, "hello ada");
}

#[tokio::test]
async fn bad_events_are_typed_errors_and_the_stream_goes_on() {
    let (errors_tx, mut errors_rx) = mpsc::unbounded_channel();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let errors_tx = errors_tx.clone();
        async move {
            let bad = [
                Event::new("x").name("two\nlines"),
                Event::new("x").name("cr\rname"),
                Event::new("x").id("line\nbreak"),
                Event::new("x").id("cr\r"),
                Event::new("x").id("nul\0id"),
            ];
            for event in bad {
                let err = events.send(event.clone()).await.unwrap_err();
                let try_err = events.try_send(event).unwrap_err();
                let SendError::Invalid(err) = err else {
                    panic!("{err}")
                };
                assert!(matches!(try_err, TrySendError::Invalid(_)));
                errors_tx.send(err).unwrap();
            }
            events.send(Event::new("still fine").id("1")).await.unwrap();
        }
    };
    let addr = serve(route_in_mode(SseLayer::new(ready))).await;
    let (_, wire) = raw_get(addr, "/events").await;
    assert_eq!(wire, b"id: 1\r\ndata: still fine\r\n\r\n");
    let mut errors = Vec::new();
    while let Ok(err) = errors_rx.try_recv() {
        errors.push(err);
    }
    assert!(matches!(
        errors[..],
        [
            EventError::LineBreakInName,
            EventError::LineBreakInName,
            EventError::LineBreakInId,
            EventError::LineBreakInId,
            EventError::NulInId
        ]
    ));
    assert_eq!(errors[4].to_string(), "event id contains a NUL character");
}

#[tokio::test]
async fn last_event_id_reaches_the_ready_function() {
    let ready = |events: EventSender, ctx: StreamContext| async move {
        let from = ctx.last_event_id().unwrap_or("none").to_owned();
        let _ = events.send(format!("resume after {from}")).await;
    };
    let addr = serve(route_in_mode(SseLayer::new(ready))).await;
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/events"))
        .header("last-event-id", "41")
        .send()
        .await
        .unwrap();
    assert_eq!(all_events(response).await[0].data, "resume after 41");
    assert_eq!(
        all_events(fetch(addr, "/events").await).await[0].data,
        "resume after none"
    );
}

#[tokio::test]
async fn http2_streams_share_a_connection_without_connection_header() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0..20 {
            let _ = events.send(i.to_string()).await;
        }
    };
    let addr = serve(route_in_mode(SseLayer::new(ready))).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..10 {
        let response = client
            .get(format!("http://{addr}/events"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert!(response.headers().get("connection").is_none());
        assert_eq!(
            response.headers()["content-type"],
            "text/event-stream; charset=UTF-8"
        );
        streams.push(tokio::spawn(all_events(response)));
    }
    for stream in streams {
        assert_eq!(stream.await.unwrap().len(), 20);
    }
}

#[tokio::test]
async fn raw_client_closing_mid_stream_is_detected() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        while events.send("tick").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (layer, ends) = recorded(SseLayer::new(ready));
    let addr = serve(route_in_mode(layer)).await;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut first = [0u8; 256];
    let _ = socket.read(&mut first).await.unwrap();
    drop(socket);
    eventually("the callback", || !ends.lock().unwrap().is_empty()).await;
    assert_eq!(
        *ends.lock().unwrap(),
        [DisconnectReason::ClientDisconnected]
    );
}

#[tokio::test]
async fn many_streams_at_once_each_get_their_own_events() {
    let ready = |events: EventSender, ctx: StreamContext| async move {
        let who = ctx.uri().query().unwrap_or_default().to_owned();
        for i in 0..20 {
            let _ = events.send(format!("{who}:{i}")).await;
        }
    };
    let layer = SseLayer::new(ready);
    let stats = layer.stats();
    let addr = serve(route_in_mode(layer)).await;
    let clients = (0..50).map(|n| async move {
        let events = all_events(fetch(addr, &format!("/events?{n}")).await).await;
        let expected: Vec<String> = (0..20).map(|i| format!("{n}:{i}")).collect();
        assert_eq!(
            events.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
            expected
        );
    });
    futures::future::join_all(clients).await;
    eventually("every stream to close", || stats.streams_closed() == 50).await;
    assert_eq!(stats.active_streams(), 0);
}
