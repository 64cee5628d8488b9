//! One client connection: peer check, handshake, then requests until the client hangs up.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use piku_proto::{MAX_FRAME_BYTES, PROTOCOL_VERSION, Request, Response};
use tokio::net::UnixStream;
use tokio::time::timeout;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::registry::Registry;
use crate::server::handlers;
use crate::server::slots::Slot;
use crate::server::wire::{Conn, send};

/// Time a client has to complete the handshake after connecting.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may stay silent between requests.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

async fn refuse(conn: &mut Conn, message: String) {
    tracing::debug!("refusing a client: {message}");
    let _ = send(conn, &Response::Error { message }).await;
}

/// The next request; `Err` carries the message to refuse the client with, `Ok(None)` is a
/// clean hang-up.
async fn next_request(conn: &mut Conn) -> Result<Option<Request>, String> {
    match conn.next().await {
        None => Ok(None),
        Some(Err(e)) => Err(format!("bad frame: {e} (at most {MAX_FRAME_BYTES} bytes)")),
        Some(Ok(bytes)) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("malformed request: {e}")),
    }
}

/// `shutdown` ends a `logs --follow` at once, so a following client never holds the
/// daemon's exit.
pub async fn serve(
    stream: UnixStream,
    apps: Arc<Registry>,
    own_uid: u32,
    slot: Slot,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let peer = stream.peer_cred();
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec();
    let mut conn = Framed::new(stream, codec);

    // Only our own user and root may drive the daemon (the socket is 0600 as well; this
    // holds even if someone loosens its mode).
    match peer {
        Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => {}
        Ok(cred) => {
            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "refused a client of another user");
            refuse(
                &mut conn,
                format!("uid {} may not control this supervisor", cred.uid()),
            )
            .await;
            return;
        }
        Err(e) => {
            refuse(&mut conn, format!("cannot identify the caller: {e}")).await;
            return;
        }
    }

    let handshake = tokio::select! {
        answer = timeout(HANDSHAKE_TIMEOUT, next_request(&mut conn)) => answer,
        () = slot.evicted.cancelled() => return,
    };
    match handshake {
        Err(_) => return refuse(&mut conn, "no handshake in time".into()).await,
        Ok(Err(message)) => return refuse(&mut conn, message).await,
        Ok(Ok(None)) => return,
        Ok(Ok(Some(Request::Hello { protocol }))) if protocol == PROTOCOL_VERSION => {
            let welcome = Response::Welcome {
                protocol: PROTOCOL_VERSION,
                daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            if !send(&mut conn, &welcome).await {
                return;
            }
        }
        Ok(Ok(Some(Request::Hello { protocol }))) => {
            return refuse(
                &mut conn,
                format!(
                    "protocol version mismatch: the client speaks {protocol}, this supervisor \
                     {PROTOCOL_VERSION}; restart piku-supervisor after an upgrade"
                ),
            )
            .await;
        }
        Ok(Ok(Some(_))) => {
            return refuse(&mut conn, "the first request must be hello".into()).await;
        }
    }

    loop {
        slot.set_idle(true);
        let next = tokio::select! {
            next = timeout(IDLE_TIMEOUT, next_request(&mut conn)) => next,
            // Closed to make room for a newcomer while every connection was taken.
            () = slot.evicted.cancelled() => return,
        };
        slot.set_idle(false);
        let request = match next {
            Err(_) | Ok(Ok(None)) => return,
            Ok(Err(message)) => return refuse(&mut conn, message).await,
            Ok(Ok(Some(request))) => request,
        };
        let response = handlers::handle(&apps, request, &mut conn, &slot, &mut shutdown).await;
        match response {
            Some(resp) => {
                if !send(&mut conn, &resp).await {
                    return;
                }
            }
            None => return,
        }
    }
}
