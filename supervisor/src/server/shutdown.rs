//! The daemon's "stop serving" signal as the server's tasks see it.

use tokio::sync::watch;

/// Resolves once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, inside.
    let _ = shutdown.wait_for(|stop| *stop).await.map(|_| ());
}
