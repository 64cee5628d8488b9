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
use std::time::{Duration, Instant};

use crate::error::{DeployError, IoContext};

/// How long to keep relaying a command's output after it exited: a daemon it left behind
/// may hold the pipe open forever, and must not hang the push.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

/// How long a bounded command (`preflight`, `release`) gets after SIGTERM before SIGKILL.
const BOUNDED_GRACE: Duration = Duration::from_secs(5);
/// How often a bounded command's deadline and the client are looked at.
const BOUNDED_TICK: Duration = Duration::from_millis(100);

/// Where the deploy's output goes besides stdout.
pub struct BuildLog {
    file: Option<File>,
    pending: Vec<u8>,
    /// False for steps that have no release to log into (rollback, reapply).
    keep: bool,
    /// Whether the client that started the deploy has gone (its end of our stdout closed).
    client_gone: fn() -> bool,
}

/// Whether the reader of our stdout has gone: a pipe whose read end closed polls `POLLERR`,
/// a socket `POLLHUP` (`piku deploy` or `run` over ssh whose client left). Under `git push`
/// git receive-pack keeps the read end of the hook's output open even when its client has
/// gone, so the hook looks at receive-pack's own output instead ([`git_client_gone`]).
/// Under `git push` (we are the hook): whether git receive-pack's own stdout, the pipe to
/// the client's connection, has no reader left. The pipe is opened for writing through
/// `/proc` (without blocking) and polled: a pipe without readers polls `POLLERR`. Anything
/// but a pipe there is never taken for "gone".
fn git_client_gone() -> bool {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let parent = std::os::unix::process::parent_id();
    let path = format!("/proc/{parent}/fd/1");
    let is_pipe = std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_fifo());
    if !is_pipe {
        return stdout_closed();
    }
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits() | nix::fcntl::OFlag::O_CLOEXEC.bits())
        .open(&path);
    match opened {
        Ok(pipe) => write_end_orphaned(&pipe) || stdout_closed(),
        Err(_) => stdout_closed(),
    }
}

/// Whether the write end `fd` of a pipe has no reader left (`POLLERR`).
fn write_end_orphaned(fd: &impl std::os::fd::AsFd) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        _ => false,
    }
}

fn stdout_closed() -> bool {
    write_end_orphaned(&io::stdout())
}

impl BuildLog {
    /// A log that will be attached to a release's `build.log` once it exists.
    pub fn pending() -> BuildLog {
        BuildLog {
            file: None,
            pending: Vec::new(),
            keep: true,
            client_gone: stdout_closed,
        }
    }

