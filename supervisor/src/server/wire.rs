//! The framed connection every request is answered on, and how one frame is sent.

use bytes::Bytes;
use futures_util::SinkExt;
use piku_proto::Response;
use tokio::net::UnixStream;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

pub type Conn = Framed<UnixStream, LengthDelimitedCodec>;

/// Sends one frame; false if the client is gone.
pub async fn send(conn: &mut Conn, resp: &Response) -> bool {
    match serde_json::to_vec(resp) {
        Ok(body) => conn.send(Bytes::from(body)).await.is_ok(),
        Err(e) => {
            tracing::error!("cannot serialise a response: {e}");
            false
        }
    }
}
