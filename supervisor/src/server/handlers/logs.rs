//! `Logs`: the last lines of an app's process logs, then (with `follow`) live lines until
//! the client hangs up.

use futures_util::StreamExt;
use piku_proto::{LogsRequest, Response};
use tokio::sync::broadcast::error::RecvError;

use crate::logs::process_matches;
use crate::registry::Registry;
use crate::server::answer;
use crate::server::slots::{MAX_FOLLOWERS, Slot};
use crate::server::wire::{Conn, send};

/// The most past lines sent per log file.
const MAX_TAIL_LINES: usize = 100_000;

/// Sends the lines itself. Returns the final frame to send, or `None` when the connection
/// is finished (a follow ended because the client hung up).
pub async fn handle(
    apps: &Registry,
    req: LogsRequest,
    conn: &mut Conn,
    slot: &Slot,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<Response> {
    if let Some(refused) = answer::refuse_bad_name(&req.app) {
        return Some(refused);
    }
    // Held for the whole follow: followers never take the places commands need.
    let _follower = match req.follow {
        false => None,
        true => match slot.follower() {
            Some(permit) => Some(permit),
            None => {
                return Some(Response::Error {
                    message: format!(
                        "{MAX_FOLLOWERS} clients already follow logs; try again when one stops"
                    ),
                });
            }
        },
    };
    // piku shows 100 lines by default; a huge count would only buffer whole files in memory.
    let lines = req.lines.min(MAX_TAIL_LINES);
    // Subscribe before reading the files so that no line falls between the two. Only for an
    // app the daemon runs: a name it does not know gets no state (a channel each) here.
    let known = apps.knows(&req.app);
    let mut live = (req.follow && known).then(|| apps.ctx().logs.subscribe(&req.app));
    let past = match apps
        .ctx()
        .logs
        .tail(&req.app, req.process.as_deref(), lines)
        .await
    {
        Ok(lines) => lines,
        Err(e) => {
            return Some(Response::Error {
                message: format!("cannot read the logs of {}: {e}", req.app),
            });
        }
    };
    if past.is_empty() && !known {
        return Some(Response::Error {
            message: format!("no app named {} and no logs for it", req.app),
        });
    }
    for line in past {
        let frame = Response::LogLine {
            process: line.process,
            line: line.line,
        };
        if !send(conn, &frame).await {
            return None;
        }
    }
    let Some(live) = live.as_mut() else {
        return Some(Response::Done {
            message: String::new(),
        });
    };
    loop {
        tokio::select! {
            line = live.recv() => {
                let frame = match line {
                    Ok(line) if req.process.as_deref().is_none_or(|f| process_matches(&line.process, f)) => Response::LogLine {
                        process: line.process,
                        line: line.line,
                    },
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => Response::LogLine {
                        process: "piku".into(),
                        line: format!("[piku] {n} lines not shown: this client read too slowly"),
                    },
                    Err(RecvError::Closed) => return None,
                };
                if !send(conn, &frame).await {
                    return None;
                }
            }
            // Anything from the client (or EOF) ends the follow: it only hangs up.
            _ = conn.next() => return None,
            // The daemon is stopping: the follow ends (the client sees the socket close).
            () = crate::server::shutdown::stopped(shutdown) => return None,
        }
    }
}
