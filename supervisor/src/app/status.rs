//! What `Status` shows of an app: every instance with live figures, and its front.

use piku_model::InstanceId;
use piku_proto::{AppStatus, InstanceState, InstanceStatus, Role};

use super::App;
use crate::front::backend_id;
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
        self.add_front_counters(&mut instances);
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

impl App {
    /// Each web instance's requests in flight and timed out, as the front counts them.
    fn add_front_counters(&self, instances: &mut [InstanceStatus]) {
        let Some(front) = &self.front else {
            return;
        };
        let stats = front.front().backend_stats();
        for instance in instances {
            let Some(port) = instance.port else { continue };
            let id = backend_id(&instance.id(), port);
            if let Some(stats) = stats.iter().find(|s| s.id == id) {
                instance.in_flight = Some(stats.in_flight as u64);
                instance.timed_out = Some(stats.timed_out);
            }
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
        in_flight: None,
        timed_out: None,
    }
}
