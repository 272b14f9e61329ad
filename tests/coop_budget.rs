//! Regression tests for defect 1 (`send` and tokio's cooperative budget),
//! written against the public API only: a sending loop on a dropping or
//! sliding buffer yields to the connection and never wedges a server, and
//! sends from inside a runtime (`blocking_send` in a task, a body-polled
//! ready function sending to another stream) never livelock. Each failed on
//! the code it was written against, and passes once the defect is fixed.

mod common;

use std::{
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
use tower_sse::{Buffer, EventSender, SseLayer, StreamContext, start_stream};

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
// Sends from inside a runtime that once spent the budget and never yielded.
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// A sending loop that ignores `Closed` must still yield once the stream has
// ended, as with tokio's channels (whose sends spend the budget on a closed
// channel too): otherwise an aborted ready function task never stops, and a
// body-polled one never returns from the body's poll.
// ---------------------------------------------------------------------------

/// A ready function that sends in a loop and ignores every error (as
/// `let _ = pedestal::send_event(..)` does), counting its turns; `stop` only
/// lets the test clean up.
fn ignoring_sender(
    turns: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> impl Fn(EventSender, StreamContext) -> futures::future::BoxFuture<'static, ()>
+ Clone
+ Send
+ Sync
+ 'static {
    move |events: EventSender, _ctx: StreamContext| {
        let (turns, stop) = (turns.clone(), stop.clone());
        Box::pin(async move {
            let mut i = 0u64;
            while !stop.load(SeqCst) {
                let _ = events.send(i.to_string()).await;
                i += 1;
                turns.fetch_add(1, SeqCst);
            }
        })
    }
}

/// On shutdown the queue closes and the ready function's pending send
/// completes with `Closed`: a loop that ignores it must still give its
/// thread back, so that the stream writes the shutdown event and ends, the
/// ready function is stopped, and `with_graceful_shutdown` returns (README:
/// "Cancelling the token makes every stream write what is queued, then the
/// shutdown event, then end cleanly"; RELIABILITY.md: nothing the library
/// started keeps running). Served on a current-thread runtime, where a loop
/// that never yields stops everything, for a body-polled ready function
/// (fixed buffer) and a spawned one (`spawn_ready`, whose task is aborted at
/// the end, which takes effect only at a yield). Failed on main for the
/// body-polled one: a send on a closed stream returned at once without
/// spending tokio's budget, so the loop spun inside the body's poll for good
/// and `serve` never returned. (The spawned one passed on main: on one
/// thread the body ends and aborts the task before it runs again; on
/// several workers the task could be mid-poll when the queue closes.)
#[test]
fn a_send_loop_ignoring_closed_lets_shutdown_finish() {
    for spawn in [false, true] {
        let mode = if spawn { "spawned" } else { "body-polled" };
        let stop = Arc::new(AtomicBool::new(false));
        let _unwedge = StopOnDrop(stop.clone());
        let turns = Arc::new(AtomicU64::new(0));
        let token = tower_sse::CancellationToken::new();
        let mut layer = SseLayer::new(ignoring_sender(turns.clone(), stop.clone()))
            .buffer(Buffer::fixed(10))
            .shutdown_on(token.clone())
            .shutdown_event(tower_sse::Event::new("bye").name("shutdown"));
        if spawn {
            layer = layer.spawn_ready();
        }
        let app = Router::new().route("/events", get(|| async {}).layer(layer));

        // The server on a current-thread runtime of its own: reports when `serve` returns.
        let (addr_tx, addr_rx) = std_mpsc::channel();
        let (served_tx, served_rx) = std_mpsc::channel();
        let serving = token.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(serving.cancelled_owned())
                    .await;
                let _ = served_tx.send(());
            });
        });
        let addr: SocketAddr = addr_rx.recv_timeout(PATIENCE).expect("no server");

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let received = runtime.block_on(async {
            let response = tokio::time::timeout(
                PATIENCE,
                reqwest::Client::new()
                    .get(format!("http://{addr}/events"))
                    .send(),
            )
            .await
            .expect("no response")
            .unwrap();
            let mut parsed = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
            let mut received = Vec::new();
            // A few events, then the shutdown, then on to the end (bounded).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let next = tokio::time::timeout_at(deadline, futures::StreamExt::next(&mut parsed));
                match next.await {
                    Ok(Some(Ok(event))) => {
                        received.push(event);
                        if received.len() == 5 {
                            token.cancel();
                        }
                    }
                    Ok(Some(Err(err))) => panic!("{mode}: the body failed: {err:?}"),
                    Ok(None) => break Ok(received),
                    Err(_) => break Err(received),
                }
            }
        });
        let received = match received {
            Ok(received) => received,
            Err(received) => panic!(
                "{mode}: the stream did not end within 3 s of the shutdown ({} events, \
                 last {:?}; the ready function turned {} times)",
                received.len(),
                received.last().map(|e| (&e.event, &e.data)),
                turns.load(SeqCst)
            ),
        };
        let last = received.last().expect("no event");
        assert_eq!(
            (last.event.as_str(), last.data.as_str()),
            ("shutdown", "bye"),
            "{mode}"
        );
        let data: Vec<u64> = received[..received.len() - 1]
            .iter()
            .map(|e| e.data.parse().unwrap())
            .collect();
        assert_eq!(
            data,
            (0..data.len() as u64).collect::<Vec<_>>(),
            "{mode}: every accepted event, in order, before the shutdown event"
        );
        assert!(
            served_rx.recv_timeout(Duration::from_secs(3)).is_ok(),
            "{mode}: with_graceful_shutdown did not return within 3 s of the shutdown \
             (the ready function turned {} times)",
            turns.load(SeqCst)
        );
        // Stopped: it turns no more.
        let before = turns.load(SeqCst);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            turns.load(SeqCst),
            before,
            "{mode}: the ready function still runs after the stream ended"
        );
    }
}