    /// Output that only goes to the user (rollback and config changes build nothing).
    pub fn terminal_only() -> BuildLog {
        BuildLog {
            file: None,
            pending: Vec::new(),
            keep: false,
            client_gone: stdout_closed,
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
        let status = self.run_status(&mut cmd, what, None)?;
        // `cmd` holds the write end of the pipe until dropped; it is dropped in run_status.
        check_status(status, what)
    }

    /// Under `git push`: the client is looked for past git receive-pack (see
    /// [`git_client_gone`]).
    pub fn under_git(&mut self) {
        self.client_gone = git_client_gone;
    }

    /// [`BuildLog::run`] for an app's own step (`preflight`, `release`): it gets `limit`, and
    /// ends when the client is seen gone ([`stdout_closed`], [`git_client_gone`]). Either way its whole process group is stopped
    /// (SIGTERM, then SIGKILL) and the deploy fails, so the app's deploy lock is released
    /// and the next push does not hang behind it.
    pub fn run_bounded(
        &mut self,
        mut cmd: Command,
        what: &str,
        limit: Duration,
    ) -> Result<(), DeployError> {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let status = self.run_status(&mut cmd, what, Some(limit))?;
        check_status(status, what)
    }

    fn run_status(
        &mut self,
        cmd: &mut Command,
        what: &str,
        limit: Option<Duration>,
    ) -> Result<ExitStatus, DeployError> {
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

        let status = match limit {
            None => child
                .wait()
                .doing(|| format!("{what}: cannot wait for the command"))?,
            Some(limit) => match self.wait_bounded(&mut child, limit, what)? {
                Ok(status) => status,
                Err(why) => {
                    let _ = done_rx.recv_timeout(DRAIN_AFTER_EXIT);
                    return Err(DeployError::refused(why));
                }
            },
        };
        if let Ok(held) = done_rx.recv_timeout(DRAIN_AFTER_EXIT) {
            self.pending.extend_from_slice(&held);
        }
        Ok(status)
    }

    /// The command's exit status, or (inner `Err`) why it was stopped: past `limit`, or its
    /// client gone.
    fn wait_bounded(
        &mut self,
        child: &mut std::process::Child,
        limit: Duration,
        what: &str,
    ) -> Result<Result<ExitStatus, String>, DeployError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child
                .try_wait()
                .doing(|| format!("{what}: cannot wait for the command"))?
            {
                return Ok(Ok(status));
            }
            let why = if Instant::now() >= deadline {
                Some(format!(
                    "{what} did not finish within {limit:?}; stopped it"
                ))
            } else if (self.client_gone)() {
                Some(format!("{what} stopped: the client went away"))
            } else {
                None
            };
            if let Some(why) = why {
                end_group(child);
                self.note(&format!("-----> {why}"));
                return Ok(Err(why));
            }
            std::thread::sleep(BOUNDED_TICK);
        }
    }
}

/// SIGTERM to the command's process group, SIGKILL after [`BOUNDED_GRACE`], then reaped.
fn end_group(child: &mut std::process::Child) {
    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;
    let Ok(pid) = i32::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    let group = Pid::from_raw(pid);
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + BOUNDED_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            // The leader is gone; what else the group holds goes too.
            let _ = killpg(group, Signal::SIGKILL);
            return;
        }
        std::thread::sleep(BOUNDED_TICK);
    }
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
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

    /// Whether `pid` is alive (a zombie counts as dead).
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    }

    /// A `release` that never ends, leaving a child of its own behind: stopped whole.
    fn endless(dir: &Path) -> (Command, std::path::PathBuf) {
        let pid_file = dir.join("bg.pid");
        let script = format!("sleep 1000 & echo $! > {}; sleep 1000", pid_file.display());
        (command("sh", &["-c", &script]), pid_file)
    }

    fn pid_in(file: &Path) -> i32 {
        let mut pid = None;
        for _ in 0..200 {
            pid = std::fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            if pid.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        pid.expect("the command wrote its child's pid")
    }

    /// Issue 10 item 9: a release that never ends is stopped at its limit, with everything
    /// it started, and the deploy fails (releasing the app's lock).
    #[test]
    fn a_bounded_step_is_stopped_at_its_limit_with_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let (cmd, pid_file) = endless(dir.path());
        let mut log = BuildLog::terminal_only();
        let started = Instant::now();
        let err = log
            .run_bounded(cmd, "release command", Duration::from_millis(500))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "release command did not finish within 500ms; stopped it"
        );
        assert!(started.elapsed() < Duration::from_secs(8));
        let bg = pid_in(&pid_file);
        // Reaped by init once killed; give it a moment to be gone.
        for _ in 0..100 {
            if !alive(bg) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(bg), "the release's child {bg} survived");
    }

    /// Issue 10 item 9: when the client that pushed goes away, the release ends with it.
    #[test]
    fn a_bounded_step_ends_with_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let (cmd, _) = endless(dir.path());
        let mut log = BuildLog::terminal_only();
        log.client_gone = || true;
        let err = log
            .run_bounded(cmd, "release command", Duration::from_secs(600))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "release command stopped: the client went away"
        );
        let mut quick = BuildLog::terminal_only();
        quick
            .run_bounded(
                command("true", &[] as &[&str]),
                "release command",
                Duration::from_secs(5),
            )
            .unwrap();
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
