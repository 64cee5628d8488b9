//! The everyday life of an app over real ssh: first deploy, redeploy, scale, restart,
//! stop/start, config, logs, run, releases/rollback and destroy.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use piku_e2e::{CHANGE_TIMEOUT, Piku, get_ok, http_get, make_app_repo, wait_until};

fn same_commit(a: &str, b: &str) -> bool {
    !a.is_empty() && !b.is_empty() && (a.starts_with(b) || b.starts_with(a))
}

/// `pid=<n>` from the web-python example's answer.
fn pid_in(body: &str) -> Option<u32> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .and_then(|p| p.parse().ok())
}

#[test]
fn setup_ssh_registers_a_forced_command_key() {
    let piku = Piku::start();
    assert!(
        piku.setup_ssh_used,
        "`piku setup:ssh key.pub` did not add a forced-command line: {}",
        piku.setup_ssh
    );
    let keys = fs::read_to_string(piku.home.join(".ssh/authorized_keys")).expect("authorized_keys");
    for option in [
        "command=",
        "no-port-forwarding",
        "no-agent-forwarding",
        "no-X11-forwarding",
    ] {
        assert!(
            keys.contains(option),
            "authorized_keys lacks {option}: {keys}"
        );
    }
    // The forced command answers, and refuses what it doesn't know.
    let help = piku.ssh("help");
    help.assert_ok();
    assert!(
        help.stdout.contains("ps:scale"),
        "help does not list ps:scale: {help}"
    );
    piku.ssh("rm -rf /").assert_failed();

    // A file that is not a public key is refused, and nothing is added.
    let bad = piku.tmp.path().join("not-a-key.pub");
    fs::write(&bad, "this is not a key\n").expect("write");
    let mut cmd = piku.server_command(&piku.bins.piku);
    cmd.arg("setup:ssh").arg(&bad);
    piku_e2e::run_with_timeout(cmd, None, Duration::from_secs(30)).assert_failed();
    let after =
        fs::read_to_string(piku.home.join(".ssh/authorized_keys")).expect("authorized_keys");
    assert_eq!(keys, after, "a bad key file changed authorized_keys");
}

