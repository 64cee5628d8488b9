//! `Front`: the public handle of one app's reverse proxy — its listeners and their connection
//! cap, its backend set, what it reports about instances, and its shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinSet;

use crate::backend::{Backend, BackendEvent, BackendStats};
use crate::config::FrontConfig;
use crate::connection;
use crate::headers::Peer;
use crate::proxy::Proxy;

/// The HTTP/1.1 reverse proxy for one app. Cheap to clone; clones share everything.
///
/// Zero-downtime switch, as the supervisor drives it: start the new instances, wait for
/// [`wait_healthy`](crate::wait_healthy), [`set_backends`](Front::set_backends) with the new set,
/// [`drained`](Front::drained) with the old ids and a bound, then stop the old instances.
#[derive(Clone)]
pub struct Front {
    proxy: Arc<Proxy>,
    /// One permit per open client connection, shared by every listener of the front.
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front")
            .field("backends", &self.backends())
            .field("connections", &self.connections())
            .field("config", &self.proxy.config)
            .finish()
    }
}

impl Front {
    /// A front with no backends (requests get 502 until [`set_backends`](Front::set_backends)).
    pub fn new(config: FrontConfig) -> Front {
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        Front {
            proxy: Arc::new(Proxy::new(config)),
            slots,
        }
    }

    pub fn config(&self) -> &FrontConfig {
        &self.proxy.config
    }

    /// Replaces the backend set atomically: once this returns, every new request goes to the
    /// new set; requests already on old backends finish there.
    pub fn set_backends(&self, backends: Vec<Backend>) {
        self.proxy.pool.set(backends);
    }

    /// The current backend set.
    pub fn backends(&self) -> Vec<Backend> {
        self.proxy
            .pool
            .snapshot()
            .iter()
            .map(|state| state.backend.clone())
            .collect()
    }

    /// Counters and health of every backend in the current set.
    pub fn backend_stats(&self) -> Vec<BackendStats> {
        self.proxy.pool.stats()
    }

    /// Changes of an instance's health as the front sees them (today: wedged, recovered).
    /// Every subscriber gets every event sent after it subscribed; one that falls more than 64
    /// events behind misses the oldest (its next `recv` says how many) and can read the
    /// current state from [`backend_stats`](Front::backend_stats).
    pub fn events(&self) -> broadcast::Receiver<BackendEvent> {
        self.proxy.events.subscribe()
    }

    /// Requests (and open upgraded connections) currently on the backend `id`, whether or not
    /// it is still in the set. 0 for an unknown id.
    pub fn in_flight(&self, id: &str) -> usize {
        self.proxy.pool.in_flight(id)
    }

    /// Waits until none of `ids` has a request in flight; `false` if some still do after `timeout`.
    pub async fn drained<S: AsRef<str>>(&self, ids: &[S], timeout: Duration) -> bool {
        self.proxy.pool.drained(ids, timeout).await
    }

    /// Open client connections (upgraded ones included), at most
    /// [`FrontConfig::max_connections`].
    pub fn connections(&self) -> usize {
        self.proxy
            .config
            .max_connections
            .max(1)
            .saturating_sub(self.slots.available_permits())
    }

    /// Stops every `serve_*` of this front (and its open tunnels). Idempotent and final: a
    /// `serve_*` called afterwards returns at once.
    pub fn shutdown(&self) {
        self.proxy.shutdown.trigger();
    }

    /// Serves clients accepted on `listener` (the app's public `$BIND_ADDRESS:$PORT`) until
    /// [`shutdown`](Front::shutdown); then lets open connections finish their current request
    /// for up to `shutdown_grace` and returns. Anyone can reach this port, so the client
    /// address fields the app sees (`X-Forwarded-*`, `X-Real-IP`, `X-Remote-Address`) are
    /// set here from the peer, never taken from the client.
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

    /// Like [`serve_tcp`](Front::serve_tcp) for the Unix socket nginx proxies to; the client
    /// address fields nginx sets are kept.
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
        let mut shutdown = self.proxy.shutdown.subscribe();
        let mut connections = JoinSet::new();
        'serving: while !self.proxy.shutdown.is_triggered() {
            // A place under the cap first, then a connection: past the cap new clients wait in
            // the listen backlog (holding none of the daemon's file descriptors) until an open
            // connection closes.
            let slot = match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    tracing::warn!(
                        cap = self.proxy.config.max_connections,
                        "front at its connection cap; new connections wait until one closes"
                    );
                    loop {
                        tokio::select! {
                            slot = Arc::clone(&self.slots).acquire_owned() => match slot {
                                Ok(slot) => break slot,
                                Err(_) => break 'serving,
                            },
                            () = shutdown.wait() => break 'serving,
                            Some(_) = connections.join_next(), if !connections.is_empty() => {}
                        }
                    }
                }
            };
            loop {
                tokio::select! {
                    accepted = accept() => match accepted {
                        Ok((stream, peer)) => {
                            connections.spawn(connection::serve(
                                Arc::clone(&self.proxy),
                                stream,
                                peer,
                                Arc::new(slot),
                            ));
                            break;
                        }
                        Err(err) => {
                            // Out of file descriptors and the like: the listener itself is fine.
                            tracing::warn!(%err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    () = shutdown.wait() => break 'serving,
                    // Reap finished connection tasks so the set does not grow without bound.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }
        let grace = self.proxy.config.shutdown_grace;
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
