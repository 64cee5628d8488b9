//! `piku-supervisor --after-stop`: the unit's `ExecStopPost=`, run by systemd each time the
//! daemon has ended, with `$SERVICE_RESULT` saying how.
//!
//! Why: the unit has `KillMode=process`, so that a crash of the daemon leaves its apps
//! running for the next daemon to adopt (`handover::recover`). systemd then kills nothing
//! but the daemon, on a crash and on a stop alike, so this decides:
//!
//! - **a crash** (`signal`, `core-dump`, `exit-code`, `watchdog`: `Restart=always` starts the
//!   daemon again): the apps stay. Their cgroups stay too, with the controllers the daemon
//!   handed down in each level's `cgroup.subtree_control`; the kernel refuses a process in
//!   a cgroup that hands controllers down ("no internal processes"), so systemd could not
//!   put the next daemon in the unit's cgroup (status 219/CGROUP). The controllers are
//!   taken back, deepest level first; the next daemon hands them down again and writes
//!   each instance's limits anew when it adopts it.
//! - **anything else** (a clean stop, a stop that timed out, a daemon that gave up): every
//!   process left in the daemon's cgroups is killed (`cgroup.kill`), as `KillMode=mixed` did.
//!
//! Without cgroup v2 this does nothing: the daemon's own stop is all there is.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The results after which systemd's `Restart=always` starts the daemon again.
const CRASHES: [&str; 4] = ["signal", "core-dump", "exit-code", "watchdog"];
/// How long killed processes get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub fn run() -> anyhow::Result<()> {
    let result = std::env::var("SERVICE_RESULT").unwrap_or_default();
    let Some((unit, own)) = unit_cgroup() else {
        eprintln!("piku-supervisor --after-stop: no cgroup v2 here; nothing to do");
        return Ok(());
    };
    if CRASHES.contains(&result.as_str()) {
        let mut released = 0;
        release_controllers(&unit, &mut released);
        eprintln!(
            "piku-supervisor ended ({result}): its apps keep running for the next daemon \
             ({released} cgroups handed their controllers back)"
        );
        return Ok(());
    }
    let mut killed = Vec::new();
    for child in subdirs(&unit) {
        if child == own || !populated(&child) {
            continue;
        }
        match fs::write(child.join("cgroup.kill"), "1") {
            Ok(()) => killed.push(child),
            Err(e) => eprintln!("cannot kill {}: {e}", child.display()),
        }
    }
    let deadline = Instant::now() + KILL_WAIT;
    while killed.iter().any(|c| populated(c)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !killed.is_empty() {
        eprintln!(
            "piku-supervisor ended ({result}): killed what was left in {} cgroups",
            killed.len()
        );
    }
    Ok(())
}

/// The unit's cgroup directory and this process's own (the unit's, or its `.control`
/// sub-cgroup where systemd runs a delegated unit's `ExecStopPost=`).
fn unit_cgroup() -> Option<(PathBuf, PathBuf)> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let self_cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
    // Where the daemon looks too: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid host.
    let own = crate::cgroup::detect::own(&mountinfo, &self_cgroup, Path::new("/")).unified?;
    let unit = match own.file_name() {
        Some(name) if name == ".control" => own.parent()?.to_path_buf(),
        _ => own.clone(),
    };
    unit.join("cgroup.procs").exists().then_some((unit, own))
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|l| l == "populated 1"))
        .unwrap_or(false)
}

/// Disables every controller in `dir`'s subtree, deepest first (a level cannot take back a
/// controller one of its children still hands down).
fn release_controllers(dir: &Path, released: &mut usize) {
    for child in subdirs(dir) {
        release_controllers(&child, released);
    }
    let file = dir.join("cgroup.subtree_control");
    let enabled = fs::read_to_string(&file).unwrap_or_default();
    let line: Vec<String> = enabled
        .split_whitespace()
        .map(|c| format!("-{c}"))
        .collect();
    if line.is_empty() {
        return;
    }
    match fs::write(&file, line.join(" ")) {
        Ok(()) => *released += 1,
        Err(e) => eprintln!("cannot release the controllers of {}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroupfs (plain files): every level that hands controllers down is told to
    /// stop, and none that hands nothing down is written.
    #[test]
    fn after_a_crash_every_level_hands_its_controllers_back() {
        let dir = tempfile::tempdir().unwrap();
        let unit = dir.path();
        let app = unit.join("piku-1/shop.app");
        fs::create_dir_all(app.join("web.1@4001")).unwrap();
        fs::create_dir_all(unit.join("piku-1.daemon")).unwrap();
        for level in [unit.to_path_buf(), unit.join("piku-1"), app.clone()] {
            fs::write(level.join("cgroup.subtree_control"), "cpu memory pids\n").unwrap();
        }
        fs::write(app.join("web.1@4001/cgroup.subtree_control"), "").unwrap();
        let mut released = 0;
        release_controllers(unit, &mut released);
        assert_eq!(released, 3);
        for level in [unit.to_path_buf(), unit.join("piku-1"), app.clone()] {
            assert_eq!(
                fs::read_to_string(level.join("cgroup.subtree_control")).unwrap(),
                "-cpu -memory -pids"
            );
        }
        assert_eq!(
            fs::read_to_string(app.join("web.1@4001/cgroup.subtree_control")).unwrap(),
            ""
        );
    }
}
