//! What the daemon accepts in a request: app names, kind names, specs. Checked before
//! anything changes, and every problem is reported at once.

use std::collections::BTreeSet;

use piku_model::{AppName, CronSchedule};
use piku_proto::{AppSpec, Role};

/// A count for a kind (from a spec or a `Scale`), by piku-model's caps.
pub fn count(kind: &str, count: u32, cron: bool) -> Result<(), String> {
    piku_model::check_count(kind, count, cron).map_err(|e| e.to_string())
}

/// An app name by piku-model's rule (it becomes a directory name under logs/).
pub fn app_name(name: &str) -> Result<AppName, String> {
    name.parse::<AppName>().map_err(|e| e.to_string())
}

/// How many instances `spec` runs (cron entries at most one each).
pub fn instances(spec: &AppSpec) -> u64 {
    spec.processes
        .iter()
        .map(|p| {
            let cron = matches!(p.role, Role::Cron { .. });
            u64::from(piku_model::running_count(p.count, cron))
        })
        .sum()
}

/// The longest front timeout taken (an hour, as `PIKU_RESPONSE_TIMEOUT`'s ceiling).
const MAX_FRONT_TIMEOUT_MS: u64 = 3_600_000;

/// Checks a whole spec; the error lists every problem found.
pub fn spec(spec: &AppSpec) -> Result<(), String> {
    let mut problems = Vec::new();
    if let Err(e) = app_name(&spec.app) {
        problems.push(e);
    }
    if !spec.workdir.is_absolute() {
        problems.push(format!(
            "workdir {} is not an absolute path",
            spec.workdir.display()
        ));
    }
    for key in spec.env.keys() {
        if key.is_empty() || key.contains(['=', '\0']) {
            problems.push(format!("invalid environment variable name {key:?}"));
        }
    }
    for (key, value) in &spec.env {
        if value.contains('\0') {
            problems.push(format!("environment variable {key} contains a NUL byte"));
        }
    }
    let mut seen = BTreeSet::new();
    for p in &spec.processes {
        if let Err(e) = piku_model::check_kind(&p.kind) {
            problems.push(e.to_string());
        }
        if !seen.insert(p.kind.as_str()) {
            problems.push(format!("process kind {} appears twice", p.kind));
        }
        let cron = matches!(p.role, Role::Cron { .. });
        if let Err(e) = count(&p.kind, p.count, cron) {
            problems.push(e);
        }
        if p.command.trim().is_empty() {
            problems.push(format!("process kind {} has an empty command", p.kind));
        }
        if p.command.contains('\0') {
            problems.push(format!("the command of {} contains a NUL byte", p.kind));
        }
        if let Role::Cron { schedule } = &p.role
            && let Err(e) = CronSchedule::parse(schedule)
        {
            problems.push(format!("cron entry {}: {e}", p.kind));
        }
    }
    if let Err(e) = piku_model::check_app_total(instances(spec)) {
        problems.push(e.to_string());
    }
    if spec.settings.stop_grace_ms > piku_proto::MAX_STOP_GRACE_MS {
        problems.push(format!(
            "stop_grace_ms {} is more than {} (5 minutes)",
            spec.settings.stop_grace_ms,
            piku_proto::MAX_STOP_GRACE_MS
        ));
    }
    if let Some(front) = &spec.settings.front {
        for (name, ms) in [
            ("health_deadline_ms", front.health_deadline_ms),
            ("drain_ms", front.drain_ms),
        ] {
            if ms > piku_proto::MAX_FRONT_WAIT_MS {
                problems.push(format!(
                    "{name} {ms} is more than {} (1 hour)",
                    piku_proto::MAX_FRONT_WAIT_MS
                ));
            }
        }
    }
    if spec.settings.log_max_bytes == 0 {
        problems.push("log_max_bytes must be above 0".to_string());
    }
    let limits = &spec.settings.limits;
    if limits
        .memory_max_bytes
        .is_some_and(|b| b < piku_model::limits::MIN_MEMORY_MAX)
    {
        problems.push(format!(
            "memory_max_bytes must be at least {} (4 MiB)",
            piku_model::limits::MIN_MEMORY_MAX
        ));
    }
    if limits
        .cpu_quota_percent
        .is_some_and(|p| !(1..=piku_model::limits::MAX_CPU_QUOTA_PERCENT).contains(&p))
    {
        problems.push(format!(
            "cpu_quota_percent must be from 1 to {}",
            piku_model::limits::MAX_CPU_QUOTA_PERCENT
        ));
    }
    if limits.tasks_max == Some(0) {
        problems.push("tasks_max must be at least 1".to_string());
    }
    if let Some(front) = &spec.settings.front {
        for (name, ms) in [
            ("response_timeout_ms", front.response_timeout_ms),
            ("header_timeout_ms", front.header_timeout_ms),
            ("keepalive_timeout_ms", front.keepalive_timeout_ms),
        ] {
            // A zero timeout would cut every request; an hour is the settings' ceiling.
            if !(1..=MAX_FRONT_TIMEOUT_MS).contains(&ms) {
                problems.push(format!("{name} must be from 1 to {MAX_FRONT_TIMEOUT_MS}"));
            }
        }
        // `None` turns the stall rule off; a zero period would find every instance stalled.
        if front
            .stall_after_ms
            .is_some_and(|ms| !(1..=MAX_FRONT_TIMEOUT_MS).contains(&ms))
        {
            problems.push(format!(
                "stall_after_ms must be from 1 to {MAX_FRONT_TIMEOUT_MS}, or none (off)"
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use piku_proto::{AppSettings, ProcessSpec};

    fn good() -> AppSpec {
        AppSpec {
            app: "blog".into(),
            release: "v1".into(),
            workdir: "/srv/blog".into(),
            env: Default::default(),
            processes: vec![
                ProcessSpec {
                    kind: "web".into(),
                    command: "app".into(),
                    role: Role::Web,
                    count: 2,
                },
                ProcessSpec {
                    kind: "cron1".into(),
                    command: "job".into(),
                    role: Role::Cron {
                        schedule: "*/5 * * * *".into(),
                    },
                    count: 1,
                },
            ],
            settings: AppSettings::default(),
        }
    }

    #[test]
    fn a_good_spec_passes() {
        spec(&good()).unwrap();
        let mut fronted = good();
        fronted.settings.front = Some(piku_proto::FrontSpec::default());
        spec(&fronted).unwrap();
        if let Some(front) = fronted.settings.front.as_mut() {
            front.response_timeout_ms = 0;
        }
        let err = spec(&fronted).unwrap_err();
        assert!(err.contains("response_timeout_ms must be from 1"), "{err}");
        if let Some(front) = fronted.settings.front.as_mut() {
            front.response_timeout_ms = 30_000;
            front.stall_after_ms = None;
        }
        spec(&fronted).unwrap();
        if let Some(front) = fronted.settings.front.as_mut() {
            front.stall_after_ms = Some(0);
        }
        let err = spec(&fronted).unwrap_err();
        assert!(err.contains("stall_after_ms must be from 1"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut s = good();
        s.app = "../etc".into();
        s.workdir = "relative".into();
        s.processes[0].kind = "web/1".into();
        s.processes[1].role = Role::Cron {
            schedule: "61 * * * *".into(),
        };
        s.processes.push(s.processes[1].clone());
        let err = spec(&s).unwrap_err();
        for needle in [
            "../etc",
            "relative",
            "web/1",
            "cron1 appears twice",
            "cron entry cron1",
        ] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let mut s = good();
        s.settings.limits.memory_max_bytes = Some(1024);
        s.settings.limits.cpu_quota_percent = Some(0);
        s.settings.limits.tasks_max = Some(0);
        let err = spec(&s).unwrap_err();
        for needle in ["memory_max_bytes", "cpu_quota_percent", "tasks_max"] {
            assert!(err.contains(needle), "{needle} missing from: {err}");
        }
    }

    #[test]
    fn counts_are_bounded() {
        let mut s = good();
        s.processes[0].count = piku_model::MAX_INSTANCES_PER_KIND;
        spec(&s).unwrap();
        s.processes[0].count = piku_model::MAX_INSTANCES_PER_KIND + 1;
        assert!(spec(&s).unwrap_err().contains("web=257"));
    }

    /// Issue 10: waits that must end (a stop, a switch) are bounded.
    #[test]
    fn endless_waits_are_refused() {
        let mut s = good();
        s.settings.stop_grace_ms = u64::MAX;
        s.settings.front = Some(piku_proto::FrontSpec {
            drain_ms: 3_600_001,
            health_deadline_ms: 3_600_000,
            ..piku_proto::FrontSpec::default()
        });
        let e = spec(&s).unwrap_err();
        assert!(e.contains("stop_grace_ms"), "{e}");
        assert!(
            e.contains("drain_ms 3600001 is more than 3600000 (1 hour)"),
            "{e}"
        );
        assert!(!e.contains("health_deadline_ms"), "{e}");
    }
}
