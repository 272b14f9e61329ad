//! Model checks of the queue (see `src/sync.rs`): loom runs every model
//! below under each interleaving of its threads, the larger ones up to a
//! preemption bound chosen to keep each to seconds (`LOOM_MAX_PREEMPTIONS`
//! overrides it).
//!
//! Senders are loom threads driving `push` with [`block_on`], whose waker
//! unparks the loom thread: a lost wake-up leaves a thread parked for ever,
//! which loom reports as a deadlock. The body is [`receive`]: it
//! takes frames as `body.rs` does until the queue ends. Each event is two
//! bytes, its sender's id and its sequence number, so that what the body
//! receives can be checked against what was sent.

use std::{future::poll_fn, pin::pin};

use ::loom::{model::Builder, thread};

use super::*;

/// Wakes one [`block_on`] call: flags it and unparks its loom thread.
struct Unpark {
    thread: thread::Thread,
    /// Per call, so that a stale waker from an earlier call (still stored in
    /// the queue) cannot stand in for a lost wake-up.
    woken: std::sync::atomic::AtomicBool,
}

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// Drives `future` on this loom thread, parking it until woken: a wake-up
/// that never comes leaves it parked, which loom reports as a deadlock.
/// (`loom::future::block_on` does the same, behind loom's `futures` feature.)
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let unpark = Arc::new(Unpark {
        thread: thread::current(),
        woken: std::sync::atomic::AtomicBool::new(false),
    });
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        while !unpark
            .woken
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            thread::park();
        }
    }
}

const HEARTBEAT: &[u8] = b": \r\n";

/// An event: the sender's id and its sequence number.
type Tag = (u8, u8);

fn event((sender, seq): Tag) -> Bytes {
    Bytes::copy_from_slice(&[sender, seq])
}

/// Runs `model` under every interleaving with at most `preemptions`
/// preemptions (`None`: every interleaving), unless `LOOM_MAX_PREEMPTIONS`
/// is set.
fn check(preemptions: Option<usize>, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    builder.check(model);
}

/// Takes one frame as the body does (the ready function flag cleared first),
/// waiting for it; checks that no more than `capacity` events were queued.
fn recv_frame(queue: &Queue, frame: &mut FrameBuilder) -> Result<Vec<Tag>, Ended> {
    loop {
        queue.take_ready_wake();
        let taken = block_on(poll_fn(|cx| queue.poll_recv(cx, HEARTBEAT, frame)))?;
        if taken == 0 {
            // Only the initial ready function flag: nobody else wakes it here.
            continue;
        }
        // All it took was queued at once, under the lock.
        assert!(taken <= queue.capacity(), "{taken} events were queued");
        assert!(queue.queued().0 <= queue.capacity());
        let bytes = frame.take();
        assert_eq!(bytes.len(), 2 * taken, "a frame is whole events only");
        return Ok(bytes.chunks_exact(2).map(|e| (e[0], e[1])).collect());
    }
}

/// The body: every event, in order, until the queue ends.
fn receive(queue: &Queue) -> (Vec<Tag>, Ended) {
    let mut frame = FrameBuilder::default();
    let mut received = Vec::new();
    loop {
        match recv_frame(queue, &mut frame) {
            Ok(events) => received.extend(events),
            Err(ended) => return (received, ended),
        }
    }
}

/// The sequence numbers of `sender`'s events in `received`, in order.
fn from(received: &[Tag], sender: u8) -> Vec<u8> {
    received
        .iter()
        .filter(|(id, _)| *id == sender)
        .map(|&(_, seq)| seq)
        .collect()
}

/// The free room of a fixed buffer is all back (no slot lost or granted
/// twice): exactly `capacity` sends are admitted, then it is full.
fn assert_room_restored(queue: &Queue) {
    assert_eq!(queue.queued(), (0, 0));
    for seq in 0..queue.capacity() {
        assert_eq!(queue.try_push(event((9, seq as u8))), Ok(()));
    }
    assert_eq!(queue.try_push(event((9, 99))), Err(Rejected::Full));
}

/// Sends `count` events tagged `sender` with `push` (as `send().await`,
/// or `blocking_send`), then drops its sender; what each send returned.
fn spawn_sender(
    queue: &Arc<Queue>,
    sender: u8,
    count: u8,
) -> thread::JoinHandle<Vec<Result<(), Rejected>>> {
    let queue = queue.clone();
    thread::spawn(move || {
        let results = (0..count)
            .map(|seq| block_on(queue.push(event((sender, seq)))))
            .collect();
        queue.remove_sender();
        results
    })
}

