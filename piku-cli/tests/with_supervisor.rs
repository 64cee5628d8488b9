//! `piku` commands against the real `piku-supervisor`: ps, stop/start, restart, ps:scale,
//! logs (history, follow, ending when the reader goes away), apps and destroy.
//!
//! The app is handed to the supervisor with a direct `Apply` (what a deploy ends with), so
//! these tests do not depend on the build pipeline.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{Sandbox, Supervisor, wait_until};
use piku_proto::{AppSettings, AppSpec, Client, ProcessSpec, Request, Response, Role};
use serde_json::Value;

/// Deploys `app` by hand: a checkout linked from `apps/<app>`, SCALING, and an `Apply` with a
/// chatty worker and a quiet one.
fn deploy(s: &Sandbox, app: &str) {
    let checkout = s.deployed_app(app, "GREETING=hi\n", "ticker:1\nquiet:1\n");
    let spec = AppSpec {
        app: app.into(),
        release: "v1".into(),
        workdir: checkout,
        env: BTreeMap::from([
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            ),
            ("GREETING".to_string(), "hi".to_string()),
        ]),
        processes: vec![
            ProcessSpec {
                kind: "ticker".into(),
                command: "sh -c 'while true; do echo \"tick $PIKU_INSTANCE\"; sleep 0.2; done'"
                    .into(),
                role: Role::Worker,
                count: 1,
            },
            ProcessSpec {
                kind: "quiet".into(),
                command: "sleep 100000".into(),
                role: Role::Worker,
                count: 1,
            },
        ],
        settings: AppSettings {
            stop_grace_ms: 2_000,
            ..AppSettings::default()
        },
    };
    let mut client = Client::connect(&s.root.join("supervisor.sock")).unwrap();
    let answer = client
        .call(&Request::Apply(Box::new(spec)), |_| {})
        .unwrap();
    assert!(matches!(answer, Response::Applied(_)), "{answer:?}");
}

fn ps_json(s: &Sandbox, app: &str) -> Value {
    let run = s.ssh(&format!("ps {app} --json"));
    run.ok();
    serde_json::from_str(&run.stdout).unwrap()
}

/// Waits until `count` instances of `kind` are running.
#[track_caller]
fn wait_running(s: &Sandbox, app: &str, kind: &str, count: usize) {
    let got = wait_until(Duration::from_secs(10), || {
        let json = ps_json(s, app);
        let running = json["processes"]
            .as_array()?
            .iter()
            .filter(|p| p["kind"] == kind && p["state"] == "running")
            .count();
        (running == count).then_some(())
    });
    assert!(
        got.is_some(),
        "{kind} never had {count} running: {}",
        ps_json(s, app)
    );
}

#[test]
fn ps_stop_start_restart_and_apps() {
    let s = Sandbox::new();
    let _sup = Supervisor::start(&s);
    deploy(&s, "app");
    wait_running(&s, "app", "ticker", 1);
    wait_running(&s, "app", "quiet", 1);

    let ps = s.ssh("ps app");
    ps.ok();
    let lines: Vec<&str> = ps.stdout.lines().collect();
    assert!(
        lines[0].starts_with("=== app (release v1)"),
        "{}",
        ps.stdout
    );
    assert!(lines[1].starts_with("process"), "{}", ps.stdout);
    for header in [
        "state",
        "pid",
        "port",
        "uptime",
        "restarts",
        "memory",
        "cpu",
        "last exit",
    ] {
        assert!(lines[1].contains(header), "{header}: {}", ps.stdout);
    }
    assert!(ps.stdout.contains("quiet.1"), "{}", ps.stdout);
    // The app's memory in all, with each instance's in --json.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("memory: ") && l.ends_with(" in all")),
        "{}",
        ps.stdout
    );
    let json = ps_json(&s, "app");
    let each: Vec<u64> = json["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["memory_bytes"].as_u64())
        .collect();
    assert_eq!(each.len(), 2, "{json}");
    assert_eq!(
        json["memory_bytes"].as_u64(),
        Some(each.iter().sum()),
        "{json}"
    );
    assert_eq!(json["limits"]["memory_max_bytes"], Value::Null, "{json}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("ticker.1") && l.contains("running")),
        "{}",
        ps.stdout
    );
    assert_eq!(s.ssh("apps").ok().stdout, "*app\n");

    let stop = s.ssh("stop app");
    stop.ok();
    assert!(stop.stdout.starts_with("Stopping app 'app'..."), "{stop:?}");
    assert_eq!(ps_json(&s, "app")["stopped"], true);
    assert_eq!(s.ssh("apps").ok().stdout, " app\n");

    let start = s.ssh("start app");
    start.ok();
    assert!(
        start.stdout.starts_with("Starting app 'app'..."),
        "{start:?}"
    );
    wait_running(&s, "app", "ticker", 1);

    let pid_of = |kind: &str| {
        ps_json(&s, "app")["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kind"] == kind)
            .and_then(|p| p["pid"].as_u64())
    };
    let before = pid_of("quiet");
    s.ssh("restart app quiet").ok();
    let changed = wait_until(Duration::from_secs(10), || {
        let now = pid_of("quiet");
        (now.is_some() && now != before).then_some(())
    });
    assert!(changed.is_some(), "quiet.1 was not restarted");

    s.ssh("ps ghost").fails_with("app 'ghost' not found.");
}

