//! How an instance's process is started: argv, environment, cwd, process group, pipes,
//! cgroups. Born in its cgroup v2 where there is one (`into_cgroup.rs`: no migration on the
//! respawn path), else through tokio's `Command`, joining its cgroups before exec.

mod into_cgroup;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use futures_util::future::BoxFuture;
use piku_model::InstanceId;
use tokio::process::Command;

use crate::{exit, handover, reaper};

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
    pub pid: u32,
    /// The read ends of its stdout and stderr (`None`: lost, and logged).
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Resolves once it has exited and been reaped (and disowned), with how it ended
    /// ([`exit::describe`]'s words).
    pub exit: BoxFuture<'static, String>,
}

/// Where a process goes in the cgroup hierarchies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The cgroup v2 directory it is born in (`clone3`), when there is one.
    pub born_in: Option<PathBuf>,
    /// The `cgroup.procs` files it writes itself into before exec.
    pub join: Vec<CString>,
    /// The (v1) cgroups it and its descendants are moved into once it started
    /// ([`crate::cgroup::follow`]); before exec instead when it cannot be born in `born_in`.
    pub join_after: Vec<PathBuf>,
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

/// The environment the child gets: the app's, with the instance's own variables.
fn environment(launch: &Launch, id: &InstanceId) -> BTreeMap<String, String> {
    let mut env = launch.env.clone();
    env.insert("PROC_TYPE".into(), id.kind.clone());
    env.insert("PIKU_INSTANCE".into(), id.index.to_string());
    if let Some(port) = launch.port {
        env.insert("PORT".into(), port.to_string());
    }
    env
}

/// Starts `launch` as instance `id`, in its own process group, with stdin from /dev/null and
/// stdout/stderr piped (the caller hands them to the log sink), in the cgroups of
/// `placement`: born in its v2 one, and joining the rest before exec.
pub fn spawn(launch: &Launch, id: &InstanceId, placement: &Placement) -> io::Result<Spawned> {
    let argv = argv(&launch.command);
    let env = environment(launch, id);
    let soft_nofile = crate::fds::child_soft_limit();
    if let Some(cgroup) = &placement.born_in {
        let plan = into_cgroup::Plan {
            argv: &argv,
            env: &env,
            workdir: &launch.workdir,
            cgroup,
            join: &placement.join,
            soft_nofile,
        };
        let spawning = reaper::spawning();
        match into_cgroup::spawn(&plan) {
            Ok(born) => {
                spawning.own(born.pid);
                let pid = born.pid;
                if !placement.join_after.is_empty() {
                    let (born_in, dirs) = (cgroup.clone(), placement.join_after.clone());
                    crate::chores::post(move || crate::cgroup::follow(&born_in, &dirs));
                }
                return Ok(Spawned {
                    pid,
                    stdout: Some(born.stdout),
                    stderr: Some(born.stderr),
                    exit: Box::pin(handover::pidfd::exited(pid, born.pidfd)),
                });
            }
            Err(into_cgroup::Failed::Start(e)) => return Err(e),
            Err(into_cgroup::Failed::Unsupported(e)) => {
                tracing::debug!(
                    "cannot start a process inside {} ({e}); it joins its cgroups before exec",
                    cgroup.display()
                );
            }
        }
    }
    // Every cgroup is joined before exec here.
    let procs = |dir: &PathBuf| CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).ok();
    let join = (placement.born_in.iter().filter_map(procs))
        .chain(placement.join.iter().cloned())
        .chain(placement.join_after.iter().filter_map(procs))
        .collect();
    spawn_command(&argv, &env, &launch.workdir, join, soft_nofile)
}

/// [`spawn`] through tokio's `Command`: a fork, then the child joins the cgroups of `join`.
fn spawn_command(
    argv: &[String],
    env: &BTreeMap<String, String>,
    workdir: &Path,
    join: Vec<CString>,
    soft_nofile: Option<u64>,
) -> io::Result<Spawned> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env)
        .current_dir(workdir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Stopping is explicit (SIGTERM, grace, SIGKILL to the group); a dropped handle must
        // not kill an app behind our back.
        .kill_on_drop(false);
    clear_signal_mask_before_exec(&mut cmd);
    if !join.is_empty() {
        join_cgroups_before_exec(&mut cmd, join);
    }
    if let Some(soft) = soft_nofile {
        restore_fd_limit_before_exec(&mut cmd, soft);
    }
    let spawning = reaper::spawning();
    let mut child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("spawned child has no pid"))?;
    spawning.own(pid);
    let pipe = |fd: Option<io::Result<OwnedFd>>| match fd {
        Some(Ok(fd)) => Some(fd),
        Some(Err(e)) => {
            tracing::error!(
                pid,
                "cannot take a pipe of the process ({e}); its output there is lost"
            );
            None
        }
        None => None,
    };
    let stdout = pipe(child.stdout.take().map(|p| p.into_owned_fd()));
    let stderr = pipe(child.stderr.take().map(|p| p.into_owned_fd()));
    let exit = Box::pin(async move {
        let status = child.wait().await;
        // tokio has reaped it: orphans of the group are the reaper's from now on.
        reaper::disown(pid);
        match status {
            Ok(status) => exit::describe(&status),
            Err(e) => format!("wait failed: {e}"),
        }
    });
    Ok(Spawned {
        pid,
        stdout,
        stderr,
        exit,
    })
}

