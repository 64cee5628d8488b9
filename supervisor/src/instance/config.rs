//! What an instance is: its identity and what it runs. Two instances whose configs agree on
//! [`InstanceConfig::same_process_as`] run the same process, which is how an `Apply` knows
//! that an instance can be left alone.

use piku_model::{CronSchedule, InstanceId};
use piku_proto::ResourceLimits;

use super::machine::Duty;
use crate::spawn::Launch;

#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub app: String,
    /// `web.1`: its name in logs, status, file names and reports.
    pub id: InstanceId,
    /// The release the process runs: a new release restarts it even if nothing else changed
    /// (the code may have changed under an unchanged workdir path).
    pub release: String,
    pub launch: Launch,
    /// Web instances of an app with a front: `GET` this path must answer 2xx/3xx for the
    /// instance to be `running` (else its port accepting is enough).
    pub health_path: Option<String>,
    /// `Some` for a cron entry.
    pub schedule: Option<CronSchedule>,
    /// What the instance's cgroup allows it (set when its cgroup is made, before its first
    /// process: a change needs a new instance).
    pub limits: ResourceLimits,
}

impl InstanceConfig {
    /// Whether a process started for `self` is what `want` asks for.
    pub fn same_process_as(&self, want: &InstanceConfig) -> bool {
        self.launch == want.launch
            && self.release == want.release
            && self.schedule == want.schedule
            && self.limits == want.limits
    }

    pub fn duty(&self) -> Duty {
        match (&self.schedule, self.launch.port) {
            (Some(_), _) => Duty::Cron,
            (None, Some(_)) => Duty::Web,
            (None, None) => Duty::Service,
        }
    }

    /// What tells this process apart from every other the daemon runs (its cgroup): during a
    /// zero-downtime switch an old and a new `web.1` run side by side, on different ports.
    pub fn slot(&self) -> String {
        match self.launch.port {
            Some(port) => format!("{}@{port}", self.id),
            None => self.id.to_string(),
        }
    }

    /// Its record in the running table (`app/web.1@4001`), for the next daemon.
    pub fn running_key(&self) -> String {
        format!("{}/{}", self.app, self.slot())
    }
}
