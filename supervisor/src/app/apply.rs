//! `Apply` and `Scale`: the app's desired state changes, and only what differs is touched.
//! With an open front, web instances that change are replaced blue/green (`switch.rs`).

use std::collections::BTreeMap;

use piku_proto::{AppSpec, ApplyReport, Role};

use super::App;
use super::actor::{Actor, AfterSwitch, Resume, existing};
use super::command::{AppError, Progress, Reply};
use super::switch::{self, Renew, Switch, Unhealthy};
use crate::exit::MEMORY_SOFT_LIMIT;

impl Actor {
    /// `Apply`: the app's desired state becomes `spec` (the app is created if new); the
    /// stopped flag is cleared. Answered once stopped or replaced processes are gone and new
    /// ones are spawned; for web instances behind an open front, once the new ones are
    /// ready (and, on a redeploy, traffic has moved to them).
    pub(super) async fn apply(
        &mut self,
        spec: AppSpec,
        progress: Progress,
        reply: Reply<ApplyReport>,
    ) {
        if let Some(app) = self.app.as_mut()
            && !app.stopped
            && app.has_front()
            && spec.settings.front.is_some()
        {
            match Switch::begin(app, &spec, &Renew::Changed, &self.ctx) {
                Ok(Some(switch)) => {
                    return self.await_switch(switch, progress, AfterSwitch::Apply(reply));
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        let is_new = self.app.is_none();
        let app = self.app.get_or_insert_with(|| App::new(spec.clone()));
        let previous = app.saved();
        app.spec = spec;
        app.stopped = false;
        if let Err(e) = app.assign_ports(&self.ctx.ports) {
            self.put_back((!is_new).then_some(previous));
            let _ = reply.send(Err(AppError::Ports(e)));
            return;
        }
        if let Err(e) = app.ensure_front(&self.ctx.ports).await {
            self.put_back((!is_new).then_some(previous));
            let _ = reply.send(Err(e.into()));
            return;
        }
        if is_new || previous.stopped {
            let first = (!is_new).then_some(previous);
            let send = Box::new(move |result| {
                let _ = reply.send(result);
            });
            return self.launch(first, progress, send);
        }
        let (report, pending) = app.reconcile(&self.ctx);
        tracing::info!(
            app = %report.app,
            release = %report.release,
            started = ?report.started,
            stopped = ?report.stopped,
            restarted = ?report.restarted,
            "applied"
        );
        self.record();
        self.answer_after(pending, reply, Ok(report));
    }

    /// `Scale`: new counts for the named kinds; other kinds keep theirs. Answers like an
    /// apply. The stopped flag stays: a stopped app records its new formation and starts at
    /// it on `Start`. With a front, new web instances join the pool when ready and removed
    /// ones leave it first, drained, then stopped.
    pub(super) fn scale(&mut self, formation: &BTreeMap<String, u32>, reply: Reply<ApplyReport>) {
        let Some((app, reply)) = existing(&mut self.app, &self.name, reply) else {
            return;
        };
        let mut spec = app.spec.clone();
        for (kind, count) in formation {
            let Some(p) = spec.processes.iter_mut().find(|p| &p.kind == kind) else {
                let _ = reply.send(Err(AppError::UnknownKind {
                    app: app.spec.app.clone(),
                    kind: kind.clone(),
                    known: app.kinds().join(", "),
                }));
                return;
            };
            let cron = matches!(p.role, Role::Cron { .. });
            if let Err(e) = crate::validate::count(kind, *count, cron) {
                let _ = reply.send(Err(AppError::Invalid(e)));
                return;
            }
            p.count = *count;
        }
        let total = crate::validate::instances(&spec);
        let checked = piku_model::check_app_total(total)
            .map_err(|e| format!("app {}: {e}", spec.app))
            .and_then(|()| {
                let others = self.ctx.store.instances_except(&spec.app);
                crate::fds::check(&spec.app, total, others)
            });
        if let Err(e) = checked {
            let _ = reply.send(Err(AppError::Invalid(e)));
            return;
        }
        let previous = (app.spec.clone(), app.ports.clone());
        app.spec = spec;
        if let Err(e) = app.assign_ports(&self.ctx.ports) {
            (app.spec, app.ports) = previous;
            app.publish_ports(&self.ctx.ports);
            let _ = reply.send(Err(AppError::Ports(e)));
            return;
        }
        let (report, pending) = app.reconcile(&self.ctx);
        self.record();
        self.answer_after(pending, reply, Ok(report));
    }

    /// Stays busy until the switch's new instances are ready (or one is not).
    pub(super) fn await_switch(&mut self, switch: Switch, progress: Progress, then: AfterSwitch) {
        let ready = switch.ready(&progress);
        self.busy_with(async move {
            let ready = ready.await;
            Resume::Switched {
                switch: Box::new(switch),
                ready,
                progress,
                then,
            }
        });
    }

    /// The end of a switch's wait: commit and answer once the old instances are drained and
    /// stopped, or abort and answer with the reason and the failed instance's last lines.
    pub(super) async fn switched(
        &mut self,
        switch: Switch,
        ready: Result<(), Unhealthy>,
        progress: Progress,
        then: AfterSwitch,
    ) {
        let Some(app) = self.app.as_mut() else {
            // A switch is the app's current command: nothing can have removed the app.
            then.refuse(AppError::UnknownApp(self.name.clone()));
            return;
        };
        if let Err(unhealthy) = ready {
            tracing::warn!(app = %self.name, "switch abandoned: {}", unhealthy.reason);
            let pending = switch.abort(app, &self.ctx);
            let (logs, name) = (self.ctx.logs.clone(), self.name.clone());
            self.busy_with(async move {
                pending.wait().await;
                let why = "not switched: the old instances keep serving";
                let message = switch::explain(&logs, &name, &unhealthy, why).await;
                then.refuse(AppError::NotReady(message));
                Resume::Answered
            });
            return;
        }
        let (count, took) = (switch.len(), switch.elapsed());
        progress.say(format!(
            "{count} new web instance(s) healthy after {:.1}s: switching traffic",
            took.as_secs_f64()
        ));
        let (report, mut pending) = switch.commit(app, &self.ctx).await;
        tracing::info!(
            app = %report.app,
            release = %report.release,
            restarted = ?report.restarted,
            seconds = took.as_secs_f64(),
            "switched with no downtime"
        );
        progress.say(format!(
            "switched {count} web instance(s) in {:.1}s; draining and stopping the old ones",
            took.as_secs_f64()
        ));
        match then {
            AfterSwitch::Apply(reply) => {
                self.record();
                self.answer_after(pending, reply, Ok(report));
            }
            AfterSwitch::Restart { kind, reply } => {
                pending.merge(app.restart_in_place(kind.as_deref(), true));
                self.record();
                self.answer_after(pending, reply, Ok(()));
            }
            AfterSwitch::Recycle {
                id,
                restarts,
                reason,
                ..
            } => {
                if let Some(new) = app.instances.get(&id) {
                    new.inherit(restarts + 1, reason);
                }
                // Its new port is saved; the old instance is drained and stopped meanwhile.
                self.record();
                self.answer_with(pending, |_: Result<(), AppError>| {}, Ok(()));
            }
        }
    }
}

impl AfterSwitch {
    pub(super) fn refuse(self, error: AppError) {
        match self {
            AfterSwitch::Apply(reply) => {
                let _ = reply.send(Err(error));
            }
            AfterSwitch::Restart { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            AfterSwitch::Recycle { sink, reason, .. } => sink.note(&format!(
                "the replacement was abandoned ({}); this instance keeps serving{}",
                crate::report::chain(&error),
                if reason == MEMORY_SOFT_LIMIT {
                    " up to the kernel's limit"
                } else {
                    ""
                }
            )),
        }
    }
}
