//! Opening HTTP/1.1 connections to an instance: TCP connect and handshake under one deadline,
//! with the connection driven by its own task.
//!
//! Connections are hand-rolled with `hyper::client::conn::http1` rather than hyper-util's
//! legacy client so that the front decides per instance what happens: a refused connect is
//! known to have sent nothing (safe to try elsewhere, and a reason to avoid the instance), a
//! request hyper hands back unsent is known never to have been written, in-flight counts and
//! idle connections live with the instance they belong to, and a connection is returned for
//! reuse only when its response body has ended.
//!
//! A kept-alive connection the instance has closed (it crashed, or timed the connection out)
//! must be found closed *before* a request is written on it: afterwards the front cannot tell
//! whether the instance read the request, so it may not send it anywhere else. hyper looks
//! for the close before it writes, but only through the runtime's cached readiness, which
//! lags the kernel by up to a whole scheduler turn on a busy front. So the first read hyper
//! attempts after a connection is taken out of the pool asks the kernel itself ([`Probed`]).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::IdleTimeout;

/// What the front sends to an instance: the client's body (cut when it stalls or passes the
/// size limit), or nothing for a bodiless request.
pub(crate) type UpstreamBody = Either<IdleTimeout<Limited<Incoming>>, Empty<Bytes>>;

/// One open connection to an instance, able to carry one request at a time.
pub(crate) struct Sender {
    send: SendRequest<UpstreamBody>,
    /// Shared with the connection's [`Probed`] stream.
    probe: Arc<AtomicBool>,
}

impl Sender {
    /// Waits until the connection can take a request; an error means it is closed.
    pub(crate) async fn ready(&mut self) -> hyper::Result<()> {
        self.send.ready().await
    }

    /// Sends `request`; hyper hands it back inside the error when it was never written.
    pub(crate) fn try_send_request(
        &mut self,
        request: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>>> {
        self.send.try_send_request(request)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// The connection is taken out of the pool for a request: before hyper writes it, the
    /// kernel is asked whether the instance closed the connection meanwhile (one `recv`
    /// with `MSG_PEEK` per reused connection, none on a fresh one).
    pub(crate) fn probe_before_use(&self) {
        self.probe.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("connect to {addr} failed: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {after:?}")]
    TimedOut { addr: SocketAddr, after: Duration },
    #[error("HTTP handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: hyper::Error,
    },
}

/// Opens a connection to `addr` and spawns the task that drives it (it ends when the
/// [`Sender`] is dropped and the last response is read, or the instance closes).
pub(crate) async fn connect(addr: SocketAddr, within: Duration) -> Result<Sender, ConnectError> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ConnectError::Io { addr, source })?;
        // Requests and responses are written in few large writes already; Nagle only adds latency.
        let _ = stream.set_nodelay(true);
        let probe = Arc::new(AtomicBool::new(false));
        let io = Probed {
            io: TokioIo::new(stream),
            probe: Arc::clone(&probe),
        };
        let (send, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(%addr, %err, "instance connection ended with an error");
            }
        });
        Ok(Sender { send, probe })
    };
    tokio::time::timeout(within, attempt)
        .await
        .unwrap_or(Err(ConnectError::TimedOut {
            addr,
            after: within,
        }))
}

/// The stream hyper drives, which can be told ([`Sender::probe_before_use`]) to look at the
/// socket itself on hyper's next read.
///
/// hyper's dispatcher reads before it writes: on a kept-alive connection that read is its
/// check for a close, and a request handed to it meanwhile is given back unwritten
/// (`TrySendError::take_message`) if it finds one. But the read goes through the runtime's
/// readiness, which learns of the instance's FIN only when the I/O driver next polls — on a
/// busy runtime, after the request has already been written to the dead connection. So when
/// probed and that read is pending, the kernel is asked directly: end of stream or an error
/// are reported to hyper as the read's result, and the request comes back unsent.
struct Probed {
    io: TokioIo<TcpStream>,
    probe: Arc<AtomicBool>,
}

