//! The control socket: accepts connections, checks who is calling, runs the handshake and
//! hands each request to its handler (`handlers/<request>.rs`).
//!
//! Each connection is its own task and everything it does is bounded (frame size, handshake
//! time, idle time, number of connections), so a misbehaving client can neither crash nor
//! stall the daemon: at worst it gets an `Error` frame and is closed.

mod answer;
mod connection;
mod handlers;
mod shutdown;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{Semaphore, watch};

use self::shutdown::stopped;
use crate::registry::Registry;

/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// The connections still open once the server stopped accepting.
pub struct Open(Arc<Semaphore>);

impl Open {
    /// Waits until every connection has closed (its request answered); false after `within`.
    pub async fn closed(&self, within: Duration) -> bool {
        let all = MAX_CONNECTIONS as u32;
        tokio::time::timeout(within, self.0.acquire_many(all))
            .await
            .is_ok_and(|permits| permits.is_ok())
    }
}

/// Serves until `shutdown` turns true; then returns the connections still open.
pub async fn serve(
    listener: UnixListener,
    apps: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) -> Open {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return Open(permits), // the semaphore is never closed
            },
            () = stopped(&mut shutdown) => return Open(permits),
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => return Open(permits),
        };
        let (apps, shutdown) = (apps.clone(), shutdown.clone());
        tokio::spawn(async move {
            connection::serve(stream, apps, own_uid, shutdown).await;
            drop(permit);
        });
    }
}
