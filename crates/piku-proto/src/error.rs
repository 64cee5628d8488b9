//! Errors of the protocol layer.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("cannot reach the supervisor at {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("i/o error on the control socket: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {size} bytes is larger than the {max}-byte limit")]
    FrameTooBig { size: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the supervisor closed the connection")]
    Closed,
    #[error(
        "protocol version mismatch: this piku speaks {ours}, the supervisor {theirs}; restart piku-supervisor after an upgrade"
    )]
    VersionMismatch { ours: u32, theirs: u32 },
    #[error("supervisor refused: {0}")]
    Refused(String),
    #[error("unexpected answer from the supervisor: {0}")]
    Unexpected(String),
}
