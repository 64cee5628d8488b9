//! The commands' requests to the supervisor: one call with its progress shown as `-----> `
//! steps, the answers of the process commands, and status. The socket is opened by
//! [`piku_deploy::supervisor::connect`], the one place that does, so a stopped daemon always
//! gives the same one-line error telling the operator how to start it.

use anyhow::bail;
use piku_model::{AppName, InstanceId, PikuRoot};
use piku_proto::{AppStatus, Client, InstanceStatus, Request, Response};

use crate::output;

/// Connects to `$PIKU_ROOT/supervisor.sock`; the error says how to start the daemon if it is down.
pub fn connect(root: &PikuRoot) -> anyhow::Result<Client> {
    Ok(piku_deploy::supervisor::connect(root)?)
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

/// The instance's id (`web.1`), the name it has in `ps`, logs and reports.
pub fn instance_id(instance: &InstanceStatus) -> InstanceId {
    InstanceId::new(instance.kind.as_str(), instance.index)
}
