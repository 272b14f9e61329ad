//! Nothing leaks, nothing hangs: churn, slow readers, shutdown, disconnect
//! detection and the layers an SSE route sits beside. Each test prints the
//! figures it measured (`cargo test --test reliability -- --nocapture`).

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::SeqCst},
    },
    time::{Duration, Instant},
};

use axum::http::StatusCode;
use common::*;
use futures::StreamExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
};
use tower_http::{
    limit::RequestBodyLimitLayer,
    timeout::{ResponseBodyTimeoutLayer, TimeoutLayer},
};
use tower_sse::{
    Buffer, CancellationToken, DisconnectReason, Event, EventSender, SseLayer, StreamContext,
};

/// Opens a raw HTTP/1.1 stream and returns the socket once the response head is read.
async fn open_raw(addr: std::net::SocketAddr, path: &str) -> (TcpStream, Vec<u8>) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
            .await
            .expect("no response head")
            .unwrap();
        assert!(n > 0, "closed before the head");
        seen.extend_from_slice(&buf[..n]);
    }
    (socket, seen)
}

/// Reads until `needle` has been seen `count` times in the bytes read so far.
async fn read_until(socket: &mut TcpStream, seen: &mut Vec<u8>, needle: &[u8], count: usize) {
    let mut buf = [0u8; 4096];
    while seen.windows(needle.len()).filter(|w| *w == needle).count() < count {
        let n = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
            .await
            .expect("nothing to read")
            .unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_stream_callback_or_task_behind() {
    let cycles: usize = std::env::var("TOWER_SSE_CHURN_CYCLES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let ends: Arc<Mutex<HashMap<String, Vec<DisconnectReason>>>> = Arc::default();
    let seen = ends.clone();
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0..5 {
            if events
                .send(Event::new(i.to_string()).id(i.to_string()))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let layer = SseLayer::new(ready).on_client_disconnect(move |ctx, reason| {
        let key = ctx.uri().query().unwrap_or_default().to_owned();
        seen.lock().unwrap().entry(key).or_default().push(reason);
    });
    let stats = layer.stats();
    let metrics = tokio::runtime::Handle::current().metrics();
    let addr = serve(route_in_mode(layer)).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let baseline = metrics.num_alive_tasks();
    let started = Instant::now();

    let clients = futures::stream::iter(0..cycles).map(|n| async move {
        let (mut socket, mut seen) = open_raw(addr, &format!("/events?{n}")).await;
        match n % 3 {
            0 => {} // gone right after the headers
            1 => {
                // gone in the middle of the stream, often mid-event
                read_until(&mut socket, &mut seen, b"data: 1", 1).await;
            }
            _ => {
                let mut rest = Vec::new();
                tokio::time::timeout(PATIENCE, socket.read_to_end(&mut rest))
                    .await
                    .expect("the stream did not end")
                    .unwrap();
                seen.extend_from_slice(&rest);
                assert!(seen.ends_with(b"0\r\n\r\n"), "no clean end");
            }
        }
    });
    clients.buffer_unordered(64).collect::<Vec<()>>().await;
    let elapsed = started.elapsed();

    eventually("every stream to close", || stats.active_streams() == 0).await;
    eventually("every task to end", || {
        metrics.num_alive_tasks() == baseline
    })
    .await;
    let ends = ends.lock().unwrap();
    assert_eq!(ends.len(), cycles, "one callback per stream");
    assert!(
        ends.values().all(|reasons| reasons.len() == 1),
        "a callback fired twice"
    );
    assert_eq!(stats.streams_opened(), cycles as u64);
    assert_eq!(stats.streams_closed(), cycles as u64);
    let completed = ends
        .values()
        .filter(|r| r[0] == DisconnectReason::Completed)
        .count();
    assert!(
        completed >= cycles / 3,
        "every read-to-end client saw a completed stream"
    );
    println!(
        "churn: {cycles} cycles in {elapsed:?}; tasks before {baseline}, after {}; \
         open streams after {}; callbacks {} ({completed} completed)",
        metrics.num_alive_tasks(),
        stats.active_streams(),
        ends.len()
    );
}

/// A client that reads nothing: the library's queue stays within its bound.
/// `waits`: the buffer makes its ready function wait (a fixed buffer).
async fn slow_reader(buffer: Buffer, waits: bool) -> (u64, usize, u64, usize) {
    // Returns: events sent while stalled, max queued bytes, dropped, bound.
    const EVENT: usize = 1024;
    let sent = Arc::new(AtomicU64::new(0));
    let (sender_tx, sender_rx) = oneshot::channel();
    let sender_tx = Mutex::new(Some(sender_tx));
    let counted = sent.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        if let Some(tx) = sender_tx.lock().unwrap().take() {
            let _ = tx.send(events.clone());
        }
        let sent = counted.clone();
        async move {
            let payload = "x".repeat(EVENT - 10);
            while events.send(payload.as_str()).await.is_ok() {
                sent.fetch_add(1, SeqCst);
                // Let other tasks run: with dropping buffers `send` never waits.
                tokio::task::yield_now().await;
            }
        }
    };
    let layer = SseLayer::new(ready).buffer(buffer);
    let addr = serve(route_in_mode(layer)).await;
    let (socket, _) = open_raw(addr, "/events").await;
    let sender = sender_rx.await.unwrap();
    // Socket buffers and hyper's buffer fill first; then only our queue can
    // grow. The stall is there once, for 200 ms on end, a fixed buffer's
    // ready function accepted nothing (it waits) or a dropping buffer stayed full
    // (nothing drains it): a fixed delay is not enough on a busy machine,
    // where filling the socket's buffers can take over a second.
    let deadline = Instant::now() + PATIENCE;
    let (mut stalled_for, mut last_sent) = (0, sent.load(SeqCst));
    while stalled_for < 20 {
        assert!(Instant::now() < deadline, "the connection never stalled");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let now_sent = sent.load(SeqCst);
        let stalled = if waits {
            now_sent == last_sent
        } else {
            sender.queued_events() == sender.capacity()
        };
        stalled_for = if stalled { stalled_for + 1 } else { 0 };
        last_sent = now_sent;
    }
    let sent_before = sent.load(SeqCst);
    let mut max_queued = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        max_queued = max_queued.max(sender.queued_bytes());
    }
    let sent_after = sent.load(SeqCst);
    let bound = sender.capacity() * EVENT;
    assert!(
        max_queued <= bound,
        "queued {max_queued} bytes, bound {bound}"
    );
    let dropped = sender.dropped();
    println!(
        "  {sent_before} events of {EVENT} B accepted before the stall: the rest sit in hyper's and the kernel's buffers"
    );
    drop(socket);
    (sent_after - sent_before, max_queued, dropped, bound)
}

#[tokio::test]
async fn slow_reader_fixed_buffer_makes_the_ready_function_wait() {
    let (sent_while_stalled, queued, dropped, bound) = slow_reader(Buffer::fixed(16), true).await;
    println!(
        "slow reader, fixed(16): queued {queued} B (bound {bound}), sent while stalled {sent_while_stalled}, dropped {dropped}"
    );
    assert_eq!(sent_while_stalled, 0, "the ready function kept going");
    assert_eq!(dropped, 0);
}

#[tokio::test]
async fn slow_reader_dropping_buffer_counts_what_it_drops() {
    let (sent_while_stalled, queued, dropped, bound) =
        slow_reader(Buffer::dropping(16), false).await;
    println!(
        "slow reader, dropping(16): queued {queued} B (bound {bound}), sent while stalled {sent_while_stalled}, dropped {dropped}"
    );
    assert!(sent_while_stalled > 0);
    assert!(dropped >= sent_while_stalled, "drops are counted");
}

#[tokio::test]
async fn slow_reader_sliding_buffer_counts_what_it_drops() {
    let (sent_while_stalled, queued, dropped, bound) =
        slow_reader(Buffer::sliding(16), false).await;
    println!(
        "slow reader, sliding(16): queued {queued} B (bound {bound}), sent while stalled {sent_while_stalled}, dropped {dropped}"
    );
    assert!(sent_while_stalled > 0);
    assert!(dropped >= sent_while_stalled, "drops are counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_every_stream_and_lets_serve_return() {
    const STREAMS: usize = 100;
    let token = CancellationToken::new();
    let (ends_tx, mut ends_rx) = mpsc::unbounded_channel();
    let ready = |events: EventSender, ctx: StreamContext| async move {
        let _ = events.send(Event::new("hello").id("0")).await;
        if ctx.uri().query() == Some("busy") {
            let mut i = 1u64;
            while events
                .send(Event::new("x".repeat(200)).id(i.to_string()))
                .await
                .is_ok()
            {
                i += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else {
            events.closed().await;
        }
    };
    let layer = SseLayer::new(ready)
        .shutdown_on(token.clone())
        .shutdown_event(Event::default().retry(Duration::from_secs(5)))
        .on_client_disconnect(move |_, reason| ends_tx.send(reason).unwrap());
    let (addr, server) = serve_until_shutdown(layer, &token).await;
    let mut clients = Vec::new();
    for n in 0..STREAMS {
        let path = if n % 2 == 0 {
            "/events?busy"
        } else {
            "/events?idle"
        };
        let (socket, seen) = open_raw(addr, path).await;
        clients.push((socket, seen));
    }
    // Every stream has delivered its first event.
    for (socket, seen) in &mut clients {
        read_until(socket, seen, b"data: hello", 1).await;
    }
    let started = Instant::now();
    token.cancel();
    tokio::time::timeout(Duration::from_secs(1), server)
        .await
        .expect("graceful shutdown took more than a second")
        .unwrap()
        .unwrap();
    let shutdown_time = started.elapsed();
    for (socket, seen) in &mut clients {
        tokio::time::timeout(PATIENCE, socket.read_to_end(seen))
            .await
            .unwrap()
            .unwrap();
        let body = dechunk(&seen[seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..]);
        assert!(
            body.ends_with(b"data: hello\r\n\r\nretry: 5000\r\n\r\n")
                || body.ends_with(b"\r\n\r\nretry: 5000\r\n\r\n"),
            "no clean end: {:?}",
            String::from_utf8_lossy(&body[body.len().saturating_sub(80)..])
        );
    }
    let mut ends = Vec::new();
    while let Ok(reason) = ends_rx.try_recv() {
        ends.push(reason);
    }
    assert_eq!(ends.len(), STREAMS);
    assert!(ends.iter().all(|r| *r == DisconnectReason::Shutdown));
    println!("shutdown: {STREAMS} streams, serve returned {shutdown_time:?} after the signal");
}

/// How long after a client closes its socket the callback fires.
async fn detection_delay(busy: bool, heartbeat: Duration) -> Duration {
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel();
    let ready = move |events: EventSender, _ctx: StreamContext| async move {
        let _ = events.send("first").await;
        if busy {
            while events.send("tick").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else {
            events.closed().await;
        }
    };
    let layer = SseLayer::new(ready)
        .heartbeat(heartbeat)
        .on_client_disconnect(move |_, _| {
            let _ = ended_tx.send(Instant::now());
        });
    let addr = serve(route_in_mode(layer)).await;
    let (mut socket, mut seen) = open_raw(addr, "/events").await;
    read_until(&mut socket, &mut seen, b"data: first", 1).await;
    let closed_at = Instant::now();
    drop(socket);
    let ended_at = tokio::time::timeout(PATIENCE, ended_rx.recv())
        .await
        .expect("the disconnect was never noticed")
        .unwrap();
    ended_at - closed_at
}

#[tokio::test]
async fn disconnects_are_noticed_within_a_heartbeat() {
    let heartbeat = Duration::from_millis(500);
    let mut idle = Vec::new();
    let mut busy = Vec::new();
    for _ in 0..3 {
        idle.push(detection_delay(false, heartbeat).await);
        busy.push(detection_delay(true, heartbeat).await);
    }
    let (idle_max, busy_max) = (*idle.iter().max().unwrap(), *busy.iter().max().unwrap());
    println!("disconnect detection, heartbeat {heartbeat:?}: idle {idle:?}, busy {busy:?}");
    let bound = heartbeat + Duration::from_millis(500);
    assert!(idle_max <= bound, "idle detection took {idle_max:?}");
    assert!(busy_max <= bound, "busy detection took {busy_max:?}");
}

#[tokio::test]
async fn request_timeouts_and_body_limits_do_not_cut_streams() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        for i in 0..6 {
            let _ = events.send(i.to_string()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    // The stream lives 600 ms, three times the request timeout.
    let layer = SseLayer::new(ready);
    let app = route_in_mode(layer)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(200),
        ))
        .layer(RequestBodyLimitLayer::new(16));
    let addr = serve(app).await;
    let events = all_events(fetch(addr, "/events").await).await;
    assert_eq!(events.len(), 6);
}

#[tokio::test]
async fn heartbeats_keep_a_response_body_timeout_from_firing() {
    let ready = |events: EventSender, _ctx: StreamContext| async move {
        tokio::time::sleep(Duration::from_millis(900)).await;
        let _ = events.send("after the silence").await;
    };
    let app = |heartbeat| {
        route_in_mode(SseLayer::new(ready).heartbeat(heartbeat))
            .layer(ResponseBodyTimeoutLayer::new(Duration::from_millis(300)))
    };
    // Heartbeats every 100 ms: the idle-body timeout never fires.
    let addr = serve(app(Duration::from_millis(100))).await;
    let events = all_events(fetch(addr, "/events").await).await;
    assert_eq!(events.len(), 1);
    // Heartbeats off: the body timeout cuts the silent stream (an error, no event).
    let addr = serve(app(Duration::ZERO)).await;
    let response = fetch(addr, "/events").await;
    let mut body = response.bytes_stream();
    let outcome = tokio::time::timeout(PATIENCE, async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                return Err(());
            }
        }
        Ok(())
    })
    .await
    .unwrap();
    assert!(
        outcome.is_err(),
        "the timeout should have cut the silent stream"
    );
}

/// Shutdown racing a flood: a ready function and a plain thread both send
/// as fast as the buffer (8) lets them, to a fast reader, when the token is
/// cancelled. README: "Cancelling the token makes every stream write what is
/// queued, then the shutdown event, then end cleanly"; RELIABILITY.md: "on
/// cancellation each stream stops accepting events, writes what is queued".
/// So every send that returned `Ok` arrives, in order, before the shutdown
/// event, and every send after it returns `Closed`: the client's sequence of
/// each sender is exactly 0..(its accepted sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_racing_a_flood_of_sends_delivers_every_accepted_event_then_ends() {
    let token = CancellationToken::new();
    // Sends accepted so far, by the ready function and by the thread (counted
    // as each returns: a spawned ready function is aborted at the end, in
    // the middle of its loop).
    let accepted: Arc<[AtomicU64; 2]> = Arc::default();
    let thread_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = thread_done.clone();
    let (ends_tx, mut ends_rx) = mpsc::unbounded_channel();
    let record = accepted.clone();
    let ready = move |events: EventSender, _ctx: StreamContext| {
        let (record, done) = (record.clone(), done.clone());
        async move {
            let helper = events.clone();
            let thread_record = record.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut i = 0u64;
                while helper.blocking_send(format!("t {i}")).is_ok() {
                    i += 1;
                    thread_record[1].store(i, SeqCst);
                }
                done.store(helper.is_closed(), SeqCst);
            });
            let mut i = 0u64;
            while events.send(format!("r {i}")).await.is_ok() {
                i += 1;
                record[0].store(i, SeqCst);
            }
        }
    };
    let layer = SseLayer::new(ready)
        .buffer(8)
        .shutdown_on(token.clone())
        .shutdown_event(Event::new("bye").name("shutdown"))
        .on_client_disconnect(move |_, reason| ends_tx.send(reason).unwrap());
    let (addr, server) = serve_until_shutdown(layer, &token).await;
    let response = fetch(addr, "/events").await;
    // Cancelled while both send, after 2,000 accepted sends (however far the reader is).
    let counts = accepted.clone();
    let canceller = token.clone();
    tokio::spawn(async move {
        while counts[0].load(SeqCst) + counts[1].load(SeqCst) < 2_000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        canceller.cancel();
    });
    let mut parsed = eventsource_stream::Eventsource::eventsource(response.bytes_stream());
    let mut received = Vec::new();
    loop {
        let next = tokio::time::timeout(PATIENCE, parsed.next())
            .await
            .expect("the stream did not end");
        match next {
            Some(Ok(event)) => received.push(event),
            Some(Err(err)) => panic!("the body failed after {} events: {err:?}", received.len()),
            None => break,
        }
    }
    tokio::time::timeout(PATIENCE, server)
        .await
        .expect("serve did not return")
        .unwrap()
        .unwrap();
    eventually("the thread to see Closed", || thread_done.load(SeqCst)).await;

    let (last, events) = received.split_last().expect("no event");
    assert_eq!(
        (last.event.as_str(), last.data.as_str()),
        ("shutdown", "bye")
    );
    let mut next: HashMap<&str, u64> = HashMap::new();
    for event in events {
        assert_eq!(
            event.event, "message",
            "{event:?} before the shutdown event"
        );
        let (who, n) = event.data.split_once(' ').unwrap();
        let who = if who == "t" { "t" } else { "r" };
        let expected = next.entry(who).or_default();
        assert_eq!(
            n.parse::<u64>().unwrap(),
            *expected,
            "{who}: a gap or reordering"
        );
        *expected += 1;
    }
    for (at, who) in ["r", "t"].into_iter().enumerate() {
        // Bounded: a send that returned `Ok` has had its count stored by now.
        let delivered = next.get(who).copied().unwrap_or(0);
        eventually(
            &format!("{who}: {delivered} events delivered, as many accepted"),
            || accepted[at].load(SeqCst) == delivered,
        )
        .await;
    }
    assert_eq!(ends_rx.recv().await, Some(DisconnectReason::Shutdown));
    assert!(ends_rx.try_recv().is_err(), "a second callback");
    println!(
        "shutdown mid-flood: {} events delivered (ready function {}, thread {}), then the shutdown event",
        events.len(),
        accepted[0].load(SeqCst),
        accepted[1].load(SeqCst)
    );
}

/// Serves `layer` (in the test's mode) until `token` is cancelled, with
/// axum's graceful shutdown: the handle completes when `serve` returns.
async fn serve_until_shutdown(
    layer: SseLayer,
    token: &CancellationToken,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        axum::serve(listener, route_in_mode(layer))
            .with_graceful_shutdown(token.clone().cancelled_owned())
            .into_future(),
    );
    (addr, server)
}
