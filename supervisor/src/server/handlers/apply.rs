//! `Apply`: make an app's processes match its desired state.

use piku_proto::{AppSpec, Response};

use crate::server::answer;
use crate::server::wire::Conn;
use crate::supervisor::Supervisor;

/// Answers `Applied` with the instances started, stopped, restarted and left unchanged;
/// a zero-downtime switch sends `Progress` frames first.
pub async fn handle(sup: &Supervisor, spec: AppSpec, conn: &mut Conn) -> Response {
    answer::with_progress(conn, |progress| async move {
        match sup.apply(spec, &progress).await {
            Ok(report) => Response::Applied(report),
            Err(e) => answer::error(e),
        }
    })
    .await
}
