//! Readiness of a fresh instance: does its port accept connections, or does an HTTP path
//! answer 2xx/3xx, before a deadline. Used before an instance is put in a front's set.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How to tell that an instance is ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthCheck {
    /// The port accepts a TCP connection.
    Tcp,
    /// `GET path` answers 2xx or 3xx (piku apps set e.g. `PIKU_HEALTHCHECK=/up`).
    Http { path: String },
}

/// The outcome of the last probe before the deadline passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LastSeen {
    /// Nothing listens on the port yet.
    Refused,
    /// Connecting failed in another way (the text of the OS error).
    ConnectFailed(String),
    /// The probe did not complete before its time ran out.
    TimedOut,
    /// The health path answered with this (non-2xx/3xx) status.
    Status(u16),
    /// The HTTP exchange failed (the text of hyper's error).
    Http(String),
    /// The configured path is not a valid request target.
    BadPath(String),
}

impl fmt::Display for LastSeen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LastSeen::Refused => write!(f, "connection refused"),
            LastSeen::ConnectFailed(err) => write!(f, "connect failed: {err}"),
            LastSeen::TimedOut => write!(f, "timeout (no answer)"),
            LastSeen::Status(status) => write!(f, "status {status}"),
            LastSeen::Http(err) => write!(f, "HTTP error: {err}"),
            LastSeen::BadPath(path) => write!(f, "invalid health check path {path:?}"),
        }
    }
}

/// The instance was not healthy by the deadline.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{addr} not healthy after {waited:.1?}: last probe: {last}")]
pub struct HealthError {
    pub addr: SocketAddr,
    pub waited: Duration,
    pub last: LastSeen,
}

/// Time between probes; a starting app is usually ready within a few of these.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// One probe may take this long at most, so a hung attempt does not use the whole deadline.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Probes `addr` until `check` passes or `deadline` (from now) passes.
pub async fn wait_healthy(
    addr: SocketAddr,
    check: &HealthCheck,
    deadline: Duration,
) -> Result<(), HealthError> {
    let started = Instant::now();
    let give_up = started + deadline;
    let target = match check {
        HealthCheck::Tcp => None,
        HealthCheck::Http { path } => match health_target(path) {
            Ok(uri) => Some(uri),
            Err(last) => {
                return Err(HealthError {
                    addr,
                    waited: Duration::ZERO,
                    last,
                });
            }
        },
    };
    loop {
        let budget = give_up
            .saturating_duration_since(Instant::now())
            .min(PROBE_TIMEOUT);
        let last = match tokio::time::timeout(budget, probe(addr, target.as_ref())).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(last)) => last,
            Err(_) => LastSeen::TimedOut,
        };
        let now = Instant::now();
        if now + PROBE_INTERVAL >= give_up {
            return Err(HealthError {
                addr,
                waited: now - started,
                last,
            });
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

fn health_target(path: &str) -> Result<Uri, LastSeen> {
    let rooted = if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    };
    rooted
        .parse::<Uri>()
        .map_err(|_| LastSeen::BadPath(path.to_owned()))
}

async fn probe(addr: SocketAddr, target: Option<&Uri>) -> Result<(), LastSeen> {
    let stream = TcpStream::connect(addr).await.map_err(|err| {
        if err.kind() == std::io::ErrorKind::ConnectionRefused {
            LastSeen::Refused
        } else {
            LastSeen::ConnectFailed(err.to_string())
        }
    })?;
    let Some(target) = target else {
        return Ok(());
    };
    let (mut sender, conn) = http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|err| LastSeen::Http(err.to_string()))?;
    let driver = tokio::spawn(conn);
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = target.clone();
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::USER_AGENT, HeaderValue::from_static("piku-health"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let answered = sender.send_request(request).await;
    driver.abort();
    let status = answered
        .map_err(|err| LastSeen::Http(err.to_string()))?
        .status();
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(LastSeen::Status(status.as_u16()))
    }
}
