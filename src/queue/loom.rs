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
//!
//! The models are in `room.rs` (who gets the buffer's room: sends waiting
//! in line, cancelled sends, dropping and sliding buffers), `conflate.rs`
//! (a conflating buffer's replacements beside a send waiting in line, and
//! a later send of a key superseding that key's sends still waiting) and
//! `ending.rs` (the ways a stream ends while sends are under way, and the
//! wake-up of the ready function the body polls); this file is their harness.

use std::{future::poll_fn, pin::pin, sync::Arc, task::Wake};

use ::loom::{model::Builder, thread};

use super::*;

mod conflate;
mod ending;
mod room;

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
    block_on_then(future, || {})
}

/// [`block_on`], calling `polled` once the future has been polled once
/// (a send registered in line, or done): what a model orders others after.
fn block_on_then<F: Future>(future: F, polled: impl FnOnce()) -> F::Output {
    let mut polled = Some(polled);
    let mut future = pin!(future);
    let unpark = Arc::new(Unpark {
        thread: thread::current(),
        woken: std::sync::atomic::AtomicBool::new(false),
    });
    let waker = Waker::from(unpark.clone());
    let mut cx = Context::from_waker(&waker);
    loop {
        let poll = future.as_mut().poll(&mut cx);
        if let Some(polled) = polled.take() {
            polled();
        }
        if let Poll::Ready(output) = poll {
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
        let taken = block_on(poll_fn(|cx| {
            queue.poll_recv(cx, &Bytes::from_static(HEARTBEAT), frame)
        }))?;
        if taken == 0 {
            // Only the initial ready function flag: nobody else wakes it here.
            continue;
        }
        // All it took was queued at once, under the lock.
        assert!(taken <= queue.capacity(), "{taken} events were queued");
        assert!(queue.queued().0 <= queue.capacity());
        let bytes = frame.take().into_whole();
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

/// Whether the slots of `queue` are all free again: nothing queued, nobody
/// waiting, no slot granted and left unfilled.
fn assert_slots_free(queue: &Queue) {
    assert_eq!(queue.queued(), (0, 0));
    let state = queue.lock();
    assert_eq!((state.waiting.len(), state.granted), (0, 0));
}
