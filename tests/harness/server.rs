//! The server side of an end-to-end test: a throwaway `PIKU_ROOT`, the real `piku-supervisor`
//! running on it, and a real `sshd` on a free loopback port whose `authorized_keys` runs our
//! `piku` as the forced command — the same path `git push piku main` takes in production.
//! When the tests run as root, the forced command, the supervisor, every build and every app
//! run as the unprivileged [`crate::server_user()`] account, as they do in production; sshd
//! stays root (it must switch users).
//!
//! Everything lives in one temp dir; [`Piku`]'s `Drop` stops the supervisor and sshd by PID and
//! then kills, by PID, any leftover process whose environment points into that temp dir (app
//! processes the supervisor failed to stop, lingering `piku logs` sessions).

use std::fs;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use tempfile::TempDir;

use crate::binaries::{Binaries, binaries};
use crate::http::get_ok;
use crate::nginx::Nginx;
use crate::process::{Guarded, Run, Streaming, pid_alive, run_with_timeout, signal_pid};
use crate::server_user::{ServerUser, server_user};
use crate::wait::wait_until;

/// Default deadline for one `ssh … <command>`.
pub const SSH_TIMEOUT: Duration = Duration::from_secs(120);
/// Default deadline for one `git push` (a Flask first deploy pip-installs from PyPI).
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(400);

/// One running process of an app, as `ps --json` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub kind: String,
    pub index: u64,
    pub state: String,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// Restarts after crashes, as the supervisor counts them.
    pub restarts: u64,
}

/// A complete piku server on loopback (see the module doc).
pub struct Piku {
    /// The temp dir holding everything below; removed on drop.
    pub tmp: TempDir,
    /// `PIKU_ROOT` (`<tmp>/srv/root`, so `../x` from it stays inside the temp dir).
    pub root: PathBuf,
    /// `HOME` for the local `piku setup:ssh` (its `.ssh/authorized_keys` is what sshd reads).
    pub home: PathBuf,
    /// The client's private key.
    pub client_key: PathBuf,
    /// The user sshd lets in: the account the server side runs as ([`server_user`]).
    pub user: String,
    /// That account, to run more of the server side as it ([`Piku::server_command`]).
    pub owner: &'static ServerUser,
    /// sshd's port on 127.0.0.1.
    pub port: u16,
    /// What `piku setup:ssh <key>` did; the harness falls back to writing the line itself if
    /// it failed, so that this one failure doesn't hide every other result.
    pub setup_ssh: Run,
    /// Whether the authorized_keys line came from `piku setup:ssh` (true) or the fallback.
    pub setup_ssh_used: bool,
    /// A directory with an `ssh` wrapper that reaches this server (for client scripts).
    pub bin_dir: PathBuf,
    pub bins: &'static Binaries,
    /// nginx in front, when started with [`Piku::start_with_nginx`].
    pub nginx: Option<Nginx>,
    supervisor: Option<Guarded>,
    sshd: Option<Guarded>,
}

impl Piku {
    /// Starts everything; panics with the relevant logs if any part does not come up.
    pub fn start() -> Piku {
        Piku::start_opts(false)
    }

    /// [`Piku::start`] plus a real nginx in front (see [`Nginx`]); the forced `piku` checks
    /// and reloads it.
    pub fn start_with_nginx() -> Piku {
        Piku::start_opts(true)
    }

