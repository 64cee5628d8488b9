//! Our user-side `piku` client script (`piku-cli/client/piku`, a POSIX sh script like piku's)
//! driving the server: with `PIKU_SERVER`/`PIKU_APP`, and with a `piku` git remote.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use piku_e2e::{Piku, Run, make_app_repo, repo_root, run_with_timeout};

fn client(piku: &Piku, cwd: &Path, env: &[(&str, String)], args: &[&str]) -> Run {
    let script = repo_root().join("piku-cli/client/piku");
    assert!(script.is_file(), "{} does not exist", script.display());
    let mut cmd = Command::new("sh");
    cmd.arg(&script).args(args).current_dir(cwd);
    // Our ssh wrapper (key, port, no host checks) comes first on PATH.
    let path = format!(
        "{}:{}",
        piku.bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    cmd.env("PATH", path)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("PIKU_SERVER")
        .env_remove("PIKU_APP");
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, None, Duration::from_secs(120))
}

#[test]
fn client_script_drives_apps_ps_and_config() {
    let piku = Piku::start();
    let app = "cli";
    let repo = make_app_repo("web-python");
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(app, |b| b.starts_with("hello from cli"), "v1");

    // Outside any repo: the server and app come from the environment.
    let env = [("PIKU_SERVER", piku.host()), ("PIKU_APP", app.to_string())];
    let elsewhere = piku.tmp.path();
    let apps = client(&piku, elsewhere, &env, &["apps"]);
    apps.assert_ok();
    assert!(apps.stdout.contains(app), "{apps}");
    let ps = client(&piku, elsewhere, &env, &["ps"]);
    ps.assert_ok();
    assert!(ps.stdout.contains("web"), "{ps}");
    client(&piku, elsewhere, &env, &["config:set", "GREETING=hey"]).assert_ok();
    piku.expect_serving(
        app,
        |b| b.starts_with("hey from cli"),
        "the greeting set by the client",
    );

    // Inside the app's repo: the `piku` git remote names server and app.
    repo.git(&["remote", "add", "piku", &piku.remote_url(app)]);
    let get = client(&piku, repo.path(), &[], &["config:get", "GREETING"]);
    get.assert_ok();
    assert_eq!(get.stdout.trim(), "hey", "{get}");
    // Leading ssh flags go to ssh, and the app is inserted after the command.
    let run = client(
        &piku,
        repo.path(),
        &[],
        &["-q", "run", "--", "sh", "-c", "'echo $APP'"],
    );
    run.assert_ok();
    assert_eq!(run.stdout.trim(), app, "{run}");

    // A value with a space survives the trip (piku#297), `-r NAME` picks another remote.
    client(
        &piku,
        repo.path(),
        &[],
        &["config:set", "GREETING=hi there"],
    )
    .assert_ok();
    piku.expect_serving(
        app,
        |b| b.starts_with("hi there from cli"),
        "a greeting with a space",
    );
    repo.git(&["remote", "add", "staging", &piku.remote_url(app)]);
    repo.git(&["remote", "set-url", "piku", &piku.remote_url("no-such-app")]);
    let via_r = client(
        &piku,
        repo.path(),
        &[],
        &["-r", "staging", "config:get", "GREETING"],
    );
    via_r.assert_ok();
    assert_eq!(via_r.stdout.trim(), "hi there", "{via_r}");

    // download works with current OpenSSH (no scp/SFTP through the forced command).
    let local = piku.tmp.path().join("downloaded-VERSION");
    client(
        &piku,
        repo.path(),
        &[],
        &[
            "-r",
            "staging",
            "download",
            "VERSION",
            &local.to_string_lossy(),
        ],
    )
    .assert_ok();
    assert_eq!(
        std::fs::read_to_string(&local).ok().as_deref(),
        Some("v1\n")
    );

    // No server configured: a clear error, not an ssh to nowhere.
    let none = client(&piku, elsewhere, &[], &["apps"]);
    none.assert_failed();
    assert!(none.stderr.contains("PIKU_SERVER"), "{none}");
}