#[test]
fn ps_scale_goes_to_the_supervisor_and_is_recorded() {
    let s = Sandbox::new();
    let _sup = Supervisor::start(&s);
    deploy(&s, "app");
    let run = s.ssh("ps:scale app ticker=2 quiet=0");
    run.ok();
    assert!(
        run.stdout.contains("Scaling 'app': quiet=0 ticker=2"),
        "{run:?}"
    );
    wait_running(&s, "app", "ticker", 2);
    wait_running(&s, "app", "quiet", 0);
    assert_eq!(
        fs::read_to_string(s.root.join("envs/app/SCALING")).unwrap(),
        "quiet:0\nticker:2\n"
    );
}

#[test]
fn logs_show_history_in_piku_format_and_follow() {
    let s = Sandbox::new();
    let _sup = Supervisor::start(&s);
    deploy(&s, "app");
    let seen = wait_until(Duration::from_secs(10), || {
        let run = s.ssh("logs app --no-follow -n 3");
        (run.code == Some(0) && run.stdout.contains("tick 1")).then_some(run)
    })
    .expect("ticker lines never showed up in logs");
    // Padded to the longest instance name (`ticker.1`), as piku padded to the longest file.
    for line in seen.stdout.lines() {
        assert!(
            line.starts_with("ticker.1 | ") || line.starts_with("quiet.1  | "),
            "{line:?} in {}",
            seen.stdout
        );
    }
    assert!(seen.stdout.lines().filter(|l| l.contains("tick 1")).count() <= 3);

    // Following: new lines keep coming.
    let mut child = s
        .command()
        .env("SSH_ORIGINAL_COMMAND", "logs app ticker")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..25 {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        lines.push(line);
    }
    // Only the asked-for process; the supervisor's own `[piku] …` notes are part of its log.
    assert!(
        lines.iter().all(|l| l.starts_with("ticker.1 | ")),
        "{lines:?}"
    );
    let ticks = lines.iter().filter(|l| *l == "ticker.1 | tick 1\n").count();
    assert!(ticks >= 20, "{lines:?}");
    // The reader goes away (the ssh client quit): piku logs ends, successfully.
    drop(reader);
    let status = wait_until(Duration::from_secs(10), || child.try_wait().unwrap());
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("piku logs kept running after its reader left");
    });
    assert!(status.success(), "{status}");
}

#[test]
fn logs_of_a_quiet_process_end_when_the_reader_leaves() {
    let s = Sandbox::new();
    let _sup = Supervisor::start(&s);
    deploy(&s, "app");
    wait_running(&s, "app", "quiet", 1);
    // `quiet` never writes, so no write can fail: only the hang-up watcher can notice.
    let mut child = s
        .command()
        .env("SSH_ORIGINAL_COMMAND", "logs app quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "logs should still be following"
    );
    drop(child.stdout.take());
    let status = wait_until(Duration::from_secs(10), || child.try_wait().unwrap());
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("piku logs kept running after its reader left");
    });
    assert!(status.success(), "{status}");
}

#[test]
fn destroy_stops_the_app_and_keeps_data() {
    let s = Sandbox::new();
    let _sup = Supervisor::start(&s);
    deploy(&s, "app");
    deploy(&s, "app-staging");
    wait_running(&s, "app", "ticker", 1);
    let data = s.root.join("data/app");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("db.sqlite"), "precious").unwrap();
    fs::create_dir_all(s.root.join("cache/app")).unwrap();
    // Vassals left by a piku install this one was migrated from.
    let vassals = s.root.join("uwsgi-enabled");
    fs::create_dir_all(&vassals).unwrap();
    fs::write(vassals.join("app_web.1.ini"), "").unwrap();
    fs::write(vassals.join("app-staging_web.1.ini"), "").unwrap();

    let run = s.ssh("destroy app");
    run.ok();
    assert!(
        run.stdout
            .contains(&format!("==> Preserving folder '{}'", data.display())),
        "{run:?}"
    );
    for gone in ["apps/app", "repos/app", "envs/app", "releases/app"] {
        assert!(
            s.root.join(gone).symlink_metadata().is_err(),
            "{gone} still there: {run:?}"
        );
    }
    assert_eq!(
        fs::read_to_string(data.join("db.sqlite")).unwrap(),
        "precious"
    );
    assert!(s.root.join("cache/app").is_dir());
    assert!(!vassals.join("app_web.1.ini").exists());
    assert!(vassals.join("app-staging_web.1.ini").exists());
    // The supervisor forgot it; the similarly named app is untouched.
    s.ssh("ps app").fails_with("app 'app' not found.");
    assert!(s.root.join("apps/app-staging").symlink_metadata().is_ok());
    wait_running(&s, "app-staging", "ticker", 1);
    assert_eq!(s.ssh("apps").ok().stdout, "*app-staging\n");
    s.ssh("destroy app").fails_with("app 'app' not found.");
}
