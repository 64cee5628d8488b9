//! The user-side client script (`piku-cli/client/piku`) against the real `piku` binary.
//!
//! A stand-in `ssh` on PATH does what ssh + sshd do to a command: it joins the remote words
//! with spaces into `SSH_ORIGINAL_COMMAND` and runs our forced command with it. So these tests
//! check the whole quoting chain (client → ssh → shell-word split on the server) without a
//! network. The real-sshd version lives in the e2e suite.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{Run, Sandbox, piku_bin};

/// Writes the stand-in `ssh` into `<sandbox>/bin` and returns that directory.
fn fake_ssh(s: &Sandbox) -> PathBuf {
    let bin = s.tmp.path().join("bin");
    fs::create_dir_all(&bin).unwrap();
    let script = format!(
        r#"#!/bin/sh
# ssh [options] host [command words…]: options with a value are -o -i -p -F -l -J.
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-i|-p|-F|-l|-J) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
host="$1"; shift
echo "$host" >> "{log}"
SSH_ORIGINAL_COMMAND="$*" PIKU_ROOT="{root}" HOME="{home}" exec "{piku}"
"#,
        log = s.tmp.path().join("ssh-hosts.log").display(),
        root = s.root.display(),
        home = s.home.display(),
        piku = piku_bin().display(),
    );
    let path = bin.join("ssh");
    fs::write(&path, script).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn client_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("client/piku")
}

/// Runs the client in `cwd` with `PIKU_SERVER`/`PIKU_APP` from `env`.
fn client(s: &Sandbox, cwd: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let path = format!(
        "{}:{}",
        fake_ssh(s).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.arg(client_script())
        .args(args)
        .current_dir(cwd)
        .env("PATH", path)
        .env("HOME", s.tmp.path().join("user-home"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("PIKU_SERVER")
        .env_remove("PIKU_APP")
        .env_remove("SSH_ORIGINAL_COMMAND")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

const ENV: &[(&str, &str)] = &[("PIKU_SERVER", "piku@example"), ("PIKU_APP", "app")];

#[test]
fn values_with_spaces_survive_the_ssh_round_trip() {
    let s = Sandbox::new();
    s.deployed_app("app", "", "web:1\n");
    let cwd = s.tmp.path();
    // Refused on the apply (no supervisor), but written first: the quoting is what we check.
    let set = client(
        &s,
        cwd,
        ENV,
        &["config:set", "X=a  b", "Y=it is", "Z=plain"],
    );
    assert!(set.stdout.contains("Setting X=a  b for 'app'"), "{set:?}");
    // piku's documented workaround (quotes for the server) keeps working.
    client(&s, cwd, ENV, &["config:set", "W=\"c d\""]);
    assert_eq!(
        fs::read_to_string(s.root.join("envs/app/ENV")).unwrap(),
        "W=c d\nX=a  b\nY=it is\nZ=plain\n"
    );
    let get = client(&s, cwd, ENV, &["config:get", "X"]);
    assert_eq!(get.stdout, "a  b\n", "{get:?}");
    assert!(get.stderr.contains("Server: piku@example"), "{get:?}");
}

#[test]
fn run_download_and_help() {
    let s = Sandbox::new();
    let checkout = s.deployed_app("app", "GREETING=hello there\n", "web:1\n");
    let cwd = s.tmp.path();
    // As with piku's client, the words are one line for the server's shell: quote for it.
    let run = client(
        &s,
        cwd,
        ENV,
        &[
            "run",
            "--",
            "echo \"$GREETING\"",
            "&&",
            "sh",
            "-c",
            "'echo $1'",
            "-",
            "'x y'",
        ],
    );
    assert_eq!(run.stdout, "hello there\nx y\n", "{run:?}");
    let status = client(&s, cwd, ENV, &["run", "exit 3"]);
    assert_eq!(status.code, Some(3), "{status:?}");

    fs::create_dir_all(checkout.join("sub dir")).unwrap();
    fs::write(checkout.join("sub dir/report.csv"), "a,b\n1,2\n").unwrap();
    let local = s.tmp.path().join("downloads");
    fs::create_dir_all(&local).unwrap();
    let dl = client(
        &s,
        cwd,
        ENV,
        &["download", "sub dir/report.csv", local.to_str().unwrap()],
    );
    assert_eq!(dl.code, Some(0), "{dl:?}");
    assert_eq!(
        fs::read_to_string(local.join("report.csv")).unwrap(),
        "a,b\n1,2\n"
    );
    let missing = client(
        &s,
        cwd,
        ENV,
        &["download", "nope.txt", local.to_str().unwrap()],
    );
    assert_ne!(missing.code, Some(0), "{missing:?}");
    assert!(!local.join("nope.txt").exists());
    assert_eq!(
        fs::read_dir(&local).unwrap().count(),
        1,
        "a partial file was left behind"
    );

    let help = client(&s, cwd, ENV, &["help"]);
    assert!(help.stdout.contains("config:set"), "{help:?}");
    assert!(help.stdout.contains("  download "), "{help:?}");
    assert!(!help.stdout.contains("INTERNAL"), "{help:?}");
}

#[test]
fn server_and_app_come_from_the_git_remote() {
    let s = Sandbox::new();
    s.deployed_app("other", "", "web:1\n");
    let repo = s.tmp.path().join("repo");
    fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let ok = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    };
    git(&["init", "-q"]);
    git(&["remote", "add", "piku", "piku@remote-host:other"]);
    git(&["remote", "add", "staging", "piku@staging-host:other"]);
    let ps = client(&s, &repo, &[], &["config:set", "K=v"]);
    assert!(ps.stdout.contains("Setting K=v for 'other'"), "{ps:?}");
    client(&s, &repo, &[], &["-r", "staging", "apps"]);
    let hosts = fs::read_to_string(s.tmp.path().join("ssh-hosts.log")).unwrap();
    assert_eq!(hosts, "piku@remote-host\npiku@staging-host\n");

    // No remote and no PIKU_SERVER: a clear error, no ssh.
    let none = client(&s, s.tmp.path(), &[], &["apps"]);
    assert_eq!(none.code, Some(1), "{none:?}");
    assert!(
        none.stderr.contains("Error: no piku server configured."),
        "{none:?}"
    );
}
