//! The tunnel after a protocol switch (websocket, or any `Upgrade`): once both the client and
//! the backend have switched, bytes are copied both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::backend::InFlightGuard;
use crate::front::stopped;

/// Runs the tunnel on its own task. The request stays counted in flight on its backend for as
/// long as the tunnel is open, so draining an instance waits for its websockets (up to the
/// drain bound). A front shutdown closes the tunnel.
pub(crate) fn spawn_tunnel(
    client: OnUpgrade,
    backend: OnUpgrade,
    guard: InFlightGuard,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(both) => both,
            Err(err) => {
                tracing::debug!(%err, "protocol switch did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                if let Err(err) = copied {
                    tracing::debug!(%err, "upgraded connection ended with an error");
                }
            }
            _ = stopped(&mut shutdown) => {}
        }
        drop(guard);
    });
}
