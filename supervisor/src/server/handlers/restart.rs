//! `Restart`: fresh processes for an app or one kind, bypassing the crash back-off.

use piku_proto::Response;

use crate::server::answer;
use crate::server::wire::Conn;
use crate::supervisor::Supervisor;

/// With a front, web instances are renewed blue/green and `Progress` frames come first.
pub async fn handle(sup: &Supervisor, app: &str, kind: Option<&str>, conn: &mut Conn) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    answer::with_progress(conn, |progress| async move {
        restart(sup, app, kind, &progress).await
    })
    .await
}

async fn restart(
    sup: &Supervisor,
    app: &str,
    kind: Option<&str>,
    progress: &crate::switch::Progress,
) -> Response {
    match sup.restart(app, kind, progress).await {
        Ok(()) => Response::Done {
            message: match kind {
                Some(kind) => format!("restarted {app} {kind}"),
                None => format!("restarted {app}"),
            },
        },
        Err(e) => answer::error(e),
    }
}
