//! Hostile review of `EventData` (large events): defects proven by tests
//! over the public API. Each `#[ignore = "defect: ..."]` test fails on the
//! code it was written against and passes once the defect is fixed.

use std::{sync::mpsc, time::Duration};

use bytes::Bytes;
use tower_sse::{Event, hub::Hub};

/// Owns an event's data; when dropped, asks a helper thread to read the
/// hub (which takes the hub's lock) and reports whether it could in time.
struct Owner {
    bytes: Vec<u8>,
    hub: Hub,
    lock_was_free: mpsc::Sender<bool>,
}

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let hub = self.hub.clone();
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = hub.topics();
            let _ = done.send(());
        });
        // The helper waits on the lock only if this thread holds it: it
        // then gets it once this `Drop` returns, so nothing hangs.
        let free = finished.recv_timeout(Duration::from_secs(2)).is_ok();
        let _ = self.lock_was_free.send(free);
    }
}

// Review (defect): `Hub::publish` (in memory) encodes the event with
// `into_frame` while it holds the topic map's lock, and the event is dropped
// there: data given as `Bytes::from_owner(..)` runs the owner's `Drop`
// (user code) under the hub's lock. Any hub call from that `Drop`, or from a
// thread it waits on, deadlocks; every other publish/subscribe waits for it.
#[tokio::test]
async fn hub_publish_drops_the_event_outside_the_hub_lock() {
    let hub = Hub::new();
    let (lock_was_free, report) = mpsc::channel();
    let owner = Owner {
        bytes: b"price 10".to_vec(),
        hub: hub.clone(),
        lock_was_free,
    };
    let event = Event::new(Bytes::from_owner(owner)).name("tick");
    hub.publish("prices", event).await.unwrap();
    let free = report.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(free, "the owner's Drop ran while the hub's lock was held");
}

// The same event through an `EventSender`-free path that holds no lock:
// the test's own check, so that the defect test above cannot pass by luck.
#[test]
fn attempt_the_owner_check_sees_a_free_lock_outside_the_hub() {
    let hub = Hub::new();
    let (lock_was_free, report) = mpsc::channel();
    let owner = Owner {
        bytes: b"x".to_vec(),
        hub: hub.clone(),
        lock_was_free,
    };
    drop(Event::new(Bytes::from_owner(owner)));
    assert!(report.recv_timeout(Duration::from_secs(5)).unwrap());
}