#[test]
fn push_redeploy_scale_restart_stop_start() {
    let piku = Piku::start();
    let app = "hello";
    let repo = make_app_repo("web-python");

    // First deploy: the push streams piku-style steps and the app answers on its port.
    let push = piku.git_push(repo.path(), app);
    push.assert_ok();
    assert!(
        push.combined().contains("-----> "),
        "no `-----> ` lines in the push output: {push}"
    );
    let (port, body) = piku.expect_serving(
        app,
        |b| b.starts_with("hello from hello ") && b.contains("version=v1"),
        "v1",
    );
    assert!(port > 0, "{body}");

    // Redeploy: new content.
    repo.set_version("v2");
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(app, |b| b.contains("version=v2"), "v2 after a redeploy");

    // Scale up: three instances, each its own port and process, each answering.
    piku.ssh(&format!("ps:scale {app} web=3")).assert_ok();
    let three = piku
        .wait_serving(app, 3, CHANGE_TIMEOUT, |b| b.contains("version=v2"))
        .unwrap_or_else(|| {
            panic!(
                "web=3 never gave three answering instances: {:?}\n{}",
                piku.ps_json(app),
                piku.diagnostics()
            )
        });
    let ports: BTreeSet<u16> = three.iter().map(|(p, _)| *p).collect();
    let pids: BTreeSet<Option<u32>> = three.iter().map(|(_, b)| pid_in(b)).collect();
    assert_eq!(ports.len(), 3, "instances share ports: {three:?}");
    assert_eq!(pids.len(), 3, "instances share a process: {three:?}");
    let table = piku.ssh(&format!("ps {app}"));
    table.assert_ok();
    assert!(
        table.stdout.contains("web.3"),
        "`ps` does not show web.3: {table}"
    );
    for column in ["process", "state", "pid", "uptime", "restarts", "memory"] {
        assert!(
            table.stdout.contains(column),
            "`ps` has no {column} column: {table}"
        );
    }

    // Scale down: one left, the others stop answering.
    piku.ssh(&format!("ps:scale {app} web=1")).assert_ok();
    let one = piku
        .wait_serving(app, 1, CHANGE_TIMEOUT, |b| b.contains("version=v2"))
        .unwrap_or_else(|| panic!("web=1 did not leave one instance: {:?}", piku.ps_json(app)));
    let kept = one[0].0;
    let gone: Vec<u16> = ports.iter().copied().filter(|p| *p != kept).collect();
    assert!(
        wait_until(CHANGE_TIMEOUT, || gone
            .iter()
            .all(|p| http_get(*p, "/").is_err())
            .then_some(()))
        .is_some(),
        "scaled-down instances still answer on {gone:?}"
    );

    // Restart: the same formation with new processes.
    let before: BTreeSet<u32> = piku.instances(app).iter().filter_map(|i| i.pid).collect();
    assert!(
        !before.is_empty(),
        "no pids before restart: {:?}",
        piku.ps_json(app)
    );
    piku.ssh(&format!("restart {app}")).assert_ok();
    let restarted = wait_until(CHANGE_TIMEOUT, || {
        let now: BTreeSet<u32> = piku
            .instances(app)
            .iter()
            .filter(|i| i.state == "running")
            .filter_map(|i| i.pid)
            .collect();
        let fresh = !now.is_empty() && now.is_disjoint(&before);
        let port = *piku.web_ports(app).first()?;
        (fresh && get_ok(port, "/").is_some()).then_some(now)
    });
    assert!(
        restarted.is_some(),
        "restart did not replace the processes {before:?}: {:?}",
        piku.ps_json(app)
    );

    // A crash (kill -9) is restarted by the supervisor, on the same port, and counted.
    let (port, body) =
        piku.expect_serving(app, |b| b.contains("version=v2"), "v2 before the crash");
    let victim = pid_in(&body).expect("pid in the answer");
    piku_e2e::process::signal_pid(victim, nix::sys::signal::Signal::SIGKILL);
    let respawned = wait_until(CHANGE_TIMEOUT, || {
        let body = get_ok(port, "/")?;
        (pid_in(&body)? != victim).then_some(())
    });
    assert!(
        respawned.is_some(),
        "web.1 was not respawned on port {port} after kill -9: {:?}",
        piku.ps_json(app)
    );
    let counted = wait_until(CHANGE_TIMEOUT, || {
        piku.instances(app)
            .iter()
            .any(|i| i.restarts >= 1)
            .then_some(())
    });
    assert!(
        counted.is_some(),
        "ps does not count the crash: {:?}",
        piku.ps_json(app)
    );

    // Stop: nothing answers and nothing runs; start: it serves again.
    let port = piku.web_ports(app)[0];
    piku.ssh(&format!("stop {app}")).assert_ok();
    let stopped = wait_until(CHANGE_TIMEOUT, || {
        let running = piku
            .instances(app)
            .iter()
            .any(|i| i.pid.is_some() && i.state == "running");
        (!running && http_get(port, "/").is_err()).then_some(())
    });
    assert!(
        stopped.is_some(),
        "stop left the app running: {:?}",
        piku.ps_json(app)
    );
    piku.ssh(&format!("start {app}")).assert_ok();
    piku.expect_serving(app, |b| b.contains("version=v2"), "v2 after stop/start");
}

