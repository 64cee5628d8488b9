//! Reaching the supervisor: the one place the build side opens `$PIKU_ROOT/supervisor.sock`,
//! so a stopped daemon always gives the same one-line error saying how to start it.

use std::io::ErrorKind;

use piku_model::PikuRoot;
use piku_proto::{Client, ProtoError};

use crate::error::DeployError;

/// Connects to `$PIKU_ROOT/supervisor.sock`; the error says how to start the daemon if it is down.
pub fn connect(root: &PikuRoot) -> Result<Client, DeployError> {
    let socket = root.socket();
    Client::connect(&socket).map_err(|err| match &err {
        ProtoError::Connect { error, .. }
            if matches!(
                error.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused
            ) =>
        {
            DeployError::SupervisorDown {
                socket: socket.clone(),
                root: root.path().to_path_buf(),
            }
        }
        _ => DeployError::Supervisor(err),
    })
}
