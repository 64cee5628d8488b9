//! Issue 10, the daemon's side: each test is the attack from the audit, run against the
//! real daemon, and what must hold instead.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

fn mode(path: &std::path::Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Item 3: `supervisor/` holds every app's environment (state.json): a directory an older
/// daemon left 0755 is closed to other users at start.
#[test]
fn the_state_directory_is_private() {
    let root = TestRoot::new();
    let sup = root.root().join("supervisor");
    fs::create_dir_all(&sup).unwrap();
    fs::set_permissions(&sup, fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = root.start();
    assert_eq!(mode(&sup), 0o700);
    let app = spec("a", &root.scratch(), vec![sleeper("worker", 1)]);
    daemon.apply(&app);
    assert_eq!(mode(&sup.join("state.json")), 0o600);
}