#[test]
fn config_set_logs_and_run() {
    let piku = Piku::start();
    let app = "cfg";
    let repo = make_app_repo("web-python");
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(
        app,
        |b| b.starts_with("hello from cfg"),
        "the repo ENV greeting",
    );
    let releases_before = piku
        .releases(app)
        .unwrap_or_else(|e| panic!("releases: {e}"));

    // config:set restarts with the new env, without a build.
    let set = piku.ssh(&format!("config:set {app} GREETING=howdy SECRET=s3cr3t"));
    set.assert_ok();
    assert!(
        set.combined().contains("SECRET"),
        "config:set did not say what it set: {set}"
    );
    piku.expect_serving(
        app,
        |b| b.starts_with("howdy from cfg"),
        "the config:set greeting",
    );
    let port = piku.web_ports(app)[0];
    assert_eq!(get_ok(port, "/env/SECRET").as_deref(), Some("s3cr3t\n"));
    let releases_after = piku
        .releases(app)
        .unwrap_or_else(|e| panic!("releases: {e}"));
    assert_eq!(
        releases_before.len(),
        releases_after.len(),
        "config:set made a new release (a rebuild): {releases_before:?} -> {releases_after:?}"
    );
    assert_eq!(
        releases_before.first(),
        releases_after.first(),
        "config:set changed the live release"
    );

    let get = piku.ssh(&format!("config:get {app} SECRET"));
    get.assert_ok();
    assert_eq!(get.stdout.trim(), "s3cr3t", "{get}");
    let config = piku.ssh(&format!("config {app}"));
    assert!(config.stdout.contains("SECRET=s3cr3t"), "{config}");
    let live = piku.ssh(&format!("config:live {app}"));
    assert!(
        live.stdout.contains("SECRET=s3cr3t") && live.stdout.contains("APP=cfg"),
        "config:live lacks the merged env: {live}"
    );

    piku.ssh(&format!("config:unset {app} SECRET")).assert_ok();
    let unset = wait_until(CHANGE_TIMEOUT, || {
        let port = *piku.web_ports(app).first()?;
        matches!(http_get(port, "/env/SECRET"), Ok((404, _))).then_some(())
    });
    assert!(unset.is_some(), "SECRET still visible after config:unset");

    // logs: a line the app printed shows up as `web.1 | …` while following.
    let mut logs = piku.ssh_streaming(&format!("logs {app}"));
    // First the last lines already written (the app's start-up line)...
    let past = logs.wait_for_line(Duration::from_secs(20), |l| {
        l.starts_with("web.1") && l.contains("| cfg listening on 127.0.0.1:")
    });
    assert!(
        past.is_some(),
        "`logs` did not start with past lines: {:#?}",
        logs.seen()
    );
    // ...then new ones as they come.
    let marker = format!("/marker-{}", std::process::id());
    let seen = wait_until(Duration::from_secs(30), || {
        let port = *piku.web_ports(app).first()?;
        let _ = get_ok(port, &marker);
        logs.wait_for_line(Duration::from_millis(500), |l| {
            l.starts_with("web.1") && l.contains(&format!("| request {marker}"))
        })
    });
    assert!(
        seen.is_some(),
        "`logs {app}` never showed `web.1 | request {marker}`; saw: {:#?}",
        logs.seen()
    );
    drop(logs);

    // run: the app's env and cwd, and the exit status passed through.
    let run = piku.ssh(&format!(
        "run {app} -- python3 -c 'import os;print(os.environ[\"APP\"])'"
    ));
    run.assert_ok();
    assert_eq!(run.stdout.trim(), "cfg", "{run}");
    let greeting = piku.ssh(&format!("run {app} -- sh -c 'echo $GREETING'"));
    assert_eq!(greeting.stdout.trim(), "howdy", "{greeting}");
    let cwd = piku.ssh(&format!("run {app} -- cat VERSION"));
    assert_eq!(
        cwd.stdout.trim(),
        "v1",
        "run does not start in the app's checkout: {cwd}"
    );
    let exit = piku.ssh(&format!("run {app} -- sh -c 'exit 3'"));
    assert_eq!(exit.code, Some(3), "exit status not passed through: {exit}");
    // As piku runs it: the words joined and given to a shell, so `&&` chains and `$VAR`
    // expands from the app's environment, and the shell's status is the session's.
    let chained = piku.ssh(&format!("run {app} -- echo one && echo $GREETING"));
    assert_eq!(chained.stdout, "one\nhowdy\n", "{chained}");
    let status = piku.ssh(&format!("run {app} -- test -f VERSION && exit 7"));
    assert_eq!(status.code, Some(7), "{status}");
    let missing = piku.ssh(&format!("run {app} no-such-program"));
    assert_eq!(missing.code, Some(127), "{missing}");
    // With `ssh -t` the command gets a real terminal; without it, none.
    let tty = piku.ssh_flags(&["-tt"], &format!("run {app} -- tty"));
    assert!(
        tty.stdout.contains("/dev/pts/"),
        "no TTY under ssh -t: {tty}"
    );
    let no_tty = piku.ssh(&format!("run {app} -- tty"));
    assert!(
        !no_tty.stdout.contains("/dev/pts/"),
        "a TTY without ssh -t: {no_tty}"
    );
}

