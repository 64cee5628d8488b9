//! Reaching the supervisor: the one place that opens `$PIKU_ROOT/supervisor.sock`.
//!
//! Every command that changes or inspects running processes goes through [`connect`], so a
//! stopped daemon always produces the same one-line error telling the operator how to start it.

use std::io::ErrorKind;

use anyhow::anyhow;
use piku_model::PikuRoot;
use piku_proto::{Client, ProtoError};

/// Connects to `$PIKU_ROOT/supervisor.sock`; the error says how to start the daemon if it is down.
pub fn connect(root: &PikuRoot) -> anyhow::Result<Client> {
    let socket = root.socket();
    Client::connect(&socket).map_err(|err| match &err {
        ProtoError::Connect { source, .. }
            if matches!(
                source.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused
            ) =>
        {
            anyhow!(
                "the piku supervisor is not running (no listener on '{}'); start it with \
                 `piku-supervisor --root {}` or `systemctl start piku-supervisor`",
                socket.display(),
                root.path().display()
            )
        }
        _ => anyhow!(err),
    })
}
