//! Which instances an app's spec asks for, what each runs, and the ports of its web
//! instances.

use std::collections::{BTreeMap, BTreeSet};

use piku_model::{CronSchedule, InstanceId};
use piku_proto::Role;

use super::App;
use crate::instance::config::InstanceConfig;
use crate::ports::Ports;
use crate::spawn::Launch;

impl App {
    /// The instances the spec asks for (none when stopped). Ports must be assigned first.
    pub(super) fn desired(&self) -> BTreeMap<InstanceId, InstanceConfig> {
        let mut out = BTreeMap::new();
        if self.stopped {
            return out;
        }
        let health_path = self
            .spec
            .settings
            .front
            .as_ref()
            .and_then(|f| f.health_path.clone());
        for p in &self.spec.processes {
            // Cron entries have one instance at most: count 0 disables them.
            let (count, schedule) = match &p.role {
                Role::Cron { schedule } => match CronSchedule::parse(schedule) {
                    Ok(s) => (piku_model::running_count(p.count, true), Some(s)),
                    // Validated on apply; a bad schedule in an old state file is skipped.
                    Err(e) => {
                        tracing::warn!(app = %self.spec.app, kind = %p.kind, "skipping cron entry: {e}");
                        continue;
                    }
                },
                Role::Web | Role::Worker => (p.count, None),
            };
            for index in 1..=count {
                let id = InstanceId::new(p.kind.clone(), index);
                let (port, health_path) = match p.role {
                    Role::Web => (self.ports.get(&id).copied(), health_path.clone()),
                    Role::Worker | Role::Cron { .. } => (None, None),
                };
                let config = InstanceConfig {
                    app: self.spec.app.clone(),
                    id: id.clone(),
                    release: self.spec.release.clone(),
                    launch: Launch {
                        command: p.command.clone(),
                        env: self.spec.env.clone(),
                        workdir: self.spec.workdir.clone(),
                        port,
                    },
                    health_path,
                    schedule: schedule.clone(),
                    limits: self.spec.settings.limits,
                };
                out.insert(id, config);
            }
        }
        out
    }

    /// The web instances of the formation, running or not (each holds a port).
    fn web_instances(&self) -> BTreeSet<InstanceId> {
        self.spec
            .processes
            .iter()
            .filter(|p| p.role == Role::Web)
            .flat_map(|p| (1..=p.count).map(move |i| InstanceId::new(p.kind.clone(), i)))
            .collect()
    }

    /// Gives every web instance of the formation a port (keeping the ones it has) and
    /// releases the ports of instances that no longer exist. On an error the caller puts
    /// the previous ports back ([`App::publish_ports`] then releases what was taken).
    pub(super) fn assign_ports(&mut self, ports: &Ports) -> std::io::Result<()> {
        let wanted = self.web_instances();
        self.ports.retain(|id, _| wanted.contains(id));
        for id in wanted {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.ports.entry(id) {
                slot.insert(ports.allocate(&self.spec.app)?);
            }
        }
        self.publish_ports(ports);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use piku_proto::{AppSettings, AppSpec, ProcessSpec};

    use super::*;

    fn spec(web: u32) -> AppSpec {
        AppSpec {
            app: "shop".into(),
            release: "v1".into(),
            workdir: "/srv/shop".into(),
            env: BTreeMap::new(),
            processes: vec![
                ProcessSpec {
                    kind: "web".into(),
                    command: "serve".into(),
                    role: Role::Web,
                    count: web,
                },
                ProcessSpec {
                    kind: "cron1".into(),
                    command: "job".into(),
                    role: Role::Cron {
                        schedule: "*/5 * * * *".into(),
                    },
                    count: 3,
                },
            ],
            settings: AppSettings::default(),
        }
    }

    #[test]
    fn web_ports_follow_the_formation_and_are_kept() {
        let ports = Ports::default();
        let mut app = App::new(spec(2));
        app.assign_ports(&ports).unwrap();
        let first = app.ports.clone();
        assert_eq!(first.len(), 2);
        app.spec = spec(3);
        app.assign_ports(&ports).unwrap();
        assert_eq!(app.ports.len(), 3);
        assert_eq!(
            app.ports[&InstanceId::new("web", 1)],
            first[&InstanceId::new("web", 1)]
        );
        app.spec = spec(1);
        app.assign_ports(&ports).unwrap();
        assert_eq!(app.held_ports().len(), 1);
    }

    #[test]
    fn the_desired_instances_carry_their_ports_and_cron_runs_once() {
        let ports = Ports::default();
        let mut app = App::new(spec(2));
        app.assign_ports(&ports).unwrap();
        let desired = app.desired();
        let names: Vec<String> = desired.keys().map(ToString::to_string).collect();
        assert_eq!(names, ["cron1.1", "web.1", "web.2"]);
        let web2 = &desired[&InstanceId::new("web", 2)];
        assert_eq!(
            web2.launch.port,
            Some(app.ports[&InstanceId::new("web", 2)])
        );
        assert!(desired[&InstanceId::new("cron1", 1)].schedule.is_some());
        app.stopped = true;
        assert!(app.desired().is_empty());
    }
}
