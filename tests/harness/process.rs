//! Running child processes with a deadline, and killing only what we started, by PID.
//!
//! Every command the harness runs gets its own process group, so a timeout can kill the command
//! and whatever it forked (git's ssh, ssh's session) without touching anything else.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// What a finished (or timed-out) command did.
#[derive(Debug, Clone)]
pub struct Run {
    /// A short description of what ran, for failure messages.
    pub what: String,
    /// Exit code; `None` when killed by a signal or by our timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// stdout then stderr, for looking for a line wherever the program chose to print it.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Panics with the whole output unless the command exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Run {
        assert!(self.success(), "expected success from {self}");
        self
    }

    /// Panics with the whole output if the command exited 0 (or timed out).
    #[track_caller]
    pub fn assert_failed(&self) -> &Run {
        assert!(
            !self.success() && !self.timed_out,
            "expected a clean failure from {self}"
        );
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}`: exit {:?}{} after {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.what,
            self.code,
            if self.timed_out {
                " (TIMED OUT, killed)"
            } else {
                ""
            },
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` to completion with `input` on stdin, killing its process group after `timeout`.
pub fn run_with_timeout(mut cmd: Command, input: Option<&[u8]>, timeout: Duration) -> Run {
    let what = describe(&cmd);
    let start = Instant::now();
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Run {
                what,
                code: None,
                stdout: String::new(),
                stderr: format!("could not start: {e}"),
                timed_out: false,
                elapsed: start.elapsed(),
            };
        }
    };
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        let bytes = bytes.to_vec();
        thread::spawn(move || {
            // The child may exit without reading; a broken pipe here is not our failure.
            let _ = stdin.write_all(&bytes);
        });
    }
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let deadline = start + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                kill_group(child.id());
                break child.wait().ok();
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(_) => break None,
        }
    };
    // The command's own children may still hold the pipes open; don't wait for them forever.
    let grace = Duration::from_secs(5);
    let stdout = stdout.recv_timeout(grace).unwrap_or_default();
    let stderr = stderr.recv_timeout(grace).unwrap_or_default();
    Run {
        what,
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout,
        stderr,
        timed_out,
        elapsed: start.elapsed(),
    }
}

fn collect<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// SIGKILL to the process group we created for a command (its leader's PID is the group id).
pub fn kill_group(leader: u32) {
    if let Ok(pid) = i32::try_from(leader) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Sends `signal` to one PID; errors (already gone) are ignored.
pub fn signal_pid(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Whether a process with this PID exists (and is not a zombie).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state; Z is a zombie.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// A long-running child (sshd, the supervisor, `piku logs`) that is stopped by PID on drop:
/// SIGTERM, a grace period, then SIGKILL to its process group.
pub struct Guarded {
    pub name: String,
    child: Child,
    grace: Duration,
}

impl Guarded {
    /// Spawns `cmd` in its own process group.
    pub fn spawn(name: &str, mut cmd: Command, grace: Duration) -> std::io::Result<Guarded> {
        cmd.process_group(0);
        let child = cmd.spawn()?;
        Ok(Guarded {
            name: name.to_string(),
            child,
            grace,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(code)` if it already exited.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Stops it now (see the type's doc); idempotent.
    pub fn stop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            kill_group(self.child.id());
            return;
        }
        signal_pid(self.child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                kill_group(self.child.id());
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "harness: {} (pid {}) ignored SIGTERM for {:?}; killing its group",
            self.name,
            self.child.id(),
            self.grace
        );
        kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command whose stdout lines we watch while it runs (`piku logs`, which follows for ever).
pub struct Streaming {
    guard: Guarded,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Streaming {
    pub fn spawn(name: &str, mut cmd: Command) -> std::io::Result<Streaming> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut guard = Guarded::spawn(name, cmd, Duration::from_millis(500))?;
        let (tx, lines) = mpsc::channel();
        if let Some(out) = guard.take_stdout() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Streaming {
            guard,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits until a line matching `pred` arrives; returns it, or `None` at the deadline.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        if let Some(line) = self.seen.iter().find(|l| pred(l)) {
            return Some(line.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = pred(&line);
                    self.seen.push(line.clone());
                    if hit {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Every line seen so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_past_its_deadline_is_killed_with_its_children() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & echo started; wait"]);
        let run = run_with_timeout(cmd, None, Duration::from_millis(500));
        assert!(run.timed_out && run.code.is_none(), "{run}");
        assert!(run.elapsed < Duration::from_secs(10), "{run}");
        assert_eq!(run.stdout, "started\n");
    }

    #[test]
    fn exit_codes_and_stdin_are_passed() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "cat; exit 3"]);
        let run = run_with_timeout(cmd, Some(b"hi"), Duration::from_secs(10));
        assert_eq!((run.code, run.stdout.as_str()), (Some(3), "hi"));
    }
}
