//! `Apply`: make an app's processes match its desired state (deploy, rollback, config:set).

use std::sync::Arc;

use piku_proto::{AppSpec, Response};

use crate::registry::Registry;
use crate::server::answer;
use crate::server::wire::Conn;

/// Checks the whole spec first (every problem listed at once; nothing changes on a
/// refusal), then hands it to the app's actor, created for a new app. Answers `Applied`
/// with the instances started, stopped, restarted and left unchanged, and a warning for each
/// limit this host cannot enforce; a zero-downtime switch sends `Progress` frames first.
pub async fn handle(apps: &Arc<Registry>, spec: AppSpec, conn: &mut Conn) -> Response {
    if let Err(problems) = crate::validate::spec(&spec) {
        return Response::Error { message: problems };
    }
    if let Some(port) = crate::app::pinned_port(&spec)
        && let Some(other) = apps.ctx().ports.holder_besides(&spec.app, port)
    {
        return Response::Error {
            message: format!(
                "app {}: port {port} is already used by app {other}",
                spec.app
            ),
        };
    }
    let others = apps.ctx().store.instances_except(&spec.app);
    if let Err(message) = crate::fds::check(&spec.app, crate::validate::instances(&spec), others) {
        return Response::Error { message };
    }
    // Said at every apply, so the push and `config:set` that set a limit both show it.
    let warnings = crate::cgroup::tree().unenforced(&spec.settings.limits);
    answer::with_progress(conn, |progress| async move {
        match apps.apply(spec, progress).await {
            Ok(report) => Response::Applied(piku_proto::ApplyReport { warnings, ..report }),
            Err(e) => answer::error(e),
        }
    })
    .await
}
