//! The zero-downtime switch of an app's web instances, whole: [`Switch::begin`] starts the
//! new instances on fresh ports beside the old ones, [`Switch::ready`] awaits each one's own
//! readiness probe (what its actor publishes; nothing is probed twice), then
//! [`Switch::commit`] moves the pool to them at once and drains and stops the old ones, or
//! [`Switch::abort`] stops the new ones: the old instances never stopped serving.
//!
//! The actor drives it (`Apply` and `Restart` begin one; its `Resume::Switched` commits or
//! aborts) so that, while it waits, the actor still answers `Status`.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::future::try_join_all;
use piku_model::InstanceId;
use piku_proto::{AppSpec, ApplyReport, InstanceState, Role};
use tokio::time::Instant;

use super::command::{AppError, Progress};
use super::{App, Ctx, Pending};
use crate::logs::LogHub;
use crate::snapshot::Watch;

/// Lines of a failed instance's log quoted in the error.
const FAILURE_LOG_LINES: usize = 10;

/// Which web instances get new processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renew {
    /// Those the new spec runs differently, or that are new (`Apply`).
    Changed,
    /// All of them (`Restart`).
    All,
    /// Those of one kind (`Restart web`).
    Kind(String),
    /// One instance (recycled for its memory).
    Instance(InstanceId),
}

/// A new web instance to wait for.
pub struct Candidate {
    pub id: InstanceId,
    pub port: u16,
    pub state: Watch,
}

/// Why new web instances were not taken: the instance and the reason.
#[derive(Debug)]
pub struct Unhealthy {
    pub id: InstanceId,
    pub reason: String,
}

/// A switch in progress. Its new instances live in the app (`switching`) so that a stop or a
/// shutdown reaches them; this holds what the switch waits for and where it goes.
pub struct Switch {
    /// The app's spec once switched.
    spec: AppSpec,
    began: Instant,
    candidates: Vec<Candidate>,
    deadline: Duration,
}

impl Switch {
    /// Starts, beside the running web instances, a new one for each that `renew` picks,
    /// each on a fresh port. `Ok(None)`: nothing to switch. On an error nothing was started.
    pub fn begin(
        app: &mut App,
        spec: &AppSpec,
        renew: &Renew,
        ctx: &Ctx,
    ) -> Result<Option<Switch>, AppError> {
        let current = std::mem::replace(&mut app.spec, spec.clone());
        let desired = app.desired();
        let (grace, rotation) = (app.grace(), app.rotation());
        app.spec = current;
        let web_kinds: BTreeSet<&str> = spec
            .processes
            .iter()
            .filter(|p| p.role == Role::Web)
            .map(|p| p.kind.as_str())
            .collect();
        let picked: Vec<_> = desired
            .into_iter()
            .filter(|(id, want)| {
                web_kinds.contains(id.kind.as_str())
                    && match renew {
                        Renew::Changed => app
                            .instances
                            .get(id)
                            .is_none_or(|old| !old.config.same_process_as(want)),
                        Renew::All => true,
                        Renew::Kind(kind) => *kind == id.kind,
                        Renew::Instance(one) => one == id,
                    }
            })
            .collect();
        if picked.is_empty() {
            return Ok(None);
        }
        // Every port first: nothing starts unless all can.
        let mut fresh = Vec::new();
        for _ in &picked {
            match ctx.ports.allocate(&app.spec.app) {
                Ok(port) => fresh.push(port),
                Err(e) => {
                    app.publish_ports(&ctx.ports);
                    return Err(AppError::Ports(e));
                }
            }
        }
        let mut candidates = Vec::new();
        for ((id, mut config), port) in picked.into_iter().zip(fresh) {
            config.launch.port = Some(port);
            let name = id.to_string();
            let sink = ctx.logs.sink(&spec.app, &name, rotation);
            sink.note(&format!(
                "switch: starting a new {name} (release {}) on port {port} beside the old one",
                spec.release
            ));
            let handle = ctx.launcher.launch(config, grace, sink, None);
            candidates.push(Candidate {
                id: id.clone(),
                port,
                state: handle.watch(),
            });
            if let Some(stale) = app.switching.insert(id, handle) {
                // One switch at a time per app; a leftover would be a bug, never kept running.
                let _ = stale.stop();
            }
        }
        app.publish_ports(&ctx.ports);
        let deadline = spec.settings.front.as_ref().map_or(Duration::ZERO, |f| {
            Duration::from_millis(f.health_deadline_ms)
        });
        Ok(Some(Switch {
            spec: spec.clone(),
            began: Instant::now(),
            candidates,
            deadline,
        }))
    }

