//! Opening HTTP/1.1 connections to an instance: TCP connect and handshake under one deadline,
//! with the connection driven by its own task.
//!
//! Connections are hand-rolled with `hyper::client::conn::http1` rather than hyper-util's
//! legacy client so that the front decides per instance what happens: a refused connect is
//! known to have sent nothing (safe to try elsewhere, and a reason to avoid the instance), a
//! request hyper hands back unsent is known never to have been written, in-flight counts and
//! idle connections live with the instance they belong to, and a connection is returned for
//! reuse only when its response body has ended.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty, Limited};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::IdleTimeout;

/// What the front sends to an instance: the client's body (cut when it stalls or passes the
/// size limit), or nothing for a bodiless request.
pub(crate) type UpstreamBody = Either<IdleTimeout<Limited<Incoming>>, Empty<Bytes>>;

/// One open connection to an instance, able to carry one request at a time.
pub(crate) type Sender = SendRequest<UpstreamBody>;

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
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ConnectError::Handshake { addr, source })?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(%addr, %err, "instance connection ended with an error");
            }
        });
        Ok(sender)
    };
    tokio::time::timeout(within, attempt)
        .await
        .unwrap_or(Err(ConnectError::TimedOut {
            addr,
            after: within,
        }))
}
