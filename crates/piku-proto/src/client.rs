//! A small blocking client: the CLI makes one or two requests per run, so it needs no runtime.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::{PROTOCOL_VERSION, ProtoError, Request, Response, read_frame, write_frame};

/// How long the daemon has to answer the handshake: a daemon that cannot take the connection
/// (every place taken, or stuck) gives a clear error instead of a silent hang.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection to the daemon that has passed the version handshake.
pub struct Client {
    stream: UnixStream,
    daemon_version: String,
}

impl Client {
    /// Connects to the socket at `path` and exchanges protocol versions.
    pub fn connect(path: &Path) -> Result<Client, ProtoError> {
        Client::connect_within(path, HANDSHAKE_TIMEOUT)
    }

    /// [`Client::connect`] with another handshake timeout. Requests after the handshake
    /// have none: a deploy or a `logs --follow` may rightly take long.
    pub fn connect_within(path: &Path, limit: Duration) -> Result<Client, ProtoError> {
        let stream = UnixStream::connect(path).map_err(|error| ProtoError::Connect {
            path: path.display().to_string(),
            error,
        })?;
        let timed_out = |err: ProtoError| match err {
            ProtoError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                ProtoError::Timeout {
                    path: path.display().to_string(),
                    limit,
                }
            }
            other => other,
        };
        stream.set_read_timeout(Some(limit))?;
        stream.set_write_timeout(Some(limit))?;
        let mut client = Client {
            stream,
            daemon_version: String::new(),
        };
        client
            .send(&Request::Hello {
                protocol: PROTOCOL_VERSION,
            })
            .map_err(timed_out)?;
        let answer = client.recv().map_err(timed_out)?;
        client.stream.set_read_timeout(None)?;
        client.stream.set_write_timeout(None)?;
        match answer {
            Response::Welcome {
                protocol,
                daemon_version,
            } if protocol == PROTOCOL_VERSION => {
                client.daemon_version = daemon_version;
                Ok(client)
            }
            Response::Welcome { protocol, .. } => Err(ProtoError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: protocol,
            }),
            Response::Error { message } => Err(ProtoError::Refused(message)),
            other => Err(ProtoError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The daemon's version string, from the handshake.
    pub fn daemon_version(&self) -> &str {
        &self.daemon_version
    }

    pub fn send(&mut self, req: &Request) -> Result<(), ProtoError> {
        write_frame(&mut self.stream, req)
    }

    /// The next frame; [`ProtoError::Closed`] if the daemon hung up.
    pub fn recv(&mut self) -> Result<Response, ProtoError> {
        read_frame(&mut self.stream)?.ok_or(ProtoError::Closed)
    }

    /// Sends `req`, hands every interim frame (progress, log lines) to `on_interim`, and
    /// returns the final one. A final [`Response::Error`] becomes [`ProtoError::Refused`].
    pub fn call(
        &mut self,
        req: &Request,
        mut on_interim: impl FnMut(&Response),
    ) -> Result<Response, ProtoError> {
        self.send(req)?;
        loop {
            let resp = self.recv()?;
            if resp.is_interim() {
                on_interim(&resp);
                continue;
            }
            return match resp {
                Response::Error { message } => Err(ProtoError::Refused(message)),
                other => Ok(other),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_daemon_that_never_answers_is_a_clear_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervisor.sock");
        // Bound and listening, never accepting: the connect succeeds, the handshake waits.
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let started = std::time::Instant::now();
        let err = Client::connect_within(&path, Duration::from_millis(200))
            .err()
            .expect("no answer");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            err.to_string(),
            format!(
                "the supervisor at {} did not answer within 200ms; it may be overloaded or stuck \
                 (see its log)",
                path.display()
            )
        );
    }
}
