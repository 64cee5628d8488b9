//! Pushes at the same time: to one app they are serialised by the deploy lock (and the
//! waiting push says so); to two apps they run in parallel.
//!
//! Each deploy's `release:` step appends `start`/`end` lines with a timestamp to a probe file
//! and sleeps in between, so the tests can tell from the server's own record whether two
//! deploys overlapped — no wall-clock assertions.

use std::path::Path;
use std::thread;

use piku_e2e::{AppRepo, Piku, Run, make_app_repo};

const PROBE: &str = r#""""`release:` probe for the e2e tests: records when this release step ran."""
import os
import time

version = open("VERSION").read().strip()
with open(os.environ["PROBE_FILE"], "a") as f:
    f.write(f"start {os.environ['APP']} {version} {time.time()}\n")
time.sleep(3)
with open(os.environ["PROBE_FILE"], "a") as f:
    f.write(f"end {os.environ['APP']} {version} {time.time()}\n")
"#;

/// web-python plus the probing `release:` step writing to `probe_file`.
fn probing_app(probe_file: &Path) -> AppRepo {
    let repo = make_app_repo("web-python");
    repo.write("probe.py", PROBE);
    repo.write(
        "Procfile",
        "web: python3 -u app.py\nrelease: python3 -u probe.py\n",
    );
    repo.write(
        "ENV",
        &format!("GREETING=hello\nPROBE_FILE={}\n", probe_file.display()),
    );
    repo.commit("add a probing release step");
    repo
}

/// (start, end) of the release step of `app` at `version`, from the probe file.
fn interval(probe: &str, app: &str, version: &str) -> (f64, f64) {
    let find = |what: &str| {
        probe
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.len() == 4 && f[0] == what && f[1] == app && f[2] == version)
                    .then(|| f[3].parse::<f64>().ok())
                    .flatten()
            })
            .next_back()
            .unwrap_or_else(|| panic!("no `{what} {app} {version}` in the probe file:\n{probe}"))
    };
    (find("start"), find("end"))
}

/// Whether a push's output has a line saying it waited for the app's deploy lock
/// (e.g. "Waiting for another deploy of 'busy' to finish").
fn said_it_waited(output: &str) -> bool {
    output.lines().map(str::to_lowercase).any(|l| {
        l.contains("wait")
            && (l.contains("lock") || l.contains("another deploy") || l.contains("another push"))
    })
}

fn push_both(piku: &Piku, a: (&AppRepo, &str), b: (&AppRepo, &str)) -> (Run, Run) {
    thread::scope(|s| {
        let ha = s.spawn(|| piku.git_push_force(a.0.path(), a.1));
        let hb = s.spawn(|| piku.git_push_force(b.0.path(), b.1));
        (ha.join().expect("push a"), hb.join().expect("push b"))
    })
}

#[test]
fn concurrent_pushes_to_one_app_wait_on_the_lock() {
    let piku = Piku::start();
    let app = "busy";
    let probe_file = piku.tmp.path().join("probe.log");
    let repo = probing_app(&probe_file);
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(app, |b| b.contains("version=v1"), "v1");

    let other = repo.duplicate();
    repo.set_version("va");
    other.set_version("vb");
    let (a, b) = push_both(&piku, (&repo, app), (&other, app));
    a.assert_ok();
    b.assert_ok();
    let waited: Vec<&Run> = [&a, &b]
        .into_iter()
        .filter(|r| said_it_waited(&r.combined()))
        .collect();
    assert_eq!(
        waited.len(),
        1,
        "exactly one push should say it waited on the lock:\n{a}\n{b}"
    );

    let probe = std::fs::read_to_string(&probe_file).expect("probe file");
    let ia = interval(&probe, app, "va");
    let ib = interval(&probe, app, "vb");
    assert!(
        ia.1 <= ib.0 || ib.1 <= ia.0,
        "the two deploys of one app overlapped:\n{probe}"
    );
    let last = if ia.1 > ib.1 { "va" } else { "vb" };
    // What runs is what the repo's branch says: a deploy that went live must not have its
    // ref update rejected afterwards (or the next push would start from the wrong commit).
    let head = piku
        .remote_ref(app, "main")
        .expect("main in the app's repo");
    let expected = if last == "va" {
        repo.head()
    } else {
        other.head()
    };
    assert_eq!(
        head, expected,
        "the repo's main is not the commit that went live last"
    );
    piku.expect_serving(
        app,
        |body| body.contains(&format!("version={last}")),
        "the version deployed last",
    );
}

#[test]
fn two_apps_deploy_in_parallel() {
    let piku = Piku::start();
    let probe_file = piku.tmp.path().join("probe.log");
    let one = probing_app(&probe_file);
    let two = probing_app(&probe_file);
    let (a, b) = push_both(&piku, (&one, "par1"), (&two, "par2"));
    a.assert_ok();
    b.assert_ok();
    assert!(
        !said_it_waited(&a.combined()) && !said_it_waited(&b.combined()),
        "a deploy of one app waited for another app:\n{a}\n{b}"
    );
    let probe = std::fs::read_to_string(&probe_file).expect("probe file");
    let i1 = interval(&probe, "par1", "v1");
    let i2 = interval(&probe, "par2", "v1");
    assert!(
        i1.0 < i2.1 && i2.0 < i1.1,
        "deploys of two different apps did not overlap (serialised by a global lock?):\n{probe}"
    );
    piku.expect_serving("par1", |b| b.contains("hello from par1"), "par1");
    piku.expect_serving("par2", |b| b.contains("hello from par2"), "par2");
}
