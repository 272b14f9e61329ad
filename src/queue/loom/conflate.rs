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
