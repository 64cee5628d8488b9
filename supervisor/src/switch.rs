//! The waiting part of a zero-downtime switch: every new web instance must pass its health
//! check before traffic moves to it, and the requester hears how it goes.
//!
//! The sequence (driven by `Supervisor::switch`): start the new instances on fresh ports
//! beside the old ones (`App::begin_switch`), wait here until each instance's own readiness
//! probe has passed (awaiting what its actor publishes: one probe per instance), then move
//! the pool and drain and stop the old ones (`App::commit_switch`). A new instance that exits, or
//! is not healthy by the deadline, abandons the whole switch (`App::abort_switch`): the old
//! instances never stopped serving.

use std::time::Duration;

use futures_util::future::try_join_all;
use piku_model::InstanceId;
use piku_proto::InstanceState;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::Candidate;

/// Where `Progress` frames for the requester go (nowhere for internal callers).
#[derive(Clone, Default)]
pub struct Progress(Option<mpsc::UnboundedSender<String>>);

impl Progress {
    pub fn to(sender: mpsc::UnboundedSender<String>) -> Progress {
        Progress(Some(sender))
    }

    pub fn say(&self, message: impl Into<String>) {
        if let Some(sender) = &self.0 {
            // A requester that hung up still gets its switch done.
            let _ = sender.send(message.into());
        }
    }
}

/// Why a switch was abandoned: the instance and the reason, for the error message.
#[derive(Debug)]
pub struct Unhealthy {
    pub id: InstanceId,
    pub reason: String,
}

/// Waits until every candidate is ready: its actor's readiness probe has passed (`health_path`
/// answers 2xx/3xx, or the port accepts). Fails at the first that exits, or is not ready
/// within `deadline`.
pub async fn wait_all(
    candidates: &[Candidate],
    deadline: Duration,
    progress: &Progress,
) -> Result<(), Unhealthy> {
    try_join_all(candidates.iter().map(|c| wait_one(c, deadline, progress)))
        .await
        .map(|_| ())
}

async fn wait_one(
    candidate: &Candidate,
    deadline: Duration,
    progress: &Progress,
) -> Result<(), Unhealthy> {
    let Candidate { id, port, state } = candidate;
    let fail = |reason: String| Unhealthy {
        id: id.clone(),
        reason,
    };
    progress.say(format!("waiting for {id} on port {port} to become healthy"));
    let started = Instant::now();
    let mut state = state.clone();
    let settled = tokio::time::timeout(
        deadline,
        state.wait_for(|s| s.ready() || s.exits > 0 || s.state == InstanceState::Stopped),
    )
    .await
    .map(|seen| seen.map(|s| s.clone()));
    match settled {
        Ok(Ok(snap)) if snap.ready() && snap.exits == 0 => {
            progress.say(format!(
                "{id} healthy after {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            Ok(())
        }
        Ok(Ok(snap)) => Err(fail(format!(
            "{id} exited before it became healthy ({})",
            snap.last_exit.as_deref().unwrap_or("no exit status")
        ))),
        Ok(Err(_)) => Err(fail(format!("{id} stopped before it became healthy"))),
        Err(_) => Err(fail(format!(
            "{id} not healthy after {:.1}s: last probe: {}",
            started.elapsed().as_secs_f64(),
            state.borrow().last_probe.as_deref().unwrap_or("none yet")
        ))),
    }
}
