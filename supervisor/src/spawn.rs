//! How an instance's process is started: argv, environment, cwd, process group, pipes.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;

use piku_model::InstanceId;
use tokio::process::{Child, Command};

/// Everything that decides what an instance runs. Two equal `Launch`es run the same process,
/// which is how `Apply` knows that an instance can be left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub command: String,
    /// The app's whole environment (nothing is inherited from the daemon).
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    /// `Some` for web instances: exported as `PORT`.
    pub port: Option<u16>,
}

/// A started process, the leader of its own process group (pgid == pid).
pub struct Spawned {
    pub child: Child,
    pub pid: u32,
}

/// Characters that only a shell understands. Quotes and backslashes are not here: shell-words
/// removes them exactly as sh would.
const SHELL_CHARS: &[char] = &[
    '$', '`', '|', '&', ';', '<', '>', '(', ')', '*', '?', '[', ']', '~', '{', '}', '\n', '#', '!',
];

/// The argv for `command`: its own words when it is plain, else `sh -c 'exec <command>'` for
/// one simple command (the shell replaces itself with the app, so the pid we track is the
/// app's), else `sh -c '<command>'` (lists, pipelines, loops: the shell must stay).
pub fn argv(command: &str) -> Vec<String> {
    let plain = !command.contains(SHELL_CHARS);
    if plain
        && let Ok(words) = shell_words::split(command)
        // `FOO=1 app` is an assignment only a shell performs.
        && words.first().is_some_and(|w| !w.contains('='))
    {
        return words;
    }
    if is_simple_command(command) {
        vec!["sh".into(), "-c".into(), format!("exec {command}")]
    } else {
        // `exec` in front of a list, pipeline or compound command would change its meaning
        // (`exec a && b` never runs b, `exec while …` is a syntax error): the shell stays.
        vec!["sh".into(), "-c".into(), command.to_string()]
    }
}

/// Shell words that open a compound command: `exec` may not precede them.
const COMPOUND_KEYWORDS: &[&str] = &[
    "if", "while", "until", "for", "case", "select", "function", "{", "(", "!", "[[",
];

/// Whether `command` is one simple command (so `exec command` replaces the shell with it):
/// no list or pipeline operator (`;`, `&&`, `||`, `|`, `&`, newline) and no compound
/// command at the start. Operators inside quotes count too: erring towards keeping the
/// shell only costs one `sh` process.
fn is_simple_command(command: &str) -> bool {
    if command.contains([';', '&', '|', '\n']) {
        return false;
    }
    let trimmed = command.trim_start();
    let first = trimmed
        .split(|c: char| c.is_whitespace())
        .next()
        .unwrap_or("");
    !COMPOUND_KEYWORDS.contains(&first) && !trimmed.starts_with(['(', '{'])
}

/// Starts `launch` as instance `id`, in its own process group, with stdin from /dev/null and
/// stdout/stderr piped (the caller hands them to the log sink). The child writes itself into
/// each of `cgroups` (`cgroup.procs` files) before exec.
pub fn spawn(launch: &Launch, id: &InstanceId, cgroups: Vec<CString>) -> io::Result<Spawned> {
    let argv = argv(&launch.command);
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(&launch.env)
        .env("PROC_TYPE", &id.kind)
        .env("PIKU_INSTANCE", id.index.to_string())
        .current_dir(&launch.workdir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Stopping is explicit (SIGTERM, grace, SIGKILL to the group); a dropped handle must
        // not kill an app behind our back.
        .kill_on_drop(false);
    if let Some(port) = launch.port {
        cmd.env("PORT", port.to_string());
    }
    if !cgroups.is_empty() {
        join_cgroups_before_exec(&mut cmd, cgroups);
    }
    if let Some(soft) = crate::fds::child_soft_limit() {
        restore_fd_limit_before_exec(&mut cmd, soft);
    }
    let spawning = crate::reaper::spawning();
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("spawned child has no pid"))?;
    spawning.own(pid);
    Ok(Spawned { child, pid })
}

/// Gives the child the soft file descriptor limit the daemon was started with: programs that
/// size tables by it or close every descriptor up to it at start must not see the raised one.
fn restore_fd_limit_before_exec(cmd: &mut Command, soft: u64) {
    // SAFETY: the closure runs in the forked child, where only async-signal-safe calls are
    // allowed; getrlimit and setrlimit are plain system calls on a stack value, and nothing
    // is allocated.
    unsafe {
        cmd.pre_exec(move || {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur = soft.min(limit.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
            Ok(())
        });
    }
}

/// Makes the child write itself ("0") into each `cgroup.procs` file between fork and exec,
/// so that it is in its cgroups before it can fork anything. A failure leaves it where the
/// daemon is in that hierarchy (the process group still confines it; a limit of that
/// cgroup does not apply), never fails the spawn.
fn join_cgroups_before_exec(cmd: &mut Command, procs: Vec<CString>) {
    // SAFETY: the closure runs in the forked child, where only async-signal-safe calls are
    // allowed; it iterates a vector of C strings allocated before the fork and calls open,
    // write and close on them, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for file in &procs {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_run_directly() {
        assert_eq!(
            argv("python3 app.py --port 5"),
            ["python3", "app.py", "--port", "5"]
        );
        assert_eq!(argv("echo 'two words'"), ["echo", "two words"]);
    }

    #[test]
    fn shell_syntax_goes_through_exec() {
        for cmd in [
            "gunicorn -b 0.0.0.0:$PORT app:app",
            "run > out.log",
            "ls *.py",
            "FOO=1 app",
            "echo 'unbalanced",
        ] {
            assert_eq!(argv(cmd), ["sh", "-c", &format!("exec {cmd}")], "{cmd}");
        }
    }

    #[test]
    fn lists_pipelines_and_compound_commands_keep_the_shell() {
        for cmd in [
            "a && b",
            "cd web && exec app",
            "a || b",
            "a | b",
            "a; b",
            "a &",
            "a\nb",
            "while true; do echo x; sleep 1; done",
            "for i in 1 2; do echo $i; done",
            "if [ -f x ]; then app; fi",
            "{ echo a; }",
            "(cd x; app)",
            "! false",
            "until false; do :; done",
        ] {
            assert_eq!(argv(cmd), ["sh", "-c", cmd], "{cmd}");
        }
    }

    /// The shell really runs such lines: a loop and a list both produce their output.
    #[test]
    fn compound_lines_run() {
        let out = std::process::Command::new("sh")
            .args(&argv("for i in 1 2; do echo $i; done && echo done")[1..])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n2\ndone\n");
    }
}
