//! `Front`: the reverse proxy for one app — its listeners, its backend set and its shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::backend::Backend;
use crate::config::FrontConfig;
use crate::headers::Peer;
use crate::pool::Pool;
use crate::proxy;

/// What every listener task and request of a front shares.
pub(crate) struct Shared {
    pub(crate) config: FrontConfig,
    pub(crate) pool: Pool,
    /// `true` once [`Front::shutdown`] was called.
    pub(crate) shutdown: watch::Sender<bool>,
}

/// The HTTP/1.1 reverse proxy for one app. Cheap to clone; clones share everything.
///
/// Zero-downtime switch, as the supervisor drives it: start the new instances, wait for
/// [`wait_healthy`](crate::wait_healthy), [`set_backends`](Front::set_backends) with the new set,
/// [`drained`](Front::drained) with the old ids and a bound, then stop the old instances.
#[derive(Clone)]
pub struct Front {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("backends", &self.backends())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Front {
    /// A front with no backends (requests get 502 until [`set_backends`](Front::set_backends)).
    pub fn new(config: FrontConfig) -> Front {
        Front {
            shared: Arc::new(Shared {
                config,
                pool: Pool::new(),
                shutdown: watch::Sender::new(false),
            }),
        }
    }

    pub fn config(&self) -> &FrontConfig {
        &self.shared.config
    }

    /// Replaces the backend set atomically: once this returns, every new request goes to the
    /// new set; requests already on old backends finish there.
    pub fn set_backends(&self, backends: Vec<Backend>) {
        self.shared.pool.set(backends);
    }

    /// The current backend set.
    pub fn backends(&self) -> Vec<Backend> {
        self.shared
            .pool
            .snapshot()
            .iter()
            .map(|state| state.backend.clone())
            .collect()
    }

    /// Requests (and open upgraded connections) currently on the backend `id`, whether or not
    /// it is still in the set. 0 for an unknown id.
    pub fn in_flight(&self, id: &str) -> usize {
        self.shared.pool.in_flight(id)
    }

    /// Waits until none of `ids` has a request in flight; `false` if some still do after `timeout`.
    pub async fn drained<S: AsRef<str>>(&self, ids: &[S], timeout: Duration) -> bool {
        self.shared.pool.drained(ids, timeout).await
    }

    /// Stops every `serve_*` of this front (and its open tunnels). Idempotent and final: a
    /// `serve_*` called afterwards returns at once.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Serves clients accepted on `listener` (the app's public `$BIND_ADDRESS:$PORT`) until
    /// [`shutdown`](Front::shutdown); then lets open connections finish their current request
    /// for up to `shutdown_grace` and returns. Clients' `X-Forwarded-Proto/Host/Port` are
    /// overwritten here: anyone can reach this port.
    pub async fn serve_tcp(&self, listener: TcpListener) {
        self.serve(|| async {
            let (stream, remote) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let peer = Peer {
                ip: Some(remote.ip()),
                local_port: stream.local_addr().ok().as_ref().map(SocketAddr::port),
                trusted: false,
            };
            Ok((stream, peer))
        })
        .await;
    }

    /// Like [`serve_tcp`](Front::serve_tcp) for the Unix socket nginx proxies to; the
    /// `X-Forwarded-*` nginx sets are kept.
    pub async fn serve_unix(&self, listener: UnixListener) {
        self.serve(|| async {
            let (stream, _) = listener.accept().await?;
            let peer = Peer {
                ip: None,
                local_port: None,
                trusted: true,
            };
            Ok((stream, peer))
        })
        .await;
    }

    async fn serve<S, F, A>(&self, mut accept: A)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: Future<Output = std::io::Result<(S, Peer)>>,
        A: FnMut() -> F,
    {
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // Covers both a slow request head and a keep-alive connection left idle: hyper
            // starts this timer whenever it waits for a request head.
            .header_read_timeout(self.shared.config.idle_timeout)
            .keep_alive(true);
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(serve_connection(
                            Arc::clone(&self.shared),
                            builder.clone(),
                            stream,
                            peer,
                        ));
                    }
                    Err(err) => {
                        // Out of file descriptors and the like: the listener itself is fine.
                        tracing::warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stopped(&mut shutdown) => break,
                // Reap finished connection tasks so the set does not grow without bound.
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        let grace = self.shared.config.shutdown_grace;
        let finished = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                open = connections.len(),
                "connections still open after {grace:?}; closing them"
            );
            connections.shutdown().await;
        }
    }
}

async fn serve_connection<S>(shared: Arc<Shared>, builder: http1::Builder, stream: S, peer: Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = shared.shutdown.subscribe();
    let service = {
        let shared = Arc::clone(&shared);
        service_fn(move |request| proxy::handle(Arc::clone(&shared), peer, request))
    };
    let connection = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped(&mut shutdown) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "client connection ended with an error");
    }
}

/// Resolves once the front is shut down (or dropped). The borrow of the watched value ends
/// inside, so callers' futures stay `Send`.
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
