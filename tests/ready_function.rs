//! Where the ready function runs: polled by the body with a fixed buffer (its
//! events coalesced into full frames beyond the buffer's capacity), as a task
//! of its own with a dropping or sliding buffer; and what a stream keeps.

mod common;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use axum::{Router, routing::get};
use bytes::Bytes;
use common::*;
use eventsource_stream::{Event as Parsed, Eventsource};
use futures::StreamExt;
use http_body_util::BodyExt;
use tower_sse::{
    Buffer, DisconnectReason, EventSender, EventStream, SseLayer, StreamContext, start_stream,
};

/// The largest frame the body assembles from several events.
const MAX_FRAME: usize = 64 * 1024;

/// A stream polled in-process (no heartbeat), started from `request`.
fn body_for<F, Fut>(ready: F, buffer: Buffer, request: &http::Request<()>) -> Pin<Box<EventStream>>
where
    F: Fn(EventSender, StreamContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let ctx = StreamContext::from_request(request);
    Box::pin(
        start_stream(ready, ctx, Duration::ZERO, buffer)
            .into_http()
            .into_body(),
    )
}

fn body<F, Fut>(ready: F, buffer: Buffer) -> Pin<Box<EventStream>>
where
    F: Fn(EventSender, StreamContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    body_for(ready, buffer, &http::Request::new(()))
}

/// A stream like [`body`], with a disconnect callback recording each reason.
fn recorded_body<F, Fut>(
    ready: F,
    buffer: Buffer,
) -> (
    Pin<Box<EventStream>>,
    Arc<std::sync::Mutex<Vec<DisconnectReason>>>,
)
where
    F: Fn(EventSender, StreamContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let reasons = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = reasons.clone();
    let response = start_stream(
        ready,
        StreamContext::from_request(&http::Request::new(())),
        Duration::ZERO,
        buffer,
    )
    .on_client_disconnect(move |_, reason| seen.lock().unwrap().push(reason));
    (Box::pin(response.into_http().into_body()), reasons)
}

/// Every frame until the body ends.
async fn frames(body: &mut Pin<Box<EventStream>>) -> Vec<Bytes> {
    let mut frames = Vec::new();
    while let Some(frame) = tokio::time::timeout(PATIENCE, body.frame())
        .await
        .expect("the body stalled")
    {
        let Ok(data) = frame.unwrap().into_data() else {
            panic!("a frame that is not data");
        };
        frames.push(data);
    }
    frames
}

/// The data of each event in `frames`, by the independent parser.
async fn data_of(frames: &[Bytes]) -> Vec<String> {
    parse(frames).await.into_iter().map(|e| e.data).collect()
}

/// Polls `body` once, with a waker that does nothing: whether it is pending.
fn poll_once(body: &mut Pin<Box<EventStream>>) -> bool {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    http_body::Body::poll_frame(body.as_mut(), &mut cx).is_pending()
}

/// The events in `frames`, by the independent parser.
async fn parse(frames: &[Bytes]) -> Vec<Parsed> {
    futures::stream::iter(frames.iter().cloned().map(Ok::<_, Infallible>))
        .eventsource()
        .map(|event| event.expect("the independent parser rejected the stream"))
        .collect()
        .await
}

