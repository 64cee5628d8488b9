//! One driver per supervisor: it turns the fixture formation into that supervisor's own
//! configuration and control actions, and says which processes are the supervisor's own.
//! Everything the rows measure goes through [`Driver`], so the three are driven alike.
//!
//! Cleanup: every driver records (pid, start time) of every process it has seen in its tree
//! ([`Tracker`]); at shutdown it first stops the supervisor through its own control, then kills
//! whatever recorded process is still alive, by pid, and reports how many there were.

pub mod ours;
pub mod supervisord;
pub mod uwsgi;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid as NixPid;

use crate::fixture::{AppDef, Role};
use crate::http;
use crate::procfs::{self, Pid, ProcId};

/// The three supervisors compared.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Kind {
    Ours,
    Uwsgi,
    Supervisord,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Ours, Kind::Uwsgi, Kind::Supervisord];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Ours => "piku-supervisor",
            Kind::Uwsgi => "uWSGI emperor",
            Kind::Supervisord => "supervisord",
        }
    }
}

/// What a crash-looping instance looks like from the supervisor's own status.
#[derive(Debug, Clone)]
pub struct CrashView {
    /// The supervisor's word for it (`crash-looping`, `FATAL`, …).
    pub state: String,
    /// The supervisor has stopped retrying.
    pub gave_up: bool,
}

pub trait Driver: Send {
    fn kind(&self) -> Kind;
    /// The supervisor's top process (the tree root).
    fn root(&self) -> Pid;
    /// The supervisor's own processes right now (not the apps'), for memory and CPU figures.
    fn own_pids(&self) -> Vec<Pid>;
    /// Configures `apps` (the supervisor starts them in its own time).
    fn deploy(&mut self, apps: &[AppDef]) -> Result<()>;
    /// Changes the instance count of one kind of an already deployed app.
    fn scale(&mut self, app: &AppDef, kind: &str, count: u32) -> Result<()>;
    /// Stops every process of the app through the supervisor's control.
    fn stop_app(&mut self, app: &AppDef) -> Result<()>;
    /// The supervisor's own view of a crash-looping instance, if it has one.
    fn crash_view(&mut self, app: &str, kind: &str) -> Result<Option<CrashView>>;
    /// Where instance `kind.index` of `app` logs, newest file first (current, then backups).
    fn log_files(&self, app: &str, kind: &str, index: u32) -> Vec<std::path::PathBuf>;
    /// Lines the supervisor itself says it could not write to an instance's log (I/O errors),
    /// if it counts them.
    fn unwritable_lines(&mut self, _app: &str, _kind: &str) -> Result<Option<u64>> {
        Ok(None)
    }
    fn tracker(&mut self) -> &mut Tracker;
    /// Records the supervisor's whole tree as it is now (for cleanup).
    fn sweep(&mut self) {
        let root = self.root();
        self.tracker().sweep(root);
    }
    /// Stops the supervisor with its own control, then kills recorded leftovers by pid.
    fn shutdown(&mut self) -> Result<Shutdown>;
}

/// How a shutdown went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shutdown {
    /// Recorded processes still alive after the supervisor's own stop (killed by us).
    pub leftovers: usize,
}

/// One running instance as seen in `/proc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instance {
    pub pid: Pid,
    pub index: u32,
    pub port: Option<u16>,
}

/// Processes that are part of the supervision machinery, not an app, even when they carry the
/// app's environment (uWSGI runs every `attach-daemon` through `/bin/sh -c`).
fn is_wrapper(pid: Pid) -> bool {
    matches!(
        procfs::comm(pid).as_deref(),
        Some("sh" | "dash" | "uwsgi" | "bash")
    )
}

/// Whether `pid` is an app process of `app`/`kind`; returns its instance if so.
pub fn as_instance(pid: Pid, app: &str, kind: &str) -> Option<Instance> {
    if procfs::env_var(pid, "PIKU_APP").as_deref() != Some(app)
        || procfs::env_var(pid, "PROC_TYPE").as_deref() != Some(kind)
        || is_wrapper(pid)
    {
        return None;
    }
    Some(Instance {
        pid,
        index: procfs::env_var(pid, "PIKU_INSTANCE")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        port: procfs::env_var(pid, "PORT").and_then(|v| v.parse().ok()),
    })
}

