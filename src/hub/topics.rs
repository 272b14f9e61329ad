//! The hub's topics: made when first asked for, removed when nothing holds
//! them (no stream, no event in history), and counted against `max_topics`.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    Inner,
    topic::{Key, Topic},
};

/// A stream's place in a topic: the topic's name and the topic.
pub(crate) type Place = (Arc<str>, Arc<Topic>);

/// A new topic would take the hub past [`HubBuilder::max_topics`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TooManyTopics(pub(crate) usize);

/// The topics of a hub, under its one lock.
pub(crate) struct Topics {
    pub(crate) map: HashMap<Arc<str>, Arc<Topic>>,
    pub(crate) next_seq: u64,
    /// Topics with no stream but events in history, by when their newest
    /// event expires (with `max_age` only).
    pub(crate) expiry: BinaryHeap<Reverse<(Instant, Arc<str>)>>,
    /// The newest key of an event that went with a removed topic: a topic
    /// made again cannot resume from before it.
    pub(crate) removed_floor: Option<Key>,
}

impl Topics {
    /// The topic `name`, made if new (unless the hub is full).
    pub(crate) fn get_or_insert(
        &mut self,
        name: &str,
        inner: &Inner,
        now: Instant,
    ) -> Result<Arc<Topic>, TooManyTopics> {
        if let Some(topic) = self.map.get(name) {
            return Ok(topic.clone());
        }
        if let Some(max) = inner.max_topics {
            if self.map.len() >= max {
                self.expire(inner, now);
            }
            if self.map.len() >= max {
                return Err(TooManyTopics(max));
            }
        }
        let topic = Arc::new(Topic::new(!inner.is_redis(), inner.conflate.is_some()));
        topic.write().floor = self.removed_floor;
        self.map.insert(name.into(), topic.clone());
        Ok(topic)
    }

    /// Removes topic `name`, remembering what history it took along.
    pub(crate) fn remove(&mut self, name: &str) {
        if let Some(topic) = self.map.remove(name) {
            let floor = topic.read().floor;
            self.removed_floor = self.removed_floor.max(floor);
        }
    }

    /// Schedules an idle topic's removal once its newest event expires.
    pub(crate) fn schedule(&mut self, name: &Arc<str>, topic: &Topic, inner: &Inner) {
        let Some(age) = inner.max_age else { return };
        if topic.expiring.swap(true, Ordering::Relaxed) {
            return;
        }
        let newest = topic.read().entries.back().map(|e| e.at);
        // Strictly later than when the newest event turns `age` old (eviction
        // takes events older than `age`): popped at its deadline, the topic
        // is empty, never scheduled again for the same instant.
        let at = newest.unwrap_or_else(Instant::now) + age + Duration::from_millis(1);
        self.expiry.push(Reverse((at, name.clone())));
    }

    /// Removes the idle topics whose history has expired.
    pub(crate) fn expire(&mut self, inner: &Inner, now: Instant) {
        while let Some(Reverse((at, _))) = self.expiry.peek() {
            if *at > now {
                return;
            }
            let Some(Reverse((_, name))) = self.expiry.pop() else {
                return;
            };
            let Some(topic) = self.map.get(&name).cloned() else {
                continue;
            };
            topic.expiring.store(false, Ordering::Relaxed);
            if topic.subscribers.load(Ordering::Relaxed) > 0 {
                // Scheduled again when its last stream leaves.
                continue;
            }
            topic.write().evict(inner.window, inner.max_age, now);
            if topic.read().entries.is_empty() {
                self.remove(&name);
            } else {
                self.schedule(&name, &topic, inner);
            }
        }
    }
}

impl Inner {
    /// Takes a stream's place in each of `names` (each listed once);
    /// nothing when one of them cannot be made.
    pub(crate) fn acquire(&self, names: &[&str]) -> Result<Vec<Place>, TooManyTopics> {
        let now = Instant::now();
        let mut topics = self.lock();
        topics.expire(self, now);
        let mut taken = Vec::with_capacity(names.len());
        for name in names {
            match topics.get_or_insert(name, self, now) {
                Ok(topic) => {
                    topic.subscribers.fetch_add(1, Ordering::Relaxed);
                    if names.len() > 1 {
                        topic.multi.fetch_add(1, Ordering::Relaxed);
                    }
                    let name = topics
                        .map
                        .get_key_value(*name)
                        .map_or_else(|| Arc::from(*name), |(name, _)| name.clone());
                    taken.push((name, topic));
                }
                Err(full) => {
                    drop(topics);
                    self.release(&taken);
                    return Err(full);
                }
            }
        }
        Ok(taken)
    }

    /// Gives back a stream's places: a topic left with no stream goes when
    /// its history is empty (in memory) or at once (on Redis, which keeps
    /// the history; the node stops following it). Lock order: the topic
    /// map, then the Redis backend's `following`.
    pub(crate) fn release(&self, taken: &[Place]) {
        let mut gone = Vec::new();
        {
            let mut topics = self.lock();
            for (name, topic) in taken {
                if taken.len() > 1 {
                    topic.multi.fetch_sub(1, Ordering::Relaxed);
                }
                if topic.subscribers.fetch_sub(1, Ordering::Relaxed) != 1 {
                    continue;
                }
                let current = topics.map.get(name).is_some_and(|t| Arc::ptr_eq(t, topic));
                if !current {
                    continue;
                }
                if self.is_redis() || topic.read().entries.is_empty() {
                    topics.remove(name);
                    gone.push(name.clone());
                } else {
                    topics.schedule(name, topic, self);
                }
            }
            // Under the map lock: a stream that makes the topic again (which
            // takes this lock) follows it afresh, never to have its follow
            // undone by this unfollow.
            #[cfg(feature = "redis")]
            if let Some(backend) = &self.redis {
                backend.unfollow(&gone);
            }
        }
        drop(gone);
    }
}
