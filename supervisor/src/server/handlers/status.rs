//! `Status`: every instance of one app, or of all apps, with live figures.

use piku_proto::Response;

use crate::server::answer;
use crate::supervisor::Supervisor;

pub fn handle(sup: &Supervisor, app: Option<&str>) -> Response {
    if let Some(app) = app
        && let Some(refused) = answer::refuse_bad_name(app)
    {
        return refused;
    }
    match sup.status(app) {
        Ok(apps) => Response::Status { apps },
        Err(e) => answer::error(e),
    }
}
