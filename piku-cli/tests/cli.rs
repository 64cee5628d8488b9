//! The `piku` binary without a supervisor: invocation parsing, app-name checks, help, setup,
//! setup:ssh, config, ps:scale validation and run.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::{Sandbox, piku_bin};

#[test]
fn ssh_original_command_is_split_with_shell_words_and_argv_ignored() {
    let s = Sandbox::new();
    s.pushed_app("app");
    // piku's old authorized_keys line (`piku.py $SSH_ORIGINAL_COMMAND`) hands us the shell's
    // naive split as argv; the variable must win.
    let run = s
        .command()
        .env(
            "SSH_ORIGINAL_COMMAND",
            r#"config:set 'app' X="a b" Y='c  d' Z=e\ f"#,
        )
        .args([
            "config:set",
            "'app'",
            "X=\"a",
            "b\"",
            "Y='c",
            "d'",
            "Z=e\\",
            "f",
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("Setting X=a b for 'app'"), "{stdout}");
    let env = fs::read_to_string(s.root.join("envs/app/ENV")).unwrap();
    assert_eq!(env, "X=a b\nY=c  d\nZ=e f\n");
}

#[test]
fn unbalanced_quotes_are_refused() {
    let s = Sandbox::new();
    s.pushed_app("app");
    s.ssh("config:set app X=\"a b")
        .fails_with("unbalanced quotes");
    assert!(!s.root.join("envs/app/ENV").exists());
}

#[test]
fn malicious_app_names_are_refused_and_nothing_is_created() {
    let s = Sandbox::new();
    s.setup();
    let before = s.tree();
    for name in [
        "../x", "a/b", "-rf", "..", ".", "'x;id'", "\"a b\"", "/etc", "~/x",
    ] {
        for template in [
            "git-receive-pack {}",
            "git-upload-pack {}",
            "git-hook {}",
            "config:set {} K=V",
            "destroy {}",
            "run {} id",
            "logs {}",
            "ps:scale {} web=1",
            "deploy {}",
        ] {
            let line = template.replace("{}", name);
            s.ssh(&line).fails_with("invalid app name");
        }
    }
    assert_eq!(s.tree(), before, "a refused command changed the disk");
}

#[test]
fn unknown_command_is_an_error_with_a_hint() {
    let s = Sandbox::new();
    s.ssh("frobnicate app")
        .fails_with("unknown command 'frobnicate'")
        .fails_with("piku help");
    s.local(&["update"]).fails_with("not supported");
}

#[test]
fn empty_command_and_help_list_every_command() {
    let s = Sandbox::new();
    let commands = [
        "apps",
        "config",
        "config:get",
        "config:set",
        "config:unset",
        "config:live",
        "deploy",
        "destroy",
        "logs",
        "ps",
        "ps:scale",
        "restart",
        "stop",
        "start",
        "run",
        "releases",
        "rollback",
        "setup",
        "setup:ssh",
        "help",
        "git-hook",
        "git-receive-pack",
        "git-upload-pack",
    ];
    for run in [s.ssh(""), s.ssh("help"), s.local(&[]), s.local(&["--help"])] {
        run.ok();
        for name in commands {
            assert!(
                run.stdout
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(name)),
                "{name} missing from help: {}",
                run.stdout
            );
        }
        // piku's client drops these lines with `grep -v INTERNAL`.
        let internal: Vec<&str> = run
            .stdout
            .lines()
            .filter(|l| l.contains("INTERNAL"))
            .collect();
        assert_eq!(internal.len(), 4, "{}", run.stdout);
        assert!(internal.iter().all(|l| {
            let l = l.trim_start();
            l.starts_with("git-") || l.starts_with("acme:renew")
        }));
    }
}

#[test]
fn setup_creates_the_layout_once() {
    let s = Sandbox::new();
    let run = s.local(&["setup"]);
    run.ok();
    for dir in ["apps", "repos", "envs", "logs", "data", "cache", "releases"] {
        let path = s.root.join(dir);
        assert!(path.is_dir(), "{}", path.display());
        assert!(
            run.stdout
                .contains(&format!("Creating '{}'.", path.display())),
            "{}",
            run.stdout
        );
    }
    assert_eq!(s.local(&["setup"]).ok().stdout, "");
}

