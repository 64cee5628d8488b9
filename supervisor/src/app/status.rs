//! What `Status` shows of an app: every instance with live figures, and its front.

use piku_model::InstanceId;
use piku_proto::{AppStatus, InstanceState, InstanceStatus, Role};

use super::App;
use crate::instance::InstanceHandle;

impl App {
    pub(super) fn status(&self) -> AppStatus {
        let mut instances: Vec<InstanceStatus> = self
            .instances
            .values()
            .map(InstanceHandle::status)
            .collect();
        if self.stopped {
            // Show the formation as stopped, with the ports it keeps.
            for p in &self.spec.processes {
                let count = piku_model::running_count(p.count, matches!(p.role, Role::Cron { .. }));
                for index in 1..=count {
                    let id = InstanceId::new(p.kind.clone(), index);
                    let port = self.ports.get(&id).copied();
                    instances.push(stopped(&id, port));
                }
            }
        }
        instances.sort_by(|a, b| (&a.kind, a.index).cmp(&(&b.kind, b.index)));
        AppStatus {
            app: self.spec.app.clone(),
            release: self.spec.release.clone(),
            stopped: self.stopped,
            formation: self
                .spec
                .processes
                .iter()
                .map(|p| (p.kind.clone(), p.count))
                .collect(),
            instances,
            front: self.front_status(),
            limits: self.spec.settings.limits,
        }
    }
}

fn stopped(id: &InstanceId, port: Option<u16>) -> InstanceStatus {
    InstanceStatus {
        kind: id.kind.clone(),
        index: id.index,
        state: InstanceState::Stopped,
        pid: None,
        port,
        uptime_secs: None,
        restarts: 0,
        last_exit: None,
        rss_bytes: None,
        memory_bytes: None,
        cpu_secs: None,
        next_run: None,
        log_lines_dropped: 0,
    }
}
