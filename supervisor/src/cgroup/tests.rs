//! The cgroup trees against a fake cgroupfs in a temporary directory: what is created and
//! written for a v2 host (a systemd service with delegated controllers) and for a v1 one.
//! A fake cannot refuse a write as the kernel does (EBUSY, EINVAL), nor enforce anything:
//! the real v1 path is tested in `tests/limits.rs`.

use std::path::{Path, PathBuf};

use super::detect::own;
use super::*;

const LIMITS: ResourceLimits = ResourceLimits {
    memory_max_bytes: Some(256 << 20),
    cpu_quota_percent: Some(50),
    tasks_max: Some(64),
};

fn read(path: impl AsRef<Path>) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn ids_are_stable_and_distinct() {
    assert_eq!(fnv1a(b""), 0x811c_9dc5);
    assert_eq!(fnv1a(b"/home/piku/.piku"), fnv1a(b"/home/piku/.piku"));
    assert_ne!(fnv1a(b"/home/piku/.piku"), fnv1a(b"/tmp/other"));
}

/// A pure v2 host in a temporary directory: the service's cgroup (`unit`) offers the
/// controllers, and the daemon (`pid`) is alone in it.
struct FakeUnit {
    _dir: tempfile::TempDir,
    unit: PathBuf,
    own: Own,
}

fn fake_v2_unit(pid: u32) -> FakeUnit {
    let dir = tempfile::tempdir().unwrap();
    let own = fake_v2_service(dir.path(), pid);
    FakeUnit {
        unit: dir
            .path()
            .join("sys/fs/cgroup/system.slice/piku-supervisor.service"),
        _dir: dir,
        own,
    }
}