fn keygen(s: &Sandbox, name: &str) -> (std::path::PathBuf, String) {
    let key = s.tmp.path().join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test@piku", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen (openssh-client) is needed");
    assert!(status.success());
    let public = key.with_extension("pub");
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&public)
        .output()
        .unwrap();
    let fingerprint = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    (public, fingerprint)
}

#[test]
fn setup_ssh_writes_the_forced_command_line() {
    let s = Sandbox::new();
    let (public, fingerprint) = keygen(&s, "id_ed25519");
    let run = s.local(&["setup:ssh", public.to_str().unwrap()]);
    run.ok();
    assert_eq!(run.stdout, format!("Adding key '{fingerprint}'.\n"));

    let ssh_dir = s.home.join(".ssh");
    let authorized = ssh_dir.join("authorized_keys");
    let text = fs::read_to_string(&authorized).unwrap();
    let key = fs::read_to_string(&public).unwrap();
    let exe = fs::canonicalize(piku_bin()).unwrap();
    assert_eq!(
        text,
        format!(
            "command=\"FINGERPRINT={fingerprint} NAME=default {}\",no-agent-forwarding,no-user-rc,no-X11-forwarding,no-port-forwarding {}\n",
            exe.display(),
            key.trim()
        )
    );
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ssh_dir), 0o700);
    assert_eq!(mode(&authorized), 0o600);

    // The same key again is not duplicated; a second key from stdin is appended.
    s.local(&["setup:ssh", public.to_str().unwrap()]).ok();
    let (second, second_fp) = keygen(&s, "other");
    let run = s.ssh_input("setup:ssh -", &fs::read(&second).unwrap());
    run.ok();
    assert_eq!(run.stdout, format!("Adding key '{second_fp}'.\n"));
    let lines = fs::read_to_string(&authorized).unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");
}

#[test]
fn setup_ssh_refuses_missing_and_invalid_keys() {
    let s = Sandbox::new();
    s.local(&["setup:ssh", "/nonexistent.pub"])
        .fails_with("public key file '/nonexistent.pub' not found.");
    let bogus = s.tmp.path().join("bogus.pub");
    fs::write(&bogus, "ssh-ed25519 not-base64 x\n").unwrap();
    s.local(&["setup:ssh", bogus.to_str().unwrap()])
        .fails_with("invalid public key file");
    // A line with its own options would override ours: refused.
    let (public, _) = keygen(&s, "k");
    let key = fs::read_to_string(&public).unwrap();
    let sneaky = s.tmp.path().join("sneaky.pub");
    fs::write(&sneaky, format!("command=\"/bin/sh\" {key}")).unwrap();
    s.local(&["setup:ssh", sneaky.to_str().unwrap()])
        .fails_with("must start with its type");
    assert!(!s.home.join(".ssh/authorized_keys").exists());
}

#[test]
fn config_round_trip_without_a_supervisor() {
    let s = Sandbox::new();
    s.pushed_app("app");
    let set = s.ssh("config:set app A=1 URL='postgres://u:p@h/db?x=1' RAW='$HOME/x'");
    set.ok();
    assert!(
        set.stdout.contains("Setting A=1 for 'app'"),
        "{}",
        set.stdout
    );
    assert!(set.stdout.contains("no live release yet"), "{}", set.stdout);
    assert_eq!(
        s.ssh("config:get app URL").ok().stdout,
        "postgres://u:p@h/db?x=1\n"
    );
    // Values are never expanded, however often the file is rewritten.
    s.ssh("config:set app B=2").ok();
    assert_eq!(s.ssh("config:get app RAW").ok().stdout, "$HOME/x\n");
    assert_eq!(
        s.ssh("config app").ok().stdout,
        "A=1\nB=2\nRAW=$HOME/x\nURL=postgres://u:p@h/db?x=1\n"
    );
    let unset = s.ssh("config:unset app A NOPE");
    unset.ok();
    assert!(
        unset.stdout.starts_with("Unsetting A for 'app'\n"),
        "{unset:?}"
    );
    assert!(!unset.stdout.contains("NOPE"), "{unset:?}");
    let missing = s.ssh("config:get app A");
    assert_eq!(missing.code, Some(1));
    assert_eq!(missing.stdout, "");

    // One bad setting: nothing is written.
    s.ssh("config:set app C=3 bad 1X=y")
        .fails_with("malformed setting 'bad'");
    assert_eq!(s.ssh("config:get app C").code, Some(1));
    s.ssh("config:set ghost A=1")
        .fails_with("app 'ghost' not found.");
}

