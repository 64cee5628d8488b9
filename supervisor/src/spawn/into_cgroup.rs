//! Starting a process born in its cgroup v2: `clone3` with `CLONE_INTO_CGROUP` (Linux ≥ 5.7).
//!
//! Why not fork and have the child write itself into `cgroup.procs`: that is a migration,
//! and every migration takes the kernel's global `cgroup_threadgroup_rwsem` for writing,
//! which first waits for an RCU grace period. On the 2-core test VM that wait was 12–32 ms,
//! most of a respawn after `kill -9`; a child born in its cgroup takes no such lock
//! (0.2 ms). The cgroup v1 hierarchies have no such flag: joining one is still a write, made
//! by the child before exec (see `InstanceCgroup::placement` for which ones).
//!
//! The child does what `std::process::Command` does between fork and exec, with plain
//! system calls on memory prepared before the clone: signal mask and SIGPIPE back to
//! defaults, its own process group, stdin from /dev/null and stdout/stderr into pipes, the
//! v1 joins, the file limit, the working directory, exec. An exec that fails sends its errno
//! back through a close-on-exec pipe, as std does, so the caller gets the same error.

use std::collections::BTreeMap;
use std::ffi::{CString, c_char};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::wait::{Id, WaitPidFlag, waitid};

/// `struct clone_args` of clone3(2), up to `cgroup` (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_PIDFD: u64 = 0x1000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// A process started by [`spawn`].
pub struct Born {
    pub pid: u32,
    /// Its pidfd (close-on-exec): how its exit is awaited and reaped.
    pub pidfd: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What the child runs, prepared before the clone (the child may not allocate).
pub struct Plan<'a> {
    pub argv: &'a [String],
    pub env: &'a BTreeMap<String, String>,
    pub workdir: &'a Path,
    /// The cgroup v2 directory the child is born in.
    pub cgroup: &'a Path,
    /// `cgroup.procs` files (v1) the child writes itself into before exec.
    pub join: &'a [CString],
    /// The soft file descriptor limit to give the child.
    pub soft_nofile: Option<u64>,
}

/// Why [`spawn`] did not start the process.
pub enum Failed {
    /// `clone3` into the cgroup is not possible here (old kernel, seccomp, the cgroup is
    /// gone or not a leaf): the caller starts the process the usual way.
    Unsupported(io::Error),
    /// The process could not be started (the program is missing, exec failed, ...).
    Start(io::Error),
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte"))
}