fn fake_v2_service(fs_root: &Path, pid: u32) -> Own {
    let unit = fs_root.join("sys/fs/cgroup/system.slice/piku-supervisor.service");
    fs::create_dir_all(unit.join("piku-1234")).unwrap();
    fs::write(
        unit.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .unwrap();
    fs::write(unit.join("cgroup.procs"), format!("{pid}\n")).unwrap();
    // The kernel makes these in every new cgroup.
    fs::write(unit.join("piku-1234/cgroup.kill"), "").unwrap();
    own(
        "29 22 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n",
        "0::/system.slice/piku-supervisor.service\n",
        fs_root,
    )
}

#[test]
fn on_v2_the_daemon_leaves_its_unit_cgroup_and_hands_the_controllers_down() {
    let FakeUnit { unit, own, _dir } = fake_v2_unit(4242);
    let tree = Tree::set_up(&own, "1234", 4242);
    assert_eq!(tree.unified, Some(unit.join("piku-1234")));
    assert_eq!(tree.v2, BTreeSet::from(Controller::ALL));
    assert!(tree.v1.is_empty());
    assert_eq!(
        read(unit.join("cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
    assert_eq!(
        read(unit.join("piku-1234/cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
    // A fake cgroupfs takes the first write to the unit's subtree_control, so the move is
    // not needed here; it is tested below with a unit that refuses.
    assert!(tree.unenforced(&LIMITS).is_empty());

    let web = tree.instance("shop", "web.1@4001");
    assert!(web.create(&LIMITS).is_empty());
    let inst = unit.join("piku-1234/shop.app/web.1@4001");
    assert_eq!(read(inst.join("memory.max")), "268435456");
    assert_eq!(read(inst.join("cpu.max")), "50000 100000");
    assert_eq!(read(inst.join("pids.max")), "64");
    assert_eq!(
        read(unit.join("piku-1234/shop.app/cgroup.subtree_control")),
        "+memory +cpu +pids"
    );
    assert_eq!(web.procs_files().len(), 1);

    // Measured from the v2 files.
    fs::write(inst.join("memory.current"), "104857600\n").unwrap();
    fs::write(
        inst.join("memory.stat"),
        "anon 1\ninactive_file 4194304\nfile 9\n",
    )
    .unwrap();
    fs::write(
        inst.join("memory.events"),
        "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
    )
    .unwrap();
    assert_eq!(web.memory_bytes(), Some((100 << 20) - (4 << 20)));
    assert_eq!(web.oom_kills(), Some(1));
}

#[test]
fn a_unit_cgroup_that_refuses_controllers_until_the_daemon_moves_out() {
    let FakeUnit { unit, own, _dir } = fake_v2_unit(4242);
    // A directory where a file is expected makes the first write fail, as the kernel's
    // EBUSY would; the move creates the leaf and then the write is retried...
    fs::create_dir_all(unit.join("cgroup.subtree_control")).unwrap();
    let tree = Tree::set_up(&own, "1234", 4242);
    assert_eq!(read(unit.join("piku-1234.daemon/cgroup.procs")), "4242");
    // ... and still fails here (the fake cannot change its mind): no v2 controllers, and
    // every limit is a warning.
    assert!(tree.v2.is_empty());
    assert!(tree.unified.is_some(), "cgroup.kill is used all the same");
    assert_eq!(tree.unenforced(&LIMITS).len(), 3);

    // With another process in the unit, the daemon does not move.
    let FakeUnit { unit, own, _dir } = fake_v2_unit(4242);
    fs::write(unit.join("cgroup.procs"), "4242\n99\n").unwrap();
    fs::create_dir_all(unit.join("cgroup.subtree_control")).unwrap();
    let tree = Tree::set_up(&own, "1234", 4242);
    assert!(!unit.join("piku-1234.daemon").exists());
    assert!(tree.v2.is_empty());
}

/// This machine kind: cgroup2 without controllers, v1 memory, cpu and pids.
fn fake_hybrid(fs_root: &Path) -> Own {
    let cg = fs_root.join("sys/fs/cgroup");
    fs::create_dir_all(cg.join("unified/piku-1234")).unwrap();
    fs::write(cg.join("unified/cgroup.controllers"), "hugetlb\n").unwrap();
    fs::write(cg.join("unified/piku-1234/cgroup.kill"), "").unwrap();
    for (c, file) in [
        ("memory/box/piku-1234", "memory.limit_in_bytes"),
        ("cpu/piku-1234", "cpu.cfs_quota_us"),
        ("pids/piku-1234", "pids.max"),
    ] {
        fs::create_dir_all(cg.join(c)).unwrap();
        fs::write(cg.join(c).join(file), "").unwrap();
    }
    own(
        "\
32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
",
        "8:pids:/\n4:memory:/box\n1:cpu:/\n0::/\n",
        fs_root,
    )
}

#[test]
fn on_a_hybrid_host_limits_go_to_v1_and_confinement_to_v2() {
    let dir = tempfile::tempdir().unwrap();
    let cg = dir.path().join("sys/fs/cgroup");
    let tree = Tree::set_up(&fake_hybrid(dir.path()), "1234", 1);
    assert!(tree.v2.is_empty(), "no v2 controllers here");
    assert_eq!(tree.v1.len(), 3);
    assert!(tree.unenforced(&LIMITS).is_empty());

    let worker = tree.instance("shop", "worker.1");
    assert!(worker.create(&LIMITS).is_empty());
    assert_eq!(
        read(cg.join("memory/box/piku-1234/shop.app/worker.1/memory.limit_in_bytes")),
        "268435456"
    );
    assert_eq!(
        read(cg.join("cpu/piku-1234/shop.app/worker.1/cpu.cfs_quota_us")),
        "50000"
    );
    assert_eq!(
        read(cg.join("cpu/piku-1234/shop.app/worker.1/cpu.cfs_period_us")),
        "100000"
    );
    assert_eq!(
        read(cg.join("pids/piku-1234/shop.app/worker.1/pids.max")),
        "64"
    );
    assert!(cg.join("unified/piku-1234/shop.app/worker.1").is_dir());
    assert_eq!(worker.procs_files().len(), 4, "v2 and each v1 controller");

    let mem = cg.join("memory/box/piku-1234/shop.app/worker.1");
    fs::write(mem.join("memory.usage_in_bytes"), "50000000\n").unwrap();
    fs::write(
        mem.join("memory.stat"),
        "cache 5\nrss 7\ninactive_file 100\ntotal_inactive_file 1000000\n",
    )
    .unwrap();
    fs::write(
        mem.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    .unwrap();
    assert_eq!(worker.memory_bytes(), Some(49_000_000));
    assert_eq!(worker.oom_kills(), Some(2));

    // Unset limits write the "no limit" values, so a reused directory keeps none.
    assert!(worker.create(&ResourceLimits::default()).is_empty());
    assert_eq!(
        read(cg.join("memory/box/piku-1234/shop.app/worker.1/memory.limit_in_bytes")),
        "-1"
    );
    assert_eq!(
        read(cg.join("pids/piku-1234/shop.app/worker.1/pids.max")),
        "max"
    );
}

#[tokio::test]
async fn leftovers_are_found_in_every_tree_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cg = dir.path().join("sys/fs/cgroup");
    let tree = Tree::set_up(&fake_hybrid(dir.path()), "1234", 1);
    for slot in [
        "memory/box/piku-1234/shop.app/worker.1",
        "pids/piku-1234/shop.app/worker.1",
        "unified/piku-1234/blog.app/web.1@4001",
    ] {
        fs::create_dir_all(cg.join(slot)).unwrap();
    }
    // Nothing runs in them (a fake has no processes): none is counted, all are removed.
    assert_eq!(tree.kill_leftovers(&Default::default()).await, 0);
    assert!(!cg.join("memory/box/piku-1234/shop.app").exists());
    assert!(!cg.join("pids/piku-1234/shop.app").exists());
    assert!(!cg.join("unified/piku-1234/blog.app").exists());
    assert!(
        cg.join("unified/piku-1234").exists(),
        "the tree stays while the daemon runs"
    );
}

#[test]
fn without_any_usable_tree_nothing_is_made_and_every_limit_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    // Hierarchies are mounted, but nothing under them is writable (or exists).
    let own = own(
        "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
        "4:memory:/\n",
        &dir.path().join("missing"),
    );
    let tree = Tree::set_up(&own, "1234", 1);
    assert_eq!(tree, NONE);
    assert_eq!(tree.unenforced(&LIMITS).len(), 3);
    let cgroup = tree.instance("shop", "worker.1");
    assert!(cgroup.create(&LIMITS).is_empty());
    assert!(cgroup.procs_files().is_empty());
    assert_eq!(cgroup.memory_bytes(), None);
}