/// The events `sender` was told were queued; checks that once one was
/// refused as closed, every later one was too.
fn accepted(sender: u8, results: &[Result<(), Rejected>]) -> Vec<Tag> {
    let ok = results.iter().take_while(|r| r.is_ok()).count();
    assert!(
        results[ok..].iter().all(|r| *r == Err(Rejected::Closed)),
        "sender {sender}: {results:?}"
    );
    (0..ok as u8).map(|seq| (sender, seq)).collect()
}

/// Two senders waiting for room in a fixed buffer: every event is delivered
/// exactly once, in each sender's order, never more than `capacity` queued,
/// nobody misses a wake-up, and all the room is free again at the end.
fn fixed_buffer_model(capacity: usize, preemptions: usize) {
    check(Some(preemptions), move || {
        let queue = Arc::new(Queue::new(Policy::Wait, capacity));
        queue.add_sender();
        let senders = [spawn_sender(&queue, 0, 2), spawn_sender(&queue, 1, 2)];
        let (received, ended) = receive(&queue);
        for sender in senders {
            assert!(sender.join().unwrap().iter().all(Result::is_ok));
        }
        assert_eq!(ended, Ended::Completed);
        assert_eq!(received.len(), 4, "{received:?}");
        assert_eq!(from(&received, 0), [0, 1]);
        assert_eq!(from(&received, 1), [0, 1]);
        assert_room_restored(&queue);
    });
}

/// A fixed buffer of one: see [`fixed_buffer_model`].
#[test]
fn fixed_buffer_of_one_delivers_every_event_in_order() {
    fixed_buffer_model(1, 3);
}

/// A fixed buffer of two: see [`fixed_buffer_model`].
#[test]
fn fixed_buffer_of_two_delivers_every_event_in_order() {
    fixed_buffer_model(2, 3);
}

/// `try_push` retried in a loop (`try_send`) alongside a `push` that waits:
/// every event arrives once, in each sender's order, never more than one
/// queued, and all the room is free again at the end.
#[test]
fn try_push_and_push_share_a_fixed_buffer() {
    check(Some(2), || {
        let queue = Arc::new(Queue::new(Policy::Wait, 1));
        queue.add_sender();
        let trying = {
            let queue = queue.clone();
            thread::spawn(move || {
                for seq in 0..2 {
                    loop {
                        match queue.try_push(event((0, seq))) {
                            Ok(()) => break,
                            Err(Rejected::Full) => thread::yield_now(),
                            Err(Rejected::Closed) => panic!("closed"),
                        }
                    }
                }
                queue.remove_sender();
            })
        };
        let waiting = spawn_sender(&queue, 1, 2);
        let (received, ended) = receive(&queue);
        trying.join().unwrap();
        assert!(waiting.join().unwrap().iter().all(Result::is_ok));
        assert_eq!(ended, Ended::Completed);
        assert_eq!(received.len(), 4, "{received:?}");
        assert_eq!(from(&received, 0), [0, 1]);
        assert_eq!(from(&received, 1), [0, 1]);
        assert_room_restored(&queue);
    });
}

/// A waiting send dropped (cancelled), whether or not it was granted the
/// slot yet, passes the slot on: the send waiting behind it completes, and
/// the cancelled event is never delivered.
#[test]
fn a_cancelled_send_passes_its_slot_on() {
    check(Some(4), || {
        let queue = Arc::new(Queue::new(Policy::Wait, 1));
        queue.try_push(event((0, 0))).unwrap();
        // Full: this send waits, first in line.
        let mut cancelled = Box::pin(queue.push(event((1, 0))));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(cancelled.as_mut().poll(&mut cx).is_pending());
        queue.add_sender();
        let waiting = spawn_sender(&queue, 2, 1);
        let body = {
            let queue = queue.clone();
            thread::spawn(move || receive(&queue))
        };
        drop(cancelled);
        queue.remove_sender();
        assert_eq!(waiting.join().unwrap(), [Ok(())]);
        let (received, ended) = body.join().unwrap();
        assert_eq!(ended, Ended::Completed);
        assert_eq!(received, [(0, 0), (2, 0)]);
        assert_room_restored(&queue);
    });
}