impl Read for Probed {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        // A plain load first: on every other read nothing is written.
        if !this.probe.load(Ordering::Relaxed) {
            return polled;
        }
        this.probe.store(false, Ordering::Relaxed);
        if polled.is_ready() {
            // The runtime knew already, and hyper got it.
            return polled;
        }
        // Pending: the waker is registered, so returning Pending again below is sound.
        let mut byte = [MaybeUninit::<u8>::uninit()];
        let peeked = socket2::SockRef::from(this.io.inner()).peek(&mut byte);
        let closed = match peeked {
            // Open, with nothing (or bytes the runtime will report soon) to read.
            Ok(1..) => return Poll::Pending,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                return Poll::Pending;
            }
            // The instance closed it: the end of stream, which hyper takes for a close.
            Ok(0) => Ok(()),
            // Reset: hyper closes the connection.
            Err(err) => Err(err),
        };
        tracing::debug!(result = ?closed, "kept-alive connection found closed by the kernel before the runtime knew");
        Poll::Ready(closed)
    }
}

impl Write for Probed {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::net::{Shutdown, TcpListener};
    use std::sync::mpsc;

    /// Whether the kernel has this side of the connection from local `port` in CLOSE_WAIT: the
    /// instance's FIN has arrived (whatever the runtime knows of it).
    fn close_wait(port: u16) -> bool {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        table.lines().skip(1).any(|line| {
            let mut fields = line.split_whitespace().skip(1);
            let local = fields.next().unwrap_or("");
            let state = fields.nth(1).unwrap_or("");
            local.ends_with(&format!(":{port:04X}")) && state == "08"
        })
    }

    fn get(path: &str) -> Request<UpstreamBody> {
        Request::get(path)
            .header("host", "app.test")
            .body(Either::Right(Empty::new()))
            .unwrap()
    }

    /// The race behind 502s when an instance dies under load: its kept-alive connection is
    /// closed in the kernel, but the runtime's I/O driver has not polled since, so hyper's own
    /// check before writing sees nothing. The test holds the (current-thread) runtime while
    /// the instance closes, so the driver cannot run before the connection task does.
    #[tokio::test]
    async fn a_connection_the_instance_closed_gives_the_request_back_before_the_driver_knows() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closing) = mpsc::channel::<()>();
        let (closed, was_closed) = mpsc::channel::<u16>();
        let instance = std::thread::spawn(move || {
            let (mut stream, peer) = listener.accept().unwrap();
            let mut requests = 0;
            let mut buf = [0u8; 1024];
            let mut head = Vec::new();
            // One request answered, then closed on the test's word; what was read is counted.
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "the request comes");
                head.extend_from_slice(&buf[..n]);
            }
            requests += 1;
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
            closing.recv().unwrap();
            stream.shutdown(Shutdown::Both).unwrap();
            drop(stream);
            closed.send(peer.port()).unwrap();
            requests
        });

        let mut conn = connect(addr, Duration::from_secs(10)).await.unwrap();
        let response = conn
            .try_send_request(get("/first"))
            .await
            .map_err(TrySendError::into_error)
            .unwrap();
        assert_eq!(response.status(), 200);
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        conn.ready().await.unwrap();
        // Let the connection task settle into its idle wait.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }

        // Blocking on purpose: the runtime's only thread waits while the instance closes.
        close.send(()).unwrap();
        let port = was_closed.recv().unwrap();
        while !close_wait(port) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(!conn.is_closed(), "the runtime has not seen the close yet");

        // What `BackendState::take_idle` does when it hands the connection out.
        conn.probe_before_use();
        let Err(mut failed) = conn.try_send_request(get("/second")).await else {
            panic!("the connection is closed");
        };
        let unsent = failed.take_message().expect("handed back unwritten");
        assert_eq!(unsent.uri(), "/second");
        assert_eq!(instance.join().unwrap(), 1);
    }
}
