//! `Start`: run a stopped app again at its formation.

use piku_proto::Response;

use crate::server::answer;
use crate::supervisor::Supervisor;

pub async fn handle(sup: &Supervisor, app: &str) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    match sup.start(app).await {
        Ok(report) => Response::Done {
            message: format!(
                "started {app} ({} processes)",
                report.started.len() + report.unchanged.len()
            ),
        },
        Err(e) => answer::error(e),
    }
}