/// More sends waiting than one drain wakes at once (`WakeList` holds four):
/// the drain grants the rest after waking the first, every waiting send gets
/// its slot, and a newcomer (`try_push`) never takes one meanwhile.
#[test]
fn a_drain_grants_every_waiting_send_before_a_newcomer() {
    check(None, || {
        let queue = Arc::new(Queue::new(Policy::Wait, 5));
        for seq in 0..5 {
            queue.try_push(event((0, seq))).unwrap();
        }
        // Full: five sends wait, in order.
        let mut waiting: Vec<_> = (0..5)
            .map(|seq| Box::pin(queue.push(event((1, seq)))))
            .collect();
        let mut cx = Context::from_waker(Waker::noop());
        for push in &mut waiting {
            assert!(push.as_mut().poll(&mut cx).is_pending());
        }
        let body = {
            let queue = queue.clone();
            thread::spawn(move || recv_frame(&queue, &mut FrameBuilder::default()))
        };
        let newcomer = {
            let queue = queue.clone();
            thread::spawn(move || queue.try_push(event((2, 0))))
        };
        let first: Vec<_> = (0..5).map(|seq| (0, seq)).collect();
        assert_eq!(body.join().unwrap(), Ok(first));
        // The frame granted all five slots: each send fills its own.
        for push in &mut waiting {
            assert_eq!(push.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        }
        assert_eq!(newcomer.join().unwrap(), Err(Rejected::Full));
        let rest: Vec<_> = (0..5).map(|seq| (1, seq)).collect();
        drop(waiting);
        queue.remove_sender();
        assert_eq!(receive(&queue), (rest, Ended::Completed));
    });
}

/// `close()` while a send waits for room and the body receives: the send
/// either got in first or is refused as closed; what was accepted is
/// delivered; the body completes and a `closed()` waiter is woken.
#[test]
fn close_while_a_send_waits() {
    check(Some(3), || {
        let queue = Arc::new(Queue::new(Policy::Wait, 1));
        queue.try_push(event((0, 0))).unwrap();
        // Full: this send waits until the body takes the first event.
        let sender = spawn_sender(&queue, 1, 1);
        let closer = {
            let queue = queue.clone();
            thread::spawn(move || {
                queue.close();
                assert_eq!(queue.try_push(event((2, 0))), Err(Rejected::Closed));
            })
        };
        let waiter = {
            let queue = queue.clone();
            thread::spawn(move || {
                block_on(queue.closed());
                assert!(queue.is_closed());
            })
        };
        let (received, ended) = receive(&queue);
        let mut expected = vec![(0, 0)];
        expected.extend(accepted(1, &sender.join().unwrap()));
        closer.join().unwrap();
        waiter.join().unwrap();
        assert_eq!(ended, Ended::Completed);
        assert_eq!(received, expected);
    });
}

/// The body takes one frame and is dropped (`close_receiver`) while senders
/// send: every send ends, accepted or refused as closed (and refused from
/// then on), `closed()` resolves, and only accepted events were delivered.
#[test]
fn dropping_the_body_ends_every_send() {
    check(Some(3), || {
        let queue = Arc::new(Queue::new(Policy::Wait, 1));
        queue.add_sender();
        let first = spawn_sender(&queue, 1, 2);
        let second = {
            let queue = queue.clone();
            thread::spawn(move || {
                let result = block_on(queue.push(event((2, 0))));
                block_on(queue.closed());
                queue.remove_sender();
                vec![result]
            })
        };
        // `second` keeps its sender until the body is gone: a frame comes.
        let received = recv_frame(&queue, &mut FrameBuilder::default()).unwrap();
        queue.close_receiver();
        assert_eq!(queue.queued(), (0, 0));
        assert_eq!(queue.try_push(event((0, 0))), Err(Rejected::Closed));
        let mut sent = accepted(1, &first.join().unwrap());
        sent.extend(accepted(2, &second.join().unwrap()));
        assert!(!received.is_empty());
        assert!(
            received.iter().all(|e| sent.contains(e)),
            "{received:?} of {sent:?}"
        );
        // A sender's events leave in order: those delivered come first.
        assert!(
            from(&sent, 1).starts_with(&from(&received, 1)),
            "{received:?}"
        );
    });
}

/// Two senders on a dropping or sliding buffer of one: no send waits, every
/// event sent is either delivered or counted dropped, and what is delivered
/// keeps each sender's order, without duplicates.
fn dropping_model(policy: Policy) {
    check(Some(3), move || {
        let queue = Arc::new(Queue::new(policy, 1));
        queue.add_sender();
        let senders = [0, 1].map(|sender| {
            let queue = queue.clone();
            thread::spawn(move || {
                for seq in 0..2 {
                    let mut push = pin!(queue.push(event((sender, seq))));
                    let mut cx = Context::from_waker(Waker::noop());
                    assert_eq!(push.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
                }
                queue.remove_sender();
            })
        });
        let (received, ended) = receive(&queue);
        for sender in senders {
            sender.join().unwrap();
        }
        assert_eq!(ended, Ended::Completed);
        for sender in [0, 1] {
            let seqs = from(&received, sender);
            assert!(seqs.iter().all(|&seq| seq < 2), "{received:?}");
            assert!(seqs.is_sorted_by(|a, b| a < b), "{received:?}");
        }
        assert_eq!(received.len() as u64 + queue.dropped(), 4, "{received:?}");
        match policy {
            // The very first event found the buffer empty and is never displaced.
            Policy::DropNewest => {
                assert!(received.contains(&(0, 0)) || received.contains(&(1, 0)));
            }
            // The very last event displaced nothing that came after it.
            _ => assert!(received.contains(&(0, 1)) || received.contains(&(1, 1))),
        }
    });
}

/// A dropping buffer (the newest event is dropped when full): see [`dropping_model`].
#[test]
fn dropping_buffer_never_waits_and_counts_what_it_drops() {
    dropping_model(Policy::DropNewest);
}

/// A sliding buffer (the oldest event is dropped when full): see [`dropping_model`].
#[test]
fn sliding_buffer_never_waits_and_counts_what_it_drops() {
    dropping_model(Policy::DropOldest);
}

/// `mark_panicked()` while a sender sends: the body delivers exactly what
/// was accepted and ends with `Panicked`; sends from then on are refused.
#[test]
fn a_panic_ends_the_stream_after_what_was_accepted() {
    check(Some(3), || {
        let queue = Arc::new(Queue::new(Policy::Wait, 1));
        queue.add_sender();
        let sender = spawn_sender(&queue, 1, 2);
        let panicked = {
            let queue = queue.clone();
            thread::spawn(move || {
                queue.mark_panicked();
                assert_eq!(queue.try_push(event((2, 0))), Err(Rejected::Closed));
                assert_eq!(block_on(queue.push(event((2, 1)))), Err(Rejected::Closed));
                queue.remove_sender();
            })
        };
        let (received, ended) = receive(&queue);
        panicked.join().unwrap();
        let sent = accepted(1, &sender.join().unwrap());
        assert_eq!(ended, Ended::Panicked);
        assert_eq!(received, sent);
    });
}

/// The queue as the waker of the body-polled ready function, woken from another
/// thread as the body is about to wait: `poll_recv` either sees the flag
/// (`Ok(0)`) or leaves its waker for the wake to find; a lost wake-up would
/// leave the body parked.
///
/// The body clears the flag (`take_ready_wake`) before each `poll_recv`;
/// here it is cleared before the ready function runs only: loom 0.7 can let a load
/// read past a `swap` that raced with a store even after synchronising with
/// that store (tokio-rs/loom#254, #389), a false alarm unrelated to the queue.
#[test]
fn a_ready_function_wake_is_never_lost() {
    check(None, || {
        let queue = Arc::new(Queue::new(Policy::Wait, 1));
        // The initial flag: the body's first poll polls the ready function.
        assert!(queue.take_ready_wake());
        let ready_fn = {
            let waker = Waker::from(queue.clone());
            thread::spawn(move || waker.wake_by_ref())
        };
        let mut frame = FrameBuilder::default();
        // Nothing but the ready function's wake can end this wait.
        let polled = block_on(poll_fn(|cx| queue.poll_recv(cx, HEARTBEAT, &mut frame)));
        assert_eq!(polled, Ok(0));
        assert!(queue.take_ready_wake());
        ready_fn.join().unwrap();
        assert!(!queue.ready_woken());
        queue.remove_sender();
        assert_eq!(receive(&queue), (Vec::new(), Ended::Completed));
    });
}

/// Whether the slots of `queue` are all free again: nothing queued, nobody
/// waiting, no slot granted and left unfilled.
fn assert_slots_free(queue: &Queue) {
    assert_eq!(queue.queued(), (0, 0));
    let state = queue.lock();
    assert_eq!((state.waiting.len(), state.granted), (0, 0));
}

/// A send waiting in line (`push_waiting`, the hub's) on a full dropping or
/// sliding buffer of one, while another sender's sends never wait and the
/// body receives: nobody misses a wake-up, the waiting send is accepted, it
/// drops nothing itself (at most one drop per send that does not wait), and
/// every event is delivered or counted dropped, in each sender's order.
fn waiting_push_model(policy: Policy) {
    check(Some(3), move || {
        let queue = Arc::new(Queue::new(policy, 1));
        queue.try_push(event((0, 0))).unwrap();
        queue.add_sender();
        let waiting = {
            let queue = queue.clone();
            thread::spawn(move || {
                let result = block_on(queue.push_waiting(event((1, 0))));
                queue.remove_sender();
                result
            })
        };
        let other = {
            let queue = queue.clone();
            thread::spawn(move || {
                for seq in 0..2 {
                    let mut push = pin!(queue.push(event((2, seq))));
                    let mut cx = Context::from_waker(Waker::noop());
                    assert_eq!(push.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
                }
                queue.remove_sender();
            })
        };
        let (received, ended) = receive(&queue);
        assert_eq!(waiting.join().unwrap(), Ok(()));
        other.join().unwrap();
        assert_eq!(ended, Ended::Completed);
        assert!(queue.dropped() <= 2, "{received:?}");
        assert_eq!(received.len() as u64 + queue.dropped(), 4, "{received:?}");
        assert!(
            from(&received, 2).is_sorted_by(|a, b| a < b),
            "{received:?}"
        );
        if policy == Policy::DropNewest {
            // Nothing queued after it can displace it.
            assert!(received.contains(&(1, 0)), "{received:?}");
        }
        assert_slots_free(&queue);
    });
}

/// `push_waiting` on a dropping buffer: see [`waiting_push_model`].
#[test]
fn a_waiting_push_on_a_dropping_buffer_drops_nothing() {
    waiting_push_model(Policy::DropNewest);
}

/// `push_waiting` on a sliding buffer: see [`waiting_push_model`].
#[test]
fn a_waiting_push_on_a_sliding_buffer_drops_nothing() {
    waiting_push_model(Policy::DropOldest);
}

/// The slot a frame grants to a send waiting in line (`push_waiting`) on a
/// dropping or sliding buffer is kept for it while another sender's send
/// races the frame: that send is dropped (or displaces the event the frame
/// would take), never the waiting one, which then fills its slot without
/// waiting again; and a granted slot left by a cancelled send is freed.
fn granted_slot_model(policy: Policy, cancel: bool) {
    check(None, move || {
        let queue = Arc::new(Queue::new(policy, 1));
        queue.try_push(event((0, 0))).unwrap();
        // Full: this send waits, first in line.
        let mut waiting = Box::pin(queue.push_waiting(event((1, 0))));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiting.as_mut().poll(&mut cx).is_pending());
        let body = {
            let queue = queue.clone();
            thread::spawn(move || recv_frame(&queue, &mut FrameBuilder::default()))
        };
        let other = {
            let queue = queue.clone();
            thread::spawn(move || queue.try_push(event((2, 0))))
        };
        let first = body.join().unwrap().unwrap();
        assert_eq!(other.join().unwrap(), Ok(()));
        // One frame freed the only slot, and granted it.
        if cancel {
            drop(waiting);
            assert_eq!((queue.queued().0, queue.dropped()), (0, 1));
            // The slot is free: a send takes it without dropping anything.
            assert_eq!(queue.try_push(event((3, 0))), Ok(()));
            assert_eq!(queue.dropped(), 1);
        } else {
            assert_eq!(waiting.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
            drop(waiting);
            let mut rest = recv_frame(&queue, &mut FrameBuilder::default()).unwrap();
            // The other send lost the race for the slot, or displaced (0, 0).
            assert_eq!(queue.dropped(), 1, "{first:?} {rest:?}");
            let mut received = first;
            received.append(&mut rest);
            assert!(received.ends_with(&[(1, 0)]), "{received:?}");
        }
        queue.remove_sender();
        let _ = receive(&queue);
        assert_slots_free(&queue);
    });
}

/// A dropping buffer keeps a granted slot: see [`granted_slot_model`].
#[test]
fn a_dropping_buffer_keeps_a_granted_slot_for_its_waiting_push() {
    granted_slot_model(Policy::DropNewest, false);
}

/// A sliding buffer keeps a granted slot: see [`granted_slot_model`].
#[test]
fn a_sliding_buffer_keeps_a_granted_slot_for_its_waiting_push() {
    granted_slot_model(Policy::DropOldest, false);
}

/// A granted slot whose waiting push is cancelled is freed: see [`granted_slot_model`].
#[test]
fn a_cancelled_waiting_push_frees_its_granted_slot() {
    granted_slot_model(Policy::DropOldest, true);
}
