//! `Stop`, `Start` and `Remove`, and an app's life around them: its first start (which
//! waits for its web instances to be ready), restored at boot, stopped at shutdown
//! (`actor.rs`).

use piku_model::InstanceId;
use piku_proto::ApplyReport;
use tokio::time::Instant;

use super::App;
use super::actor::{Actor, Answer, FirstStart, Resume, existing};
use super::command::{AppError, Progress, Reply};
use super::switch::{self, Unhealthy};
use crate::instance::config::InstanceConfig;
use crate::instance::machine::Duty;
use crate::state::SavedApp;

impl Actor {
    /// `Stop`: every process stops (SIGTERM, grace, SIGKILL), the front closes (its TCP
    /// port stays reserved), and the app stays stopped across daemon restarts.
    pub(super) fn stop(&mut self, reply: Reply<()>) {
        let Some((app, reply)) = existing(&mut self.app, &self.name, reply) else {
            return;
        };
        app.stopped = true;
        let pending = app.stop_all();
        self.record();
        self.answer_after(pending, reply, Ok(()));
    }

    /// `Start`: a stopped app runs again at its formation.
    pub(super) async fn start(&mut self, progress: Progress, reply: Reply<ApplyReport>) {
        self.start_with(progress, reply, |report| report).await;
    }

    /// Starts a stopped app (for `Start`, and `Restart` of a stopped app), answering with
    /// `answer` of the report. A running app is left as it runs.
    pub(super) async fn start_with<T: Send + 'static>(
        &mut self,
        progress: Progress,
        reply: Reply<T>,
        answer: impl FnOnce(ApplyReport) -> T + Send + 'static,
    ) {
        let Some((app, reply)) = existing(&mut self.app, &self.name, reply) else {
            return;
        };
        let previous = app.saved();
        app.stopped = false;
        // Listening first: instances join the pool as they come up.
        if let Err(e) = app.ensure_front(&self.ctx.ports).await {
            app.stopped = true;
            let _ = reply.send(Err(e.into()));
            return;
        }
        let send = Box::new(move |result: Result<ApplyReport, AppError>| {
            let _ = reply.send(result.map(answer));
        });
        if previous.stopped {
            self.launch(Some(previous), progress, send);
        } else {
            let (report, pending) = app.reconcile(&self.ctx);
            self.record();
            self.answer_with(pending, send, Ok(report));
        }
    }

    /// The first start of an app (new, or stopped until now), its front open: with web
    /// instances behind the front, those start first and the answer waits, as a switch's
    /// does, until each is ready; then the other processes start. One that exits or is not
    /// ready in time fails the start: every process of the app stops and the app is put
    /// back as it was (`previous`; `None`: it did not exist). Without a front, everything
    /// starts at once, as always.
    pub(super) fn launch(
        &mut self,
        previous: Option<SavedApp>,
        progress: Progress,
        answer: Answer,
    ) {
        let Some(app) = self.app.as_mut() else {
            answer(Err(AppError::UnknownApp(self.name.clone())));
            return;
        };
        let is_web = |config: &InstanceConfig| config.duty() == Duty::Web;
        if !app.has_front() || !app.desired().values().any(is_web) {
            let (report, pending) = app.reconcile(&self.ctx);
            self.record();
            return self.answer_with(pending, answer, Ok(report));
        }
        let (web, pending) = app.reconcile_where(&self.ctx, is_web);
        let candidates = app.web_candidates();
        let deadline = switch::ready_deadline(&app.spec);
        self.record();
        let start = FirstStart {
            previous,
            web,
            began: Instant::now(),
            progress: progress.clone(),
            answer,
        };
        self.busy_with(async move {
            pending.wait().await;
            let ready = switch::wait_ready(candidates, deadline, progress).await;
            Resume::Started {
                start: Box::new(start),
                ready,
            }
        });
    }

    /// The end of a first start's wait: the other processes start and the requester hears
    /// what started; or everything stops, the app is put back, and the requester hears why
    /// with the failed instance's last log lines.
    pub(super) async fn started(&mut self, start: FirstStart, ready: Result<(), Unhealthy>) {
        let FirstStart {
            previous,
            web,
            began,
            progress,
            answer,
        } = start;
        let Some(app) = self.app.as_mut() else {
            answer(Err(AppError::UnknownApp(self.name.clone())));
            return;
        };
        let unhealthy = match ready {
            Ok(()) => {
                progress.say(format!(
                    "{} web instance(s) healthy after {:.1}s",
                    web.started.len(),
                    began.elapsed().as_secs_f64()
                ));
                let (rest, pending) = app.reconcile(&self.ctx);
                let report = merged(web, rest);
                self.record();
                return self.answer_with(pending, answer, Ok(report));
            }
            Err(unhealthy) => unhealthy,
        };
        tracing::warn!(app = %self.name, "first start abandoned: {}", unhealthy.reason);
        let pending = app.stop_all();
        self.put_back(previous);
        let forget = self.app.is_none();
        let (store, logs, name) = (
            self.ctx.store.clone(),
            self.ctx.logs.clone(),
            self.name.clone(),
        );
        self.busy_with(async move {
            if let Err(e) = store.save().await {
                tracing::error!(app = %name, "{}", crate::report::chain(&e));
            }
            pending.wait().await;
            let why = "not started: its processes were stopped";
            let message = switch::explain(&logs, &name, &unhealthy, why).await;
            if forget {
                logs.forget_app(&name);
            }
            answer(Err(AppError::NotReady(message)));
            Resume::Answered
        });
    }

    /// `Remove`: the app stops and is forgotten; its log files stay.
    pub(super) fn remove(&mut self, reply: Reply<()>) {
        let Some(mut app) = self.app.take() else {
            let _ = reply.send(Err(AppError::UnknownApp(self.name.clone())));
            return;
        };
        let pending = app.stop_all();
        self.record();
        let (store, logs, name) = (
            self.ctx.store.clone(),
            self.ctx.logs.clone(),
            self.name.clone(),
        );
        self.busy_with(async move {
            let saved = store.save().await.map_err(AppError::from);
            pending.wait().await;
            logs.forget_app(&name);
            let _ = reply.send(saved);
            Resume::Answered
        });
    }

    /// At boot: the app as the state file has it, at its formation (unless stopped).
    pub(super) async fn restore(&mut self, saved: SavedApp) {
        let mut app = App::from_saved(saved);
        if let Err(e) = app.assign_ports(&self.ctx.ports) {
            tracing::error!(app = %self.name, "cannot assign ports: {e}");
        }
        if let Err(e) = app.ensure_front(&self.ctx.ports).await {
            tracing::error!(app = %self.name, "{}", crate::report::chain(&e));
        }
        // Nothing to wait for: processes start as they can.
        let (report, _starting) = app.reconcile(&self.ctx);
        tracing::info!(
            app = %self.name,
            stopped = app.stopped,
            started = report.started.len(),
            "restored"
        );
        self.app = Some(app);
        self.record();
    }
}

/// One report of a first start: its web instances (started first) and the rest.
fn merged(web: ApplyReport, rest: ApplyReport) -> ApplyReport {
    let mut report = rest;
    report.unchanged.retain(|name| !web.started.contains(name));
    report.started.extend(web.started);
    report.restarted.extend(web.restarted);
    report.stopped.extend(web.stopped);
    // In instance order, as an apply of everything at once reports them.
    report
        .started
        .sort_by_cached_key(|name| name.parse::<InstanceId>().ok());
    report
}
