//! Where the daemon's own cgroups are: read from `/proc/self/mountinfo` (which hierarchy is
//! mounted where, with which controllers) and `/proc/self/cgroup` (where in each hierarchy
//! this process is). Pure: tests feed it the text of a host it does not run on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The controllers whose limits piku sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    /// Its name in `cgroup.controllers`, mount options and `/proc/self/cgroup`.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

/// The daemon's own cgroup directory in each hierarchy it can see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Own {
    /// In the unified (v2) hierarchy.
    pub unified: Option<PathBuf>,
    /// In the v1 hierarchy of each controller (`/sys/fs/cgroup/memory/<own path>`).
    pub v1: BTreeMap<Controller, PathBuf>,
}

/// Finds the daemon's own cgroups from the text of `/proc/self/mountinfo` and
/// `/proc/self/cgroup`; `fs_root` is prepended to every mount point (`/` on a real host, a
/// temporary directory in tests).
pub fn own(mountinfo: &str, self_cgroup: &str, fs_root: &Path) -> Own {
    let mut unified_mount = None;
    let mut v1_mounts = BTreeMap::new();
    for line in mountinfo.lines() {
        // "<id> <parent> <dev> <root> <mount point> <options> [optional...] - <fstype>
        // <source> <super options>"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(root), Some(point)) = (
            left.split_whitespace().nth(3),
            left.split_whitespace().nth(4),
        ) else {
            continue;
        };
        // A bind mount of a sub-cgroup (a container's view) is not the hierarchy's root:
        // paths from /proc/self/cgroup would not line up with it.
        if root != "/" {
            continue;
        }
        let mut right = right.split_whitespace();
        let (fstype, super_options) = (right.next(), right.nth(1).unwrap_or(""));
        match fstype {
            Some("cgroup2") => {
                unified_mount.get_or_insert_with(|| rooted(fs_root, point));
            }
            Some("cgroup") => {
                for c in Controller::ALL {
                    if super_options.split(',').any(|o| o == c.name()) {
                        v1_mounts.entry(c).or_insert_with(|| rooted(fs_root, point));
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Own::default();
    for line in self_cgroup.lines() {
        // "<hierarchy id>:<controllers>:<path>"; v2 is "0::<path>".
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if id == "0" && controllers.is_empty() {
            out.unified = unified_mount.as_ref().map(|m: &PathBuf| m.join(path));
            continue;
        }
        for c in Controller::ALL {
            if controllers.split(',').any(|n| n == c.name())
                && let Some(mount) = v1_mounts.get(&c)
            {
                out.v1.insert(c, mount.join(path));
            }
        }
    }
    out
}

/// Mount point `point` (absolute, as mountinfo gives it) under `fs_root`.
fn rooted(fs_root: &Path, point: &str) -> PathBuf {
    fs_root.join(point.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine kind: v1 controllers, and a cgroup2 without them at .../unified.
    const HYBRID_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/580f
2:cpuacct:/
1:cpu:/
0::/
";

    #[test]
    fn a_hybrid_host_gives_v1_controllers_and_a_bare_unified_tree() {
        let own = own(HYBRID_MOUNTS, HYBRID_SELF, Path::new("/"));
        assert_eq!(own.unified, Some(PathBuf::from("/sys/fs/cgroup/unified/")));
        assert_eq!(
            own.v1,
            BTreeMap::from([
                (
                    Controller::Memory,
                    PathBuf::from("/sys/fs/cgroup/memory/process_api/580f")
                ),
                (Controller::Cpu, PathBuf::from("/sys/fs/cgroup/cpu/")),
                (Controller::Pids, PathBuf::from("/sys/fs/cgroup/pids/")),
            ])
        );
    }

    #[test]
    fn a_systemd_service_on_a_v2_host_is_found_in_its_unit_cgroup() {
        let mounts = "29 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let own = own(
            mounts,
            "0::/system.slice/piku-supervisor.service\n",
            Path::new("/fake"),
        );
        assert_eq!(
            own.unified,
            Some(PathBuf::from(
                "/fake/sys/fs/cgroup/system.slice/piku-supervisor.service"
            ))
        );
        assert!(own.v1.is_empty());
    }

    #[test]
    fn combined_v1_mounts_and_bind_mounted_sub_cgroups() {
        let mounts = "\
1 0 0:1 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
2 0 0:2 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
";
        let own = own(
            mounts,
            "3:cpu,cpuacct:/a\n2:memory:/docker/abc\n",
            Path::new("/"),
        );
        assert_eq!(
            own.v1,
            BTreeMap::from([(
                Controller::Cpu,
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/a")
            )])
        );
        assert_eq!(own.unified, None);
    }
}