/// The program's path as `execvp` would find it in the child's `PATH` (the default
/// `/bin:/usr/bin` without one); a name with a `/` is taken as it is (relative to the
/// working directory the child changes to).
fn resolve(program: &str, env: &BTreeMap<String, String>, workdir: &Path) -> io::Result<CString> {
    if program.contains('/') {
        return cstring(program.as_bytes());
    }
    let path = env.get("PATH").map_or("/bin:/usr/bin", String::as_str);
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = workdir.join(dir).join(program);
        let executable = candidate.is_file()
            && nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok();
        if executable {
            return cstring(candidate.as_os_str().as_bytes());
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// Null-terminated pointer array over `strings` (which must outlive its use).
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Starts `plan`'s process born in `plan.cgroup`. The caller holds the reaper's
/// [`crate::reaper::Spawning`] guard and owns the returned pid.
pub fn spawn(plan: &Plan) -> Result<Born, Failed> {
    let prepared = (|| -> io::Result<_> {
        let (program, _) = plan
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let program = resolve(program, plan.env, plan.workdir)?;
        let argv = plan
            .argv
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = plan
            .env
            .iter()
            .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let workdir = cstring(plan.workdir.as_os_str().as_bytes())?;
        Ok((program, argv, envp, workdir))
    })();
    let (program, argv, envp, workdir) = prepared.map_err(Failed::Start)?;
    let cgroup = File::open(plan.cgroup).map_err(Failed::Unsupported)?;
    let null = File::open("/dev/null").map_err(Failed::Start)?;
    let (out_r, out_w) = pipe().map_err(Failed::Start)?;
    let (err_r, err_w) = pipe().map_err(Failed::Start)?;
    let (report_r, report_w) = pipe().map_err(Failed::Start)?;
    let argv_ptrs = pointers(&argv);
    let envp_ptrs = pointers(&envp);
    let child = Child {
        program: &program,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
        workdir: &workdir,
        join: plan.join,
        soft_nofile: plan.soft_nofile,
        stdin: null.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: err_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
    };
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: CLONE_PIDFD | CLONE_INTO_CGROUP,
        pidfd: std::ptr::from_mut(&mut pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this thread's
    // memory and runs on. `args` is a valid `clone_args` of the size passed; the kernel
    // writes the pidfd into `pidfd`, which lives on this stack. In the child (return 0),
    // `Child::exec` never returns and makes only async-signal-safe system calls on memory
    // prepared above, allocating nothing: the other threads' locks (malloc's) are not
    // touched.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::from_mut(&mut args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        // SAFETY: see above; this is the child.
        unsafe { child.exec() }
    }
    if ret < 0 {
        return Err(Failed::Unsupported(io::Error::last_os_error()));
    }
    // SAFETY: the kernel returned this new pidfd for the child; nothing else owns it.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let pid = u32::try_from(ret).map_err(|_| Failed::Start(io::Error::other("bad pid")))?;
    drop((null, out_w, err_w, report_w, cgroup));
    // The child's ends are closed here; the report pipe reads EOF once the child has
    // exec'd (close-on-exec), or its errno if it could not.
    let mut errno = [0u8; 4];
    let mut report = File::from(report_r);
    let mut got = 0;
    while got < errno.len() {
        match report.read(&mut errno[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failed::Start(e)),
        }
    }
    if got == 0 {
        return Ok(Born {
            pid,
            pidfd,
            stdout: out_r,
            stderr: err_r,
        });
    }
    // The child failed before exec and exits at once: reap it here (it was never owned;
    // the caller's guard keeps the reaper away from it until then).
    let _ = waitid(
        Id::PIDFd(std::os::fd::AsFd::as_fd(&pidfd)),
        WaitPidFlag::WEXITED,
    );
    Err(Failed::Start(io::Error::from_raw_os_error(
        i32::from_ne_bytes(errno),
    )))
}

/// What the child needs between clone and exec, as raw pointers and descriptors.
struct Child<'a> {
    program: &'a CString,
    argv: &'a [*const c_char],
    envp: &'a [*const c_char],
    workdir: &'a CString,
    join: &'a [CString],
    soft_nofile: Option<u64>,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
}

impl Child<'_> {
    /// Runs in the cloned child: sets it up and execs, or reports errno and exits 127.
    ///
    /// # Safety
    /// Only in the child of a fork-like clone: it exits the process.
    unsafe fn exec(&self) -> ! {
        // SAFETY: each call is an async-signal-safe system call on stack values or on the
        // prepared, NUL-terminated strings and pointer arrays borrowed by `self`.
        unsafe {
            let errno = self.setup_and_exec();
            let bytes = errno.to_ne_bytes();
            libc::write(self.report, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    }

    /// Returns the errno of the step that failed (exec returns only on failure).
    unsafe fn setup_and_exec(&self) -> i32 {
        // SAFETY: errno is this thread's, read right after the failed call.
        let errno = || unsafe { *libc::__errno_location() };
        // SAFETY: see `exec`.
        unsafe {
            // A clean signal mask (the spawning thread's would be inherited: the daemon's
            // threads block the signals the main thread takes), and SIGPIPE (which Rust
            // ignores) back to its default, since an ignored disposition survives exec.
            super::clear_signal_mask();
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            if libc::setpgid(0, 0) != 0 {
                return errno();
            }
            for (from, to) in [(self.stdin, 0), (self.stdout, 1), (self.stderr, 2)] {
                let done = if from == to {
                    libc::fcntl(from, libc::F_SETFD, 0)
                } else {
                    libc::dup2(from, to)
                };
                if done < 0 {
                    return errno();
                }
            }
            // A failed join leaves it where the daemon is in that hierarchy, as before.
            for file in self.join {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            if let Some(soft) = self.soft_nofile {
                let mut limit = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                    limit.rlim_cur = soft.min(limit.rlim_max);
                    libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                }
            }
            if libc::chdir(self.workdir.as_ptr()) != 0 {
                return errno();
            }
            libc::execve(
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            );
            errno()
        }
    }
}
