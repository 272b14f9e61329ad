//! Noticing a client that stays connected but stops reading.
//!
//! A body cannot see the socket, and hyper stops polling a body whose
//! frames it cannot write (HTTP/1 once its write buffer is full, HTTP/2
//! while a frame waits for flow-control room). So, with a stall timeout,
//! the body hands the connection one frame at a time, each wrapped so that
//! its release (hyper dropping it once written to the socket, or copied
//! into HTTP/2's bounded write buffer) wakes the body. While a frame is out,
//! hyper's buffer never fills, so it keeps polling the body at each wake-up,
//! the body's timer included: a frame still out after the timeout is a
//! stall, and the body fails with [`StreamError::Stalled`](crate::StreamError).
//!
//! Its blind spots are where hyper stops polling anyway: an HTTP/2 frame
//! that hyper holds back for flow-control room before giving it to h2, and
//! HTTP/1 over an IO without vectored writes, where hyper copies (and so
//! releases) each frame into its own buffer (see `SseLayer::stall_timeout`).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::Context,
    time::Duration,
};

use bytes::Bytes;
use futures::task::AtomicWaker;
use tokio::time::Instant;

/// A stream's watch on the frame it has handed to the connection.
pub(crate) struct StallWatch {
    timeout: Duration,
    release: Arc<Release>,
    /// When the frame that is out was handed over; `None` when none is.
    handed_at: Option<Instant>,
}

/// Shared by the body and the frame it handed over.
#[derive(Default)]
struct Release {
    done: AtomicBool,
    body: AtomicWaker,
}

/// A frame whose drop tells the body it was written.
struct Tracked {
    bytes: Bytes,
    release: Arc<Release>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.release.done.store(true, Ordering::Release);
        // Lock-free: `AtomicWaker` never wakes under a lock.
        self.release.body.wake();
    }
}

/// Where the frame that is out stands.
pub(crate) enum Out {
    /// None is out: the body may hand over the next; `Some` gives when the
    /// last one was handed over, if one just came back.
    Clear(Option<Instant>),
    /// One is out, and may be until this deadline.
    Waiting(Instant),
    /// One has been out for the whole timeout.
    Stalled,
}

impl StallWatch {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            release: Arc::default(),
            handed_at: None,
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Checks the frame that is out, registering `cx` for its release.
    pub(crate) fn poll_out(&mut self, cx: &mut Context<'_>) -> Out {
        let Some(handed_at) = self.handed_at else {
            return Out::Clear(None);
        };
        self.release.body.register(cx.waker());
        if self.release.done.load(Ordering::Acquire) {
            self.handed_at = None;
            return Out::Clear(Some(handed_at));
        }
        let deadline = handed_at + self.timeout;
        if Instant::now() >= deadline {
            Out::Stalled
        } else {
            Out::Waiting(deadline)
        }
    }

    /// Wraps `bytes` to be handed over, and starts watching it.
    pub(crate) fn hand_over(&mut self, bytes: Bytes) -> Bytes {
        let release = Arc::new(Release::default());
        self.release = release.clone();
        self.handed_at = Some(Instant::now());
        Bytes::from_owner(Tracked { bytes, release })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::task::noop_waker_ref;

    #[tokio::test(start_paused = true)]
    async fn a_frame_out_for_the_timeout_is_a_stall_and_a_written_one_is_not() {
        let mut cx = Context::from_waker(noop_waker_ref());
        let mut watch = StallWatch::new(Duration::from_secs(5));
        assert!(matches!(watch.poll_out(&mut cx), Out::Clear(None)));

        let written = watch.hand_over(Bytes::from_static(b"data: a\r\n\r\n"));
        assert_eq!(&written[..], b"data: a\r\n\r\n");
        assert!(matches!(watch.poll_out(&mut cx), Out::Waiting(_)));
        drop(written);
        assert!(matches!(watch.poll_out(&mut cx), Out::Clear(Some(_))));

        let stuck = watch.hand_over(Bytes::from_static(b": \r\n"));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert!(matches!(watch.poll_out(&mut cx), Out::Waiting(_)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(watch.poll_out(&mut cx), Out::Stalled));
        drop(stuck);
    }

    #[test]
    fn a_release_wakes_the_body() {
        let woken = Arc::new(Flag::default());
        let waker = std::task::Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let mut watch = StallWatch::new(Duration::from_secs(5));
        let frame = watch.hand_over(Bytes::from_static(b"x"));
        assert!(matches!(watch.poll_out(&mut cx), Out::Waiting(_)));
        assert!(!woken.0.load(Ordering::SeqCst));
        drop(frame);
        assert!(woken.0.load(Ordering::SeqCst));
    }

    #[derive(Default)]
    struct Flag(AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}
