//! The waiting part of a zero-downtime switch: every new web instance must pass its health
//! check before traffic moves to it, and the requester hears how it goes.
//!
//! The sequence (driven by `Supervisor::switch`): start the new instances on fresh ports
//! beside the old ones (`App::begin_switch`), wait here until each is healthy, then move the
//! pool and drain and stop the old ones (`App::commit_switch`). A new instance that exits, or
//! is not healthy by the deadline, abandons the whole switch (`App::abort_switch`): the old
//! instances never stopped serving.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::future::try_join_all;
use hyper_proxy_glue::{HealthCheck, wait_healthy};
use piku_proto::InstanceState;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::app::Candidate;
use crate::snapshot::Shared;

/// How often a new instance's actor is checked for an exit or for its own probe passing.
const WATCH_EVERY: Duration = Duration::from_millis(20);

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
    pub name: String,
    pub reason: String,
}

/// Waits until every candidate is healthy: `health_path` answers 2xx/3xx (or the port
/// accepts) and its actor agrees (so the pool will take it). Fails at the first that exits
/// or misses the deadline.
pub async fn wait_all(
    candidates: &[Candidate],
    health_path: Option<&str>,
    deadline: Duration,
    progress: &Progress,
) -> Result<(), Unhealthy> {
    let check = match health_path {
        Some(path) => HealthCheck::Http {
            path: path.to_string(),
        },
        None => HealthCheck::Tcp,
    };
    try_join_all(
        candidates
            .iter()
            .map(|c| wait_one(c, &check, deadline, progress)),
    )
    .await
    .map(|_| ())
}

async fn wait_one(
    candidate: &Candidate,
    check: &HealthCheck,
    deadline: Duration,
    progress: &Progress,
) -> Result<(), Unhealthy> {
    let Candidate {
        name,
        port,
        snapshot,
    } = candidate;
    let fail = |reason: String| Unhealthy {
        name: name.clone(),
        reason,
    };
    progress.say(format!(
        "waiting for {name} on port {port} to become healthy"
    ));
    let started = Instant::now();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, *port));
    tokio::select! {
        healthy = wait_healthy(addr, check, deadline) => healthy.map_err(|e| {
            fail(format!(
                "{name} not healthy after {:.1}s: last probe: {}",
                e.waited.as_secs_f64(),
                e.last
            ))
        })?,
        why = exited(snapshot) => return Err(fail(format!(
            "{name} exited before it became healthy ({why})"
        ))),
    }
    // The actor probes on its own schedule: the pool takes the instance once it has.
    let give_up = started + deadline;
    loop {
        let snap = snapshot.get();
        if snap.state == InstanceState::Running {
            break;
        }
        if let Some(why) = exit_of(snapshot) {
            return Err(fail(format!(
                "{name} exited before it became healthy ({why})"
            )));
        }
        if Instant::now() >= give_up {
            return Err(fail(format!(
                "{name} answered once but was not healthy again after {:.1}s",
                deadline.as_secs_f64()
            )));
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
    progress.say(format!(
        "{name} healthy after {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Resolves once the instance's first process has exited (it was restarted, or is waiting
/// to be), with what its actor knows of the exit.
async fn exited(snapshot: &Shared) -> String {
    loop {
        if let Some(why) = exit_of(snapshot) {
            return why;
        }
        tokio::time::sleep(WATCH_EVERY).await;
    }
}

fn exit_of(snapshot: &Shared) -> Option<String> {
    let snap = snapshot.get();
    let exited = snap.restarts > 0
        || matches!(
            snap.state,
            InstanceState::Backoff | InstanceState::CrashLooping | InstanceState::Stopped
        );
    exited.then(|| snap.last_exit.unwrap_or_else(|| "no exit status".into()))
}
