//! Who gets the buffer's room: sends waiting in line for a fixed buffer,
//! cancelled sends, `try_push` beside `push`, dropping and sliding buffers,
//! and the hub's `push_waiting` on them.

use super::*;

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