async fn count_to(events: EventSender, n: usize) {
    for i in 0..n {
        if events.send(i.to_string()).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_fixed_buffer_fills_whole_frames_beyond_its_capacity() {
    let mut body = body(|events, _| count_to(events, 20_000), Buffer::fixed(2));
    let frames = frames(&mut body).await;
    let events = parse(&frames).await;
    let data: Vec<usize> = events.iter().map(|e| e.data.parse().unwrap()).collect();
    assert_eq!(data, (0..20_000).collect::<Vec<_>>());
    // A buffer of 2, yet frames hold many events: the body let the ready
    // function refill the buffer while it gathered (up to the size cap, or
    // tokio's cooperative budget for one poll).
    assert!(frames.iter().all(|f| f.len() <= MAX_FRAME));
    let per_frame = events.len() / frames.len();
    assert!(per_frame >= 32, "{per_frame} events per frame");
}

#[tokio::test]
async fn a_dropping_buffer_keeps_its_capacity_per_frame() {
    // Its ready function runs as a task of its own: what it sends while the
    // body is not polled is what the buffer holds, and no more.
    let mut body = body(|events, _| count_to(events, 100), Buffer::dropping(4));
    let frames = frames(&mut body).await;
    let data = data_of(&frames).await;
    assert_eq!(data, ["0", "1", "2", "3"]);
}

#[tokio::test]
async fn a_fixed_buffer_spawns_no_task_and_a_sliding_one_does() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let idle = |events: EventSender, _| async move { events.closed().await };
    let mut fixed = body(idle, Buffer::fixed(10));
    let mut sliding = body(idle, Buffer::sliding(10));
    assert_eq!(metrics.num_alive_tasks(), 0);
    assert!(poll_once(&mut fixed), "an idle stream yielded");
    assert_eq!(metrics.num_alive_tasks(), 0);
    assert!(poll_once(&mut sliding), "an idle stream yielded");
    assert_eq!(metrics.num_alive_tasks(), 1);
    drop((fixed, sliding));
    eventually("the sliding stream's task to end", || {
        metrics.num_alive_tasks() == 0
    })
    .await;
}

#[tokio::test]
async fn a_sliding_buffer_ready_function_runs_while_the_client_does_not_read() {
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let ready = move |events: EventSender, _| {
        let counted = counted.clone();
        async move {
            for i in 0..100 {
                events.try_send(i.to_string()).unwrap();
                counted.fetch_add(1, SeqCst);
                tokio::task::yield_now().await;
            }
        }
    };
    let mut body = body(ready, Buffer::sliding(5));
    poll_once(&mut body);
    // The body is not polled again until the ready function is done.
    eventually("the ready function to finish", || sent.load(SeqCst) == 100).await;
    let frames = frames(&mut body).await;
    let data = data_of(&frames).await;
    // Whatever the first poll took, then the newest five.
    assert_eq!(data[data.len() - 5..], ["95", "96", "97", "98", "99"]);
}

#[tokio::test]
async fn panics_end_only_their_stream_with_either_buffer() {
    for buffer in [Buffer::fixed(4), Buffer::sliding(4)] {
        let ready = |events: EventSender, _| async move {
            let _ = events.send("before").await;
            tokio::task::yield_now().await;
            panic!("the application failed");
        };
        let (mut body, reasons) = recorded_body(ready, buffer.clone());
        let data = data_of(&frames(&mut body).await).await;
        assert_eq!(data, ["before"], "{buffer:?}");
        assert_eq!(*reasons.lock().unwrap(), [DisconnectReason::Panicked]);
    }
}

/// A request extension that counts its live copies.
#[derive(Debug)]
struct Tracked(Arc<AtomicUsize>);

impl Clone for Tracked {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, SeqCst);
        Self(self.0.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

#[tokio::test]
async fn the_request_context_is_kept_only_while_someone_needs_it() {
    let live = Arc::new(AtomicUsize::new(1));
    let mut request = http::Request::new(());
    request.extensions_mut().insert(Tracked(live.clone()));
    let idle = |events: EventSender, ctx: StreamContext| async move {
        assert!(ctx.extensions().get::<Tracked>().is_some());
        drop(ctx);
        events.closed().await
    };

    // No disconnect callback: once the ready function drops its context,
    // the stream holds no copy of the request.
    let mut quiet = body_for(idle, Buffer::fixed(1), &request);
    drop(request);
    assert_eq!(live.load(SeqCst), 1);
    assert!(poll_once(&mut quiet));
    assert_eq!(live.load(SeqCst), 0);
    drop(quiet);

    // A callback needs it at the end: it is kept until then.
    let live = Arc::new(AtomicUsize::new(1));
    let mut request = http::Request::new(());
    request.extensions_mut().insert(Tracked(live.clone()));
    let seen = Arc::new(AtomicUsize::new(0));
    let saw = seen.clone();
    let response = start_stream(
        idle,
        StreamContext::from_request(&request),
        Duration::ZERO,
        1,
    )
    .on_client_disconnect(move |ctx, _| {
        if ctx.extensions().get::<Tracked>().is_some() {
            saw.fetch_add(1, SeqCst);
        }
    });
    drop(request);
    let mut kept = Box::pin(response.into_http().into_body());
    assert!(poll_once(&mut kept));
    assert_eq!(live.load(SeqCst), 1);
    drop(kept);
    assert_eq!(seen.load(SeqCst), 1);
    assert_eq!(live.load(SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_on_other_threads_wake_a_body_polled_stream() {
    // The ready function hands a clone to a task on another worker and waits
    // for it: both are woken from threads other than the connection's.
    const EACH: usize = 20_000;
    let ready = |events: EventSender, _| async move {
        let other = events.clone();
        let helper = tokio::spawn(async move {
            for i in 0..EACH {
                other.send(format!("b{i}")).await.unwrap();
            }
        });
        for i in 0..EACH {
            events.send(format!("a{i}")).await.unwrap();
        }
        helper.await.unwrap();
    };
    let app = Router::new().route(
        "/events",
        get(|| async {}).layer(SseLayer::new(ready).buffer(3)),
    );
    let addr = serve(app).await;
    let events = all_events(fetch(addr, "/events").await).await;
    assert_eq!(events.len(), 2 * EACH);
    for prefix in ["a", "b"] {
        let order: Vec<usize> = events
            .iter()
            .filter_map(|e| e.data.strip_prefix(prefix))
            .map(|n| n.parse().unwrap())
            .collect();
        assert_eq!(order, (0..EACH).collect::<Vec<_>>(), "{prefix}");
    }
}

#[tokio::test]
async fn a_slow_reader_holds_back_a_body_polled_ready_function() {
    // 1 KiB events into a buffer of 4: while the client reads nothing, the
    // ready function gets no further than what the connection and the socket take.
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let ready = move |events: EventSender, _| {
        let counted = counted.clone();
        async move {
            let event = "x".repeat(1000);
            while events.send(event.as_str()).await.is_ok() {
                counted.fetch_add(1, SeqCst);
            }
        }
    };
    let app = Router::new().route(
        "/events",
        get(|| async {}).layer(SseLayer::new(ready).buffer(4)),
    );
    let addr = serve(app).await;
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut socket, request.as_bytes())
        .await
        .unwrap();
    // Let it fill every buffer on the way, then check it stays put.
    let mut last = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = sent.load(SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sent.load(SeqCst), last, "the ready function kept going");
    eprintln!(
        "slow reader, body-polled fixed(4): {last} events of 1 KiB accepted before it stalled"
    );
    // Bounded by the socket buffers and hyper's, not by the ready function.
    assert!(last < 50_000, "{last} events of 1 KiB accepted");
}

#[test]
fn the_body_stays_send_and_sync() {
    // It holds the ready function's future (only `Send`) behind a `Mutex`.
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<EventStream>();
    assert_send_sync::<tower_sse::ResponseBody<String>>();
}

#[tokio::test]
async fn requested_heartbeats_never_overrun_a_frame() {
    // A ready function that asks for a heartbeat after every event, with
    // events just under the join limit: one heartbeat per frame at most, at
    // its start, and no frame past the cap.
    let ready = |events: EventSender, _| async move {
        let data = "x".repeat(2_030);
        for _ in 0..200 {
            if events.send(data.as_str()).await.is_err() {
                return;
            }
            tower_sse::pedestal::do_heartbeat(&events).unwrap();
        }
    };
    let mut body = body(ready, Buffer::fixed(1));
    let frames = frames(&mut body).await;
    for frame in &frames {
        assert!(frame.len() <= MAX_FRAME, "a frame of {} bytes", frame.len());
        let heartbeats = frame.windows(4).filter(|w| w == b": \r\n").count();
        assert!(heartbeats <= 1, "{heartbeats} heartbeats in one frame");
        if heartbeats == 1 {
            assert!(frame.starts_with(b": \r\n"));
        }
    }
    assert_eq!(parse(&frames).await.len(), 200);
}

#[tokio::test]
async fn a_task_sending_with_room_to_spare_still_yields() {
    // Outside a body's poll, `send` spends tokio's cooperative budget as
    // tokio's own channels do: a task looping over sends lets others run.
    let events = Arc::new(std::sync::Mutex::new(None::<EventSender>));
    let slot = events.clone();
    let idle = move |sender: EventSender, _| {
        *slot.lock().unwrap() = Some(sender.clone());
        async move { sender.closed().await }
    };
    let mut body = body(idle, Buffer::fixed(100_000));
    assert!(poll_once(&mut body));
    let sender = events.lock().unwrap().take().unwrap();
    let sent = Arc::new(AtomicUsize::new(0));
    let progress = sent.clone();
    let producer = tokio::spawn(async move {
        for _ in 0..10_000 {
            sender.send("x").await.unwrap();
            progress.fetch_add(1, SeqCst);
        }
    });
    let seen = sent.clone();
    let observer = tokio::spawn(async move { seen.load(SeqCst) });
    let observed = observer.await.unwrap();
    producer.await.unwrap();
    assert!(observed < 10_000, "the sending task never yielded");
    assert_eq!(sent.load(SeqCst), 10_000);
}

#[tokio::test]
async fn a_ready_function_that_panics_before_its_future_exists_is_contained() {
    for buffer in [Buffer::fixed(4), Buffer::sliding(4)] {
        fn ready(_events: EventSender, ctx: StreamContext) -> std::future::Ready<()> {
            panic!("no future for {}", ctx.uri());
        }
        let (mut body, reasons) = recorded_body(ready, buffer.clone());
        assert!(frames(&mut body).await.is_empty(), "{buffer:?}");
        assert_eq!(*reasons.lock().unwrap(), [DisconnectReason::Panicked]);
    }
}
