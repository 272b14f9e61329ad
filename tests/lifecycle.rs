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

/// Panics in user code on one HTTP/2 connection (README: "A panic in the
/// ready function or in any task or thread holding one of its senders ends
/// the stream at once (queued events first) with `Panicked`"; RELIABILITY.md:
/// "other streams and the server go on", and a panicking disconnect callback
/// is "never propagated into hyper"). Four streams share the connection: a
/// ready function that panics, a plain thread holding a sender that panics,
/// one the client cancels (an HTTP/2 `RST_STREAM`) whose callback panics
/// when called from the body's drop, and a healthy one, which must keep
/// streaming through all of it; each callback fires once with its reason.
/// (hyper runs each HTTP/2 stream's body in a task of its own, so this
/// would not see a panic unwinding into hyper:
/// `user_panics_never_unwind_into_the_connection_task` does.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_in_user_code_end_only_their_stream_on_a_shared_http2_connection() {
    let ready = |events: EventSender, ctx: StreamContext| async move {
        let path = ctx.uri().path().to_owned();
        let _ = events.send(format!("{path} first")).await;
        match path.as_str() {
            "/panic" => {
                tokio::task::yield_now().await;
                panic!("the ready function failed");
            }
            "/thread" => {
                let helper = events.clone();
                std::thread::spawn(move || {
                    let _ = helper.blocking_send("/thread from the thread");
                    panic!("the helper thread failed");
                });
                // Ends only because the thread's panic closes the stream.
                events.closed().await;
                let after = events.send("too late").await;
                assert!(matches!(after, Err(SendError::Closed)), "{after:?}");
            }
            _ => {
                let mut i = 0u64;
                while events.send(format!("{path} {i}")).await.is_ok() {
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    };
    let ends: Arc<Mutex<Vec<(String, DisconnectReason)>>> = Arc::default();
    let seen = ends.clone();
    let layer = SseLayer::new(ready).on_client_disconnect(move |ctx, reason| {
        seen.lock()
            .unwrap()
            .push((ctx.uri().path().to_owned(), reason));
        if reason == DisconnectReason::ClientDisconnected {
            panic!("the disconnect callback failed");
        }
    });
    let stats = layer.stats();
    let layer = in_mode(layer);
    let app = Router::new()
        .route("/panic", get(|| async {}).layer(layer.clone()))
        .route("/thread", get(|| async {}).layer(layer.clone()))
        .route("/cancelled", get(|| async {}).layer(layer.clone()))
        .route("/healthy", get(|| async {}).layer(layer));
    let addr = serve(app).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let open = |path: &'static str| {
        let client = client.clone();
        async move {
            let response =
                tokio::time::timeout(PATIENCE, client.get(format!("http://{addr}{path}")).send())
                    .await
                    .expect("no response")
                    .unwrap();
            assert_eq!(response.version(), http::Version::HTTP_2);
            response
        }
    };
    let mut healthy = events(open("/healthy").await);
    assert_eq!(
        next_event(&mut healthy).await.unwrap().data,
        "/healthy first"
    );
    let mut cancelled = events(open("/cancelled").await);
    assert_eq!(
        next_event(&mut cancelled).await.unwrap().data,
        "/cancelled first"
    );

    // Each panicking stream ends cleanly (no transport error) after what it queued.
    let panicked = try_events(open("/panic").await).await;
    assert_eq!(panicked, Ok(vec!["/panic first".to_owned()]));
    let thread = try_events(open("/thread").await).await;
    assert_eq!(
        thread,
        Ok(vec![
            "/thread first".to_owned(),
            "/thread from the thread".to_owned()
        ])
    );
    drop(cancelled);
    eventually("three ends", || ends.lock().unwrap().len() == 3).await;

    // The healthy stream on the same connection goes on.
    let before = next_event(&mut healthy).await.unwrap().data;
    for _ in 0..5 {
        next_event(&mut healthy)
            .await
            .expect("the healthy stream ended");
    }
    let after = next_event(&mut healthy).await.unwrap().data;
    assert!(before != after, "{before} then {after}");
    // And the connection still opens new streams.
    let mut fresh = events(open("/healthy").await);
    assert_eq!(next_event(&mut fresh).await.unwrap().data, "/healthy first");
    drop((healthy, fresh));
    eventually("five ends", || ends.lock().unwrap().len() == 5).await;

    let mut ends = ends.lock().unwrap().clone();
    ends.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        ends,
        [
            (
                "/cancelled".to_owned(),
                DisconnectReason::ClientDisconnected
            ),
            ("/healthy".to_owned(), DisconnectReason::ClientDisconnected),
            ("/healthy".to_owned(), DisconnectReason::ClientDisconnected),
            ("/panic".to_owned(), DisconnectReason::Panicked),
            ("/thread".to_owned(), DisconnectReason::Panicked),
        ],
        "each stream's callback once, with its reason"
    );
    assert_eq!((stats.streams_opened(), stats.streams_closed()), (5, 5));
}

