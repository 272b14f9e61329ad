//! Unit tests of the queue: frames, policies, closing and the ready function waker.

use std::{sync::Arc, task::Wake};

use super::*;
use crate::{
    frame::{JOIN_LIMIT, MAX_FRAME},
    sync::Ordering,
};
use futures::task::noop_waker_ref;

/// One frame, as the body takes it (the ready function flag cleared first).
fn poll_frame(queue: &Queue, frame: &mut FrameBuilder) -> Poll<Result<(Bytes, usize), Ended>> {
    let mut cx = Context::from_waker(noop_waker_ref());
    queue.take_ready_wake();
    queue
        .poll_recv(&mut cx, &Bytes::from_static(b": \r\n"), frame)
        .map(|r| r.map(|events| (frame.take().into_whole(), events)))
}

fn recv(queue: &Queue) -> Poll<Result<Vec<u8>, Ended>> {
    poll_frame(queue, &mut FrameBuilder::default()).map(|r| r.map(|(bytes, _)| bytes.to_vec()))
}

#[test]
fn queued_events_come_out_as_one_frame() {
    let queue = Queue::new(Policy::Wait, 4);
    for part in ["a", "b", "c"] {
        queue.try_push(Bytes::from(part)).unwrap();
    }
    assert_eq!(recv(&queue), Poll::Ready(Ok(b"abc".to_vec())));
    assert!(recv(&queue).is_pending());
}

#[test]
fn fixed_buffer_refuses_when_full_and_frees_room_when_drained() {
    let queue = Queue::new(Policy::Wait, 2);
    queue.try_push(Bytes::from("a")).unwrap();
    queue.try_push(Bytes::from("b")).unwrap();
    assert_eq!(queue.try_push(Bytes::from("c")), Err(Rejected::Full));
    assert!(recv(&queue).is_ready());
    queue.try_push(Bytes::from("c")).unwrap();
}

#[test]
fn dropping_keeps_the_oldest_and_sliding_keeps_the_newest() {
    let dropping = Queue::new(Policy::DropNewest, 2);
    let sliding = Queue::new(Policy::DropOldest, 2);
    for part in ["a", "b", "c"] {
        dropping.try_push(Bytes::from(part)).unwrap();
        sliding.try_push(Bytes::from(part)).unwrap();
    }
    assert_eq!(recv(&dropping), Poll::Ready(Ok(b"ab".to_vec())));
    assert_eq!(recv(&sliding), Poll::Ready(Ok(b"bc".to_vec())));
    assert_eq!((dropping.dropped(), sliding.dropped()), (1, 1));
}

#[test]
fn frames_are_capped_but_never_split_an_event() {
    let queue = Queue::new(Policy::Wait, 8);
    let big = Bytes::from(vec![b'x'; MAX_FRAME - 1]);
    queue.try_push(big.clone()).unwrap();
    queue.try_push(Bytes::from("yy")).unwrap();
    assert_eq!(recv(&queue), Poll::Ready(Ok(big.to_vec())));
    assert_eq!(recv(&queue), Poll::Ready(Ok(b"yy".to_vec())));
}

#[test]
fn large_events_are_frames_of_their_own_and_never_copied() {
    let queue = Queue::new(Policy::Wait, 8);
    let big = Bytes::from(vec![b'x'; JOIN_LIMIT]);
    for part in [Bytes::from("a"), Bytes::from("b"), big.clone(), big.clone()] {
        queue.try_push(part).unwrap();
    }
    queue.try_push(Bytes::from("c")).unwrap();
    queue.request_heartbeat().unwrap();
    let mut frame = FrameBuilder::default();
    let mut frames = Vec::new();
    while let Poll::Ready(Ok(taken)) = poll_frame(&queue, &mut frame) {
        frames.push(taken);
    }
    let sizes: Vec<_> = frames.iter().map(|(b, n)| (b.len(), *n)).collect();
    assert_eq!(sizes, [(6, 2), (JOIN_LIMIT, 1), (JOIN_LIMIT, 1), (1, 1)]);
    assert_eq!(&frames[0].0[..], b": \r\nab");
    // The very allocation the sender made: no copy.
    assert_eq!(frames[1].0.as_ptr(), big.as_ptr());
    // Room for every event taken.
    for _ in 0..8 {
        queue.try_push(Bytes::from("d")).unwrap();
    }
}

#[test]
fn close_delivers_what_is_queued_then_ends() {
    let queue = Queue::new(Policy::Wait, 2);
    queue.try_push(Bytes::from("a")).unwrap();
    queue.close();
    assert_eq!(queue.try_push(Bytes::from("b")), Err(Rejected::Closed));
    assert_eq!(recv(&queue), Poll::Ready(Ok(b"a".to_vec())));
    assert_eq!(recv(&queue), Poll::Ready(Err(Ended::Completed)));
}

