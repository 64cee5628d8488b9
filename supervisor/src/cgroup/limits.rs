//! What an instance's limits write into its cgroups, in each hierarchy's words, and what a
//! host that cannot apply one says. Pure.
//!
//! | setting | cgroup v2 | cgroup v1 |
//! |---|---|---|
//! | `PIKU_MEMORY_MAX` | `memory.max` | `memory.limit_in_bytes` |
//! | `PIKU_CPU_QUOTA` | `cpu.max` (`<quota> 100000`) | `cpu.cfs_quota_us`, `cpu.cfs_period_us` |
//! | `PIKU_TASKS_MAX` | `pids.max` | `pids.max` |

use piku_model::limits::{CPU_QUOTA, MEMORY_MAX, Size, TASKS_MAX};
use piku_proto::ResourceLimits;

use super::detect::Controller;

/// The CPU quota's period, systemd's default (`CPUQuotaPeriodSec=` 100 ms).
pub const CPU_PERIOD_US: u64 = 100_000;

/// Which cgroup version a directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// The files that set `limits` for `controller`, with their values, in write order. A limit
/// that is not set writes the "no limit" value, so that a directory left by an earlier
/// instance never keeps its limit.
pub fn files(
    controller: Controller,
    version: Version,
    limits: &ResourceLimits,
) -> Vec<(&'static str, String)> {
    let or = |value: Option<u64>, unlimited: &str| {
        value.map_or_else(|| unlimited.to_owned(), |v| v.to_string())
    };
    let quota_us = limits
        .cpu_quota_percent
        .map(|p| u64::from(p) * CPU_PERIOD_US / 100);
    match (controller, version) {
        (Controller::Memory, Version::V2) => {
            vec![("memory.max", or(limits.memory_max_bytes, "max"))]
        }
        (Controller::Memory, Version::V1) => {
            vec![("memory.limit_in_bytes", or(limits.memory_max_bytes, "-1"))]
        }
        (Controller::Cpu, Version::V2) => {
            vec![(
                "cpu.max",
                format!("{} {CPU_PERIOD_US}", or(quota_us, "max")),
            )]
        }
        (Controller::Cpu, Version::V1) => vec![
            ("cpu.cfs_period_us", CPU_PERIOD_US.to_string()),
            ("cpu.cfs_quota_us", or(quota_us, "-1")),
        ],
        (Controller::Pids, _) => vec![("pids.max", or(limits.tasks_max, "max"))],
    }
}

/// The limit settings of `limits` that `controller` enforces, as `KEY=value` (for messages).
pub fn set_by(controller: Controller, limits: &ResourceLimits) -> Option<String> {
    match controller {
        Controller::Memory => limits
            .memory_max_bytes
            .map(|b| format!("{MEMORY_MAX}={}", Size(b))),
        Controller::Cpu => limits
            .cpu_quota_percent
            .map(|p| format!("{CPU_QUOTA}={p}%")),
        Controller::Pids => limits.tasks_max.map(|n| format!("{TASKS_MAX}={n}")),
    }
}

/// One warning per limit of `limits` that no usable controller can enforce.
pub fn unenforced(limits: &ResourceLimits, usable: impl Fn(Controller) -> bool) -> Vec<String> {
    Controller::ALL
        .into_iter()
        .filter(|c| !usable(*c))
        .filter_map(|c| {
            let setting = set_by(c, limits)?;
            let mut warning = format!(
                "{setting} is not enforced on this host: the supervisor has no {} cgroup \
                 controller it may use (none delegated to it in cgroup v2, none writable in v1)",
                c.name()
            );
            if c == Controller::Memory {
                warning.push_str(
                    "; instances are still restarted gracefully when they cross 90 % of it",
                );
            }
            Some(warning)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: ResourceLimits = ResourceLimits {
        memory_max_bytes: Some(256 << 20),
        cpu_quota_percent: Some(50),
        tasks_max: Some(64),
    };

    #[test]
    fn v2_files() {
        let f = |c| files(c, Version::V2, &SET);
        assert_eq!(f(Controller::Memory), [("memory.max", "268435456".into())]);
        assert_eq!(f(Controller::Cpu), [("cpu.max", "50000 100000".into())]);
        assert_eq!(f(Controller::Pids), [("pids.max", "64".into())]);
        let none = ResourceLimits::default();
        assert_eq!(
            files(Controller::Cpu, Version::V2, &none),
            [("cpu.max", "max 100000".into())]
        );
        assert_eq!(
            files(Controller::Memory, Version::V2, &none),
            [("memory.max", "max".into())]
        );
    }

    #[test]
    fn v1_files() {
        let f = |c| files(c, Version::V1, &SET);
        assert_eq!(
            f(Controller::Memory),
            [("memory.limit_in_bytes", "268435456".into())]
        );
        assert_eq!(
            f(Controller::Cpu),
            [
                ("cpu.cfs_period_us", "100000".into()),
                ("cpu.cfs_quota_us", "50000".into())
            ]
        );
        let two_cpus = ResourceLimits {
            cpu_quota_percent: Some(200),
            ..ResourceLimits::default()
        };
        assert_eq!(
            files(Controller::Cpu, Version::V1, &two_cpus)[1],
            ("cpu.cfs_quota_us", "200000".into())
        );
        assert_eq!(
            files(Controller::Memory, Version::V1, &ResourceLimits::default()),
            [("memory.limit_in_bytes", "-1".into())]
        );
    }

    #[test]
    fn limits_nothing_can_enforce_are_each_a_warning() {
        let warnings = unenforced(&SET, |c| c == Controller::Cpu);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].starts_with("PIKU_MEMORY_MAX=256M is not enforced on this host"));
        assert!(warnings[0].contains("90 %"));
        assert!(warnings[1].starts_with("PIKU_TASKS_MAX=64 is not enforced"));
        assert!(unenforced(&ResourceLimits::default(), |_| false).is_empty());
    }
}
