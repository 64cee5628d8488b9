//! `Remove`: stop an app and forget it (`destroy`); its log files stay on disk.

use piku_proto::Response;

use crate::app::command::Command;
use crate::registry::Registry;
use crate::server::answer;

pub async fn handle(apps: &Registry, app: &str) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    match apps.request(app, |reply| Command::Remove { reply }).await {
        Ok(()) => Response::Done {
            message: format!("removed {app}"),
        },
        Err(e) => answer::error(e),
    }
}
