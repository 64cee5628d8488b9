//! `Status`: every instance of one app, or of all apps, with live figures. Answered by each
//! app's actor at once, even while it carries out a change.

use piku_proto::Response;

use crate::registry::Registry;
use crate::server::answer;

pub async fn handle(apps: &Registry, app: Option<&str>) -> Response {
    if let Some(app) = app
        && let Some(refused) = answer::refuse_bad_name(app)
    {
        return refused;
    }
    match apps.status(app).await {
        Ok(apps) => Response::Status { apps },
        Err(e) => answer::error(e),
    }
}
