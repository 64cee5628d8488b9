//! A small blocking client: the CLI makes one or two requests per run, so it needs no runtime.

use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::{PROTOCOL_VERSION, ProtoError, Request, Response, read_frame, write_frame};

/// A connection to the daemon that has passed the version handshake.
pub struct Client {
    stream: UnixStream,
    daemon_version: String,
}

impl Client {
    /// Connects to the socket at `path` and exchanges protocol versions.
    pub fn connect(path: &Path) -> Result<Client, ProtoError> {
        let stream = UnixStream::connect(path).map_err(|error| ProtoError::Connect {
            path: path.display().to_string(),
            error,
        })?;
        let mut client = Client {
            stream,
            daemon_version: String::new(),
        };
        client.send(&Request::Hello {
            protocol: PROTOCOL_VERSION,
        })?;
        match client.recv()? {
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
