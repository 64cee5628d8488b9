//! `Restart`: fresh processes for an app or one kind, bypassing the crash back-off.

use piku_proto::Response;

use crate::app::command::Command;
use crate::registry::Registry;
use crate::server::answer;
use crate::server::wire::Conn;

/// With a front, web instances are renewed blue/green and `Progress` frames come first.
pub async fn handle(apps: &Registry, app: &str, kind: Option<String>, conn: &mut Conn) -> Response {
    if let Some(refused) = answer::refuse_bad_name(app) {
        return refused;
    }
    let message = match &kind {
        Some(kind) => format!("restarted {app} {kind}"),
        None => format!("restarted {app}"),
    };
    answer::with_progress(conn, |progress| async move {
        let restarted = apps
            .request(app, |reply| Command::Restart {
                kind,
                progress,
                reply,
            })
            .await;
        match restarted {
            Ok(()) => Response::Done { message },
            Err(e) => answer::error(e),
        }
    })
    .await
}
