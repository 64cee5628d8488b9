//! An instance's response body on its way to the client, and what it gives back when it ends:
//! the keep-alive connection (to the instance's idle pool) and the in-flight count.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use pin_project_lite::pin_project;

use crate::backend::InFlightGuard;
use crate::body::{BoxError, IdleTimeout};
use crate::upstream::Sender;

/// What a response gives back when its body ends: the connection (reusable now) and the
/// in-flight count (released after the connection is back in the pool, so a drain that sees
/// zero never races a connection being returned).
pub(crate) struct Release {
    pub(crate) conn: Sender,
    pub(crate) max_idle: usize,
    pub(crate) guard: InFlightGuard,
    /// When the response head arrived.
    pub(crate) head_at: tokio::time::Instant,
}

impl Release {
    pub(crate) fn finish(self) {
        // One clock read for the log, the idle pool and the instance's progress.
        let now = tokio::time::Instant::now();
        let body = now.saturating_duration_since(self.head_at);
        if body >= crate::proxy::SLOW_HEAD {
            tracing::debug!(instance = %self.guard.backend().backend.id, body_us = body.as_micros(), "slow response body");
        }
        self.guard.backend().put_idle(self.conn, self.max_idle, now);
        self.guard.end_at(now);
    }
}

pin_project! {
    /// When it ends cleanly the connection goes back to the pool; if it is dropped early or
    /// fails, the connection is closed. Either way the request stops counting as in flight.
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