#[test]
fn a_malformed_limit_is_refused_in_one_line_and_nothing_is_saved() {
    let s = Sandbox::new();
    s.pushed_app("app");
    s.ssh("config:set app A=1").ok();
    s.ssh("config:set app B=2 PIKU_MEMORY_MAX=lots")
        .fails_with("PIKU_MEMORY_MAX='lots' must be a size such as 256M");
    s.ssh("config:set app PIKU_CPU_QUOTA=50")
        .fails_with("PIKU_CPU_QUOTA='50' must be a whole percentage");
    s.ssh("config:set app PIKU_TASKS_MAX=-1")
        .fails_with("PIKU_TASKS_MAX='-1' must be a number");
    assert_eq!(s.ssh("config app").ok().stdout, "A=1\n");
    s.ssh("config:set app PIKU_MEMORY_MAX=256M PIKU_CPU_QUOTA=50% PIKU_TASKS_MAX=64")
        .ok();
    assert_eq!(
        s.ssh("config:get app PIKU_MEMORY_MAX").ok().stdout,
        "256M\n"
    );
}

#[test]
fn config_set_on_a_deployed_app_keeps_the_file_when_it_cannot_apply() {
    let s = Sandbox::new();
    s.deployed_app("app", "A=1\n", "web:1\n");
    s.ssh("config:set app A=2").fails_with("config is saved");
    assert_eq!(
        fs::read_to_string(s.root.join("envs/app/ENV")).unwrap(),
        "A=2\n"
    );
    assert_eq!(s.ssh("config:live app").ok().stdout, "A=1\n");
}

#[test]
fn ps_scale_is_validated_in_piku_words() {
    let s = Sandbox::new();
    s.deployed_app("app", "", "web:1\nworker:1\n");
    s.ssh("ps:scale app web=-1")
        .fails_with("cannot scale type 'web' below 0");
    s.ssh("ps:scale app nope=1")
        .fails_with("worker type 'nope' not present in 'app'");
    s.ssh("ps:scale app web")
        .fails_with("malformed setting 'web'");
    s.ssh("ps:scale app web=x")
        .fails_with("malformed setting 'web=x'");
    s.ssh("ps:scale app").fails_with("usage: piku ps:scale");
    // Valid, but the supervisor is down: refused, and SCALING is untouched.
    s.ssh("ps:scale app web=2")
        .fails_with("supervisor is not running");
    assert_eq!(
        fs::read_to_string(s.root.join("envs/app/SCALING")).unwrap(),
        "web:1\nworker:1\n"
    );
}

#[test]
fn supervisor_commands_say_it_is_down() {
    let s = Sandbox::new();
    s.deployed_app("app", "", "web:1\n");
    for line in [
        "ps app",
        "stop app",
        "start app",
        "restart app",
        "logs app",
        "destroy app",
    ] {
        s.ssh(line).fails_with("the piku supervisor is not running");
    }
    // `apps` still lists, and says why it cannot mark running apps.
    let apps = s.ssh("apps");
    apps.ok();
    assert_eq!(apps.stdout, " app\n");
    assert!(apps.stderr.starts_with("Warning: "), "{apps:?}");
}

#[test]
fn apps_are_sorted_and_json_is_stable() {
    let s = Sandbox::new();
    s.setup();
    assert_eq!(
        s.ssh("apps").ok().stdout,
        "There are no applications deployed.\n"
    );
    assert_eq!(s.ssh("apps --json").ok().stdout.trim(), "[]");
    for app in ["zeta", "alpha", ".hidden"] {
        fs::create_dir_all(s.root.join("apps").join(app)).unwrap();
    }
    assert_eq!(s.ssh("apps").ok().stdout, " alpha\n zeta\n");
    let json: serde_json::Value = serde_json::from_str(&s.ssh("apps --json").ok().stdout).unwrap();
    assert_eq!(json[0]["name"], "alpha");
    assert_eq!(json[1]["name"], "zeta");
    assert!(json[0]["running"].is_null());
}

