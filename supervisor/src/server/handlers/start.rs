//! `Start`: run a stopped app again at its formation.

use piku_proto::Response;

use crate::app::command::Command;
use crate::registry::Registry;
use crate::server::answer;
use crate::server::wire::Conn;

pub async fn handle(apps: &Registry, app: &str, conn: &mut Conn) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    answer::with_progress(conn, |progress| async move {
        match apps
            .request(app, |reply| Command::Start { progress, reply })
            .await
        {
            Ok(report) => Response::Done {
                message: format!(
                    "started {app} ({} processes)",
                    report.started.len() + report.unchanged.len()
                ),
            },
            Err(e) => answer::error(e),
        }
    })
    .await
}
