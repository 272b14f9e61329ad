//! How a stream ends while sends are under way (`close()`, the body
//! dropped, a panic), and the wake-up of the ready function the body polls.

use super::*;

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
        let polled = block_on(poll_fn(|cx| {
            queue.poll_recv(cx, &Bytes::from_static(HEARTBEAT), &mut frame)
        }));
        assert_eq!(polled, Ok(0));
        assert!(queue.take_ready_wake());
        ready_fn.join().unwrap();
        assert!(!queue.ready_woken());
        queue.remove_sender();
        assert_eq!(receive(&queue), (Vec::new(), Ended::Completed));
    });
}
