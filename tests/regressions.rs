//! Regression tests for known defects, written against the public API only:
//! the queue logging under its lock, a huge fixed buffer, HEAD requests, and
//! panicking helper tasks (defect 1, `send` and tokio's coop budget, is in
//! `coop_budget.rs`). Each test names its defect; each failed on the code it
//! was written against, and passes once the defect is fixed.

mod common;

use std::{
    cell::Cell,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};

#[cfg(feature = "axum")]
use axum::{Router, routing::get};
use common::*;
use eventsource_stream::Event as Parsed;
use tower_sse::{Buffer, DisconnectReason, EventSender, SseLayer, StreamContext, start_stream};
use tracing_subscriber::{filter::LevelFilter, layer::SubscriberExt};

type Ends = Arc<Mutex<Vec<(DisconnectReason, Instant)>>>;

/// A layer that records each stream's end and when it came.
fn recorded(layer: SseLayer) -> (SseLayer, Ends) {
    let ends: Ends = Arc::default();
    let seen = ends.clone();
    let layer = layer.on_client_disconnect(move |_ctx, reason| {
        seen.lock().unwrap().push((reason, Instant::now()));
    });
    (layer, ends)
}

fn data(events: &[Parsed]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

// ---------------------------------------------------------------------------
// 2. The queue logs with `tracing` while holding its lock.
// ---------------------------------------------------------------------------

thread_local! {
    static FORWARDING: Cell<bool> = const { Cell::new(false) };
}

/// A live-log layer: forwards every log event into an SSE stream with `try_send`.
struct LiveLog {
    sink: Arc<Mutex<Option<EventSender>>>,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LiveLog {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        // An event logged while forwarding one is not forwarded.
        if FORWARDING.with(|busy| busy.replace(true)) {
            return;
        }
        struct Line(String);
        impl tracing::field::Visit for Line {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                let _ = write!(self.0, " {}={value:?}", field.name());
            }
        }
        let mut line = Line(event.metadata().level().to_string());
        event.record(&mut line);
        let sender = self.sink.lock().unwrap().clone();
        if let Some(sender) = sender {
            let _ = sender.try_send(line.0);
        }
        FORWARDING.with(|busy| busy.set(false));
    }
}

/// Five `try_send`s into a buffer of 2 while a live-log subscriber forwards
/// debug events into the same stream; on a thread of its own, since a
/// deadlock there never ends (the thread and the stream are then leaked).
/// Returns how many events the buffer dropped, or why it did not finish.
fn send_past_capacity_with_live_log(buffer: Buffer) -> Result<u64, String> {
    let (done_tx, done_rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        let sink = Arc::new(Mutex::new(None::<EventSender>));
        let slot = sink.clone();
        let ready = move |events: EventSender, _ctx: StreamContext| {
            *slot.lock().unwrap() = Some(events.clone());
            async move { events.closed().await }
        };
        let ctx = StreamContext::from_request(&http::Request::new(()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut body = Box::pin(
            start_stream(ready, ctx, Duration::ZERO, buffer)
                .into_http()
                .into_body(),
        );
        // The first poll starts the stream: the ready function gets its sender.
        runtime.block_on(futures::future::poll_fn(|cx| {
            let _ = http_body::Body::poll_frame(body.as_mut(), cx);
            std::task::Poll::Ready(())
        }));
        let sender = sink
            .lock()
            .unwrap()
            .clone()
            .expect("the ready function ran");
        let subscriber = tracing_subscriber::registry()
            .with(LevelFilter::DEBUG)
            .with(LiveLog { sink });
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..5 {
                let _ = sender.try_send(i.to_string());
            }
        });
        let _ = done_tx.send(sender.dropped());
        drop(body);
    });
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "no progress in 5 s: deadlocked".to_owned())
}

/// Defect 2: the sliding buffer's drop-oldest branch logs under the queue's
/// lock; a subscriber forwarding logs into a stream re-enters it and deadlocks.
#[test]
fn a_live_log_subscriber_does_not_deadlock_a_sliding_buffer() {
    let dropped = send_past_capacity_with_live_log(Buffer::sliding(2)).unwrap();
    assert!(
        dropped >= 3,
        "the drop-oldest branch ran: {dropped} dropped"
    );
}

/// Defect 2, dropping buffer: the same subscriber. (It releases the lock
/// before logging today; this keeps it that way.)
#[test]
fn a_live_log_subscriber_does_not_deadlock_a_dropping_buffer() {
    let dropped = send_past_capacity_with_live_log(Buffer::dropping(2)).unwrap();
    assert!(
        dropped >= 3,
        "the drop-newest branch ran: {dropped} dropped"
    );
}

// ---------------------------------------------------------------------------
// 3. `Buffer::fixed` beyond tokio's `Semaphore::MAX_PERMITS` panics.
// ---------------------------------------------------------------------------

async fn three_events(events: EventSender, _ctx: StreamContext) {
    for i in 0..3 {
        if events.send(i.to_string()).await.is_err() {
            return;
        }
    }
}

/// Defect 3: a layer with `Buffer::fixed(usize::MAX)` panics building the
/// stream, inside hyper's connection task: the client gets no stream.
#[tokio::test]
async fn a_layer_with_a_huge_fixed_buffer_still_streams() {
    let layer = SseLayer::new(three_events).buffer(Buffer::fixed(usize::MAX));
    let addr = serve(route(layer)).await;
    let events = tokio::time::timeout(PATIENCE, try_all_events(addr, "/events"))
        .await
        .expect("the stream did not end");
    assert_eq!(data(&events.unwrap()), ["0", "1", "2"]);
}

