//! The tunnel after a protocol switch (websocket, or any `Upgrade`): once both the client and
//! the instance have switched, bytes are copied both ways until either side closes.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::backend::InFlightGuard;
use crate::shutdown::Stopped;

/// Runs the tunnel on its own task. The request stays counted in flight on its instance for as
/// long as the tunnel is open, so draining an instance waits for its websockets (up to the
/// drain bound); `hold` (the client connection's place under the front's connection cap) is
/// kept as long, since hyper has handed the connection over. A front shutdown closes the tunnel.
pub(crate) fn spawn(
    client: OnUpgrade,
    backend: OnUpgrade,
    guard: InFlightGuard,
    hold: impl Send + 'static,
    mut shutdown: Stopped,
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
            () = shutdown.wait() => {}
        }
        drop(guard);
        drop(hold);
    });
}
