//! Bodies passing through the front: streamed frame by frame (never collected), cut when their
//! producer stalls, and able to say when they have been read to the end. The size limit is
//! http-body-util's `Limited`; [`cause`] tells these failures apart from hyper's own.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::LengthLimitError;
use hyper::body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

pub(crate) type BoxError = Box<dyn StdError + Send + Sync>;

/// A body produced no data for longer than the front's body idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("body stalled: no data for {0:?}")]
pub(crate) struct BodyStalled(Duration);

/// Why a body failed, when the front itself made it fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cut {
    Stalled,
    TooLarge,
}

/// Finds a [`BodyStalled`] or a size-limit error anywhere in `err`'s chain of causes (hyper
/// wraps a body's error in its own).
pub(crate) fn cause(err: &(dyn StdError + 'static)) -> Option<Cut> {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<BodyStalled>() {
            return Some(Cut::Stalled);
        }
        if err.is::<LengthLimitError>() {
            return Some(Cut::TooLarge);
        }
        next = err.source();
    }
    None
}

pin_project! {
    /// Passes `B` through, failing it when `B` keeps the reader waiting for `limit` (a producer
    /// stall; a slow consumer that simply polls late is not counted). Optionally reports when
    /// `B` has ended, or was dropped unfinished.
    ///
    /// The timer is made only when `B` first keeps the reader waiting (most bodies through the
    /// front are whole when first polled: making one per body cost a clock read and a timer
    /// per request), and not re-armed on every frame (that would touch the timer wheel per
    /// chunk): a wait only records when it began, and when the timer fires it is pushed to the
    /// real deadline if needed.
    pub(crate) struct IdleTimeout<B> {
        #[pin]
        inner: B,
        timer: Option<Pin<Box<Sleep>>>,
        waiting_since: Option<Instant>,
        limit: Duration,
        on_end: Option<oneshot::Sender<()>>,
    }
}

impl<B> IdleTimeout<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> IdleTimeout<B> {
        IdleTimeout {
            inner,
            timer: None,
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
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                loop {
                    ready!(timer.as_mut().poll(cx));
                    if Instant::now() >= deadline {
                        return Poll::Ready(Some(Err(BodyStalled(*this.limit).into())));
                    }
                    // Armed for an earlier wait: re-arm for this one (and poll again so the
                    // timer registers this task's waker).
                    timer.as_mut().reset(deadline);
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, Limited};

    /// A body fed frame by frame from a channel.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0
                .poll_recv(cx)
                .map(|data| data.map(|data| Ok(Frame::data(data))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_producer_fails_after_the_limit_and_reports_it() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut body = Box::pin(IdleTimeout::new(Fed(rx), Duration::from_secs(5)));
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        let started = Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(cause(err.as_ref()), Some(Cut::Stalled));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_producer_is_not_cut() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(4)).await;
                tx.send(Bytes::from_static(b"a")).await.unwrap();
            }
        });
        let body = IdleTimeout::new(Fed(rx), Duration::from_secs(5));
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 10);
        feeder.await.unwrap();
    }

    #[tokio::test]
    async fn the_end_signal_fires_once_the_body_is_read() {
        let (done, ended) = oneshot::channel();
        let body = IdleTimeout::new(
            Full::new(Bytes::from_static(b"abc")),
            Duration::from_secs(5),
        )
        .with_end_signal(done);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "abc");
        assert!(ended.await.is_ok());
    }

    #[tokio::test]
    async fn a_size_limit_error_is_recognised_through_the_idle_wrapper() {
        let body = Limited::new(Full::new(Bytes::from_static(b"0123456789")), 4);
        let body = IdleTimeout::new(body, Duration::from_secs(5));
        let err = body.collect().await.unwrap_err();
        assert_eq!(cause(err.as_ref()), Some(Cut::TooLarge));
    }
}
