//! One cgroup per instance, for three jobs: confinement (a stop also ends processes that
//! left the instance's process group with `setsid` or a double fork, which `killpg` cannot
//! reach), resource limits (`PIKU_MEMORY_MAX`, `PIKU_CPU_QUOTA`, `PIKU_TASKS_MAX`), and
//! measurement (the memory of all of an instance's processes; an OOM kill known for what it
//! is).
//!
//! Every tree lives under the daemon's own cgroup of its hierarchy (under systemd that is
//! the service's, delegated with `Delegate=yes`): `<own>/piku-<id>/<app>.app/<slot>`, where
//! `<id>` tells apart daemons of different PIKU_ROOTs that share a cgroup and `<slot>` is
//! `web.1@<port>` (an old and a new `web.1` run side by side during a switch) or `worker.1`.
//! The `.app` suffix keeps an app's name from meeting a cgroup's own files (cgroup v1 has
//! a `tasks` file in every cgroup; `tasks` is a fine app name).
//!
//! - **cgroup v2** (the unified hierarchy), when it is writable and has `cgroup.kill`
//!   (Linux ≥ 5.14): every instance gets a cgroup there; a stop kills what is left in it at
//!   once. Its `memory`, `cpu` and `pids` controllers are used where the daemon's own cgroup
//!   offers them: they are enabled in each level's `cgroup.subtree_control`. A cgroup with
//!   processes cannot hand controllers down ("no internal processes"), so a daemon alone in
//!   its cgroup (a systemd service) first moves itself into a leaf, `<own>/piku-<id>.daemon`.
//! - **cgroup v1**, for each controller v2 does not offer here: the same path in that
//!   controller's hierarchy (`/sys/fs/cgroup/memory/<own>/piku-<id>/…`), when it is
//!   writable (root, or a delegated v1 tree). Without v2, a stop ends such a cgroup's
//!   members one SIGKILL each.
//!
//! A child joins its cgroups between fork and exec, before it can fork anything. Nothing
//! here is required: without a usable hierarchy the process group alone confines, a limit
//! nothing enforces is a warning in the Apply answer (`Tree::unenforced`), and memory is
//! measured per process (`procinfo`).

pub mod detect;
pub mod limits;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use piku_proto::ResourceLimits;
use tokio::time::{Instant, sleep};

use self::detect::{Controller, Own};
use self::limits::Version;

/// How long killed members get to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

static TREE: OnceLock<Tree> = OnceLock::new();
/// What a daemon without cgroups (or a test that never set them up) uses.
static NONE: Tree = Tree {
    unified: None,
    v2: BTreeSet::new(),
    v1: BTreeMap::new(),
};

/// Finds and creates the daemon's trees; logs what is used.
pub fn init(piku_root: &Path) {
    let tree = TREE.get_or_init(|| {
        let read = |path| fs::read_to_string(path).unwrap_or_default();
        let mut own = detect::own(
            &read("/proc/self/mountinfo"),
            &read("/proc/self/cgroup"),
            Path::new("/"),
        );
        let id = tree_id(piku_root);
        // An image started by an upgrade (execve) is already in the leaf its predecessor
        // moved the daemon to: the daemon's own cgroup is the one above.
        if let Some(unified) = &mut own.unified
            && unified.file_name() == Some(std::ffi::OsStr::new(&format!("piku-{id}.daemon")))
        {
            unified.pop();
        }
        Tree::set_up(&own, &id, std::process::id())
    });
    tracing::info!("cgroups: {}", tree.describe());
}

/// The daemon's trees (none before [`init`]).
pub fn tree() -> &'static Tree {
    TREE.get().unwrap_or(&NONE)
}

fn tree_id(piku_root: &Path) -> String {
    format!("{:08x}", fnv1a(piku_root.as_os_str().as_bytes()))
}