/// The app processes of `app`/`kind` under `root`, by instance index. Only the topmost app
/// process of each instance counts (a tree fixture's children carry the same environment).
pub fn instances(root: Pid, app: &str, kind: &str) -> Vec<Instance> {
    let mut found: Vec<Instance> = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        if let Some(i) = as_instance(p, app, kind) {
            found.push(i);
            continue;
        }
        stack.extend(procfs::children(p));
    }
    found.sort_by_key(|i| i.index);
    found
}

/// Waits until every long-running process of every app runs at its count, and every web
/// instance answers HTTP 200. Returns the time it took.
pub fn wait_ready(d: &mut dyn Driver, apps: &[AppDef], deadline: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let mut pending: Vec<(&AppDef, &crate::fixture::ProcDef)> = apps
        .iter()
        .flat_map(|a| a.long_running().map(move |p| (a, p)))
        .collect();
    while !pending.is_empty() {
        let root = d.root();
        pending.retain(|(a, p)| {
            let inst = instances(root, &a.name, &p.kind);
            if inst.len() < p.count as usize {
                return true;
            }
            if p.role == Role::Web {
                return !inst.iter().all(|i| {
                    i.port
                        .is_some_and(|port| http::serves(port, Duration::from_millis(500)))
                });
            }
            false
        });
        if pending.is_empty() {
            break;
        }
        if t0.elapsed() > deadline {
            let (a, p) = pending[0];
            bail!(
                "{}: {} of {} process(es) not up after {:?} (first: {}/{})",
                d.kind().label(),
                pending.len(),
                pending.len(),
                deadline,
                a.name,
                p.kind
            );
        }
        sleep(Duration::from_millis(50));
    }
    d.sweep();
    Ok(t0.elapsed())
}

/// Every process seen under a supervisor, so that none outlives the benchmark.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: BTreeSet<ProcId>,
}

impl Tracker {
    pub fn add(&mut self, pid: Pid) {
        if let Some(id) = ProcId::of(pid) {
            self.seen.insert(id);
        }
    }

    /// Records `root` and its whole tree as it is now.
    pub fn sweep(&mut self, root: Pid) {
        for p in procfs::tree(root) {
            self.add(p);
        }
        self.seen.retain(|id| id.alive() || id.pid == root);
    }

    /// SIGKILLs every recorded process still alive; returns how many there were.
    pub fn kill_alive(&mut self) -> usize {
        let alive: Vec<ProcId> = self.seen.iter().copied().filter(|id| id.alive()).collect();
        for id in &alive {
            let _ = kill(NixPid::from_raw(id.pid), Signal::SIGKILL);
        }
        self.seen.clear();
        alive.len()
    }
}

/// The supervisor process we started, with its output in a file.
pub struct Daemon {
    pub child: Child,
    pub tracker: Tracker,
    stopped: bool,
}

impl Daemon {
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Daemon> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let mut tracker = Tracker::default();
        tracker.add(child.id() as Pid);
        Ok(Daemon {
            child,
            tracker,
            stopped: false,
        })
    }

    pub fn pid(&self) -> Pid {
        self.child.id() as Pid
    }

    /// Waits for the root to exit after it was told to stop; then kills every recorded process
    /// still alive. The tree must have been swept before the stop was sent.
    pub fn finish(&mut self, grace: Duration) -> Shutdown {
        let t0 = Instant::now();
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if t0.elapsed() > grace => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => sleep(Duration::from_millis(20)),
            }
        }
        // Children the supervisor was stopping may need a moment after it exits.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(2)
            && self.tracker.seen.iter().any(|id| id.alive())
        {
            sleep(Duration::from_millis(50));
        }
        self.stopped = true;
        Shutdown {
            leftovers: self.tracker.kill_alive(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.stopped {
            self.tracker.sweep(self.pid());
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.tracker.kill_alive();
        }
    }
}

/// Sends a signal to a process we started (errors mean it is already gone).
pub fn signal(pid: Pid, sig: Signal) {
    let _ = kill(NixPid::from_raw(pid), sig);
}

/// Runs a control command to completion, failing with its output if it fails.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, text.trim());
    }
    Ok(text)
}

/// Starts the driver for `kind` in a fresh directory under `base`.
pub fn start(kind: Kind, base: &Path, opts: &crate::Opts) -> Result<Box<dyn Driver>> {
    std::fs::create_dir_all(base)?;
    Ok(match kind {
        Kind::Ours => Box::new(ours::Ours::start(base, &opts.supervisor_bin)?),
        Kind::Uwsgi => Box::new(uwsgi::Uwsgi::start(base)?),
        Kind::Supervisord => Box::new(supervisord::Supervisord::start(base)?),
    })
}
