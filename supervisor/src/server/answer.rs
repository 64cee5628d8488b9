//! What every handler answers with: errors as `Error` frames, a refusal of impossible app
//! names, and the `Progress` frames of a long request.

use std::future::Future;

use piku_proto::Response;
use tokio::sync::mpsc;

use crate::app::command::{AppError, Progress};
use crate::server::wire::{Conn, send};

/// The `Error` frame of a failed request: the error and each of its causes once.
pub fn error(e: AppError) -> Response {
    Response::Error {
        message: crate::report::chain(&e),
    }
}

/// Refuses a request naming an app that could not exist (it would become a path).
pub fn refuse_bad_name(app: &str) -> Option<Response> {
    crate::validate::app_name(app)
        .err()
        .map(|message| Response::Error { message })
}

/// Runs `work` while relaying what it reports as `Progress` frames; returns its answer. A
/// client that hangs up does not cancel the work (a switch half done is worse than one the
/// client does not see the end of).
pub async fn with_progress<F, W>(conn: &mut Conn, work: W) -> Response
where
    W: FnOnce(Progress) -> F,
    F: Future<Output = Response>,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let work = work(Progress::to(tx));
    tokio::pin!(work);
    let mut listening = true;
    loop {
        tokio::select! {
            answer = &mut work => {
                while let Ok(message) = rx.try_recv() {
                    if listening {
                        listening = send(conn, &Response::Progress { message }).await;
                    }
                }
                return answer;
            }
            Some(message) = rx.recv() => {
                if listening {
                    listening = send(conn, &Response::Progress { message }).await;
                }
            }
        }
    }
}