/// A stable short id (FNV-1a, 32 bits): unlike std's hasher it never changes between builds.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The file whose presence says a v1 hierarchy really has `controller` (and is usable).
fn v1_probe_file(controller: Controller) -> &'static str {
    match controller {
        Controller::Memory => "memory.limit_in_bytes",
        Controller::Cpu => "cpu.cfs_quota_us",
        Controller::Pids => "pids.max",
    }
}

/// The daemon's cgroup trees: where each job is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// `<own v2>/piku-<id>`, writable, with `cgroup.kill`.
    unified: Option<PathBuf>,
    /// Controllers enabled down to the v2 tree.
    v2: BTreeSet<Controller>,
    /// `<own v1>/piku-<id>` of each controller v2 does not serve here.
    v1: BTreeMap<Controller, PathBuf>,
}

impl Tree {
    /// Creates the trees named `piku-<id>` under the daemon's own cgroups `own` (the daemon
    /// is `pid`), and keeps those that work.
    pub fn set_up(own: &Own, id: &str, pid: u32) -> Tree {
        let name = format!("piku-{id}");
        let mut tree = NONE.clone();
        if let Some(own) = &own.unified {
            let base = own.join(&name);
            if fs::create_dir_all(&base).is_ok() && base.join("cgroup.kill").exists() {
                tree.v2 = enable_v2_controllers(own, &base, &name, pid);
                tree.unified = Some(base);
            }
        }
        for (controller, own) in &own.v1 {
            if tree.v2.contains(controller) {
                continue;
            }
            let base = own.join(&name);
            if fs::create_dir_all(&base).is_ok() && base.join(v1_probe_file(*controller)).exists() {
                tree.v1.insert(*controller, base);
            }
        }
        tree
    }

    /// One line for the daemon's log.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.unified {
            Some(base) => parts.push(format!("v2 at {} (cgroup.kill)", base.display())),
            None => parts.push("no writable cgroup2 with cgroup.kill".to_owned()),
        }
        for c in Controller::ALL {
            let where_ = match (self.v2.contains(&c), self.v1.get(&c)) {
                (true, _) => "v2".to_owned(),
                (false, Some(base)) => format!("v1 at {}", base.display()),
                (false, None) => "none".to_owned(),
            };
            parts.push(format!("{}: {where_}", c.name()));
        }
        parts.join("; ")
    }

    /// Whether some hierarchy enforces `controller`'s limits.
    pub fn serves(&self, controller: Controller) -> bool {
        self.v2.contains(&controller) || self.v1.contains_key(&controller)
    }

    /// One warning per limit of `limits` that this host cannot enforce.
    pub fn unenforced(&self, limits: &ResourceLimits) -> Vec<String> {
        limits::unenforced(limits, |c| self.serves(c))
    }

    /// The cgroups of instance `slot` of `app` (paths only; [`InstanceCgroup::create`]
    /// makes them).
    pub fn instance(&self, app: &str, slot: &str) -> InstanceCgroup {
        let dir = |base: &PathBuf| base.join(format!("{app}{APP_SUFFIX}")).join(slot);
        InstanceCgroup {
            unified: self.unified.as_ref().map(dir),
            v2: self.v2.clone(),
            v1: self.v1.iter().map(|(c, base)| (*c, dir(base))).collect(),
        }
    }

    /// Every base directory of the daemon's trees.
    fn bases(&self) -> Vec<&PathBuf> {
        self.unified.iter().chain(self.v1.values()).collect()
    }

    /// Kills whatever a previous daemon left in the trees (every process of every
    /// instance, including ones that escaped their process group), then removes the empty
    /// cgroups. Returns how many instances had processes left.
    pub async fn kill_leftovers(&self, spare: &BTreeSet<(String, String)>) -> usize {
        let mut slots = BTreeSet::new();
        for base in self.bases() {
            for (app, slot) in instance_dirs(base) {
                slots.insert((app, slot));
            }
        }
        // Instances handed over by an upgrade: theirs, not leftovers.
        let slots = slots.difference(spare).cloned().collect::<BTreeSet<_>>();
        let mut found = 0;
        for (app, slot) in slots {
            let cgroup = self.instance(&app, &slot);
            if !cgroup.members().is_empty() {
                found += 1;
                cgroup.kill().await;
            }
            cgroup.remove();
        }
        found
    }

    /// Removes the daemon's (empty) trees at shutdown; a tree still in use stays.
    pub fn remove_tree(&self) {
        for base in self.bases() {
            if let Ok(apps) = fs::read_dir(base) {
                for app in apps.flatten().filter(|e| e.path().is_dir()) {
                    let _ = fs::remove_dir(app.path());
                }
            }
            let _ = fs::remove_dir(base);
        }
    }
}

