//! `Stop`, `Start` and `Remove`, and an app's life around them: restored at boot, stopped
//! at shutdown (`actor.rs`).

use piku_proto::ApplyReport;

use super::App;
use super::actor::{Actor, Resume, existing};
use super::command::{AppError, Progress, Reply};
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
    /// `answer` of the report.
    pub(super) async fn start_with<T: Send + 'static>(
        &mut self,
        _progress: Progress,
        reply: Reply<T>,
        answer: impl FnOnce(ApplyReport) -> T,
    ) {
        let Some((app, reply)) = existing(&mut self.app, &self.name, reply) else {
            return;
        };
        app.stopped = false;
        // Listening first: instances join the pool as they come up.
        if let Err(e) = app.ensure_front(&self.ctx.ports).await {
            app.stopped = true;
            let _ = reply.send(Err(e.into()));
            return;
        }
        let (report, pending) = app.reconcile(&self.ctx);
        self.record();
        self.answer_after(pending, reply, Ok(answer(report)));
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