#[test]
fn run_goes_through_a_shell_with_the_live_env_and_cwd() {
    let s = Sandbox::new();
    let checkout = s.deployed_app("app", "GREETING=hello  world\nRAW=$HOME\n", "web:1\n");
    let run = s.ssh(r#"run app sh -c 'echo "$GREETING|$RAW|$PWD|${SSH_ORIGINAL_COMMAND-unset}"'"#);
    run.ok();
    let pwd = s.root.join("apps/app");
    assert_eq!(
        run.stdout,
        format!("hello  world|$HOME|{}|unset\n", pwd.display())
    );
    assert!(checkout.is_dir());

    // As piku: the words go to a shell, which reads the quotes as the client sent them.
    let run = s.ssh("run app printf '%s\\n' 'a b' '$(id)' ';'");
    assert_eq!(run.ok().stdout, "a b\n$(id)\n;\n");
    let run = s.ssh("run app -- echo one && echo $GREETING");
    assert_eq!(run.ok().stdout, "one\nhello world\n");
    // piku's `run app ls -- -al` form: the first `--` is dropped.
    fs::write(checkout.join("marker"), "").unwrap();
    assert!(s.ssh("run app -- ls -a").ok().stdout.contains("marker"));
    assert!(s.ssh("run app ls -- -a").ok().stdout.contains("marker"));

    assert_eq!(s.ssh("run app sh -c 'exit 7'").code, Some(7));
    let missing = s.ssh("run app no-such-program-here");
    assert_eq!(missing.code, Some(127));
    assert!(
        missing.stderr.contains("no-such-program-here: not found"),
        "{missing:?}"
    );
    s.ssh("run app").fails_with("missing command");
}

#[test]
fn run_refuses_an_app_without_a_live_release() {
    let s = Sandbox::new();
    s.pushed_app("app");
    s.ssh("run app true").fails_with("not deployed yet");
    s.ssh("run ghost true").fails_with("app 'ghost' not found.");
}

/// What sshd does with an authorized_keys `command="…"`: the login shell runs it with
/// `SSH_ORIGINAL_COMMAND` in the environment.
fn forced(s: &Sandbox, command: &str, original: &str) -> common::Run {
    let out = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("PIKU_ROOT", &s.root)
        .env("HOME", &s.home)
        .env("SSH_ORIGINAL_COMMAND", original)
        .output()
        .unwrap();
    common::Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn our_forced_command_line_and_pikus_old_one_both_work() {
    let s = Sandbox::new();
    s.pushed_app("app");
    let (public, _) = keygen(&s, "id");
    s.local(&["setup:ssh", public.to_str().unwrap()]).ok();
    let line = fs::read_to_string(s.home.join(".ssh/authorized_keys")).unwrap();
    let command = line
        .strip_prefix("command=\"")
        .and_then(|rest| rest.split_once("\","))
        .map(|(command, _)| command.to_owned())
        .unwrap();
    forced(&s, &command, r#"config:set app A="x  y""#).ok();
    // piku's line expands $SSH_ORIGINAL_COMMAND unquoted: the shell splits it naively, the
    // variable is still there, and we parse it properly.
    let old = format!(
        "FINGERPRINT=SHA256:x NAME=default {} $SSH_ORIGINAL_COMMAND",
        piku_bin().display()
    );
    forced(&s, &old, r#"config:set app B='p  q' C="it's""#).ok();
    assert_eq!(
        fs::read_to_string(s.root.join("envs/app/ENV")).unwrap(),
        "A=x  y\nB=p  q\nC=it's\n"
    );
}

#[test]
fn run_gets_the_terminal_it_was_given() {
    let s = Sandbox::new();
    s.deployed_app("app", "", "web:1\n");
    // `script` gives the command a pty, as sshd does for `ssh -t`.
    let out = Command::new("script")
        .args(["-qec", "piku run app tty", "/dev/null"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                piku_bin().parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("PIKU_ROOT", &s.root)
        .env("HOME", &s.home)
        .env_remove("SSH_ORIGINAL_COMMAND")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) is needed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("/dev/pts/"), "{stdout:?}");
    // Without one, `tty` says so (and fails), as with a plain `ssh host run app tty`.
    let plain = s.ssh("run app tty");
    assert_eq!(plain.code, Some(1), "{plain:?}");
    assert!(plain.stdout.contains("not a tty"), "{plain:?}");
}