/// What an app's directory is named after: `<app>.app`.
const APP_SUFFIX: &str = ".app";

/// `(app, slot)` of every instance directory under `base`.
fn instance_dirs(base: &Path) -> Vec<(String, String)> {
    let names = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    names(base)
        .into_iter()
        .filter_map(|dir| Some((dir.strip_suffix(APP_SUFFIX)?.to_owned(), dir)))
        .flat_map(|(app, dir)| {
            names(&base.join(&dir))
                .into_iter()
                .map(move |slot| (app.clone(), slot))
        })
        .collect()
}

/// Hands the v2 controllers piku uses that `own` offers down to `base`; returns those that
/// are. `own` holding a process (the daemon) cannot hand controllers down: a daemon alone
/// there moves itself into `<own>/<name>.daemon` first.
fn enable_v2_controllers(own: &Path, base: &Path, name: &str, pid: u32) -> BTreeSet<Controller> {
    let offered: BTreeSet<Controller> = fs::read_to_string(own.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|n| Controller::ALL.into_iter().find(|c| c.name() == n))
        .collect();
    if offered.is_empty() {
        return offered;
    }
    let line = enable_line(&offered);
    let enable = |dir: &Path| fs::write(dir.join("cgroup.subtree_control"), &line);
    if let Err(e) = enable(own) {
        if members(own) == [pid] {
            let leaf = own.join(format!("{name}.daemon"));
            let moved = fs::create_dir_all(&leaf)
                .and_then(|()| fs::write(leaf.join("cgroup.procs"), pid.to_string()));
            if let Err(e) = moved.and_then(|()| enable(own)) {
                tracing::warn!("cgroup v2 controllers not usable in {}: {e}", own.display());
                return BTreeSet::new();
            }
        } else {
            tracing::warn!(
                "cgroup v2 controllers not usable in {} (it holds other processes): {e}",
                own.display()
            );
            return BTreeSet::new();
        }
    }
    if let Err(e) = enable(base) {
        tracing::warn!(
            "cgroup v2 controllers not usable in {}: {e}",
            base.display()
        );
        return BTreeSet::new();
    }
    offered
}

