//! What must not go live: a failing build, a failing `release`, and app names that try to
//! escape `PIKU_ROOT`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use piku_e2e::{Piku, make_app_repo};

/// The commit of the live release, from `releases --json`.
fn live_commit(piku: &Piku, app: &str) -> String {
    let releases = piku.releases(app).unwrap_or_else(|e| panic!("{e}"));
    let live: Vec<&serde_json::Value> = releases
        .iter()
        .filter(|r| r["live"] == serde_json::Value::Bool(true))
        .collect();
    assert_eq!(live.len(), 1, "not exactly one live release: {releases:?}");
    live[0]["commit"].as_str().unwrap_or_default().to_string()
}

fn same_commit(a: &str, b: &str) -> bool {
    !a.is_empty() && !b.is_empty() && (a.starts_with(b) || b.starts_with(a))
}

/// Deploys web-python v1, pushes `example` on top, and checks that the push failed while v1
/// kept serving from the very same process.
fn failing_push_keeps_previous_release(app: &str, example: &str, expected_output: &str) {
    let piku = Piku::start();
    let repo = make_app_repo("web-python");
    let v1 = repo.head();
    piku.git_push(repo.path(), app).assert_ok();
    let (port, body) = piku.expect_serving(app, |b| b.contains("version=v1"), "v1");

    repo.replace_with_example(example);
    let push = piku.git_push(repo.path(), app);
    push.assert_failed();
    assert!(
        push.combined().contains(expected_output),
        "the push output does not show why it failed ({expected_output:?}): {push}"
    );

    // The failed attempt's build log is kept on the server, with the reason in it.
    let logs = piku.build_logs(app);
    assert!(
        logs.iter().any(|(_, text)| text.contains(expected_output)),
        "no build.log under releases/{app}/ shows {expected_output:?}: {logs:?}"
    );

    // Still v1, same port, same process: the running release was not touched.
    let (port_after, body_after) = piku.expect_serving(
        app,
        |b| b.contains("version=v1"),
        "v1 after the failed push",
    );
    assert_eq!(port, port_after, "the failed push moved the app");
    assert_eq!(
        body, body_after,
        "the failed push restarted the app (pid changed)"
    );
    assert!(
        same_commit(&live_commit(&piku, app), &v1),
        "the live release is not v1 any more: {:?}",
        piku.releases(app)
    );
    let cwd = piku.ssh(&format!("run {app} -- cat VERSION"));
    assert_eq!(
        cwd.stdout.trim(),
        "v1",
        "apps/{app} moved to the failed release: {cwd}"
    );

    // After the failure, a good push deploys normally.
    repo.replace_with_example("web-python");
    repo.set_version("v3");
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(app, |b| b.contains("version=v3"), "v3 after a good push");
}

#[test]
fn failing_build_fails_the_push_and_keeps_the_previous_release() {
    failing_push_keeps_previous_release("fb", "build-fails", "nonexistent-dir");
}

#[test]
fn failing_release_fails_the_push_and_keeps_the_previous_release() {
    failing_push_keeps_previous_release("fr", "release-fails", "migration failed on purpose");
}

/// Every path below `dir`, relative, for before/after comparisons.
fn listing(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out
}

#[test]
fn malicious_app_names_are_refused() {
    let piku = Piku::start();
    // Sentinels where a name like `../x` would land if it were joined to a piku dir.
    let srv = piku.root.parent().expect("root has a parent").to_path_buf();
    for sentinel in [piku.root.join("x"), srv.join("x")] {
        fs::create_dir_all(&sentinel).expect("mkdir");
        fs::write(sentinel.join("keep"), "keep\n").expect("write");
    }
    let before = listing(piku.tmp.path());
    let repo = make_app_repo("web-python");

    let names = [
        "../x",
        "../../x",
        "a/b",
        "-rf",
        "..",
        ".hidden",
        "x;touch pwned",
        "$(touch pwned)",
    ];
    for name in names {
        let quoted = format!("'{name}'");
        let push = piku.git_push(repo.path(), name);
        assert!(!push.success(), "a push to {name:?} was accepted: {push}");
        let mut commands = vec![
            format!("git-receive-pack {quoted}"),
            format!("destroy {quoted}"),
        ];
        // Every other command that takes an app, for the two classic escapes.
        if name == "../x" || name == "-rf" {
            commands.extend([
                format!("git-upload-pack {quoted}"),
                format!("config:set {quoted} A=1"),
                format!("deploy {quoted}"),
                format!("rollback {quoted}"),
                format!("run {quoted} -- true"),
                format!("logs {quoted}"),
            ]);
        }
        for command in commands {
            let run = piku.ssh_timeout(&command, std::time::Duration::from_secs(30));
            assert!(
                !run.success() && !run.timed_out,
                "`{command}` was accepted: {run}"
            );
        }
    }

    let after = listing(piku.tmp.path());
    // Only the harness's own logs may have grown; no new paths anywhere in the temp dir.
    let new: Vec<&String> = after.difference(&before).collect();
    assert!(new.is_empty(), "malicious names created {new:?}");
    let removed: Vec<&String> = before.difference(&after).collect();
    assert!(removed.is_empty(), "malicious names removed {removed:?}");
    for dir in ["apps", "repos", "envs", "data", "releases"] {
        let entries: Vec<_> = fs::read_dir(piku.root.join(dir))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(entries.is_empty(), "{dir}/ is not empty: {entries:?}");
    }
    assert!(!piku.home.join("pwned").exists() && !Path::new("pwned").exists());
}
