//! Making an app's instances match its desired state, touching only what differs; and
//! restarting or stopping them all. Nothing here waits for a process: stops and restarts
//! come back as [`Pending`] work for the actor to await before it answers.

use piku_model::InstanceId;
use piku_proto::ApplyReport;

use super::{App, Ctx, Pending};
use crate::instance::config::InstanceConfig;

impl App {
    /// Starts what is missing, stops what is no longer wanted, replaces what changed
    /// (release, command, env, workdir, port, schedule) and leaves the rest running.
    pub(super) fn reconcile(&mut self, ctx: &Ctx) -> (ApplyReport, Pending) {
        self.reconcile_where(ctx, |_| true)
    }

    /// [`App::reconcile`] of the instances `include` picks; the others are left as they are.
    pub(super) fn reconcile_where(
        &mut self,
        ctx: &Ctx,
        include: impl Fn(&InstanceConfig) -> bool,
    ) -> (ApplyReport, Pending) {
        let mut report = ApplyReport {
            app: self.spec.app.clone(),
            release: self.spec.release.clone(),
            ..ApplyReport::default()
        };
        let mut pending = Pending::default();
        let mut desired = self.desired();
        desired.retain(|_, config| include(config));
        let (grace, rotation) = (self.grace(), self.rotation());

        let gone: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(id, handle)| include(&handle.config) && !desired.contains_key(*id))
            .map(|(id, _)| id.clone())
            .collect();
        // With a front, web instances leave the pool first and are drained before they stop.
        let mut retiring = Vec::new();
        for id in gone {
            if let Some(handle) = self.instances.remove(&id) {
                report.stopped.push(id.to_string());
                ctx.logs.forget_process(&self.spec.app, &id.to_string());
                if self.has_front() && handle.config.launch.port.is_some() {
                    retiring.push(handle);
                } else {
                    pending.done.push(handle.stop());
                }
            }
        }
        self.sync_members();
        self.retire(retiring, &mut pending);

        for (id, want) in desired {
            let name = id.to_string();
            let after = match self.instances.remove(&id) {
                Some(mut old) if old.config.same_process_as(&want) => {
                    old.set_grace(grace);
                    old.set_health_path(want.health_path.clone());
                    old.sink.set_rotation(rotation);
                    report.unchanged.push(name);
                    self.instances.insert(id, old);
                    continue;
                }
                Some(old) => {
                    report.restarted.push(name.clone());
                    let done = old.stop();
                    pending.done.push(done.clone());
                    Some(done)
                }
                None => {
                    report.started.push(name.clone());
                    None
                }
            };
            let sink = ctx.logs.sink(&self.spec.app, &name, rotation);
            let handle = ctx.launcher.launch(want, grace, sink, after);
            self.instances.insert(id, handle);
        }
        self.sync_members();
        (report, pending)
    }

    /// Restarts every instance, or those of `kind`, bypassing the back-off (a cron entry's
    /// run in progress is stopped; its schedule goes on). With `skip_web`, web instances are
    /// left alone (a switch has just renewed them).
    pub(super) fn restart_in_place(&self, kind: Option<&str>, skip_web: bool) -> Pending {
        let mut pending = Pending::default();
        for handle in self.instances.values() {
            let switched = skip_web && handle.config.launch.port.is_some();
            if kind.is_none_or(|k| k == handle.config.id.kind) && !switched {
                pending.restarted.push(handle.restart());
            }
        }
        pending
    }

    /// Stops every instance (a switch's new ones too) and closes the front; its TCP port
    /// stays reserved in `front_port`.
    pub(super) fn stop_all(&mut self) -> Pending {
        let mut pending = Pending::default();
        self.close_front();
        for (_, handle) in std::mem::take(&mut self.switching) {
            pending.done.push(handle.stop());
        }
        for (_, handle) in std::mem::take(&mut self.instances) {
            pending.done.push(handle.stop());
        }
        pending
    }
}
