//! Optional cgroup v2 confinement: one cgroup per instance, so that a stop also ends
//! processes that left the instance's process group (`setsid`, double forks), which
//! `killpg` cannot reach.
//!
//! The tree lives under the daemon's own cgroup (under systemd that is the service's,
//! delegated with `Delegate=yes`): `<own>/piku-<id>/<app>/<kind>.<n>`, where `<id>` tells
//! apart daemons of different PIKU_ROOTs that share a cgroup. A child joins its cgroup
//! between fork and exec, before it can fork anything. Nothing here is required: without a
//! writable cgroup2 hierarchy with `cgroup.kill` (Linux ≥ 5.14) every function is a no-op
//! and the process group alone is used.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// How long killed members get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

static TREE: OnceLock<Option<PathBuf>> = OnceLock::new();

/// Finds (and creates) the daemon's cgroup tree; logs whether it is used.
pub fn init(piku_root: &Path) {
    let tree = TREE.get_or_init(|| detect(piku_root));
    match tree {
        Some(base) => tracing::info!(cgroup = %base.display(), "one cgroup per instance"),
        None => tracing::info!("no writable cgroup2 with cgroup.kill: process groups only"),
    }
}

fn detect(piku_root: &Path) -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    // "<id> <parent> <dev> <root> <mount point> <options> ... - <fstype> <source> <opts>"
    let mount = mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let base = mount.join(own.trim_start_matches('/')).join(format!(
        "piku-{:08x}",
        fnv1a(piku_root.as_os_str().as_bytes())
    ));
    fs::create_dir_all(&base).ok()?;
    base.join("cgroup.kill").exists().then_some(base)
}

/// A stable short id (FNV-1a, 32 bits): unlike std's hasher it never changes between builds.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

fn tree() -> Option<&'static PathBuf> {
    TREE.get()?.as_ref()
}

/// The cgroup of instance `name` of `app`, created if needed; `None` without cgroups.
pub fn instance_dir(app: &str, name: &str) -> Option<PathBuf> {
    let dir = tree()?.join(app).join(name);
    fs::create_dir_all(&dir).ok()?;
    Some(dir)
}

/// `<dir>/cgroup.procs` as a C string, ready for the child to write to before exec.
pub fn procs_file(dir: &Path) -> Option<CString> {
    CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok()
}

fn is_empty(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.procs")).map_or(true, |p| p.trim().is_empty())
}

/// SIGKILLs everything still in the cgroup and waits (bounded) until it is empty.
pub async fn kill(dir: &Path) {
    let members = members(dir);
    if members.is_empty() {
        return;
    }
    if let Err(e) = fs::write(dir.join("cgroup.kill"), "1") {
        tracing::warn!("cannot write {}/cgroup.kill: {e}", dir.display());
        return;
    }
    let deadline = Instant::now() + KILL_WAIT;
    // A killed process leaves cgroup.procs as it exits, but stays a zombie until its parent
    // reaps it; escapees were re-parented to us, so we wait until we have reaped them too.
    let our_zombie = |pid: &u32| {
        crate::procinfo::stat(*pid).is_some_and(|s| s.state == 'Z' && s.ppid == std::process::id())
    };
    while (!is_empty(dir) || members.iter().any(our_zombie)) && Instant::now() < deadline {
        crate::reaper::reap_orphans();
        sleep(Duration::from_millis(10)).await;
    }
}

fn members(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|p| {
            p.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes an instance's (empty) cgroup and its app's directory if that is empty too.
pub fn remove(dir: &Path) {
    if fs::remove_dir(dir).is_ok()
        && let Some(app_dir) = dir.parent()
    {
        let _ = fs::remove_dir(app_dir);
    }
}

/// Removes the daemon's (empty) tree at shutdown; a tree still in use stays.
pub fn remove_tree() {
    let Some(base) = tree() else { return };
    if let Ok(apps) = fs::read_dir(base) {
        for app in apps.flatten().filter(|e| e.path().is_dir()) {
            let _ = fs::remove_dir(app.path());
        }
    }
    let _ = fs::remove_dir(base);
}

/// Kills whatever a previous daemon left in the tree (every process of every instance,
/// including ones that escaped their process group), then removes the empty cgroups.
pub async fn kill_leftovers() -> usize {
    let Some(base) = tree() else { return 0 };
    let mut found = 0;
    let Ok(apps) = fs::read_dir(base) else {
        return 0;
    };
    for app in apps.flatten().filter(|e| e.path().is_dir()) {
        let Ok(instances) = fs::read_dir(app.path()) else {
            continue;
        };
        for inst in instances.flatten().filter(|e| e.path().is_dir()) {
            let dir = inst.path();
            if !is_empty(&dir) {
                found += 1;
                kill(&dir).await;
            }
            remove(&dir);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::fnv1a;

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"/home/piku/.piku"), fnv1a(b"/home/piku/.piku"));
        assert_ne!(fnv1a(b"/home/piku/.piku"), fnv1a(b"/tmp/other"));
    }
}
