//! `Stop`: stop every process of an app and remember that it is stopped.

use piku_proto::Response;

use crate::app::command::Command;
use crate::registry::Registry;
use crate::server::answer;

pub async fn handle(apps: &Registry, app: &str) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    match apps.request(app, |reply| Command::Stop { reply }).await {
        Ok(()) => Response::Done {
            message: format!("stopped {app}"),
        },
        Err(e) => answer::error(e),
    }
}
