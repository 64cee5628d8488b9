//! `Restart`: fresh processes for an app or one kind, bypassing the crash back-off.

use piku_proto::Response;

use crate::supervisor::Supervisor;

pub async fn handle(sup: &Supervisor, app: &str, kind: Option<&str>) -> Response {
    if let Some(refused) = super::refuse_bad_name(app) {
        return refused;
    }
    match sup.restart(app, kind).await {
        Ok(()) => Response::Done {
            message: match kind {
                Some(kind) => format!("restarted {app} {kind}"),
                None => format!("restarted {app}"),
            },
        },
        Err(e) => super::error(e),
    }
}
