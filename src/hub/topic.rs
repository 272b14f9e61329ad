//! One topic of a hub: its ring of encoded events, and the streams waiting
//! for its next event.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    ops::Range,
    sync::{
        Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::Waker,
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

/// An event's place in a hub's order, the same in every topic: `(seq, 0)`
/// for the in-memory hub's sequence numbers, `(ms, seq)` for Redis entry ids.
pub(crate) type Key = (u64, u64);

/// One event of a topic, encoded once and shared by every stream that sends it.
pub(crate) struct Entry {
    pub(crate) key: Key,
    /// The event's SSE id (a publisher's own id, a sequence number, a Redis id).
    pub(crate) id: Arc<str>,
    pub(crate) bytes: Bytes,
    pub(crate) at: Instant,
    /// Under [`LagPolicy::Conflate`](super::LagPolicy::Conflate): how many
    /// events of the topic without a key were pushed up to and including
    /// this one (0 otherwise). Set by [`Ring::push`].
    pub(crate) keyless: u64,
}

/// The newest event of one key in a conflating topic, kept after it leaves
/// the ring.
pub(crate) struct Latest {
    /// Its index in the ring (it is gone once below `first_index`).
    pub(crate) index: u64,
    pub(crate) key: Key,
    pub(crate) bytes: Bytes,
    /// When it was published (for the delivery histogram).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) at: Instant,
}

/// A conflating topic's memory of its keys (`LagPolicy::Conflate`).
#[derive(Default)]
pub(crate) struct Conflation {
    /// The newest event of each key ever pushed, kept for as long as the
    /// topic lives: one entry per distinct key.
    pub(crate) latest: HashMap<Arc<str>, Latest>,
    /// The keys of `latest` by the index of their newest event, so that a
    /// gap's keys are found without going through every key.
    by_index: BTreeMap<u64, Arc<str>>,
    /// How many events without a key were pushed.
    pub(crate) keyless: u64,
    /// How many of them were before `first_index` (evicted).
    pub(crate) keyless_evicted: u64,
}

impl Conflation {
    /// The event at `index`, if it is still the newest of `key`.
    pub(crate) fn latest_at(&self, key: &str, index: u64) -> Option<&Latest> {
        self.latest.get(key).filter(|l| l.index == index)
    }

    /// The newest events of keys whose newest event is in `gap`, in index
    /// order, with their keys.
    pub(crate) fn in_gap(&self, gap: Range<u64>) -> Vec<(Arc<str>, &Latest)> {
        self.by_index
            .range(gap)
            .filter_map(|(_, key)| Some((key.clone(), self.latest.get(key)?)))
            .collect()
    }

    /// The event at `index` is now the newest of `key`.
    fn pushed(&mut self, key: Arc<str>, latest: Latest) {
        let index = latest.index;
        // What is replaced holds only bytes the hub encoded.
        if let Some(replaced) = self.latest.insert(key.clone(), latest) {
            self.by_index.remove(&replaced.index);
        }
        self.by_index.insert(index, key);
    }
}

/// A topic's events: the newest `window` of them, or fewer.
pub(crate) struct Ring {
    pub(crate) entries: VecDeque<Entry>,
    /// How many events of this topic came before `entries[0]`.
    pub(crate) first_index: u64,
    /// The key of the newest event no longer held (evicted, or, on Redis,
    /// published before this node followed the topic): a resume from an
    /// older key cannot be served from this ring.
    pub(crate) floor: Option<Key>,
    /// On Redis: every entry of the topic up to this key is in the ring (or
    /// older than `floor`). A stream of several topics delivers no entry
    /// above the lowest of its topics' `complete`, so that one topic's
    /// entries never overtake another's still on their way from Redis.
    pub(crate) complete: Key,
    /// On Redis: the node's reader follows the topic, from `floor` (until
    /// then the ring takes nothing, and no stream resumes from it).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) followed: bool,
    /// Under `LagPolicy::Conflate`, the newest event of each key.
    pub(crate) conflation: Option<Box<Conflation>>,
}

impl Ring {
    fn new(followed: bool, conflating: bool) -> Self {
        Self {
            entries: VecDeque::new(),
            first_index: 0,
            complete: (0, 0),
            floor: None,
            followed,
            conflation: conflating.then(Box::default),
        }
    }

    /// Under `LagPolicy::Conflate`: how many events without a key came
    /// before index `index` (at least `first_index`, at most the end).
    pub(crate) fn keyless_before(&self, index: u64) -> u64 {
        let Some(conflation) = &self.conflation else {
            return 0;
        };
        match index.checked_sub(self.first_index + 1) {
            Some(before) => usize::try_from(before)
                .ok()
                .and_then(|before| self.entries.get(before))
                .map_or(conflation.keyless, |e| e.keyless),
            None => conflation.keyless_evicted,
        }
    }

    /// The newest key the ring holds or knows complete.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn last_key(&self) -> Key {
        let newest = self.entries.back().map(|e| e.key);
        newest
            .max(self.floor)
            .unwrap_or_default()
            .max(self.complete)
    }

    /// The entry at a stream's `cursor`, if the ring has it.
    pub(crate) fn get(&self, cursor: u64) -> Option<&Entry> {
        let offset = cursor.checked_sub(self.first_index)?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// The index of the first entry above `key`.
    pub(crate) fn index_after(&self, key: Key) -> u64 {
        self.first_index + self.entries.partition_point(|e| e.key <= key) as u64
    }

    /// Appends `entry`; under `LagPolicy::Conflate`, as the newest event
    /// of `key` (`None`: an event that cannot be conflated).
    pub(crate) fn push(&mut self, mut entry: Entry, key: Option<Arc<str>>) {
        if let Some(conflation) = &mut self.conflation {
            let index = self.first_index + self.entries.len() as u64;
            match key {
                Some(key) => {
                    let latest = Latest {
                        index,
                        key: entry.key,
                        bytes: entry.bytes.clone(),
                        at: entry.at,
                    };
                    conflation.pushed(key, latest);
                }
                None => conflation.keyless += 1,
            }
            entry.keyless = conflation.keyless;
        }
        self.entries.push_back(entry);
    }

    /// Forgets the events beyond the newest `window`, and those older than `max_age`.
    pub(crate) fn evict(&mut self, window: usize, max_age: Option<Duration>, now: Instant) {
        while let Some(oldest) = self.entries.front() {
            let too_many = self.entries.len() > window;
            let too_old = max_age.is_some_and(|age| now.duration_since(oldest.at) > age);
            if !too_many && !too_old {
                break;
            }
            self.floor = Some(oldest.key);
            if let Some(conflation) = &mut self.conflation {
                conflation.keyless_evicted = oldest.keyless;
            }
            self.entries.pop_front();
            self.first_index += 1;
        }
    }
}

/// A topic: its ring, and the wakers of the streams that read it all and
/// wait for more.
///
/// Lock order: the hub's topic map, then a ring, then the wakers; a stream
/// never holds two rings at once. Nothing user-reachable runs under these
/// locks: wakers are taken out and woken after the guard is dropped, and an
/// evicted entry holds only bytes the hub encoded.
pub(crate) struct Topic {
    ring: RwLock<Ring>,
    wakers: Mutex<HashMap<u64, Waker>>,
    /// Bumped each time the wakers are taken: a stream whose registration
    /// is from the current epoch is still registered.
    epoch: AtomicU64,
    /// Streams subscribed; changed only under the hub's topic map lock, so
    /// that the last one leaving and a new one arriving cannot race.
    pub(crate) subscribers: AtomicUsize,
    /// Of them, streams of several topics (on Redis they wait for this
    /// topic's `complete` too).
    pub(crate) multi: AtomicUsize,
    /// Whether the topic waits in the hub's expiry queue (changed under the
    /// topic map lock too).
    pub(crate) expiring: AtomicBool,
}

impl Topic {
    /// A topic; `followed`: its ring takes events now (always, in memory;
    /// on Redis once the reader follows it).
    /// `conflating`: it keeps the newest event of each key (`LagPolicy::Conflate`).
    pub(crate) fn new(followed: bool, conflating: bool) -> Self {
        Self {
            ring: RwLock::new(Ring::new(followed, conflating)),
            wakers: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            subscribers: AtomicUsize::new(0),
            multi: AtomicUsize::new(0),
            expiring: AtomicBool::new(false),
        }
    }

    /// The newest key through which every one of `topics` is complete (on
    /// Redis: where a stream of those topics stands live).
    pub(crate) fn complete_in_all<'t>(topics: impl IntoIterator<Item = &'t Topic>) -> Key {
        topics
            .into_iter()
            .map(|topic| topic.read().complete)
            .min()
            .unwrap_or_default()
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Ring> {
        self.ring.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, Ring> {
        self.ring.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Registers stream `id`'s waker for the next event; returns the epoch
    /// it is registered in. Call before reading the ring, so that an event
    /// published in between wakes it.
    pub(crate) fn register(&self, id: u64, waker: &Waker) -> u64 {
        let waker = waker.clone();
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        let previous = wakers.insert(id, waker);
        let epoch = self.epoch.load(Ordering::Acquire);
        drop(wakers);
        drop(previous);
        epoch
    }

    pub(crate) fn unregister(&self, id: u64) {
        let removed = self
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        drop(removed);
    }

    /// Wakes every registered stream (they register again when they wait).
    pub(crate) fn wake(&self) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if wakers.is_empty() {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let taken = std::mem::take(&mut *wakers);
        drop(wakers);
        for (_, waker) in taken {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            key: (seq, 0),
            id: seq.to_string().into(),
            bytes: Bytes::from(format!("data: {seq}\n\n")),
            at: Instant::now(),
            keyless: 0,
        }
    }

    /// Pushes events 1..=keys.len() with those keys, keeping `window`.
    fn ring(keys: &[Option<&str>], window: usize) -> Ring {
        let mut ring = Ring::new(true, true);
        for (i, key) in keys.iter().enumerate() {
            ring.push(entry(i as u64 + 1), key.map(Arc::from));
            ring.evict(window, None, Instant::now());
        }
        ring
    }

    #[test]
    fn the_newest_event_of_each_key_outlives_the_ring_and_is_found_by_index() {
        let keys = [
            Some("a"),
            Some("b"),
            None,
            Some("a"),
            Some("c"),
            None,
            Some("d"),
        ];
        let ring = ring(&keys, 2);
        assert_eq!(ring.first_index, 5);
        let conflation = ring.conflation.as_deref().unwrap();
        // a's newest is index 3, b's 1, c's 4 (gone from the ring), d's 6 (in it).
        let gap: Vec<(String, u64)> = conflation
            .in_gap(0..ring.first_index)
            .iter()
            .map(|(key, latest)| (key.to_string(), latest.index))
            .collect();
        assert_eq!(gap, [("b".into(), 1), ("a".into(), 3), ("c".into(), 4)]);
        assert_eq!(conflation.latest.len(), 4);
        assert_eq!(conflation.by_index.len(), 4, "one index per key");
        assert!(conflation.latest_at("a", 3).is_some());
        assert!(conflation.latest_at("a", 0).is_none());
        assert_eq!(conflation.in_gap(2..4).len(), 1);
    }

    #[test]
    fn keyless_events_are_counted_before_every_index() {
        let keys = [Some("a"), None, None, Some("b"), None, Some("c")];
        let ring = ring(&keys, 3);
        // Evicted: indexes 0..3, with two events without a key.
        assert_eq!(ring.first_index, 3);
        assert_eq!(ring.keyless_before(3), 2);
        assert_eq!(ring.keyless_before(4), 2);
        assert_eq!(ring.keyless_before(5), 3);
        assert_eq!(ring.keyless_before(6), 3, "the end of the ring");
        // A ring that does not conflate counts nothing.
        let mut plain = Ring::new(true, false);
        plain.push(entry(1), None);
        assert_eq!(plain.keyless_before(1), 0);
        assert!(plain.conflation.is_none());
    }
}