#[test]
fn releases_and_rollback() {
    let piku = Piku::start();
    let app = "rb";
    let repo = make_app_repo("web-python");
    let v1 = repo.head();
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(app, |b| b.contains("version=v1"), "v1");
    let v2 = repo.set_version("v2");
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(app, |b| b.contains("version=v2"), "v2");

    let releases = piku.releases(app).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(releases.len(), 2, "{releases:?}");
    let commit = |r: &serde_json::Value| r["commit"].as_str().unwrap_or_default().to_string();
    assert!(
        v2.starts_with(&commit(&releases[0])) || commit(&releases[0]).starts_with(&v2),
        "newest first: {releases:?}"
    );
    assert_eq!(
        releases[0]["live"],
        serde_json::Value::Bool(true),
        "{releases:?}"
    );
    let first_id = releases[1]["id"].as_str().expect("release id").to_string();
    let second_id = releases[0]["id"].as_str().expect("release id").to_string();
    let logs = piku.build_logs(app);
    assert_eq!(
        logs.len(),
        2,
        "one build.log per release expected: {logs:?}"
    );
    assert!(logs.iter().all(|(_, t)| t.contains("-----> ")), "{logs:?}");
    let table = piku.ssh(&format!("releases {app}"));
    table.assert_ok();
    assert!(
        table.stdout.contains(&first_id) && table.stdout.contains(&second_id),
        "{table}"
    );

    // The app's repo can be cloned back (git-upload-pack through the forced command).
    let clone_dir = piku.tmp.path().join("clone");
    let url = piku.remote_url(app);
    piku_e2e::run_with_timeout(
        piku.git_command(
            piku.tmp.path(),
            &["clone", "-q", &url, &clone_dir.to_string_lossy()],
        ),
        None,
        Duration::from_secs(60),
    )
    .assert_ok();
    assert_eq!(
        fs::read_to_string(clone_dir.join("VERSION"))
            .ok()
            .as_deref(),
        Some("v2\n")
    );

    // rollback with no argument: the release before the live one, no rebuild.
    let rollback = piku.ssh(&format!("rollback {app}"));
    rollback.assert_ok();
    piku.expect_serving(app, |b| b.contains("version=v1"), "v1 after rollback");
    let releases = piku.releases(app).unwrap_or_else(|e| panic!("{e}"));
    let live: Vec<String> = releases
        .iter()
        .filter(|r| r["live"] == serde_json::Value::Bool(true))
        .map(commit)
        .collect();
    assert_eq!(live.len(), 1, "{releases:?}");
    assert!(
        v1.starts_with(&live[0]) || live[0].starts_with(&v1),
        "v1 not live after rollback: {releases:?}"
    );
    let cwd = piku.ssh(&format!("run {app} -- cat VERSION"));
    assert_eq!(
        cwd.stdout.trim(),
        "v1",
        "apps/{app} does not point at the rolled-back release: {cwd}"
    );

    // rollback to a named release.
    piku.ssh(&format!("rollback {app} {second_id}")).assert_ok();
    piku.expect_serving(app, |b| b.contains("version=v2"), "v2 after rollback by id");
    piku.ssh(&format!("rollback {app} no-such-release"))
        .assert_failed();
    piku.expect_serving(
        app,
        |b| b.contains("version=v2"),
        "v2 after a refused rollback",
    );

    // `deploy <app>` rebuilds the live commit as a new release.
    piku.ssh(&format!("deploy {app}")).assert_ok();
    let releases = piku.releases(app).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        releases.len(),
        3,
        "deploy did not make a new release: {releases:?}"
    );
    assert!(
        same_commit(&commit(&releases[0]), &v2),
        "deploy built another commit: {releases:?}"
    );
    piku.expect_serving(app, |b| b.contains("version=v2"), "v2 after `deploy`");

    // Only PIKU_KEEP_RELEASES releases are kept.
    piku.ssh(&format!("config:set {app} PIKU_KEEP_RELEASES=2"))
        .assert_ok();
    repo.set_version("v3");
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(app, |b| b.contains("version=v3"), "v3");
    let releases = piku.releases(app).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        releases.len(),
        2,
        "PIKU_KEEP_RELEASES=2 not honoured: {releases:?}"
    );
}

