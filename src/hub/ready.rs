//! The hub's compatible path: a subscription read by a ready function and
//! sent through the stream's buffer (`Hub::subscribe`, `Hub::ready`).

use futures::future::BoxFuture;

use super::{Hub, Resume, Subscription, TooManyTopics, distinct};
#[allow(unused_imports)] // for the docs
use super::{LagPolicy, MAX_LAST_EVENT_ID_LEN, RESET_EVENT};
use crate::{EventSender, StreamContext};

impl Hub {
    /// Streams `topics` to `events` until the stream closes: first what came
    /// after `last_event_id` (from history; a [`RESET_EVENT`] if that is no
    /// longer known), then live events. Without `last_event_id`, live events only.
    /// A topic listed more than once counts once: each event is sent once.
    ///
    /// An id longer than [`MAX_LAST_EVENT_ID_LEN`] bytes is not looked at: it
    /// gets a reset with empty data. ([`StreamContext::last_event_id`] gives
    /// `None` for a header that is not UTF-8; [`Hub::ready`] treats such a
    /// header as unusable, with a reset, rather than as no id.)
    ///
    /// Call it from a ready function (or use [`Hub::ready`]); [`Hub::layer`]
    /// serves the same streams from the response body, with no task or
    /// buffer per stream. Each event goes through the stream's buffer: a
    /// stream that cannot keep up falls behind in history without slowing
    /// anyone, and the [`LagPolicy`] decides what it sees when history
    /// moves past it. The hub waits in line for room whatever the buffer,
    /// so a dropping or sliding buffer never drops its events or notices;
    /// events that other senders of the stream had dropped are reported the
    /// same way, once per batch.
    pub async fn subscribe<T: AsRef<str>>(
        &self,
        events: &EventSender,
        last_event_id: Option<&str>,
        topics: &[T],
    ) {
        self.subscribe_from(events, Resume::new(last_event_id), topics)
            .await;
    }

    async fn subscribe_from<T: AsRef<str>>(
        &self,
        events: &EventSender,
        resume: Resume,
        topics: &[T],
    ) {
        let names = distinct(topics);
        let mut subscription = match Subscription::new(self, &names, resume) {
            Ok(subscription) => subscription,
            Err(TooManyTopics(max)) => {
                tracing::warn!(max, "too many topics: stream not subscribed");
                return;
            }
        };
        let mut batch = Vec::new();
        let mut dropped_seen = events.dropped();
        let closed = events.closed();
        tokio::pin!(closed);
        loop {
            // A buffer's worth, however full the buffer is now: the sends
            // below wait in line for room whatever its policy (so the hub
            // never has an event or a notice dropped), and a lag notice is
            // followed by as many events as the buffer holds, not by one.
            // The rest stays in history, and `batch` stays small.
            let room = events.capacity();
            let read = std::future::poll_fn(|cx| subscription.poll_read(cx, room, &mut batch));
            match futures::future::select(std::pin::pin!(read), closed.as_mut()).await {
                futures::future::Either::Left((Ok(()), _)) => {}
                futures::future::Either::Left((Err(_lagged), _)) => {
                    events.close();
                    return;
                }
                futures::future::Either::Right(_) => return,
            }
            for bytes in batch.drain(..) {
                if events.send_encoded(bytes).await.is_err() {
                    return;
                }
            }
            let dropped = events.dropped();
            if dropped > dropped_seen {
                subscription.missed(dropped - dropped_seen);
                dropped_seen = dropped;
            }
        }
    }

    /// A ready function that subscribes each stream to the topics `topics`
    /// picks from its request, resuming from its `Last-Event-ID`. A topic
    /// picked more than once (`?topic=chat&topic=chat`) counts once.
    ///
    /// [`Hub::layer`] serves the same streams from the response body (no
    /// task, queue or sender per stream) and can refuse a request: prefer it.
    ///
    /// A `Last-Event-ID` longer than [`MAX_LAST_EVENT_ID_LEN`] bytes, or not
    /// UTF-8, gets a [`RESET_EVENT`] with empty data, then live events; the
    /// stream keeps at most [`MAX_LAST_EVENT_ID_LEN`] bytes of the header.
    ///
    /// ```
    /// # let hub = tower_sse::hub::Hub::new();
    /// let layer = tower_sse::SseLayer::new(hub.ready(|ctx| {
    ///     // /rooms/lobby/events -> topic "lobby"
    ///     ctx.uri().path().split('/').nth(2).map(str::to_owned).into_iter().collect()
    /// }));
    /// # let _ = layer;
    /// ```
    pub fn ready<F>(
        &self,
        topics: F,
    ) -> impl Fn(EventSender, StreamContext) -> BoxFuture<'static, ()> + Send + Sync + 'static
    where
        F: Fn(&StreamContext) -> Vec<String> + Send + Sync + 'static,
    {
        let hub = self.clone();
        move |events, ctx| {
            let hub = hub.clone();
            let topics = topics(&ctx);
            // Only the id outlives this call, and only up to the cap: the
            // stream keeps no copy of the request.
            let resume = Resume::from_headers(ctx.kept_headers());
            drop(ctx);
            Box::pin(async move {
                hub.subscribe_from(&events, resume, &topics).await;
            })
        }
    }
}
