//! Review of the uncopied large events (`frame::Encoded::Split`): what comes
//! between a split event's parts on the wire, and where the data handed over
//! is dropped when a buffer discards it. Review coverage: these pass (the
//! lock check was seen to fail with the sliding buffer's discard moved
//! under the lock).

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use bytes::Bytes;
use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;
use tower_sse::{Buffer, Event, EventSender, SseLayer, StreamContext};

const BIG: usize = 64 * 1024;

fn text(len: usize, seed: u8) -> String {
    (0..len)
        .map(|j| char::from(b'a' + ((j + usize::from(seed)) % 26) as u8))
        .collect()
}

/// The events sent, split ones (every field) between small ones.
fn sent_events() -> Vec<Event> {
    let mut all = Vec::new();
    for i in 0..4u8 {
        let big = Event::new(text(BIG + usize::from(i) * 1000, i))
            .name(format!("big{i}"))
            .id(format!("{i}"))
            .comment("a comment\nof two lines")
            .retry(Duration::from_millis(1500));
        all.push(big);
        all.push(Event::new(format!("small {i}")).name(""));
        all.push(Event::new(Bytes::from(text(BIG, i))));
    }
    all
}

/// The whole wire: the layer's `retry`, events as `Event::encode` gives
/// them (those queued before the shutdown: all of them, or the first ones),
/// then the shutdown event; heartbeats (`: \r\n`) may come between events
/// only.
fn check_wire(wire: &[u8], first: &[u8], shutdown: &[u8]) {
    let skip_heartbeats = |at: &mut usize| {
        while wire[*at..].starts_with(b": \r\n") {
            *at += 4;
        }
    };
    assert!(wire.starts_with(first), "no retry first");
    let mut at = first.len();
    for (n, event) in sent_events().iter().enumerate() {
        let event = event.encode().unwrap();
        skip_heartbeats(&mut at);
        if wire[at..].starts_with(shutdown) {
            assert!(n > 2, "the shutdown came before {n} events");
            break;
        }
        assert!(
            wire[at..].starts_with(&event),
            "event {n} not byte-exact at {at}: {:?}",
            String::from_utf8_lossy(&wire[at..(at + 80).min(wire.len())])
        );
        at += event.len();
    }
    skip_heartbeats(&mut at);
    assert!(wire[at..].starts_with(shutdown), "no shutdown event last");
    at += shutdown.len();
    skip_heartbeats(&mut at);
    assert_eq!(at, wire.len(), "bytes after the shutdown event");
}

/// A client that reads slowly (the server's writes block mid-event), while
/// heartbeats are due and the server shuts down in the middle of the stream.
#[tokio::test]
async fn split_events_are_byte_exact_around_heartbeats_retry_and_shutdown() {
    let token = CancellationToken::new();
    let layer = SseLayer::new(move |events: EventSender, _ctx: StreamContext| {
        async move {
            for event in sent_events() {
                if events.send(event).await.is_err() {
                    return;
                }
            }
            // Kept open until the shutdown.
            events.closed().await;
        }
    })
    .retry(Duration::from_secs(3))
    .heartbeat(Duration::from_millis(1))
    .shutdown_on(token.clone())
    .shutdown_event(Event::new("bye").name("shutdown"));
    let addr = serve(route_in_mode(layer)).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    // Read a little at a time, slowly, so that writes stop mid-event.
    let mut wire = Vec::new();
    let mut buf = [0u8; 7000];
    let mut shut = false;
    loop {
        let read = tokio::time::timeout(PATIENCE, socket.read(&mut buf))
            .await
            .expect("the stream did not end")
            .unwrap();
        if read == 0 {
            break;
        }
        wire.extend_from_slice(&buf[..read]);
        tokio::time::sleep(Duration::from_millis(2)).await;
        if !shut && wire.len() > 150_000 {
            // Somewhere in the middle of the events.
            token.cancel();
            shut = true;
        }
    }
    assert!(shut);
    let split = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = dechunk(&wire[split..]);
    let bye = Event::new("bye").name("shutdown").encode().unwrap();
    check_wire(&body, b"retry: 3000\r\n\r\n", &bye);
}

/// Data handed over whose drop checks that the stream's queue is not
/// locked: another thread reads the queue's length while it is dropped.
struct Owned {
    text: Vec<u8>,
    /// An `Arc`: cloning an `EventSender` itself takes the queue's lock.
    sender: Arc<Mutex<Option<Arc<EventSender>>>>,
    under_lock: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.text
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
        // One finding is enough: each check under the lock holds it 500 ms.
        if self.under_lock.load(Ordering::SeqCst) > 0 {
            return;
        }
        let Some(sender) = self.sender.lock().unwrap().clone() else {
            return;
        };
        let (done, wait) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.queued_events();
            let _ = done.send(());
        });
        if wait.recv_timeout(Duration::from_millis(500)).is_err() {
            self.under_lock.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn discarded_data_is_dropped_outside_the_lock(buffer: Buffer) {
    let under_lock = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (flags, count) = (under_lock.clone(), dropped.clone());
    let layer = SseLayer::new(move |events: EventSender, _ctx: StreamContext| {
        let (under_lock, dropped) = (flags.clone(), count.clone());
        async move {
            let shared = Arc::new(Mutex::new(Some(Arc::new(events.clone()))));
            for i in 0..200u8 {
                let data = Bytes::from_owner(Owned {
                    text: text(BIG, i).into_bytes(),
                    sender: shared.clone(),
                    under_lock: under_lock.clone(),
                    dropped: dropped.clone(),
                });
                if events.send(Event::new(data).name("k")).await.is_err() {
                    break;
                }
            }
            // The queued ones are dropped when the client goes away.
            let sender = shared.lock().unwrap().take();
            drop(sender);
        }
    })
    .spawn_ready()
    .buffer(buffer);
    let addr = serve(route(layer)).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    // Not read: the buffer fills, and discards.
    eventually("every event dropped", || {
        dropped.load(Ordering::SeqCst) >= 100
    })
    .await;
    drop(socket);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        under_lock.load(Ordering::SeqCst),
        0,
        "dropped under the lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_buffer_drops_split_data_outside_the_lock() {
    discarded_data_is_dropped_outside_the_lock(Buffer::sliding(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropping_buffer_drops_split_data_outside_the_lock() {
    discarded_data_is_dropped_outside_the_lock(Buffer::dropping(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflating_buffer_drops_split_data_outside_the_lock() {
    discarded_data_is_dropped_outside_the_lock(Buffer::conflating(2, |e: &Event| {
        e.name_ref().map(str::to_owned)
    }))
    .await;
}