    fn start_opts(with_nginx: bool) -> Piku {
        let owner = server_user();
        let bins = owner.reachable(binaries());
        // As root, the whole test lives in the server account's home: its parts must be
        // reachable by that account, as `~piku/.piku` is in production.
        let parent = if owner.switched {
            owner.home.clone()
        } else {
            std::env::temp_dir()
        };
        let tmp = tempfile::Builder::new()
            .prefix("piku-e2e-")
            .tempdir_in(&parent)
            .expect("temp dir");
        let base = tmp.path().to_path_buf();
        let root = base.join("srv").join("root");
        let home = base.join("home");
        let bin_dir = base.join("bin");
        for d in [&root, &home.join(".ssh"), &bin_dir, &base.join("sshd")] {
            fs::create_dir_all(d).expect("mkdir");
        }
        // The server side owns PIKU_ROOT and its HOME; sshd's keys and config, the client's
        // key and the client-side tools stay the test's.
        owner.own(&base.join("srv"));
        owner.own(&home);
        if owner.switched {
            std::os::unix::fs::lchown(&base, Some(owner.uid.as_raw()), Some(owner.gid.as_raw()))
                .expect("chown the test dir");
            make_mode(&base, 0o750);
        }
        let user = owner.name.clone();

        // Keys: sshd's host key and the client's key pair.
        let host_key = base.join("sshd").join("host_ed25519");
        let client_key = base.join("client_ed25519");
        for key in [&host_key, &client_key] {
            let mut cmd = Command::new("ssh-keygen");
            cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", "piku-e2e", "-f"])
                .arg(key);
            run_with_timeout(cmd, None, Duration::from_secs(30)).assert_ok();
        }
        let client_pub = client_key.with_extension("pub");

        // `piku setup`, then `piku setup:ssh <key>` as an operator would.
        let local = |args: &[&str]| {
            let mut cmd = Command::new(&bins.piku);
            owner.apply(&mut cmd);
            cmd.args(args)
                .env("PIKU_ROOT", &root)
                .env("HOME", &home)
                .current_dir(&home);
            run_with_timeout(cmd, None, Duration::from_secs(60))
        };
        local(&["setup"]).assert_ok();
        let setup_ssh = local(&["setup:ssh", &client_pub.to_string_lossy()]);
        let authorized_keys = home.join(".ssh").join("authorized_keys");
        let pub_body = fs::read_to_string(&client_pub).expect("client key");
        let key_blob = pub_body
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let setup_ssh_used = setup_ssh.success()
            && fs::read_to_string(&authorized_keys)
                .map(|t| t.contains(&key_blob) && t.contains("command="))
                .unwrap_or(false);
        if !setup_ssh_used {
            eprintln!(
                "harness: `piku setup:ssh` did not register the key; writing the forced command line myself.\n{setup_ssh}"
            );
            let line = format!(
                "command=\"PIKU_ROOT={} {} $SSH_ORIGINAL_COMMAND\",no-agent-forwarding,no-user-rc,no-X11-forwarding,no-port-forwarding {}\n",
                root.display(),
                bins.piku.display(),
                pub_body.trim()
            );
            fs::write(&authorized_keys, line).expect("write authorized_keys");
        }

        // The supervisor, in the foreground, as our child.
        let supervisor_log = base.join("supervisor.log");
        let mut cmd = Command::new(&bins.supervisor);
        owner.apply(&mut cmd);
        cmd.arg("--root")
            .arg(&root)
            .env("PIKU_ROOT", &root)
            .env("HOME", &home)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file(&supervisor_log))
            .stderr(log_file(&supervisor_log));
        let mut supervisor = Guarded::spawn("piku-supervisor", cmd, Duration::from_secs(20))
            .expect("spawn supervisor");
        let socket = root.join("supervisor.sock");
        let up = wait_until(Duration::from_secs(20), || {
            if supervisor.exited().is_some() {
                return Some(false);
            }
            socket.exists().then_some(true)
        });
        if up != Some(true) {
            panic!(
                "piku-supervisor did not create {} (exited: {:?}); its log:\n{}",
                socket.display(),
                supervisor.exited(),
                fs::read_to_string(&supervisor_log).unwrap_or_default()
            );
        }

        let nginx = with_nginx.then(|| Nginx::start(&base.join("nginx-run"), &root, owner));
        let extra_env = nginx
            .as_ref()
            .map(Nginx::forced_command_env)
            .unwrap_or_default();
        let (sshd, port) = start_sshd(&base, &host_key, &authorized_keys, &root, &user, &extra_env);

