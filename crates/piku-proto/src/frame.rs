//! Framing: a 4-byte big-endian payload length, then that many bytes of JSON.
//!
//! This is the same layout as `tokio_util::codec::LengthDelimitedCodec`'s default, so the
//! daemon uses that codec (with [`MAX_FRAME_BYTES`]) and the blocking CLI uses these two
//! functions. JSON keeps the socket debuggable with `socat` and a hex dump.

use std::io::{Read, Write};

use serde::{Serialize, de::DeserializeOwned};

use crate::ProtoError;

/// Largest payload either side accepts. An `Apply` with a big environment fits easily;
/// anything larger is a bug or an attack and is refused before it is buffered.
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Serialises `msg` and writes it as one frame.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), ProtoError> {
    let body = serde_json::to_vec(msg)?;
    if body.len() > MAX_FRAME_BYTES {
        return Err(ProtoError::FrameTooBig {
            size: body.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let len = u32::try_from(body.len()).map_err(|_| ProtoError::FrameTooBig {
        size: body.len(),
        max: MAX_FRAME_BYTES,
    })?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a header.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<Option<T>, ProtoError> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = u32::from_be_bytes(header) as usize;
    if size > MAX_FRAME_BYTES {
        return Err(ProtoError::FrameTooBig {
            size,
            max: MAX_FRAME_BYTES,
        });
    }
    let mut body = vec![0u8; size];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtoError::Closed
        } else {
            e.into()
        }
    })?;
    Ok(Some(serde_json::from_slice(&body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Request, Response};

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Status { app: None }).unwrap();
        let back: Request = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert!(matches!(back, Request::Status { app: None }));
    }

    #[test]
    fn empty_stream_is_clean_end() {
        let got: Option<Response> = read_frame(&mut [].as_slice()).unwrap();
        assert!(got.is_none());
    }

    #[test]
    fn oversized_header_is_refused_without_reading_body() {
        let header = ((MAX_FRAME_BYTES + 1) as u32).to_be_bytes();
        let err = read_frame::<_, Request>(&mut header.as_slice()).unwrap_err();
        assert!(matches!(err, ProtoError::FrameTooBig { .. }), "{err}");
    }

    #[test]
    fn truncated_body_is_an_error() {
        let mut buf = 10u32.to_be_bytes().to_vec();
        buf.extend_from_slice(b"{\"ty");
        let err = read_frame::<_, Request>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, ProtoError::Closed), "{err}");
    }

    #[test]
    fn garbage_body_is_malformed() {
        let mut buf = 3u32.to_be_bytes().to_vec();
        buf.extend_from_slice(b"}{!");
        let err = read_frame::<_, Request>(&mut buf.as_slice()).unwrap_err();
        assert!(matches!(err, ProtoError::Malformed(_)), "{err}");
    }
}
