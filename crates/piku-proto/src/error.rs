//! Errors of the protocol layer.
//!
//! Every message is complete on its own, lower-level cause included, and no variant exposes that
//! cause again through `source()`: an error chain printed with `{:#}` (anyhow's one-line form)
//! says each cause once.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("cannot reach the supervisor at {path}: {error}")]
    Connect { path: String, error: io::Error },
    #[error(
        "the supervisor at {path} did not answer within {limit:?}; it may be overloaded or stuck (see its log)"
    )]
    Timeout {
        path: String,
        limit: std::time::Duration,
    },
    #[error("i/o error on the control socket: {0}")]
    Io(io::Error),
    #[error("frame of {size} bytes is larger than the {max}-byte limit")]
    FrameTooBig { size: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(serde_json::Error),
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

// Written out rather than `#[from]`, which would also make the cause the `source()`.
impl From<io::Error> for ProtoError {
    fn from(error: io::Error) -> ProtoError {
        ProtoError::Io(error)
    }
}

impl From<serde_json::Error> for ProtoError {
    fn from(error: serde_json::Error) -> ProtoError {
        ProtoError::Malformed(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn each_cause_is_printed_once() {
        let denied = || io::Error::new(io::ErrorKind::PermissionDenied, "denied");
        let json = serde_json::from_str::<u32>("x").unwrap_err();
        for err in [
            ProtoError::Connect {
                path: "/r/supervisor.sock".into(),
                error: denied(),
            },
            ProtoError::from(denied()),
            ProtoError::from(json),
        ] {
            assert!(err.source().is_none(), "{err}");
        }
        let err = ProtoError::Connect {
            path: "/r/supervisor.sock".into(),
            error: denied(),
        };
        assert_eq!(
            err.to_string(),
            "cannot reach the supervisor at /r/supervisor.sock: denied"
        );
    }
}
