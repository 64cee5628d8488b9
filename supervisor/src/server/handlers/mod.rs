//! One file per request kind: find the code of a request by its name.

mod apply;
mod logs;
mod remove;
mod restart;
mod scale;
mod start;
mod status;
mod stop;

use piku_proto::{Request, Response};
use tokio::sync::watch;

use std::sync::Arc;

use crate::registry::Registry;
use crate::server::slots::Slot;
use crate::server::wire::Conn;

/// Answers one request after the handshake: the final frame, or `None` when the connection
/// is finished (a `logs --follow` whose client hung up).
pub async fn handle(
    apps: &Arc<Registry>,
    request: Request,
    conn: &mut Conn,
    slot: &Slot,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Response> {
    match request {
        Request::Hello { .. } => Some(Response::Error {
            message: "already greeted".into(),
        }),
        Request::Apply(spec) => Some(apply::handle(apps, *spec, conn).await),
        Request::Scale { app, formation } => Some(scale::handle(apps, &app, formation).await),
        Request::Restart { app, kind } => Some(restart::handle(apps, &app, kind, conn).await),
        Request::Stop { app } => Some(stop::handle(apps, &app).await),
        Request::Start { app } => Some(start::handle(apps, &app, conn).await),
        Request::Remove { app } => Some(remove::handle(apps, &app).await),
        Request::Status { app } => Some(status::handle(apps, app.as_deref()).await),
        // Streams its own frames; a following request ends when the client hangs up.
        Request::Logs(req) => logs::handle(apps, req, conn, slot, shutdown).await,
    }
}