        // An `ssh` that reaches this server, for scripts that call plain `ssh` (piku's client).
        let wrapper = bin_dir.join("ssh");
        fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec /usr/bin/ssh {} \"$@\"\n",
                ssh_options(&client_key, port).join(" ")
            ),
        )
        .expect("write ssh wrapper");
        make_executable(&wrapper);

        Piku {
            tmp,
            root,
            home,
            client_key,
            user,
            owner,
            port,
            setup_ssh,
            setup_ssh_used,
            bin_dir,
            bins,
            nginx,
            supervisor: Some(supervisor),
            sshd: Some(sshd),
        }
    }

    /// `program` set to run on the server side: as the server account, with this server's
    /// `PIKU_ROOT` and `HOME` (as an operator's `su - piku -c …` would).
    pub fn server_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        self.owner.apply(&mut cmd);
        cmd.env("PIKU_ROOT", &self.root)
            .env("HOME", &self.home)
            .current_dir(&self.home);
        cmd
    }

    /// `user@127.0.0.1`, the ssh destination.
    pub fn host(&self) -> String {
        format!("{}@127.0.0.1", self.user)
    }

    /// The git remote of an app: `user@127.0.0.1:<app>`.
    pub fn remote_url(&self, app: &str) -> String {
        format!("{}:{app}", self.host())
    }

    /// ssh's options to reach this server non-interactively with the client key.
    pub fn ssh_options(&self) -> Vec<String> {
        ssh_options(&self.client_key, self.port)
    }

    /// What `GIT_SSH_COMMAND` must be for git to reach this server.
    pub fn git_ssh_command(&self) -> String {
        format!("/usr/bin/ssh {}", self.ssh_options().join(" "))
    }

    /// An `ssh user@127.0.0.1 <command>` ready to run (the command is one string, as ssh sends it).
    pub fn ssh_command(&self, command: &str) -> Command {
        let mut cmd = Command::new("/usr/bin/ssh");
        cmd.args(self.ssh_options()).arg(self.host()).arg(command);
        cmd
    }

    /// `ssh <flags> user@127.0.0.1 <command>` (e.g. `-tt` for a forced TTY).
    pub fn ssh_flags(&self, flags: &[&str], command: &str) -> Run {
        let mut cmd = Command::new("/usr/bin/ssh");
        cmd.args(self.ssh_options())
            .args(flags)
            .arg(self.host())
            .arg(command);
        run_with_timeout(cmd, None, SSH_TIMEOUT)
    }

    /// The commit `refs/heads/<branch>` points at in the app's repo, as `git ls-remote` sees it.
    pub fn remote_ref(&self, app: &str, branch: &str) -> Option<String> {
        let url = self.remote_url(app);
        let refname = format!("refs/heads/{branch}");
        let run = run_with_timeout(
            self.git_command(self.tmp.path(), &["ls-remote", &url, &refname]),
            None,
            SSH_TIMEOUT,
        );
        run.stdout.split_whitespace().next().map(str::to_string)
    }

    /// Runs `ssh user@127.0.0.1 <command>` like a piku user would.
    pub fn ssh(&self, command: &str) -> Run {
        self.ssh_timeout(command, SSH_TIMEOUT)
    }

    pub fn ssh_timeout(&self, command: &str, timeout: Duration) -> Run {
        run_with_timeout(self.ssh_command(command), None, timeout)
    }

    /// `ssh … <command>` with `input` on stdin.
    pub fn ssh_input(&self, command: &str, input: &[u8]) -> Run {
        run_with_timeout(self.ssh_command(command), Some(input), SSH_TIMEOUT)
    }

    /// Starts `ssh … <command>` and watches its output (for `logs`, which follows for ever).
    pub fn ssh_streaming(&self, command: &str) -> Streaming {
        Streaming::spawn(&format!("ssh {command}"), self.ssh_command(command)).expect("spawn ssh")
    }

    /// A `git` command in `dir` that reaches this server and ignores the user's git config.
    pub fn git_command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = git_command(dir, args);
        cmd.env("GIT_SSH_COMMAND", self.git_ssh_command());
        cmd
    }

    /// `git push <remote of app> main` from `dir`.
    pub fn git_push(&self, dir: &Path, app: &str) -> Run {
        let url = self.remote_url(app);
        run_with_timeout(
            self.git_command(dir, &["push", &url, "main:main"]),
            None,
            PUSH_TIMEOUT,
        )
    }

    /// `git push --force …`: for pushes that need not fast-forward (concurrent pushes).
    pub fn git_push_force(&self, dir: &Path, app: &str) -> Run {
        let url = self.remote_url(app);
        run_with_timeout(
            self.git_command(dir, &["push", "--force", &url, "main:main"]),
            None,
            PUSH_TIMEOUT,
        )
    }

    /// `ssh … ps <app> --json`, parsed.
    pub fn ps_json(&self, app: &str) -> Result<Value, String> {
        let run = self.ssh(&format!("ps {app} --json"));
        if !run.success() {
            return Err(run.to_string());
        }
        serde_json::from_str(&run.stdout).map_err(|e| format!("ps --json is not JSON ({e}): {run}"))
    }

    /// Every instance `ps --json` lists for the app (empty if the command fails).
    pub fn instances(&self, app: &str) -> Vec<Instance> {
        self.ps_json(app)
            .map(|v| instances_in(&v))
            .unwrap_or_default()
    }

    /// Ports of the app's running HTTP instances (`web`/`wsgi`), sorted by kind and index.
    pub fn web_ports(&self, app: &str) -> Vec<u16> {
        self.instances(app)
            .iter()
            .filter(|i| i.state == "running")
            .filter_map(|i| i.port)
            .collect()
    }

    /// Waits until the app has exactly `count` running HTTP instances that each answer `/`
    /// with a body satisfying `pred`; returns (port, body) of each.
    pub fn wait_serving(
        &self,
        app: &str,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<Vec<(u16, String)>> {
        wait_until(timeout, || {
            let ports = self.web_ports(app);
            if ports.len() != count {
                return None;
            }
            let mut answers = Vec::new();
            for port in ports {
                let body = get_ok(port, "/")?;
                if !pred(&body) {
                    return None;
                }
                answers.push((port, body));
            }
            Some(answers)
        })
    }

    /// Like [`Piku::wait_serving`] with one instance; panics with diagnostics on timeout.
    #[track_caller]
    pub fn expect_serving(
        &self,
        app: &str,
        pred: impl Fn(&str) -> bool,
        what: &str,
    ) -> (u16, String) {
        match self.wait_serving(app, 1, Duration::from_secs(60), pred) {
            Some(mut v) => v.remove(0),
            None => panic!(
                "{app} never served {what} on one instance; ps: {:?}\nanswers: {:?}\n{}",
                self.ps_json(app),
                self.web_ports(app)
                    .iter()
                    .map(|p| (p, crate::http::http_get(*p, "/")))
                    .collect::<Vec<_>>(),
                self.diagnostics()
            ),
        }
    }

    /// The last lines of the supervisor's and sshd's logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        let tail = |p: PathBuf| {
            let text = fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- supervisor.log (tail) ---\n{}\n--- sshd.log (tail) ---\n{}\n---",
            tail(self.tmp.path().join("supervisor.log")),
            tail(self.tmp.path().join("sshd").join("sshd.log"))
        )
    }

    /// PID of the supervisor (for tests that look at its children).
    pub fn supervisor_pid(&self) -> Option<u32> {
        self.supervisor.as_ref().map(Guarded::pid)
    }

    /// Contents of every `build.log` under `releases/<app>/` (any depth), with their paths.
    pub fn build_logs(&self, app: &str) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.join("releases").join(app)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    // Don't descend into checkouts and venvs: build logs sit near the top.
                    if p.strip_prefix(&self.root)
                        .map(|r| r.components().count() < 4)
                        .unwrap_or(false)
                    {
                        stack.push(p);
                    }
                } else if e.file_name() == "build.log" {
                    out.push((p.clone(), fs::read_to_string(&p).unwrap_or_default()));
                }
            }
        }
        out
    }

    /// Number of releases `releases <app> --json` lists.
    pub fn releases(&self, app: &str) -> Result<Vec<Value>, String> {
        let run = self.ssh(&format!("releases {app} --json"));
        if !run.success() {
            return Err(run.to_string());
        }
        match serde_json::from_str::<Value>(&run.stdout) {
            Ok(Value::Array(v)) => Ok(v),
            Ok(Value::Object(o)) => match o.get("releases") {
                Some(Value::Array(v)) => Ok(v.clone()),
                _ => Err(format!("no release list in {run}")),
            },
            Ok(_) => Err(format!("no release list in {run}")),
            Err(e) => Err(format!("releases --json is not JSON ({e}): {run}")),
        }
    }
}