/// Defect 3, `start_stream` in a handler with `Buffer::fixed(usize::MAX)`.
#[cfg(feature = "axum")]
#[tokio::test]
async fn start_stream_with_a_huge_fixed_buffer_still_streams() {
    let handler = |ctx: StreamContext| async move {
        start_stream(three_events, ctx, Duration::from_secs(10), usize::MAX)
    };
    let addr = serve(Router::new().route("/events", get(handler))).await;
    let events = tokio::time::timeout(PATIENCE, try_all_events(addr, "/events"))
        .await
        .expect("the stream did not end");
    assert_eq!(data(&events.unwrap()), ["0", "1", "2"]);
}

// ---------------------------------------------------------------------------
// 4. A HEAD request is counted and reported as a stream that never ran.
// ---------------------------------------------------------------------------

/// Defect 4: a HEAD gets the right head and no body, but the layer counts a
/// stream opened and closed and fires the disconnect callback
/// (`ClientDisconnected`) for a stream whose ready function never ran.
#[tokio::test]
async fn a_head_request_opens_no_stream() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        counted.fetch_add(1, SeqCst);
        async move {
            let _ = events.send("hello").await;
        }
    };
    let (layer, ends) = recorded(SseLayer::new(ready));
    let stats = layer.stats();
    let addr = serve(route(layer)).await;

    let head = tokio::time::timeout(
        PATIENCE,
        reqwest::Client::new()
            .head(format!("http://{addr}/events"))
            .send(),
    )
    .await
    .expect("no answer to HEAD")
    .unwrap();
    assert_eq!(head.status(), 200);
    let content_type = head.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    // The head a GET would get: a stream has no length.
    assert_eq!(
        head.headers().get("content-length"),
        None,
        "{:?}",
        head.headers()
    );
    assert!(head.bytes().await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reasons: Vec<_> = ends.lock().unwrap().iter().map(|(r, _)| *r).collect();
    assert_eq!(calls.load(SeqCst), 0, "the ready function ran for HEAD");
    assert_eq!(
        (stats.streams_opened(), stats.streams_closed(), reasons),
        (0, 0, vec![]),
        "HEAD counted as a stream (opened, closed, callbacks)"
    );

    // A GET on the same layer streams and is counted once.
    let events = all_events(fetch(addr, "/events").await).await;
    assert_eq!(data(&events), ["hello"]);
    eventually("the stream's end", || stats.streams_closed() == 1).await;
    assert_eq!(stats.streams_opened(), 1);
    assert_eq!(calls.load(SeqCst), 1);
    let reasons: Vec<_> = ends.lock().unwrap().iter().map(|(r, _)| *r).collect();
    assert_eq!(reasons, [DisconnectReason::Completed]);
}

// ---------------------------------------------------------------------------
// 5. A panic in a task holding a sender clone ends the stream only when the
//    last other sender goes.
// ---------------------------------------------------------------------------

/// The ready function sends, hands a clone to a task that sends and panics
/// at 200 ms, and itself holds its sender for 5 s. RELIABILITY.md promises
/// the panic ends the stream (queued events first) with `Panicked`: well
/// before the ready function's sender goes. (The limit leaves room for the
/// panic hook, which with `RUST_BACKTRACE=1`, as CI sets, symbolises a
/// backtrace before unwinding starts: 0.5–1.4 s on a busy machine.)
async fn a_panicking_helper_ends_the_stream(buffer: Buffer) {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send("from the ready function").await;
        let helper = events.clone();
        tokio::spawn(async move {
            let _ = helper.send("from the helper").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            panic!("the helper task failed (on purpose)");
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
    };
    let (layer, ends) = recorded(SseLayer::new(ready).buffer(buffer.clone()));
    let addr = serve(route(layer)).await;
    let started = Instant::now();
    let events = tokio::time::timeout(PATIENCE, try_all_events(addr, "/events"))
        .await
        .expect("the stream did not end")
        .unwrap();
    let ended = started.elapsed();
    let mut received = data(&events);
    received.sort();
    assert_eq!(
        received,
        ["from the helper", "from the ready function"],
        "{buffer:?}"
    );
    eventually("the callback", || !ends.lock().unwrap().is_empty()).await;
    let (reason, at) = ends.lock().unwrap()[0];
    assert_eq!(reason, DisconnectReason::Panicked, "{buffer:?}");
    let limit = Duration::from_millis(3_000);
    println!(
        "{buffer:?}: helper panicked at 200 ms; body ended at {ended:?}, callback at {:?}",
        at - started
    );
    assert!(
        ended < limit && at - started < limit,
        "{buffer:?}: the helper panicked at 200 ms, yet the body ended after {ended:?} \
         and the callback fired after {:?}",
        at - started
    );
}

/// Defect 5, fixed buffer (the body polls the ready function).
#[tokio::test]
async fn a_panicking_helper_task_ends_a_fixed_buffer_stream_promptly() {
    a_panicking_helper_ends_the_stream(Buffer::fixed(10)).await;
}

/// Defect 5, sliding buffer (the ready function runs as its own task).
#[tokio::test]
async fn a_panicking_helper_task_ends_a_sliding_buffer_stream_promptly() {
    a_panicking_helper_ends_the_stream(Buffer::sliding(10)).await;
}
