//! `Apply`: make an app's processes match its desired state.

use piku_proto::{AppSpec, Response};

use crate::supervisor::Supervisor;

/// Answers `Applied` with the instances started, stopped, restarted and left unchanged.
pub async fn handle(sup: &Supervisor, spec: AppSpec) -> Response {
    match sup.apply(spec).await {
        Ok(report) => Response::Applied(report),
        Err(e) => super::error(e),
    }
}