#[test]
fn destroy_keeps_data() {
    let piku = Piku::start();
    let app = "gone";
    let repo = make_app_repo("web-python");
    piku.git_push(repo.path(), app).assert_ok();
    let (port, _) = piku.expect_serving(app, |b| b.contains("hello from gone"), "v1");
    piku.ssh(&format!(
        "run {app} -- sh -c 'echo kept > \"$DATA_ROOT/keep.txt\"'"
    ))
    .assert_ok();
    let kept = piku.root.join("data").join(app).join("keep.txt");
    assert!(
        kept.is_file(),
        "DATA_ROOT is not {}",
        kept.parent()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );

    let destroy = piku.ssh(&format!("destroy {app}"));
    destroy.assert_ok();
    assert!(
        wait_until(CHANGE_TIMEOUT, || http_get(port, "/")
            .is_err()
            .then_some(()))
        .is_some(),
        "the app still answers after destroy"
    );
    for dir in ["apps", "repos", "envs", "releases"] {
        let p = piku.root.join(dir).join(app);
        assert!(
            !p.exists() && p.symlink_metadata().is_err(),
            "destroy left {}",
            p.display()
        );
    }
    assert_eq!(
        fs::read_to_string(&kept).ok().as_deref(),
        Some("kept\n"),
        "destroy removed data/{app}"
    );
    let apps = piku.ssh("apps");
    apps.assert_ok();
    assert!(
        !apps.stdout.contains(app),
        "`apps` still lists {app}: {apps}"
    );
    piku.ssh(&format!("ps {app}")).assert_failed();

    // The name can be used again, and data/ is still there for it.
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(
        app,
        |b| b.contains("hello from gone"),
        "the app deployed again",
    );
    let again = piku.ssh(&format!("run {app} -- sh -c 'cat \"$DATA_ROOT/keep.txt\"'"));
    assert_eq!(again.stdout.trim(), "kept", "{again}");
}

#[test]
fn static_site_deploys_its_files() {
    let piku = Piku::start();
    let app = "site";
    let repo = make_app_repo("static-site");
    let push = piku.git_push(repo.path(), app);
    push.assert_ok();
    assert!(push.combined().to_lowercase().contains("static"), "{push}");
    // Nothing to run until the HTTP front serves it; the files are live under apps/<app>.
    assert!(piku.web_ports(app).is_empty(), "{:?}", piku.ps_json(app));
    let index = piku.root.join("apps").join(app).join("public/index.html");
    let html = fs::read_to_string(&index).unwrap_or_default();
    assert!(
        html.contains("hello from a static piku site"),
        "{} is not live",
        index.display()
    );
    let apps = piku.ssh("apps");
    assert!(apps.stdout.contains(app), "{apps}");
}
