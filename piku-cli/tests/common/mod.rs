//! Shared by the `piku` binary tests: a throwaway `PIKU_ROOT` and `HOME`, running the real
//! binary either locally (argv) or as sshd's forced command would (`SSH_ORIGINAL_COMMAND`),
//! and the real `piku-supervisor` for the commands that talk to it.

#![allow(dead_code)] // each test binary uses its own subset

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A temp directory holding `root/` (PIKU_ROOT) and `home/` (HOME).
pub struct Sandbox {
    pub tmp: TempDir,
    pub root: PathBuf,
    pub home: PathBuf,
}

/// What one run of `piku` did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    #[track_caller]
    pub fn ok(&self) -> &Run {
        assert_eq!(self.code, Some(0), "expected success: {self:#?}");
        self
    }

    /// Asserts a failure reported as exactly one `Error: …` line containing `needle`.
    #[track_caller]
    pub fn fails_with(&self, needle: &str) -> &Run {
        assert_ne!(self.code, Some(0), "expected failure: {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one stderr line: {self:#?}");
        assert!(lines[0].starts_with("Error: "), "{self:#?}");
        assert!(lines[0].contains(needle), "expected {needle:?}: {self:#?}");
        self
    }
}

pub fn piku_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_piku"))
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let tmp = tempfile::Builder::new()
            .prefix("piku-cli-test-")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("root");
        let home = tmp.path().join("home");
        fs::create_dir_all(&home).unwrap();
        Sandbox { tmp, root, home }
    }

    /// `piku` with this sandbox's environment and nothing from an outer ssh session.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(piku_bin());
        cmd.env("PIKU_ROOT", &self.root)
            .env("HOME", &self.home)
            .env_remove("SSH_ORIGINAL_COMMAND")
            .stdin(Stdio::null());
        cmd
    }

    /// `piku ARGS…` as a local admin runs it.
    pub fn local(&self, args: &[&str]) -> Run {
        Run::from(self.command().args(args).output().unwrap())
    }

    /// `ssh piku@host LINE` through the forced command: LINE in `SSH_ORIGINAL_COMMAND`, argv
    /// empty (our authorized_keys line).
    pub fn ssh(&self, line: &str) -> Run {
        Run::from(
            self.command()
                .env("SSH_ORIGINAL_COMMAND", line)
                .output()
                .unwrap(),
        )
    }

    /// Like [`Sandbox::ssh`] with stdin.
    pub fn ssh_input(&self, line: &str, input: &[u8]) -> Run {
        let mut child = self
            .command()
            .env("SSH_ORIGINAL_COMMAND", line)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        Run::from(child.wait_with_output().unwrap())
    }

    pub fn setup(&self) {
        self.local(&["setup"]).ok();
    }

    /// An app that has been pushed (bare repo) but never deployed.
    pub fn pushed_app(&self, app: &str) {
        self.setup();
        fs::create_dir_all(self.root.join("repos").join(app)).unwrap();
    }

    /// An app with a live release: `apps/<app>` links to a checkout dir, with LIVE_ENV and SCALING.
    pub fn deployed_app(&self, app: &str, live_env: &str, scaling: &str) -> PathBuf {
        self.pushed_app(app);
        let checkout = self.root.join("releases").join(app).join("v1").join("app");
        fs::create_dir_all(&checkout).unwrap();
        symlink(&checkout, self.root.join("apps").join(app)).unwrap();
        let env_dir = self.root.join("envs").join(app);
        fs::create_dir_all(&env_dir).unwrap();
        fs::write(env_dir.join("LIVE_ENV"), live_env).unwrap();
        fs::write(env_dir.join("SCALING"), scaling).unwrap();
        checkout
    }

    /// Every path under the sandbox, sorted: to prove a refused command created nothing.
    pub fn tree(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            if let Ok(entries) = fs::read_dir(dir) {
                for entry in entries.flatten() {
                    out.push(entry.path());
                    if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        walk(&entry.path(), out);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(self.tmp.path(), &mut out);
        out.sort();
        out
    }
}

/// The real `piku-supervisor`, built next to the `piku` under test by `cargo test --workspace`
/// (scripts/test-all). Tests never build it themselves: a build from inside a test relinked
/// binaries that other test processes were running.
pub fn supervisor_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = piku_bin().with_file_name("piku-supervisor");
        assert!(
            bin.is_file(),
            "{} is missing: build the workspace's test targets first \
             (`cargo test --workspace --no-run`, as scripts/test-all does)",
            bin.display()
        );
        bin
    })
}

/// A running supervisor for a sandbox; killed (by PID) and reaped on drop.
pub struct Supervisor {
    child: Child,
}

impl Supervisor {
    pub fn start(sandbox: &Sandbox) -> Supervisor {
        sandbox.setup();
        let log = fs::File::create(sandbox.tmp.path().join("supervisor.log")).unwrap();
        let child = Command::new(supervisor_bin())
            .arg("--root")
            .arg(&sandbox.root)
            .env("HOME", &sandbox.home)
            .env("PIKU_ROOT", &sandbox.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut supervisor = Supervisor { child };
        let socket = sandbox.root.join("supervisor.sock");
        let ready = wait_until(Duration::from_secs(20), || {
            if let Ok(Some(status)) = supervisor.child.try_wait() {
                panic!(
                    "piku-supervisor exited with {status}: {}",
                    fs::read_to_string(sandbox.tmp.path().join("supervisor.log"))
                        .unwrap_or_default()
                );
            }
            piku_proto::Client::connect(&socket).ok().map(|_| ())
        });
        assert!(
            ready.is_some(),
            "piku-supervisor did not listen on {}",
            socket.display()
        );
        supervisor
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // SIGTERM first so it stops its children; SIGKILL if it does not go in time.
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let gone = wait_until(Duration::from_secs(15), || {
            self.child.try_wait().ok().flatten().map(|_| ())
        });
        if gone.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `probe` every 50 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