/// Every event's data until the body ends, within [`PATIENCE`]; `Err` on a
/// transport or parse error (a stream reset or cut instead of ended).
async fn try_events(response: reqwest::Response) -> Result<Vec<String>, String> {
    use futures::StreamExt;
    let mut parsed = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
    let mut data = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, parsed.next())
            .await
            .expect("the stream did not end")
        {
            Some(Ok(event)) => data.push(event.data),
            Some(Err(err)) => return Err(format!("after {data:?}: {err:?}")),
            None => return Ok(data),
        }
    }
}

/// README: "A `HEAD` request gets the stream's headers and no body; no
/// stream starts, so nothing is called, called back or counted", whichever
/// way the stream is opened: a layer whose buffer is chosen per stream by a
/// function, whose ready function is spawned, and with a `retry` and a
/// shutdown event to write; and `start_stream` from a handler. (The plain
/// layer is `regressions::a_head_request_opens_no_stream`.)
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_head_request_starts_nothing_however_the_stream_is_opened() {
    let calls = Arc::new(AtomicUsize::new(0));
    let buffers = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        counted.fetch_add(1, SeqCst);
        async move {
            let _ = events.send("hello").await;
        }
    };
    let made = buffers.clone();
    let (layer, ends) = recorded(
        SseLayer::new(ready.clone())
            .buffer(Buffer::per_stream(move || {
                made.fetch_add(1, SeqCst);
                Buffer::sliding(4)
            }))
            .spawn_ready()
            .retry(Duration::from_millis(500))
            .shutdown_on(tower_sse::CancellationToken::new())
            .shutdown_event(Event::new("bye")),
    );
    let stats = layer.stats();
    let handler_ready = ready.clone();
    let handler_ends = ends.clone();
    let handler = move |ctx: StreamContext| {
        let ready = handler_ready.clone();
        let ends = handler_ends.clone();
        async move {
            use axum::response::IntoResponse;
            start_stream(ready, ctx, Duration::from_millis(50), 4)
                .on_client_disconnect(move |_, reason| ends.lock().unwrap().push(reason))
                .into_response()
        }
    };
    let app = Router::new()
        .route("/layer", get(|| async {}).layer(layer))
        .route("/handler", get(handler));
    let addr = serve(app).await;
    let client = reqwest::Client::new();
    for path in ["/layer", "/handler"] {
        let head =
            tokio::time::timeout(PATIENCE, client.head(format!("http://{addr}{path}")).send())
                .await
                .expect("no answer to HEAD")
                .unwrap();
        assert_eq!(head.status(), 200, "{path}");
        assert_eq!(
            head.headers()["content-type"],
            "text/event-stream; charset=UTF-8",
            "{path}"
        );
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(calls.load(SeqCst), 0, "a ready function ran for HEAD");
    assert_eq!(buffers.load(SeqCst), 0, "the buffer function ran for HEAD");
    assert_eq!(*ends.lock().unwrap(), [], "a callback fired for HEAD");
    assert_eq!((stats.streams_opened(), stats.streams_closed()), (0, 0));

    // The same routes stream for a GET, each calling everything once.
    for path in ["/layer", "/handler"] {
        let events = all_events(fetch(addr, path).await).await;
        assert_eq!(
            events.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
            ["hello"],
            "{path}"
        );
    }
    eventually("both ends", || ends.lock().unwrap().len() == 2).await;
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!(buffers.load(SeqCst), 1);
    assert_eq!(stats.streams_opened(), 1);
}

/// Serves one connection with hyper in a task of its own, so that the test
/// sees whether anything unwound into the connection's task.
async fn serve_one_connection(app: Router) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connection = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let service = hyper_util::service::TowerToHyperService::new(app);
        // A connection error is fine here (the client left); a panic is not.
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
            .await;
    });
    (addr, connection)
}