/// `+memory +cpu +pids`, for `cgroup.subtree_control`.
fn enable_line(controllers: &BTreeSet<Controller>) -> String {
    controllers
        .iter()
        .map(|c| format!("+{}", c.name()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The pids in `dir`'s `cgroup.procs`.
fn members(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|p| {
            p.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// An instance's cgroups, one per hierarchy the daemon uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceCgroup {
    /// In the v2 tree: confinement (`cgroup.kill`), and the controllers in `v2`.
    unified: Option<PathBuf>,
    v2: BTreeSet<Controller>,
    /// In the v1 hierarchy of each other controller.
    v1: BTreeMap<Controller, PathBuf>,
}

impl InstanceCgroup {
    /// Creates the cgroups and writes `limits` into them. Returns what went wrong, one line
    /// each (the instance runs anyway, with what could be set).
    pub fn create(&self, limits: &ResourceLimits) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(dir) = &self.unified {
            if let Err(e) = fs::create_dir_all(dir) {
                problems.push(format!("cannot create cgroup {}: {e}", dir.display()));
            } else if !self.v2.is_empty()
                && let Some(app_dir) = dir.parent()
                && let Err(e) = fs::write(
                    app_dir.join("cgroup.subtree_control"),
                    enable_line(&self.v2),
                )
            {
                problems.push(format!(
                    "cannot enable cgroup controllers in {}: {e}",
                    app_dir.display()
                ));
            }
            for c in &self.v2 {
                write_limits(dir, *c, Version::V2, limits, &mut problems);
            }
        }
        for (c, dir) in &self.v1 {
            match fs::create_dir_all(dir) {
                Ok(()) => {
                    write_limits(dir, *c, Version::V1, limits, &mut problems);
                    if *c == Controller::Memory {
                        // A process joins after it started (`follow`) when no limit is set:
                        // what it allocated by then moves with it. Best effort (the file
                        // is deprecated in recent kernels); without it that is counted to
                        // the daemon's cgroup.
                        let _ = fs::write(dir.join("memory.move_charge_at_immigrate"), "1");
                    }
                }
                Err(e) => problems.push(format!("cannot create cgroup {}: {e}", dir.display())),
            }
        }
        problems
    }

    /// The `cgroup.procs` files a child writes itself into before exec.
    #[cfg(test)]
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs()
            .filter(|dir| dir.is_dir())
            .filter_map(|dir| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Where a new process of the instance goes under `limits`: born in the v2 cgroup when
    /// there is one; into each v1 cgroup whose controller enforces a limit before exec (so
    /// the limit holds from its first fork); into the other v1 ones (measurement only) after
    /// it started, by [`follow`], since every such write waits for an RCU grace period
    /// (`spawn/into_cgroup.rs`) that would otherwise delay each respawn.
    pub fn placement(&self, limits: &ResourceLimits) -> crate::spawn::Placement {
        let procs = |dir: &PathBuf| {
            dir.is_dir()
                .then(|| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok())
                .flatten()
        };
        let born_in = self.unified.clone().filter(|dir| dir.is_dir());
        let (join, after): (Vec<_>, Vec<_>) = self
            .v1
            .iter()
            .filter(|(_, dir)| dir.is_dir())
            .partition(|(c, _)| born_in.is_none() || limits::set_by(**c, limits).is_some());
        crate::spawn::Placement {
            join: join.into_iter().filter_map(|(_, dir)| procs(dir)).collect(),
            join_after: after.into_iter().map(|(_, dir)| dir.clone()).collect(),
            born_in,
        }
    }

    fn dirs(&self) -> impl Iterator<Item = &PathBuf> {
        self.unified.iter().chain(self.v1.values())
    }

    /// Every process still in the instance's cgroups.
    pub fn members(&self) -> BTreeSet<u32> {
        self.dirs().flat_map(|dir| members(dir)).collect()
    }

    /// SIGKILLs everything still in the cgroups (`cgroup.kill` in v2, else each member)
    /// and waits (bounded) until they are gone and reaped.
    pub async fn kill(&self) {
        let members = self.members();
        if members.is_empty() {
            return;
        }
        if let Some(dir) = &self.unified
            && let Err(e) = fs::write(dir.join("cgroup.kill"), "1")
        {
            tracing::warn!("cannot write {}/cgroup.kill: {e}", dir.display());
            return;
        }
        let deadline = Instant::now() + KILL_WAIT;
        // A killed process leaves cgroup.procs as it exits, but stays a zombie until its
        // parent reaps it; escapees were re-parented to us, so we wait until we have reaped
        // them too.
        let our_zombie = |pid: &u32| {
            crate::procinfo::stat(*pid)
                .is_some_and(|s| s.state == 'Z' && s.ppid == std::process::id())
        };
        loop {
            let left = self.members();
            if (left.is_empty() && !members.iter().any(our_zombie)) || Instant::now() >= deadline {
                break;
            }
            if self.unified.is_none() {
                // v1 has no cgroup.kill: one signal each (a fork in between is caught by
                // the next round).
                for pid in &left {
                    crate::stop::signal_pid(*pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
            crate::reaper::reap_orphans();
            sleep(Duration::from_millis(10)).await;
        }
    }

    /// Removes the instance's (empty) cgroups, and its app's directories if empty too.
    pub fn remove(&self) {
        for dir in self.dirs() {
            if fs::remove_dir(dir).is_ok()
                && let Some(app_dir) = dir.parent()
            {
                let _ = fs::remove_dir(app_dir);
            }
        }
    }

    /// The cgroup that measures memory, and its version.
    fn memory_dir(&self) -> Option<(Version, &PathBuf)> {
        match (&self.unified, self.v1.get(&Controller::Memory)) {
            (Some(dir), _) if self.v2.contains(&Controller::Memory) => Some((Version::V2, dir)),
            (_, Some(dir)) => Some((Version::V1, dir)),
            _ => None,
        }
    }

    /// The working set of all of the instance's processes: the cgroup's memory usage less
    /// its inactive file cache (which the kernel reclaims before it would OOM-kill), as
    /// `docker stats` and the kubelet count it. `None` without a memory cgroup.
    pub fn memory_bytes(&self) -> Option<u64> {
        let (version, dir) = self.memory_dir()?;
        let read = |name: &str| fs::read_to_string(dir.join(name)).ok();
        let (usage, inactive) = match version {
            Version::V2 => ("memory.current", "inactive_file"),
            Version::V1 => ("memory.usage_in_bytes", "total_inactive_file"),
        };
        let usage: u64 = read(usage)?.trim().parse().ok()?;
        let inactive = read("memory.stat")
            .and_then(|stat| keyed_value(&stat, inactive))
            .unwrap_or(0);
        Some(usage.saturating_sub(inactive))
    }

    /// How many processes the kernel's OOM killer has ended in the instance's memory
    /// cgroup since it was made; `None` without one.
    pub fn oom_kills(&self) -> Option<u64> {
        let (version, dir) = self.memory_dir()?;
        let file = match version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        };
        keyed_value(&fs::read_to_string(dir.join(file)).ok()?, "oom_kill")
    }
}

/// Moves every process of the v2 cgroup `born_in` into each of the v1 cgroups `dirs`,
/// until a pass finds none left to move: a process forked before its parent moved is in
/// the v2 cgroup (it was born there), so it is moved by the next pass. Blocking (each first
/// write waits for an RCU grace period): run off the async workers, on the chores thread.
pub fn follow(born_in: &Path, dirs: &[PathBuf]) {
    // Bounded: an app that forks without end (a shell loop) must not keep this going, and
    // every pass that moves something holds the kernel's fork/exit lock for writing. A
    // process forked after these passes by one not yet moved stays in the daemon's v1
    // cgroups: outside the memory figure, still reached by a stop (v2 cgroup, group).
    for _ in 0..10 {
        let all = members(born_in);
        let mut moved = false;
        for dir in dirs {
            let inside: BTreeSet<u32> = members(dir).into_iter().collect();
            for pid in all.iter().filter(|pid| !inside.contains(pid)) {
                // A process that has exited meanwhile is not an error (ESRCH).
                if fs::write(dir.join("cgroup.procs"), pid.to_string()).is_ok() {
                    moved = true;
                }
            }
        }
        if !moved {
            return;
        }
    }
}

/// Writes `controller`'s files for `limits` into `dir`.
fn write_limits(
    dir: &Path,
    controller: Controller,
    version: Version,
    limits: &ResourceLimits,
    problems: &mut Vec<String>,
) {
    for (file, value) in limits::files(controller, version, limits) {
        if let Err(e) = fs::write(dir.join(file), &value) {
            let what = limits::set_by(controller, limits)
                .map_or_else(|| "the default".to_owned(), |s| s.to_string());
            problems.push(format!(
                "cannot apply {what}: writing {value} to {}: {e}",
                dir.join(file).display()
            ));
        }
    }
}

/// The value of `key` in a `key value` per line file (`memory.stat`, `memory.events`).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests;
