//! One client connection: hyper's HTTP/1.1 server over it, and the watchdog that closes it when
//! the client is too slow to send a request head or leaves it idle between requests too long.
//!
//! hyper's own `header_read_timeout` is off: it starts when hyper begins waiting for a head, so
//! it would be one limit for both a slow head and an idle keep-alive connection (which must
//! outlive nginx's 60 s), and it allocates a timer per request. Here one timer per connection
//! is re-armed only when it fires, and a request costs two clock reads.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::config::FrontConfig;
use crate::headers::Peer;
use crate::proxy::{self, Proxy};

/// The connection's place under the front's connection cap; a tunnel made from one of its
/// requests keeps a clone, since hyper hands the socket over to it.
pub(crate) type Slot = Arc<OwnedSemaphorePermit>;

/// Serves one accepted connection until the client closes it, a timeout closes it, or the
/// front shuts down (then the request in progress may finish).
pub(crate) async fn serve<S>(proxy: Arc<Proxy>, stream: S, peer: Peer, slot: Slot)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: Arc::clone(&activity),
    });
    let service = {
        let (proxy, activity) = (Arc::clone(&proxy), Arc::clone(&activity));
        service_fn(move |request| {
            let busy = Busy::begin(Arc::clone(&activity));
            let handled = proxy::handle(Arc::clone(&proxy), peer, Arc::clone(&slot), request);
            async move {
                let response = handled.await?;
                Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);

    let config = &proxy.config;
    let mut shutdown = proxy.shutdown.subscribe();
    {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        let watchdog = tokio::time::sleep(config.header_read_timeout);
        tokio::pin!(watchdog);
        // The connection wakes this task several times per request; the watchdog and the stop
        // signal are polled only when they woke it themselves.
        let side = Arc::new(SideWake::default());
        let side_waker = Waker::from(Arc::clone(&side));
        loop {
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Event::Ended(result));
                }
                if side.due(cx.waker()) {
                    let mut side_cx = Context::from_waker(&side_waker);
                    if watchdog.as_mut().poll(&mut side_cx).is_ready() {
                        return Poll::Ready(Event::Watchdog);
                    }
                    if stop.as_mut().poll(&mut side_cx).is_ready() {
                        return Poll::Ready(Event::Stop);
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Ended(result) => return ended(result),
                Event::Watchdog => match activity.verdict(config) {
                    Verdict::Wait(until) => {
                        watchdog.as_mut().reset(until);
                        // Polled again next time, so that it waits for `until`.
                        side.woken.store(true, Ordering::Release);
                    }
                    Verdict::Close(why) => {
                        tracing::debug!(?peer, "closing client connection: {why}");
                        return;
                    }
                },
                Event::Stop => break,
            }
        }
    }
    // A connection accepted a moment ago whose first request is still on its way would be
    // closed unanswered as idle: its client sent a request and gets nothing (a front that
    // stops, as for the supervisor's upgrade, would fail it). It gets a short while for its
    // request to begin; once one is being handled, the shutdown lets it finish.
    let first_request_due = Instant::now() + FIRST_REQUEST_GRACE;
    while activity.served.load(Ordering::Relaxed) == 0
        && activity.busy.load(Ordering::Acquire) == 0
        && Instant::now() < first_request_due
    {
        tokio::select! {
            biased;
            result = connection.as_mut() => return ended(result),
            () = tokio::time::sleep(FIRST_REQUEST_POLL) => {}
        }
    }
    connection.as_mut().graceful_shutdown();
    if let Err(err) = connection.await {
        tracing::debug!(%err, "client connection ended with an error during shutdown");
    }
}

/// What woke the connection's task, as far as [`serve`] is concerned.
enum Event<E> {
    Ended(Result<(), E>),
    Watchdog,
    Stop,
}

/// The waker of the futures polled beside the connection: notes that one of them is ready to
/// be polled, and wakes the connection's task.
struct SideWake {
    /// Set by a wake (and at first: nothing has been polled yet).
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for SideWake {
    fn default() -> SideWake {
        SideWake {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl SideWake {
    /// Keeps `task` as the waker to wake, then says whether the side futures are due a poll.
    /// (Kept first: a wake after the check then wakes the task, which polls them.)
    fn due(&self, task: &Waker) -> bool {
        self.task.register(task);
        self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A client connection that ended by itself (closed, or broken off).
fn ended<E: std::fmt::Display>(result: Result<(), E>) {
    if let Err(err) = result {
        tracing::debug!(%err, "client connection ended with an error");
    }
}

/// At shutdown, how long a connection that has not sent its first request yet gets to start
/// it (a client sends its request right after connecting)...
const FIRST_REQUEST_GRACE: Duration = Duration::from_millis(500);
/// ...looked at this often (only while a front shuts down).
const FIRST_REQUEST_POLL: Duration = Duration::from_millis(5);

/// What the watchdog decides when it wakes.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Wait(Instant),
    Close(&'static str),
}

/// Not set: no byte of a new request head has arrived since the connection went idle.
const NONE: u64 = u64::MAX;

/// Where a connection is between requests, as the requests and the reads report it. Times are
/// milliseconds since `epoch`, in atomics because hyper's IO, the request futures and the
/// watchdog share it across tasks (a tunnel outlives the connection task).
struct Activity {
    epoch: Instant,
    /// Requests whose response has not been fully written yet.
    busy: AtomicUsize,
    /// Responses finished so far.
    served: AtomicU64,
    /// When the last response finished (0: the connection's start).
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived, or [`NONE`].
    head_started: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            epoch: Instant::now(),
            busy: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(NONE),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, millis: u64) -> Instant {
        self.epoch + Duration::from_millis(millis)
    }

    fn bytes_arrived(&self) {
        if self.busy.load(Ordering::Acquire) == 0
            && self.head_started.load(Ordering::Relaxed) == NONE
        {
            self.head_started.store(self.now(), Ordering::Relaxed);
        }
    }

    fn verdict(&self, config: &FrontConfig) -> Verdict {
        let now = self.now();
        if self.busy.load(Ordering::Acquire) > 0 {
            // The request's own timeouts bound it; look again later.
            return Verdict::Wait(self.at(now) + config.header_read_timeout);
        }
        let head_started = self.head_started.load(Ordering::Relaxed);
        let (since, limit, why) = if head_started != NONE {
            (
                head_started,
                config.header_read_timeout,
                "request head not complete within the header read timeout",
            )
        } else if self.served.load(Ordering::Relaxed) == 0 {
            (
                self.idle_since.load(Ordering::Relaxed),
                config.header_read_timeout,
                "no request within the header read timeout of connecting",
            )
        } else {
            (
                self.idle_since.load(Ordering::Relaxed),
                config.keep_alive_timeout,
                "idle longer than the keep-alive timeout",
            )
        };
        let deadline = self.at(since) + limit;
        if self.at(now) >= deadline {
            Verdict::Close(why)
        } else {
            Verdict::Wait(deadline)
        }
    }
}

/// Counts a request from its head until its response has been written (or abandoned).
struct Busy(Arc<Activity>);

impl Busy {
    fn begin(activity: Arc<Activity>) -> Busy {
        activity.busy.fetch_add(1, Ordering::AcqRel);
        Busy(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Relaxed);
        activity.head_started.store(NONE, Ordering::Relaxed);
        activity.served.fetch_add(1, Ordering::Relaxed);
        activity.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project! {
    /// A response body that ends its request's [`Busy`] when hyper is done with it.
    struct Tracked<B> {
        #[pin]
        body: B,
        _busy: Busy,
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pin_project! {
    /// The client stream, noting when the first byte of a request head arrives.
    struct Watched<S> {
        #[pin]
        inner: S,
        activity: Arc<Activity>,
    }
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> FrontConfig {
        FrontConfig {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            ..FrontConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_must_send_a_request_within_the_header_timeout() {
        let activity = Activity::new();
        let start = Instant::now();
        assert_eq!(
            activity.verdict(&config()),
            Verdict::Wait(start + Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(activity.verdict(&config()), Verdict::Close(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_head_is_cut_from_its_first_byte() {
        let activity = Arc::new(Activity::new());
        drop(Busy::begin(Arc::clone(&activity)));
        tokio::time::advance(Duration::from_secs(30)).await;
        activity.bytes_arrived();
        let first_byte = Instant::now();
        assert_eq!(
            activity.verdict(&config()),
            Verdict::Wait(first_byte + Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(activity.verdict(&config()), Verdict::Close(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_a_request_uses_the_keep_alive_timeout_and_busy_never_closes() {
        let activity = Arc::new(Activity::new());
        let busy = Busy::begin(Arc::clone(&activity));
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(matches!(activity.verdict(&config()), Verdict::Wait(_)));
        drop(busy);
        let idle = Instant::now();
        assert_eq!(
            activity.verdict(&config()),
            Verdict::Wait(idle + Duration::from_secs(75))
        );
        tokio::time::advance(Duration::from_secs(75)).await;
        assert!(matches!(activity.verdict(&config()), Verdict::Close(_)));
    }
}
