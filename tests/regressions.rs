//! Regression tests for known defects, written against the public API only.
//! Each test names its defect; each failed on the code it was written
//! against, and passes once the defect is fixed.

mod common;

use std::{
    cell::Cell,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst},
        mpsc as std_mpsc,
    },
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use common::*;
use eventsource_stream::{Event as Parsed, Eventsource};
use futures::StreamExt;
use tower_sse::{Buffer, DisconnectReason, EventSender, SseLayer, StreamContext, start_stream};
use tracing_subscriber::{filter::LevelFilter, layer::SubscriberExt};

type Ends = Arc<Mutex<Vec<(DisconnectReason, Instant)>>>;

fn route(layer: SseLayer) -> Router {
    Router::new().route("/events", get(|| async {}).layer(layer))
}

/// A layer that records each stream's end and when it came.
fn recorded(layer: SseLayer) -> (SseLayer, Ends) {
    let ends: Ends = Arc::default();
    let seen = ends.clone();
    let layer = layer.on_client_disconnect(move |_ctx, reason| {
        seen.lock().unwrap().push((reason, Instant::now()));
    });
    (layer, ends)
}

/// Every event until the body ends, by the independent parser; a transport
/// or parse error is an `Err` (a dying connection must fail the test, not panic in a helper).
async fn try_all_events(addr: SocketAddr, path: &str) -> Result<Vec<Parsed>, String> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|err| format!("request failed: {err:?}"))?;
    if response.status() != 200 {
        return Err(format!("status {}", response.status()));
    }
    let mut parsed = response.bytes_stream().eventsource();
    let mut events = Vec::new();
    while let Some(event) = parsed.next().await {
        events.push(event.map_err(|err| format!("body failed after {events:?}: {err:?}"))?);
    }
    Ok(events)
}

fn data(events: &[Parsed]) -> Vec<String> {
    events.iter().map(|e| e.data.clone()).collect()
}

// ---------------------------------------------------------------------------
// 1. `send` on a dropping or sliding buffer never spends tokio's coop budget.
// ---------------------------------------------------------------------------

const BURST: u64 = 10_000;

/// A ready function sending 0..BURST in a tight loop into a buffer of 10 on a
/// current-thread runtime; returns (events received, events dropped).
async fn tight_loop_share(buffer: Buffer) -> (Vec<u64>, u64) {
    let dropped = Arc::new(AtomicU64::new(u64::MAX));
    let counted = dropped.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let counted = counted.clone();
        async move {
            for i in 0..BURST {
                if events.send(i.to_string()).await.is_err() {
                    return;
                }
            }
            counted.store(events.dropped(), SeqCst);
        }
    };
    let addr = serve(route(SseLayer::new(ready).buffer(buffer))).await;
    let events = tokio::time::timeout(PATIENCE, try_all_events(addr, "/events"))
        .await
        .expect("the stream did not end")
        .unwrap();
    let received = events.iter().map(|e| e.data.parse().unwrap()).collect();
    (received, dropped.load(SeqCst))
}

/// With a fair `send` (yielding every ~128 sends, as tokio's channels do) the
/// connection is polled between bursts and takes up to 10 events each time:
/// about 10/128 of 10,000, some 780. Today the loop never yields, the body is
/// polled only after it, and the reader gets exactly the 10 the buffer holds.
fn assert_fair_share(buffer: &str, received: &[u64], dropped: u64) {
    const FAIR: usize = 300;
    println!(
        "{buffer}: a fast reader got {} of {BURST} events sent in a loop ({dropped} dropped)",
        received.len()
    );
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "{buffer}: out of order"
    );
    assert_eq!(
        received.len() as u64 + dropped,
        BURST,
        "{buffer}: received + dropped"
    );
    assert!(
        received.len() > FAIR,
        "{buffer}: the reader got {} of {BURST} events ({dropped} dropped): \
         the sending loop never yielded to the connection",
        received.len()
    );
}

