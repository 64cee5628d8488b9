//! `Stop`: stop every process of an app and remember that it is stopped.

use piku_proto::Response;

use crate::server::answer;
use crate::supervisor::Supervisor;

pub async fn handle(sup: &Supervisor, app: &str) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    match sup.stop(app).await {
        Ok(()) => Response::Done {
            message: format!("stopped {app}"),
        },
        Err(e) => answer::error(e),
    }
}
