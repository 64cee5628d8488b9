//! `scripts/demo --once`, the README's main-job command: it must deploy examples/web-python
//! through the real push path, print the URL, and leave no process behind.

use std::process::Command;
use std::time::Duration;

use piku_e2e::{binaries, repo_root, run_with_timeout, sweep};

#[test]
fn demo_script_deploys_the_example_and_cleans_up() {
    let bins = binaries();
    let bin_dir = bins.piku.parent().expect("bin dir");
    let tmp = tempfile::Builder::new()
        .prefix("piku-e2e-demo-")
        .tempdir()
        .expect("temp dir");
    let mut cmd = Command::new(repo_root().join("scripts/demo"));
    cmd.arg("--once")
        .env("PIKU_DEMO_BIN_DIR", bin_dir)
        .env("TMPDIR", tmp.path());
    let run = run_with_timeout(cmd, None, Duration::from_secs(300));
    run.assert_ok();
    assert!(
        run.stdout.contains("Your app answers at http://127.0.0.1:"),
        "no URL printed: {run}"
    );
    assert!(
        run.stdout.contains("hello from hello"),
        "the app's answer is not shown: {run}"
    );
    assert!(
        run.combined().contains("-----> "),
        "no deploy steps shown: {run}"
    );

    // Everything the demo started is gone, and so is its temp dir.
    let leftovers = sweep(tmp.path());
    assert!(
        leftovers.is_empty(),
        "the demo left processes running: {leftovers:?}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read tmp")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "the demo left files behind: {left:?}");
}