/// Panics when dropped: a value the ready function's future holds.
struct PanicOnDrop;
impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("a user value panicked when dropped");
        }
    }
}

/// RELIABILITY.md: a ready function polled by the body "is polled under
/// `catch_unwind`, so its panic never unwinds into hyper's connection task",
/// and "a panic in the disconnect callback is caught and logged with
/// `tracing`, never propagated into hyper"; `body/ready.rs`: the ready
/// function's drop is caught too. Each case serves one connection in a task
/// of its own and checks that task did not panic: a callback panicking when
/// the body is dropped (the client left), a ready function whose future
/// panics when dropped (the client left), and one that panics when polled.
#[tokio::test]
async fn user_panics_never_unwind_into_the_connection_task() {
    for case in ["callback", "drop", "poll"] {
        let ready = move |events: EventSender, _ctx: StreamContext| async move {
            // Made only where it is to panic (`then_some` would drop one at once).
            let held = if case == "drop" {
                Some(PanicOnDrop)
            } else {
                None
            };
            let _ = events.send("first").await;
            if case == "poll" {
                tokio::task::yield_now().await;
                panic!("the ready function failed");
            }
            events.closed().await;
            drop(held);
        };
        let ends: Ends = Arc::default();
        let seen = ends.clone();
        let layer = SseLayer::new(ready).on_client_disconnect(move |_, reason| {
            seen.lock().unwrap().push(reason);
            if case == "callback" {
                panic!("the disconnect callback failed");
            }
        });
        let (addr, connection) = serve_one_connection(route_in_mode(layer)).await;
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !seen.windows(11).any(|w| w == b"data: first") {
            let n = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
                .await
                .expect("nothing to read")
                .unwrap();
            assert!(n > 0, "{case}: closed before the first event");
            seen.extend_from_slice(&buf[..n]);
        }
        let expected = if case == "poll" {
            // The stream ends by itself, cleanly: the last chunk, then the close.
            tokio::time::timeout(PATIENCE, socket.read_to_end(&mut seen))
                .await
                .expect("the stream did not end")
                .unwrap();
            assert!(seen.ends_with(b"\r\n0\r\n\r\n"), "{case}: no clean end");
            DisconnectReason::Panicked
        } else {
            drop(socket);
            DisconnectReason::ClientDisconnected
        };
        let joined = tokio::time::timeout(PATIENCE, connection)
            .await
            .expect("the connection did not end");
        assert!(
            joined.is_ok(),
            "{case}: a panic unwound into the connection's task: {joined:?}"
        );
        assert_eq!(*ends.lock().unwrap(), [expected], "{case}");
    }
}

/// The buffer function and a hub's topic selection run in the layer's
/// service call and response future, as a handler does: a panic there is
/// the handler's, which tower-http's `CatchPanicLayer` answers with a 500,
/// and the server goes on serving.
#[tokio::test]
async fn a_panicking_buffer_function_or_topic_selection_is_caught_like_a_handlers() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send("x").await;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let panicking_buffer = SseLayer::new(ready).buffer(move || -> Buffer {
        counted.fetch_add(1, SeqCst);
        panic!("buffer function")
    });
    let hub = tower_sse::hub::Hub::builder().build();
    let panicking_select = hub.layer(
        |_parts: &axum::http::request::Parts| -> Result<Vec<String>, tower_sse::hub::Refusal> {
            panic!("topic selection")
        },
    );
    let app = Router::new()
        .route("/buffer", get(|| async {}).layer(panicking_buffer))
        .route("/hub", get(|| async {}).layer(panicking_select))
        .route("/ok", get(|| async {}).layer(SseLayer::new(ready)))
        .layer(tower_http::catch_panic::CatchPanicLayer::new());
    let addr = serve(app).await;
    for _ in 0..2 {
        for path in ["/buffer", "/hub"] {
            let response = fetch(addr, path).await;
            assert_eq!(
                response.status(),
                StatusCode::INTERNAL_SERVER_ERROR,
                "{path}"
            );
        }
        assert_eq!(all_events(fetch(addr, "/ok").await).await.len(), 1);
    }
    assert_eq!(calls.load(SeqCst), 2);
    assert_eq!((hub.subscribers(), hub.topics()), (0, 0));
}
