//! `Remove`: stop an app and forget it (`destroy`); its log files stay on disk.

use piku_proto::Response;

use crate::supervisor::Supervisor;

pub async fn handle(sup: &Supervisor, app: &str) -> Response {
    if let Err(refused) = super::check_app(app) {
        return refused;
    }
    match sup.remove(app).await {
        Ok(()) => Response::Done {
            message: format!("removed {app}"),
        },
        Err(e) => super::error(e),
    }
}
