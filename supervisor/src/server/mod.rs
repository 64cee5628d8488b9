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
mod slots;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::watch;

use self::shutdown::stopped;
use self::slots::Slots;
use crate::registry::Registry;

/// The connections still open once the server stopped accepting.
pub struct Open(Arc<Slots>);

impl Open {
    /// Waits until every connection has closed (its request answered); false after `within`.
    pub async fn closed(&self, within: Duration) -> bool {
        self.0.all_free(within).await
    }
}

/// Serves until `shutdown` turns true; then returns the connections still open.
pub async fn serve(
    listener: UnixListener,
    apps: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) -> Open {
    let slots = Slots::new();
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
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
            () = stopped(&mut shutdown) => return Open(slots.clone()),
        };
        // Accepted first, then placed: a full table closes an idle client only for a real
        // newcomer. Until a place is free nothing more is accepted (one descriptor at most).
        let slot = tokio::select! {
            slot = slots.take() => match slot {
                Some(slot) => slot,
                None => return Open(slots.clone()),
            },
            () = stopped(&mut shutdown) => return Open(slots.clone()),
        };
        let (apps, shutdown) = (apps.clone(), shutdown.clone());
        tokio::spawn(connection::serve(stream, apps, own_uid, slot, shutdown));
    }
}
