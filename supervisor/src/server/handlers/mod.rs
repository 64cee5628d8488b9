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

use crate::server::wire::Conn;
use crate::supervisor::Supervisor;

/// Answers one request after the handshake: the final frame, or `None` when the connection
/// is finished (a `logs --follow` whose client hung up).
pub async fn handle(
    sup: &Supervisor,
    request: Request,
    conn: &mut Conn,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Response> {
    match request {
        Request::Hello { .. } => Some(Response::Error {
            message: "already greeted".into(),
        }),
        Request::Apply(spec) => Some(apply::handle(sup, *spec, conn).await),
        Request::Scale { app, formation } => Some(scale::handle(sup, &app, &formation).await),
        Request::Restart { app, kind } => {
            Some(restart::handle(sup, &app, kind.as_deref(), conn).await)
        }
        Request::Stop { app } => Some(stop::handle(sup, &app).await),
        Request::Start { app } => Some(start::handle(sup, &app).await),
        Request::Remove { app } => Some(remove::handle(sup, &app).await),
        Request::Status { app } => Some(status::handle(sup, app.as_deref())),
        // Streams its own frames; a following request ends when the client hangs up.
        Request::Logs(req) => logs::handle(sup, req, conn, shutdown).await,
    }
}
