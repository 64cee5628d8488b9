//! The deploy's voice: `-----> ` step lines and the output of every build command, shown to
//! the pusher on stdout and appended to the release's `build.log`.
//!
//! Output goes to an ssh channel or a `git push` "remote:" stream. A client that went away
//! must not abort a deploy half-way (as `println!` would on `EPIPE`): write errors are ignored
//! and the build log keeps the record.
//!
//! Lines printed before the release directory exists (waiting on the lock, resolving the
//! commit) are held in memory and written when the log file is attached, so every release's
//! `build.log` reads from the first line of its deploy.

use std::fmt::Display;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::error::{DeployError, IoContext};

/// How long to keep relaying a command's output after it exited: a daemon it left behind
/// may hold the pipe open forever, and must not hang the push.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// Where the deploy's output goes besides stdout.
pub struct BuildLog {
    file: Option<File>,
    pending: Vec<u8>,
    /// False for steps that have no release to log into (rollback, reapply).
    keep: bool,
}

impl BuildLog {
    /// A log that will be attached to a release's `build.log` once it exists.
    pub fn pending() -> BuildLog {
        BuildLog {
            file: None,
            pending: Vec::new(),
            keep: true,
        }
    }

    /// Output that only goes to the user (rollback and config changes build nothing).
    pub fn terminal_only() -> BuildLog {
        BuildLog {
            file: None,
            pending: Vec::new(),
            keep: false,
        }
    }

    /// Starts appending to `path`, beginning with what was printed so far.
    pub fn attach(&mut self, path: &Path) -> Result<(), DeployError> {
        // Appended line by line as the build runs, so not a piku_fs::write_atomic file; never
        // through a symlink planted at the path, and not readable by other users.
        let mut file =
            piku_fs::open_nofollow(path, piku_fs::OpenFor::Append, piku_fs::MODE_GROUP_READ)
                .cannot("open build log", path)?;
        file.write_all(&self.pending)
            .cannot("write build log", path)?;
        self.pending.clear();
        self.file = Some(file);
        Ok(())
    }

    /// Prints `-----> {msg}` and logs it.
    pub fn step(&mut self, msg: impl Display) {
        let line = format!("-----> {msg}\n");
        print_to(&mut io::stdout().lock(), &line);
        self.record(line.as_bytes());
    }

    /// Writes `text` (a whole line) to the log only: the user sees it another way.
    pub fn note(&mut self, text: &str) {
        self.record(format!("{text}\n").as_bytes());
    }

    fn record(&mut self, bytes: &[u8]) {
        if !self.keep {
            return;
        }
        match &mut self.file {
            // A full disk must not abort the deploy: the user still sees the output.
            Some(file) => drop(file.write_all(bytes)),
            None => self.pending.extend_from_slice(bytes),
        }
    }

    /// Runs `cmd` with stdin from /dev/null, relaying its stdout and stderr (interleaved, as
    /// written) to our stdout and the log. `what` names the step in the error if it fails.
    pub fn run(&mut self, mut cmd: Command, what: &str) -> Result<(), DeployError> {
        let status = self.run_status(&mut cmd, what)?;
        // `cmd` holds the write end of the pipe until dropped; it is dropped in run_status.
        check_status(status, what)
    }

    fn run_status(&mut self, cmd: &mut Command, what: &str) -> Result<ExitStatus, DeployError> {
        let (mut reader, writer) = io::pipe().doing(|| format!("{what}: cannot create a pipe"))?;
        let writer_err = writer
            .try_clone()
            .doing(|| format!("{what}: cannot create a pipe"))?;
        cmd.stdin(Stdio::null()).stdout(writer).stderr(writer_err);
        let spawned = cmd.spawn();
        // The Command keeps its copies of the write end; replace them so EOF can arrive.
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = spawned.doing(|| {
            format!(
                "{what}: cannot start '{}'",
                cmd.get_program().to_string_lossy()
            )
        })?;

        let log_copy = match &self.file {
            Some(file) if self.keep => Some(
                file.try_clone()
                    .doing(|| "cannot reopen the build log".to_owned())?,
            ),
            _ => None,
        };
        let keep_pending = self.keep && self.file.is_none();
        let (done_tx, done_rx) = mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut log_copy = log_copy;
            let mut held = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &buf[..n];
                let mut out = io::stdout().lock();
                let _ = out.write_all(chunk);
                let _ = out.flush();
                match &mut log_copy {
                    Some(file) => drop(file.write_all(chunk)),
                    None if keep_pending => held.extend_from_slice(chunk),
                    None => {}
                }
            }
            let _ = done_tx.send(held);
        });

        let status = child
            .wait()
            .doing(|| format!("{what}: cannot wait for the command"))?;
        if let Ok(held) = done_rx.recv_timeout(DRAIN_AFTER_EXIT) {
            self.pending.extend_from_slice(&held);
        }
        Ok(status)
    }
}

/// Turns a non-zero exit into an error naming the step and the status.
fn check_status(status: ExitStatus, what: &str) -> Result<(), DeployError> {
    if status.success() {
        return Ok(());
    }
    Err(DeployError::Failed {
        what: what.to_owned(),
        status,
    })
}

/// Prints a line on `out` now (even through `git push`); a vanished reader is ignored.
fn print_to(out: &mut impl Write, line: &str) {
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

/// Prints `-----> {msg}` on stderr, for a step taken while stdout is git's protocol stream
/// (`git-receive-pack`).
pub fn step_to_stderr(msg: impl Display) {
    print_to(&mut io::stderr().lock(), &format!("-----> {msg}\n"));
}

/// A command for `program args…`, for readable tests.
#[cfg(test)]
pub fn command<S: AsRef<std::ffi::OsStr>>(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[S],
) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_output_and_steps_land_in_the_log_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build.log");
        let mut log = BuildLog::pending();
        log.step("before the file exists");
        log.attach(&path).unwrap();
        log.run(command("sh", &["-c", "echo out; echo err >&2"]), "echo")
            .unwrap();
        log.step("after");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "-----> before the file exists\nout\nerr\n-----> after\n"
        );
    }

    #[test]
    fn the_build_log_is_0640_and_never_written_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("build.log");
        let mut log = BuildLog::pending();
        log.attach(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);

        let victim = dir.path().join("authorized_keys");
        std::fs::write(&victim, "ssh-ed25519 AAAA keep\n").unwrap();
        let planted = dir.path().join("v2-build.log");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let mut log = BuildLog::pending();
        log.step("attack");
        assert!(log.attach(&planted).is_err());
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "ssh-ed25519 AAAA keep\n"
        );
    }

    #[test]
    fn a_failing_command_is_an_error_naming_the_step() {
        let mut log = BuildLog::terminal_only();
        let err = log
            .run(command("sh", &["-c", "exit 3"]), "pip install")
            .unwrap_err();
        assert_eq!(err.to_string(), "pip install failed (exit status 3)");
    }

    #[test]
    fn a_daemon_holding_the_pipe_does_not_hang_the_deploy() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let mut log = BuildLog::terminal_only();
        let started = std::time::Instant::now();
        // The background sleep inherits the pipe and outlives the shell.
        let script = format!("sleep 60 & echo $! > '{}'", pid_file.display());
        log.run(command("sh", &["-c", &script]), "daemon").unwrap();
        let elapsed = started.elapsed();
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(elapsed < Duration::from_secs(30), "{elapsed:?}");
    }
}
