//! Reaching the supervisor: the one place that opens `$PIKU_ROOT/supervisor.sock`.
//!
//! Every command that changes or inspects running processes goes through [`connect`], so a
//! stopped daemon always produces the same one-line error telling the operator how to start it.

use std::io::ErrorKind;

use anyhow::{anyhow, bail};
use piku_model::{AppName, PikuRoot};
use piku_proto::{AppStatus, Client, ProtoError, Request, Response};

use crate::output;

/// Connects to `$PIKU_ROOT/supervisor.sock`; the error says how to start the daemon if it is down.
pub fn connect(root: &PikuRoot) -> anyhow::Result<Client> {
    let socket = root.socket();
    Client::connect(&socket).map_err(|err| match &err {
        ProtoError::Connect { error, .. }
            if matches!(
                error.kind(),
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

/// Sends one request, shows the daemon's progress frames as `-----> ` steps, and returns the
/// final answer (a refusal is an error).
pub fn call(root: &PikuRoot, req: &Request) -> anyhow::Result<Response> {
    let mut client = connect(root)?;
    let answer = client.call(req, |interim| {
        if let Response::Progress { message } = interim {
            output::step(message);
        }
    })?;
    Ok(answer)
}

/// Sends a request that changes processes and prints what the daemon says it did: the
/// message of a [`Response::Done`], or the instances an [`Response::Applied`] touched.
pub fn call_done(root: &PikuRoot, req: &Request) -> anyhow::Result<()> {
    match call(root, req)? {
        Response::Done { message } => {
            if !message.trim().is_empty() {
                output::say(message.trim_end());
            }
            Ok(())
        }
        Response::Applied(report) => {
            for (what, names) in [
                ("started", &report.started),
                ("stopped", &report.stopped),
                ("restarted", &report.restarted),
            ] {
                if !names.is_empty() {
                    output::step(format_args!("{what} {}", names.join(", ")));
                }
            }
            Ok(())
        }
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    }
}

/// The daemon's view of every app it knows.
pub fn status_all(root: &PikuRoot) -> anyhow::Result<Vec<AppStatus>> {
    match call(root, &Request::Status { app: None })? {
        Response::Status { apps } => Ok(apps),
        other => bail!("unexpected answer from the supervisor: {other:?}"),
    }
}

/// The daemon's view of one app; `None` if the daemon does not know it (never deployed, or
/// destroyed). Asks for every app so "unknown" is not confused with an error.
pub fn status_of(root: &PikuRoot, app: &AppName) -> anyhow::Result<Option<AppStatus>> {
    Ok(status_all(root)?
        .into_iter()
        .find(|s| s.app == app.as_str()))
}
