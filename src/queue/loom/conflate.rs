//! A conflating buffer: sends of a queued key replacing it in place while a
//! send of a new key waits in line and the body takes frames.

use super::*;

/// Sends `count` events tagged `sender`, all under `key`, then drops its sender.
fn spawn_keyed(
    queue: &Arc<Queue>,
    sender: u8,
    key: &'static str,
    count: u8,
) -> thread::JoinHandle<()> {
    let queue = queue.clone();
    thread::spawn(move || {
        for seq in 0..count {
            let pushed = block_on(queue.push_keyed(event((sender, seq)), Some(key.into())));
            assert_eq!(pushed, Ok(()));
        }
        queue.remove_sender();
    })
}

/// A buffer of one holding key `a`: one sender replaces `a` twice while
/// another waits to queue `b`. The latest `a` and the `b` are delivered,
/// values of `a` never go back in time, never more than one event is
/// queued, every replacement is counted, and the room is all free at the end.
#[test]
fn conflation_delivers_the_latest_value_of_each_key() {
    check(Some(3), || {
        let queue = Arc::new(Queue::new(Policy::Conflate, 1));
        queue
            .try_push_keyed(event((0, 0)), Some("a".into()))
            .unwrap();
        queue.add_sender();
        let replacing = spawn_keyed(&queue, 1, "a", 2);
        let waiting = spawn_keyed(&queue, 2, "b", 1);
        let (received, ended) = receive(&queue);
        replacing.join().unwrap();
        waiting.join().unwrap();
        assert_eq!(ended, Ended::Completed);
        let values_of_a: Vec<Tag> = received.iter().copied().filter(|(s, _)| *s < 2).collect();
        assert_eq!(values_of_a.last(), Some(&(1, 1)), "{received:?}");
        assert!(values_of_a.windows(2).all(|w| w[0] < w[1]), "{received:?}");
        assert_eq!(from(&received, 2), [0]);
        assert_eq!(queue.dropped() as usize, 4 - received.len());
        assert_room_restored(&queue);
    });
}

/// A one-way signal between model threads (loom's `Notify` may wake
/// spuriously, so the flag says whether it really was).
#[derive(Default)]
struct Signal {
    set: ::loom::sync::atomic::AtomicBool,
    notify: ::loom::sync::Notify,
}

impl Signal {
    fn set(&self) {
        self.set.store(true, ::loom::sync::atomic::Ordering::SeqCst);
        self.notify.notify();
    }

    fn wait(&self) {
        while !self.set.load(::loom::sync::atomic::Ordering::SeqCst) {
            self.notify.wait();
        }
    }
}

/// Sends one event tagged `sender` under key `b`, once `after` is set (if
/// given), and sets `started` once its send has been polled (registered in
/// line, or queued): the sends are ordered by their starts.
fn spawn_chained(
    queue: &Arc<Queue>,
    sender: u8,
    after: Option<Arc<Signal>>,
    started: Arc<Signal>,
) -> thread::JoinHandle<()> {
    let queue = queue.clone();
    thread::spawn(move || {
        if let Some(after) = after {
            after.wait();
        }
        let push = queue.push_keyed(event((sender, 0)), Some("b".into()));
        assert_eq!(block_on_then(push, || started.set()), Ok(()));
        queue.remove_sender();
    })
}

/// A buffer of one holding `a`; three sends of key `b`, each started after
/// the one before (the review's interleaving: the first is granted the slot
/// the body frees, the second waits, the third finds `b` queued). The
/// client never gets an older `b` after a newer one and ends on the last:
/// a send of `b` supersedes the sends of `b` still waiting since before it.
#[test]
fn a_later_send_of_a_key_supersedes_its_waiting_sends() {
    check(Some(2), || {
        let queue = Arc::new(Queue::new(Policy::Conflate, 1));
        queue
            .try_push_keyed(event((0, 0)), Some("a".into()))
            .unwrap();
        queue.add_sender();
        queue.add_sender();
        let flags: Vec<Arc<Signal>> = (0..3).map(|_| Arc::default()).collect();
        let first = spawn_chained(&queue, 1, None, flags[0].clone());
        let second = spawn_chained(&queue, 2, Some(flags[0].clone()), flags[1].clone());
        let third = spawn_chained(&queue, 3, Some(flags[1].clone()), flags[2].clone());
        let (received, ended) = receive(&queue);
        for sender in [first, second, third] {
            sender.join().unwrap();
        }
        assert_eq!(ended, Ended::Completed);
        let values_of_b: Vec<u8> = received
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s > 0)
            .collect();
        assert_eq!(values_of_b.last(), Some(&3), "{received:?}");
        assert!(values_of_b.windows(2).all(|w| w[0] < w[1]), "{received:?}");
        assert_eq!(queue.dropped() as usize, 4 - received.len());
        assert_room_restored(&queue);
    });
}