    /// Resolves once every new instance is ready, or at the first that exits or is not
    /// ready in time. Borrows nothing: the actor stays free meanwhile.
    pub fn ready(
        &self,
        progress: &Progress,
    ) -> impl Future<Output = Result<(), Unhealthy>> + Send + 'static {
        let candidates: Vec<Candidate> = self
            .candidates
            .iter()
            .map(|c| Candidate {
                id: c.id.clone(),
                port: c.port,
                state: c.state.clone(),
            })
            .collect();
        wait_ready(candidates, self.deadline, progress.clone())
    }

    pub fn elapsed(&self) -> Duration {
        self.began.elapsed()
    }

    pub fn len(&self) -> usize {
        self.candidates.len()
    }

    /// The new instances are ready: each takes its name's place and port, the pool becomes
    /// the new set at once, the instances they replace are drained and stopped, and the app
    /// goes on to the new spec (its other kinds as without a front). The report names the
    /// switched instances `restarted`, or `started` for new ones.
    pub async fn commit(self, app: &mut App, ctx: &Ctx) -> (ApplyReport, Pending) {
        let mut pending = Pending::default();
        let mut switched = Vec::new();
        let mut replaced = Vec::new();
        for (id, handle) in std::mem::take(&mut app.switching) {
            if let Some(port) = handle.config.launch.port {
                app.ports.insert(id.clone(), port);
            }
            handle
                .sink
                .note("switch: this new instance now receives the traffic");
            let old = app.instances.insert(id.clone(), handle);
            switched.push((id.to_string(), old.is_some()));
            if let Some(old) = old {
                old.sink
                    .note("switch: the old instance left the pool; draining, then stopping it");
                replaced.push(old);
            }
        }
        app.sync_members();
        app.retire(replaced, &mut pending);
        app.spec = self.spec;
        // Ports only shrink here (kinds scaled down or gone): no allocation can fail.
        if let Err(e) = app.assign_ports(&ctx.ports) {
            tracing::error!(app = %app.spec.app, "cannot assign ports after a switch: {e}");
        }
        if let Err(e) = app.ensure_front(&ctx.ports).await {
            tracing::error!(
                app = %app.spec.app,
                "after the switch: {}; the front keeps its old listeners",
                crate::report::chain(&e)
            );
        }
        let (mut report, rest) = app.reconcile(ctx);
        pending.merge(rest);
        for (name, replaced) in switched {
            report.unchanged.retain(|n| *n != name);
            if replaced {
                report.restarted.push(name);
            } else {
                report.started.push(name);
            }
        }
        (report, pending)
    }

    /// Abandons the switch: its new instances stop, the old ones were never touched.
    pub fn abort(self, app: &mut App, ctx: &Ctx) -> Pending {
        let mut pending = Pending::default();
        for (_, handle) in std::mem::take(&mut app.switching) {
            handle
                .sink
                .note("switch: abandoned, this new instance stops; the old one keeps serving");
            pending.done.push(handle.stop());
        }
        app.publish_ports(&ctx.ports);
        pending
    }
}

impl App {
    /// The web instances that run, to wait for as a first start's candidates.
    pub(super) fn web_candidates(&self) -> Vec<Candidate> {
        self.instances
            .values()
            .filter_map(|h| {
                h.config.launch.port.map(|port| Candidate {
                    id: h.config.id.clone(),
                    port,
                    state: h.watch(),
                })
            })
            .collect()
    }
}

/// How long new web instances of `spec` get to become ready.
pub fn ready_deadline(spec: &AppSpec) -> Duration {
    spec.settings.front.as_ref().map_or(Duration::ZERO, |f| {
        Duration::from_millis(f.health_deadline_ms)
    })
}

/// Waits until every candidate is ready: its actor's readiness probe has passed (the health
/// path answers 2xx/3xx, or the port accepts). Fails at the first that exits, or is not
/// ready within `deadline`; says how it goes on `progress`.
pub async fn wait_ready(
    candidates: Vec<Candidate>,
    deadline: Duration,
    progress: Progress,
) -> Result<(), Unhealthy> {
    try_join_all(
        candidates
            .into_iter()
            .map(|c| wait_one(c, deadline, progress.clone())),
    )
    .await
    .map(|_| ())
}

async fn wait_one(
    candidate: Candidate,
    deadline: Duration,
    progress: Progress,
) -> Result<(), Unhealthy> {
    let Candidate {
        id,
        port,
        mut state,
    } = candidate;
    progress.say(format!("waiting for {id} on port {port} to become healthy"));
    let started = Instant::now();
    let settled = tokio::time::timeout(
        deadline,
        state.wait_for(|s| s.ready() || s.exits > 0 || s.state == InstanceState::Stopped),
    )
    .await
    .map(|seen| seen.map(|s| s.clone()));
    let reason = match settled {
        Ok(Ok(snap)) if snap.ready() && snap.exits == 0 => {
            progress.say(format!(
                "{id} healthy after {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        Ok(Ok(snap)) => format!(
            "{id} exited before it became healthy ({})",
            snap.last_exit.as_deref().unwrap_or("no exit status")
        ),
        Ok(Err(_)) => format!("{id} stopped before it became healthy"),
        Err(_) => format!(
            "{id} not healthy after {:.1}s: last probe: {}",
            started.elapsed().as_secs_f64(),
            state.borrow().last_probe.as_deref().unwrap_or("none yet")
        ),
    };
    Err(Unhealthy { id, reason })
}

/// The error text of a failed readiness wait: the reason, what it means for the app
/// (`consequence`), and the instance's last log lines.
pub async fn explain(logs: &LogHub, app: &str, unhealthy: &Unhealthy, consequence: &str) -> String {
    // The instance's last words may still be on their way to its log file.
    let _ = tokio::time::timeout(Duration::from_secs(1), logs.flush_all()).await;
    let name = unhealthy.id.to_string();
    let tail = logs
        .tail(app, Some(&name), FAILURE_LOG_LINES)
        .await
        .unwrap_or_default();
    let mut message = format!("{}; {consequence}", unhealthy.reason);
    if !tail.is_empty() {
        message.push_str(&format!("\nlast lines of {name}:"));
        for line in tail {
            message.push_str(&format!("\n  {}", line.line));
        }
    }
    message
}