/// Defect 1a: a sliding buffer's ready function monopolises a current-thread runtime.
#[tokio::test]
async fn a_sliding_buffer_sender_loop_lets_a_fast_reader_keep_up() {
    let (received, dropped) = tight_loop_share(Buffer::sliding(10)).await;
    assert_eq!(received.last(), Some(&(BURST - 1)), "the newest is kept");
    assert_fair_share("sliding(10)", &received, dropped);
}

/// Defect 1a: a dropping buffer's ready function monopolises a current-thread runtime.
#[tokio::test]
async fn a_dropping_buffer_sender_loop_lets_a_fast_reader_keep_up() {
    let (received, dropped) = tight_loop_share(Buffer::dropping(10)).await;
    assert_eq!(received.first(), Some(&0), "the oldest is kept");
    assert_fair_share("dropping(10)", &received, dropped);
}

/// Sets the flag when dropped: ends the test's spinning ready functions even
/// when an assertion fails, so a wedged server recovers and frees the CPUs.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// Serves `app` on a two-worker runtime of its own, on its own thread, until
/// the returned sender is dropped. A wedged server starves only that thread.
fn serve_on_own_runtime(app: Router) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (addr_tx, addr_rx) = std_mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            tokio::select! {
                _ = axum::serve(listener, app).into_future() => {}
                _ = stop_rx => {}
            }
        });
    });
    let addr = addr_rx.recv_timeout(PATIENCE).expect("no server");
    (addr, stop_tx)
}

/// A GET of `/ping` answered with "pong" within 2 s: how long it took.
async fn ping(client: &reqwest::Client, addr: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        let response = client.get(format!("http://{addr}/ping")).send().await?;
        response.text().await
    })
    .await;
    match answer {
        Ok(Ok(text)) if text == "pong" => Ok(started.elapsed()),
        Ok(other) => Err(format!("bad answer: {other:?}")),
        Err(_) => Err("no answer within 2 s".to_owned()),
    }
}

