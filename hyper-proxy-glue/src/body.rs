//! Bodies as they pass through the front: streamed frame by frame (never collected), cut when
//! they stall, and — for responses — tied to the backend connection and in-flight count they use.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::backend::{BackendState, InFlightGuard};
use crate::upstream::Sender;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body produced no data for longer than the front's idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body stalled: no data for {0:?}")]
pub(crate) struct BodyStalled(Duration);

pin_project! {
    /// Passes `B` through, failing it when `B` keeps the reader waiting for `limit` (a producer
    /// stall; a slow consumer that simply polls late is not counted). Optionally reports when
    /// `B` has ended, or was dropped unfinished.
    ///
    /// The timer is not re-armed on every frame (that would touch the timer wheel per chunk):
    /// a wait only records when it began, and when the timer fires it is pushed to the real
    /// deadline if needed.
    pub(crate) struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Sleep,
        waiting_since: Option<Instant>,
        limit: Duration,
        on_end: Option<oneshot::Sender<()>>,
    }
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            timer: tokio::time::sleep(limit),
            waiting_since: None,
            limit,
            on_end: None,
        }
    }

    /// Fires `done` when the body has been read to its end (dropping it unfinished drops
    /// `done`, which its receiver sees as well).
    pub(crate) fn with_end_signal(mut self, done: oneshot::Sender<()>) -> IdleTimeout<B> {
        self.on_end = Some(done);
        self
    }
}

impl<B> Body for IdleTimeout<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(polled) => polled,
            Poll::Pending => {
                let since = *this.waiting_since.get_or_insert_with(Instant::now);
                let deadline = since + *this.limit;
                loop {
                    ready!(this.timer.as_mut().poll(cx));
                    if Instant::now() >= deadline {
                        return Poll::Ready(Some(Err(BodyStalled(*this.limit).into())));
                    }
                    // Armed for an earlier wait: re-arm for this one (and poll again so the
                    // timer registers this task's waker).
                    this.timer.as_mut().reset(deadline);
                }
            }
        };
        *this.waiting_since = None;
        let ended = match &polled {
            Some(Ok(_)) => this.inner.is_end_stream(),
            Some(Err(_)) => false,
            None => true,
        };
        if ended && let Some(done) = this.on_end.take() {
            let _ = done.send(());
        }
        Poll::Ready(polled.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a response body gives back when it ends: the connection (reusable now) and the
/// in-flight count (released after the connection is back in the pool).
pub(crate) struct Release {
    pub(crate) conn: Sender,
    pub(crate) max_idle: usize,
    pub(crate) guard: InFlightGuard,
}

impl Release {
    pub(crate) fn finish(self) {
        let backend: &Arc<BackendState> = self.guard.backend();
        backend.put_idle(self.conn, self.max_idle);
        drop(self.guard);
    }
}

pin_project! {
    /// A backend's response body on its way to the client. When it ends cleanly the backend
    /// connection goes back to the pool; if it is dropped early or fails, the connection is
    /// closed. Either way the request stops counting as in flight.
    pub(crate) struct ResponseBody {
        #[pin]
        inner: IdleTimeout<Incoming>,
        release: Option<Release>,
    }
}

impl ResponseBody {
    pub(crate) fn new(inner: Incoming, idle: Duration, release: Release) -> ResponseBody {
        ResponseBody {
            inner: IdleTimeout::new(inner, idle),
            release: Some(release),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        match &polled {
            // hyper may stop polling once a Content-Length is satisfied, so "ended" is checked
            // after each frame too, not only on `None`.
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            Some(Ok(_)) | None => {
                if let Some(release) = this.release.take() {
                    release.finish();
                }
            }
            Some(Err(_)) => {
                // The connection is in an unknown state: dropping it closes it.
                this.release.take();
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