impl Drop for Piku {
    fn drop(&mut self) {
        if let Some(mut s) = self.supervisor.take() {
            s.stop();
        }
        if let Some(mut s) = self.sshd.take() {
            s.stop();
        }
        if let Some(mut n) = self.nginx.take() {
            n.stop();
        }
        let leftovers = sweep(self.tmp.path());
        if !leftovers.is_empty() {
            eprintln!(
                "harness: killed {} leftover process(es) still pointing into {}: {leftovers:?}",
                leftovers.len(),
                self.tmp.path().display()
            );
        }
    }
}

/// Finds processes whose environment names a path under `base` (app processes, `piku`
/// sessions), kills them by PID, and returns what they were.
pub fn sweep(base: &Path) -> Vec<String> {
    // With the trailing slash, a sibling temp dir whose name extends this one never matches.
    let needle = format!("{}/", base.display());
    let me = std::process::id();
    let mut killed = Vec::new();
    for _round in 0..3 {
        let mut found = Vec::new();
        let Ok(entries) = fs::read_dir("/proc") else {
            return killed;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me || !pid_alive(pid) {
                continue;
            }
            let Ok(env) = fs::read(entry.path().join("environ")) else {
                continue;
            };
            if String::from_utf8_lossy(&env).contains(&needle) {
                let cmdline = fs::read(entry.path().join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default();
                found.push((pid, cmdline));
            }
        }
        if found.is_empty() {
            break;
        }
        for (pid, cmdline) in found {
            signal_pid(pid, Signal::SIGKILL);
            killed.push(format!("{pid} {}", cmdline.trim()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    killed
}

/// Every object in `ps --json` output that looks like an instance (`kind` + `index`).
pub fn instances_in(v: &Value) -> Vec<Instance> {
    let mut out = Vec::new();
    collect_instances(v, &mut out);
    out
}

fn collect_instances(v: &Value, out: &mut Vec<Instance>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_instances(i, out)),
        Value::Object(o) => {
            if let (Some(kind), Some(index)) = (
                o.get("kind").and_then(Value::as_str),
                o.get("index").and_then(Value::as_u64),
            ) {
                out.push(Instance {
                    kind: kind.to_string(),
                    index,
                    state: o
                        .get("state")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    pid: o
                        .get("pid")
                        .and_then(Value::as_u64)
                        .and_then(|p| u32::try_from(p).ok()),
                    port: o
                        .get("port")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok()),
                    restarts: o.get("restarts").and_then(Value::as_u64).unwrap_or(0),
                });
            } else {
                o.values().for_each(|i| collect_instances(i, out));
            }
        }
        _ => {}
    }
}

fn ssh_options(key: &Path, port: u16) -> Vec<String> {
    [
        "-F",
        "none",
        "-i",
        &key.to_string_lossy(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
        "-p",
        &port.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A `git` command in `dir` that ignores system and user configuration.
pub fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "piku e2e")
        .env("GIT_AUTHOR_EMAIL", "e2e@example.invalid")
        .env("GIT_COMMITTER_NAME", "piku e2e")
        .env("GIT_COMMITTER_EMAIL", "e2e@example.invalid")
        .env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

fn start_sshd(
    base: &Path,
    host_key: &Path,
    authorized_keys: &Path,
    root: &Path,
    user: &str,
    extra_env: &[(String, String)],
) -> (Guarded, u16) {
    if nix::unistd::geteuid().is_root() {
        // sshd refuses to start without its privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");
    }
    let dir = base.join("sshd");
    let log = dir.join("sshd.log");
    let mut last_error = String::new();
    for _attempt in 0..5 {
        let port = free_port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {authorized_keys}\n\
                 StrictModes no\n\
                 UsePAM no\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\n\
                 AllowUsers {user}\n\
                 PermitTTY yes\n\
                 MaxStartups 64:30:128\n\
                 MaxSessions 64\n\
                 SetEnv PIKU_ROOT={root}{extra}\n\
                 LogLevel VERBOSE\n",
                host_key = host_key.display(),
                pid = dir.join("sshd.pid").display(),
                authorized_keys = authorized_keys.display(),
                root = root.display(),
                extra = extra_env
                    .iter()
                    .map(|(k, v)| format!(" {k}={v}"))
                    .collect::<String>(),
            ),
        )
        .expect("write sshd_config");
        let mut cmd = Command::new("/usr/sbin/sshd");
        cmd.args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log));
        let mut sshd = Guarded::spawn("sshd", cmd, Duration::from_secs(5)).expect("spawn sshd");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if sshd.exited().is_some() {
                break;
            }
            if banner(port) {
                return (sshd, port);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        last_error = fs::read_to_string(&log).unwrap_or_default();
        sshd.stop();
    }
    panic!("sshd did not start on 127.0.0.1; its log:\n{last_error}");
}

fn banner(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    matches!(s.read(&mut buf), Ok(n) if n >= 4 && buf.starts_with(b"SSH-"))
}

/// A port the kernel just had free on 127.0.0.1 (there is a small race; callers retry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

fn make_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

fn log_file(path: &Path) -> Stdio {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

pub fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(path, fs::Permissions::from_mode(0o755));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_kills_only_processes_pointing_into_the_dir() {
        let mine = tempfile::tempdir().expect("tmp");
        let other = tempfile::tempdir().expect("tmp");
        let spawn = |dir: &Path| {
            Command::new("sleep")
                .arg("30")
                .env("PIKU_E2E_SWEEP_TEST", dir.join("root"))
                .spawn()
                .expect("spawn sleep")
        };
        let mut target = spawn(mine.path());
        let mut bystander = spawn(other.path());
        let killed = sweep(mine.path());
        assert_eq!(killed.len(), 1, "{killed:?}");
        assert!(
            killed[0].starts_with(&target.id().to_string()),
            "{killed:?}"
        );
        assert!(target.wait().expect("wait").code().is_none(), "not killed");
        assert!(
            bystander.try_wait().expect("try_wait").is_none(),
            "bystander was killed"
        );
        let _ = bystander.kill();
        let _ = bystander.wait();
    }

    #[test]
    fn instances_are_found_wherever_ps_json_nests_them() {
        let v: Value = serde_json::from_str(
            r#"{"apps":[{"app":"a","instances":[
                {"kind":"web","index":1,"state":"running","pid":10,"port":5000,"restarts":2},
                {"kind":"cron1","index":1,"state":"waiting","pid":null,"port":null}]}]}"#,
        )
        .expect("json");
        let found = instances_in(&v);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].port, Some(5000));
        assert_eq!(found[0].restarts, 2);
        assert_eq!(found[1].pid, None);
    }
}
