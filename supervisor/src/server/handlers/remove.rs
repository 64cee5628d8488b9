//! `Remove`: stop an app and forget it (`destroy`); its log files stay on disk.

use piku_proto::Response;

use crate::server::answer;
use crate::supervisor::Supervisor;

pub async fn handle(sup: &Supervisor, app: &str) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    match sup.remove(app).await {
        Ok(()) => Response::Done {
            message: format!("removed {app}"),
        },
        Err(e) => answer::error(e),
    }
}