/// Gives the child an empty signal mask. A child inherits the mask of the thread that forked
/// it, std's `Command` does not reset it, and the daemon's threads block SIGTERM, SIGINT and
/// SIGUSR2 (only the main thread takes them: `handover::leave_signals_to_main_thread`): an app
/// started with them blocked would sit out every SIGTERM until the stop's SIGKILL.
fn clear_signal_mask_before_exec(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child, where `clear_signal_mask` is allowed.
    unsafe {
        cmd.pre_exec(|| {
            clear_signal_mask();
            Ok(())
        });
    }
}

/// Empties this thread's signal mask; both spawn paths call it in the child before exec.
/// Async-signal-safe: sigemptyset and sigprocmask on a stack value, nothing allocated.
fn clear_signal_mask() {
    // SAFETY: `set` is a valid sigset_t on the stack, initialised by sigemptyset before
    // sigprocmask reads it; the old mask is not asked for (null).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
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
    use std::collections::BTreeSet;

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

    /// A scratch cgroup v2 directory of this host's (the process's own v2 cgroup's child),
    /// removed on drop; `None` where there is no writable cgroup2 mount.
    struct ScratchCgroup(PathBuf);

    impl ScratchCgroup {
        fn new(name: &str) -> Option<ScratchCgroup> {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            let mount = mounts.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                right
                    .starts_with("cgroup2 ")
                    .then(|| left.split(' ').nth(4).map(PathBuf::from))?
            })?;
            let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            let own = own.lines().find_map(|l| l.strip_prefix("0::/"))?;
            let dir = mount
                .join(own)
                .join(format!("{name}-{}", std::process::id()));
            std::fs::create_dir(&dir).ok()?;
            Some(ScratchCgroup(dir))
        }

        /// The same in the cgroup v1 hierarchy of `controller`.
        fn v1(controller: &str, name: &str) -> Option<ScratchCgroup> {
            let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            let mount = mounts.lines().find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                let mut fields = right.split(' ');
                let (kind, options) = (fields.next()?, fields.nth(1)?);
                (kind == "cgroup" && options.split(',').any(|o| o == controller))
                    .then(|| left.split(' ').nth(4).map(PathBuf::from))?
            })?;
            let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
            let own = own.lines().find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (controllers, path) = rest.split_once(':')?;
                controllers
                    .split(',')
                    .any(|c| c == controller)
                    .then_some(path)
            })?;
            let dir = mount
                .join(own.trim_start_matches('/'))
                .join(format!("{name}-{}", std::process::id()));
            std::fs::create_dir(&dir).ok()?;
            Some(ScratchCgroup(dir))
        }
    }

    impl Drop for ScratchCgroup {
        fn drop(&mut self) {
            // Killed members may take a moment to leave.
            for _ in 0..200 {
                if std::fs::remove_dir(&self.0).is_ok() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    fn launch(command: &str) -> Launch {
        Launch {
            command: command.into(),
            env: BTreeMap::from([("PATH".into(), "/usr/bin:/bin".into())]),
            workdir: std::env::temp_dir(),
            port: Some(5005),
        }
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut out).unwrap();
        out
    }

    /// Born in its cgroup (no join), with its own group, environment, directory and pipes,
    /// and its exit awaited through its pidfd.
    #[tokio::test]
    async fn a_process_is_born_in_its_cgroup_v2() {
        let Some(cgroup) = ScratchCgroup::new("piku-spawn-test") else {
            eprintln!("no writable cgroup2 here: skipped");
            return;
        };
        let id = InstanceId {
            kind: "worker".into(),
            index: 2,
        };
        let placement = Placement {
            born_in: Some(cgroup.0.clone()),
            ..Placement::default()
        };
        let command = "echo $PROC_TYPE.$PIKU_INSTANCE:$PORT; pwd; cut -d' ' -f5 /proc/$$/stat; \
                       cat /proc/self/cgroup; echo oops >&2; exit 3";
        let spawned = spawn(&launch(command), &id, &placement).unwrap();
        let out = read_all(spawned.stdout.unwrap());
        let err = read_all(spawned.stderr.unwrap());
        assert_eq!(spawned.exit.await, "exit 3");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "worker.2:5005");
        assert_eq!(
            Path::new(lines[1]).canonicalize().unwrap(),
            std::env::temp_dir().canonicalize().unwrap()
        );
        assert_eq!(lines[2].trim(), spawned.pid.to_string(), "its own group");
        let name = cgroup.0.file_name().unwrap().to_str().unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("0::/") && l.ends_with(name)),
            "{out}"
        );
        assert_eq!(err, "oops\n");
    }

    /// A process starts with no signal blocked, whichever daemon thread spawned it (they all
    /// block the signals the main thread takes), on either path.
    #[tokio::test]
    async fn a_process_starts_with_no_signal_blocked() {
        let cgroup = ScratchCgroup::new("piku-spawn-mask");
        let placements = [
            Some(Placement::default()),
            cgroup.as_ref().map(|c| Placement {
                born_in: Some(c.0.clone()),
                ..Placement::default()
            }),
        ];
        let id = InstanceId {
            kind: "worker".into(),
            index: 1,
        };
        for placement in placements.into_iter().flatten() {
            let id = id.clone();
            // A thread of the runtime's (spawning needs its context), as a worker would be.
            let spawned = tokio::task::spawn_blocking(move || {
                crate::handover::leave_signals_to_main_thread();
                spawn(&launch("grep SigBlk /proc/self/status"), &id, &placement)
            })
            .await
            .unwrap()
            .unwrap();
            let out = read_all(spawned.stdout.unwrap());
            assert_eq!(out.trim(), "SigBlk:\t0000000000000000", "{out}");
            assert_eq!(spawned.exit.await, "exit 0");
        }
    }

    /// An exec that fails in the child is the spawn's error, as with std, and leaves no
    /// zombie behind; a program that is not on PATH is an error before any clone.
    #[tokio::test]
    async fn a_failed_exec_is_the_spawns_error() {
        let Some(cgroup) = ScratchCgroup::new("piku-spawn-fail") else {
            eprintln!("no writable cgroup2 here: skipped");
            return;
        };
        let id = InstanceId {
            kind: "worker".into(),
            index: 1,
        };
        let placement = Placement {
            born_in: Some(cgroup.0.clone()),
            ..Placement::default()
        };
        let Err(e) = spawn(&launch("/no/such/program"), &id, &placement) else {
            panic!("a missing program started");
        };
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let Err(e) = spawn(&launch("no-such-program-piku"), &id, &placement) else {
            panic!("a missing program started");
        };
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let mut bad_dir = launch("true");
        bad_dir.workdir = PathBuf::from("/no/such/dir");
        let Err(e) = spawn(&bad_dir, &id, &placement) else {
            panic!("started in a missing directory");
        };
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        // The failed children were reaped: the cgroup is empty.
        let procs = std::fs::read_to_string(cgroup.0.join("cgroup.procs")).unwrap();
        assert_eq!(procs, "");
    }

    /// A v1 cgroup without a limit is joined right after the start, by the process and
    /// by what it forked at once (it was born in the v2 cgroup, which is followed).
    #[tokio::test]
    async fn v1_cgroups_are_joined_after_the_start_by_the_whole_tree() {
        let (Some(v2), Some(v1)) = (
            ScratchCgroup::new("piku-follow-test"),
            ScratchCgroup::v1("memory", "piku-follow-test"),
        ) else {
            eprintln!("no writable cgroup2 and v1 memory hierarchy here: skipped");
            return;
        };
        let id = InstanceId {
            kind: "worker".into(),
            index: 1,
        };
        let placement = Placement {
            born_in: Some(v2.0.clone()),
            join: Vec::new(),
            join_after: vec![v1.0.clone()],
        };
        let spawned = spawn(&launch("sleep 30 & exec sleep 31"), &id, &placement).unwrap();
        let members = |dir: &Path| -> BTreeSet<u32> {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let joined = loop {
            let born = members(&v2.0);
            if born.len() == 2 && members(&v1.0) == born {
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        let (born, inside) = (members(&v2.0), members(&v1.0));
        for pid in &born {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert_eq!(spawned.exit.await, "SIGKILL");
        assert!(joined, "v2 {born:?}, v1 {inside:?}");
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