#[test]
fn last_sender_gone_ends_the_queue() {
    let queue = Queue::new(Policy::Wait, 2);
    queue.add_sender();
    queue.remove_sender();
    assert!(recv(&queue).is_pending());
    queue.remove_sender();
    assert_eq!(recv(&queue), Poll::Ready(Err(Ended::Completed)));
}

#[test]
fn a_frame_gathers_across_refills_up_to_the_cap() {
    let queue = Queue::new(Policy::Wait, 2);
    let mut cx = Context::from_waker(noop_waker_ref());
    let mut frame = FrameBuilder::default();
    let event = Bytes::from(vec![b'e'; 1000]);
    let mut taken = 0;
    // What a body-polled ready function does: refill the queue as it drains.
    while !frame.is_full() {
        for _ in 0..2 {
            queue.try_push(event.clone()).unwrap();
        }
        match queue.poll_recv(&mut cx, &Bytes::from_static(b": \r\n"), &mut frame) {
            Poll::Ready(Ok(n)) => taken += n,
            other => panic!("unexpected {other:?}"),
        }
    }
    let bytes = frame.take();
    assert_eq!(taken, MAX_FRAME / 1000);
    assert_eq!(bytes.len(), taken * 1000);
    // The one that did not fit is still queued, first in the next frame.
    assert_eq!(queue.queued(), (1, 1000));
    assert!(frame.is_empty() && !frame.is_full());
}

#[test]
fn the_queue_is_the_waker_of_a_body_polled_ready_function() {
    let queue = Arc::new(Queue::new(Policy::Wait, 1));
    let mut frame = FrameBuilder::default();
    let body = Arc::new(Flag::default());
    let body_waker = Waker::from(body.clone());
    let mut cx = Context::from_waker(&body_waker);
    // Flagged at first, so that the body polls the ready function before waiting.
    assert_eq!(
        queue.poll_recv(&mut cx, &Bytes::new(), &mut frame),
        Poll::Ready(Ok(0))
    );
    assert!(queue.take_ready_wake());
    assert_eq!(
        queue.poll_recv(&mut cx, &Bytes::new(), &mut frame),
        Poll::Pending
    );
    // The ready function's waker flags it and wakes the body, once.
    Waker::from(queue.clone()).wake();
    assert!(body.0.swap(false, Ordering::SeqCst));
    assert!(queue.ready_woken());
    assert_eq!(
        queue.poll_recv(&mut cx, &Bytes::new(), &mut frame),
        Poll::Ready(Ok(0))
    );
    assert!(queue.take_ready_wake());
    assert!(!queue.ready_woken());
    assert!(!body.0.load(Ordering::SeqCst));
}

#[derive(Default)]
struct Flag(std::sync::atomic::AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// An idle stream's two allocations of its own, in glibc's size classes
/// (a chunk is the size plus 8, rounded up to 16): the queue's `Arc` in 208
/// bytes, the body (boxed by axum) in 208. The quick start's idle share in
/// BENCHMARKS.md counts on them; a field more crosses into the next class.
#[cfg(not(any(feature = "metrics", feature = "compression")))]
#[test]
fn an_idle_streams_allocations_keep_their_size_classes() {
    #[allow(dead_code)]
    struct ArcInner(usize, usize, Queue);
    let chunk = |size: usize| (size + 8).div_ceil(16) * 16;
    assert_eq!(chunk(std::mem::size_of::<ArcInner>()), 208);
    assert_eq!(chunk(std::mem::size_of::<crate::EventStream>()), 208);
    // The README's quick start, boxed by the body: 64 bytes (it was 96 when
    // `closed()` was an `async fn`; rustc keeps the arguments twice).
    async fn ready(events: crate::EventSender, _ctx: crate::StreamContext) {
        events.closed().await;
    }
    fn size_of<F: Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }
    let request = http::Request::get("/").body(()).unwrap();
    let ctx = crate::StreamContext::from_request(&request);
    let events = crate::EventSender::new(Arc::new(Queue::new(Policy::Wait, 1)));
    assert!(chunk(size_of(&ready(events, ctx))) <= 64);
}

#[test]
fn every_closed_waiter_wakes_and_a_dropped_one_leaves() {
    let queue = Queue::new(Policy::Wait, 1);
    let flags: Vec<_> = (0..3).map(|_| Arc::new(Flag::default())).collect();
    let mut waits: Vec<_> = (0..3).map(|_| Box::pin(queue.closed())).collect();
    for (wait, flag) in waits.iter_mut().zip(&flags) {
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(wait.as_mut().poll(&mut cx).is_pending());
    }
    // The middle one leaves; the others still wake.
    drop(waits.remove(1));
    queue.close_receiver();
    assert!(flags[0].0.load(Ordering::SeqCst));
    assert!(!flags[1].0.load(Ordering::SeqCst));
    assert!(flags[2].0.load(Ordering::SeqCst));
    let mut cx = Context::from_waker(noop_waker_ref());
    for wait in &mut waits {
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }
}
