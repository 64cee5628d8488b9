//! The daemon's file descriptors, shared by every app. At start the soft limit is raised to
//! the hard one; an `Apply` or `Scale` whose instances, with every other app's, would need
//! more than that is refused before anything starts, naming the app. (A Procfile of 3,000
//! kinds once used them all up: `ps` of every app hung and no app could start a process.)
//! The apps' processes get the soft limit the daemon was started with back.

use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// What one instance holds in the daemon: its stdout and stderr pipes, its log file and the
/// handle of its process (pidfd, cgroup files opened briefly).
pub const PER_INSTANCE: u64 = 4;
/// What the daemon needs besides instances: sockets, fronts, clients, state and log files.
pub const RESERVE: u64 = 128;

/// The soft limit after [`raise`]; 0 before (then the current one is read).
static LIMIT: AtomicU64 = AtomicU64::new(0);
/// The soft limit the daemon was started with, given back to its children; 0 if unchanged.
static CHILD_SOFT: AtomicU64 = AtomicU64::new(0);

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force.
pub fn raise() -> nix::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
        CHILD_SOFT.store(soft, Ordering::Relaxed);
    }
    let limit = soft.max(hard);
    LIMIT.store(limit, Ordering::Relaxed);
    Ok(limit)
}

/// The soft limit the apps' processes should run with, if the daemon raised its own.
pub fn child_soft_limit() -> Option<u64> {
    match CHILD_SOFT.load(Ordering::Relaxed) {
        0 => None,
        soft => Some(soft),
    }
}

fn limit() -> u64 {
    match LIMIT.load(Ordering::Relaxed) {
        0 => getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft),
        limit => limit,
    }
}

/// Whether `app` may run `instances` while the other apps run `others`.
pub fn check(app: &str, instances: u64, others: u64) -> Result<(), String> {
    check_against(limit(), app, instances, others)
}

fn check_against(limit: u64, app: &str, instances: u64, others: u64) -> Result<(), String> {
    let needed = instances
        .saturating_add(others)
        .saturating_mul(PER_INSTANCE)
        .saturating_add(RESERVE);
    if needed <= limit {
        return Ok(());
    }
    let room = limit.saturating_sub(RESERVE) / PER_INSTANCE;
    Err(format!(
        "app {app}: {instances} instances (besides {others} of other apps) would need about \
         {needed} file descriptors, more than the daemon's limit of {limit} allows ({room} \
         instances in all); run fewer or raise the daemon's LimitNOFILE"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_every_app_and_the_reserve() {
        // 1024 descriptors: (1024 - 128) / 4 = 224 instances in all.
        assert!(check_against(1024, "a", 200, 24).is_ok());
        let e = check_against(1024, "a", 200, 25).unwrap_err();
        assert!(
            e.starts_with("app a: 200 instances (besides 25 of other apps)"),
            "{e}"
        );
        assert!(
            e.contains("limit of 1024 allows (224 instances in all)"),
            "{e}"
        );
        assert!(check_against(1 << 20, "a", u64::MAX, u64::MAX).is_err());
    }
}