/// Defect 1b: ready functions looping over `send` (one sliding, one
/// dropping buffer) never give their worker back: the server, on a
/// two-worker runtime, stops answering (often after the first stream
/// already). With a fair `send` both stream and `/ping` answers in ms.
#[test]
fn spinning_senders_do_not_wedge_a_two_worker_server() {
    let stop = Arc::new(AtomicBool::new(false));
    let _unwedge = StopOnDrop(stop.clone());
    let spinning = stop.clone();
    let spin = move |events: EventSender, _ctx: StreamContext| {
        let stop = spinning.clone();
        // `stop` only lets the test clean up; the loop never yields by itself.
        async move { while !stop.load(SeqCst) && events.send("x").await.is_ok() {} }
    };
    let app = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route(
            "/sliding",
            get(|| async {}).layer(SseLayer::new(spin.clone()).buffer(Buffer::sliding(10))),
        )
        .route(
            "/dropping",
            get(|| async {}).layer(SseLayer::new(spin).buffer(Buffer::dropping(10))),
        );
    let (addr, _server) = serve_on_own_runtime(app);

    // The client on a runtime of its own too; each step reports back.
    let (report, steps) = std_mpsc::channel::<(&str, Result<Duration, String>)>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let client = reqwest::Client::new();
            let started = Instant::now();
            let mut streams = Vec::new();
            for path in ["/sliding", "/dropping"] {
                let request = client.get(format!("http://{addr}{path}")).send();
                match tokio::time::timeout(Duration::from_secs(5), request).await {
                    Ok(Ok(response)) if response.status() == 200 => streams.push(response),
                    other => {
                        let _ = report.send(("open", Err(format!("{path}: {other:?}"))));
                        return;
                    }
                }
            }
            let _ = report.send(("open", Ok(started.elapsed())));
            let _ = report.send(("ping while streaming", ping(&client, addr).await));
            drop(streams);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = report.send(("ping after closing", ping(&client, addr).await));
        });
    });
    for _ in 0..3 {
        let (step, outcome) = steps
            .recv_timeout(Duration::from_secs(15))
            .expect("the client thread stopped reporting");
        if let Err(err) = outcome {
            panic!("{step}: {err}: the spinning ready functions wedged the server");
        }
    }
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
/// at 200 ms, and itself holds its sender for 1 s. RELIABILITY.md promises
/// the panic ends the stream (queued events first) with `Panicked`.
async fn a_panicking_helper_ends_the_stream(buffer: Buffer) {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send("from the ready function").await;
        let helper = events.clone();
        tokio::spawn(async move {
            let _ = helper.send("from the helper").await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            panic!("the helper task failed (on purpose)");
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
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
    let limit = Duration::from_millis(700);
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

/// A started stream and its sender (the ready function hands it out); the
/// body is polled once so that the ready function runs.
fn stream_and_sender(buffer: Buffer) -> (std::pin::Pin<Box<tower_sse::EventStream>>, EventSender) {
    use http_body::Body as _;
    let (tx, rx) = std_mpsc::channel();
    let tx = Mutex::new(tx);
    let ready = move |events: EventSender, _ctx: StreamContext| {
        tx.lock().unwrap().send(events).unwrap();
        async {}
    };
    let mut body = Box::pin(
        start_stream(
            ready,
            StreamContext::from_request(&http::Request::new(())),
            Duration::ZERO,
            buffer,
        )
        .into_http()
        .into_body(),
    );
    let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
    let _ = body.as_mut().poll_frame(&mut cx);
    let sender = rx.recv_timeout(PATIENCE).unwrap();
    (body, sender)
}

/// Runs `work` on a runtime of its own thread; `Err` if it did not finish in time.
fn finishes_in_time(work: impl FnOnce() + Send + 'static) -> Result<(), String> {
    let (done_tx, done_rx) = std_mpsc::channel();
    std::thread::spawn(move || {
        work();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| "did not finish in 5 s".to_owned())
}

/// `blocking_send` into a dropping or sliding buffer from inside a task (a
/// sync helper called from async code): once `send` spent tokio's budget,
/// `block_on` polled a future that could only yield, forever.
#[test]
fn blocking_send_inside_a_task_never_livelocks() {
    for buffer in [Buffer::sliding(4), Buffer::dropping(4)] {
        let name = format!("{buffer:?}");
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = sent.clone();
        let outcome = finishes_in_time(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let (_body, sender) = stream_and_sender(buffer);
                tokio::spawn(async move {
                    for _ in 0..1000 {
                        sender.blocking_send("x").unwrap();
                        counted.fetch_add(1, SeqCst);
                    }
                })
                .await
                .unwrap();
            });
        });
        let sent = sent.load(SeqCst);
        assert!(
            outcome.is_ok(),
            "{name}: blocking_send livelocked after {sent} of 1000"
        );
    }
}

/// A body-polled ready function that sends into *another* stream's sliding
/// buffer in a loop: those sends must spend tokio's budget (only sends to
/// the body's own queue skip it), or the body's poll never returns.
#[test]
fn a_body_polled_ready_function_sending_elsewhere_still_yields() {
    let outcome = finishes_in_time(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use http_body::Body as _;
            let (_other_body, other) = stream_and_sender(Buffer::sliding(4));
            let spin = move |_events: EventSender, _ctx: StreamContext| {
                let other = other.clone();
                async move { while other.send("x").await.is_ok() {} }
            };
            let mut body = Box::pin(
                start_stream(
                    spin,
                    StreamContext::from_request(&http::Request::new(())),
                    Duration::ZERO,
                    Buffer::fixed(4),
                )
                .into_http()
                .into_body(),
            );
            // The poll that runs the spinning ready function must come back.
            let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
            let _ = body.as_mut().poll_frame(&mut cx);
        });
    });
    assert!(
        outcome.is_ok(),
        "the body's poll never returned: {outcome:?}"
    );
}
