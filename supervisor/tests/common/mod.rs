//! Test harness: the real `piku-supervisor` binary in a temporary PIKU_ROOT, spoken to
//! through `piku_proto::Client`, and small helpers to build specs and wait for things.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use piku_proto::{
    AppSettings, AppSpec, AppStatus, ApplyReport, Client, InstanceState, InstanceStatus,
    ProcessSpec, Request, Response, Role,
};

/// A temporary PIKU_ROOT that outlives daemons started in it (for restart tests).
pub struct TestRoot {
    pub dir: tempfile::TempDir,
}

impl TestRoot {
    pub fn new() -> TestRoot {
        TestRoot {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("piku")
    }

    /// A scratch directory for the test's own files (outputs of fixtures).
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn socket(&self) -> PathBuf {
        self.root().join("supervisor.sock")
    }

    pub fn log_file(&self, app: &str, process: &str) -> PathBuf {
        self.root()
            .join("logs")
            .join(app)
            .join(format!("{process}.log"))
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(self)
    }

    /// When (ns since the epoch) the daemons of this root first logged a line containing
    /// `needle` (their own log, `PIKU_LOG=debug`, timestamps in UTC); waits for it.
    pub fn daemon_log_time(&self, needle: &str) -> u128 {
        wait_for(
            &format!("{needle:?} in the daemon's log"),
            Duration::from_secs(10),
            || {
                fs::read_dir(self.dir.path())
                    .ok()?
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("daemon-"))
                    .filter_map(|e| fs::read_to_string(e.path()).ok())
                    .flat_map(|log| {
                        log.lines()
                            .filter(|l| l.contains(needle))
                            .map(str::to_owned)
                            .collect::<Vec<_>>()
                    })
                    .find_map(|line| {
                        let line = strip_ansi(&line);
                        let stamp = line.split_whitespace().next()?;
                        let at = chrono::DateTime::parse_from_rfc3339(stamp).ok()?;
                        u128::try_from(at.timestamp_nanos_opt()?).ok()
                    })
            },
        )
    }

    /// Waits until the log of `process` contains `needle` (the daemon writes logs
    /// asynchronously), and returns the log.
    pub fn wait_log(&self, app: &str, process: &str, needle: &str) -> String {
        let path = self.log_file(app, process);
        wait_for(
            &format!("{needle:?} in {}", path.display()),
            Duration::from_secs(10),
            || {
                fs::read_to_string(&path)
                    .ok()
                    .filter(|log| log.contains(needle))
            },
        )
    }
}

/// A running daemon, stopped (SIGTERM, then waited for) when dropped.
pub struct Daemon {
    pub child: Option<Child>,
    pub socket: PathBuf,
}

impl Daemon {
    pub fn start(root: &TestRoot) -> Daemon {
        Daemon::start_with(root, |_| {})
    }

    /// A daemon running as `nobody`, as a non-root supervisor does: its root (and the test's
    /// scratch directory, where the apps run) are made reachable and its own.
    pub fn start_as_nobody(root: &TestRoot) -> Daemon {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        const NOBODY: u32 = 65534;
        fs::set_permissions(root.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for dir in [root.root(), root.scratch()] {
            fs::create_dir_all(&dir).unwrap();
            std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        Daemon::start_with(root, |cmd| {
            cmd.uid(NOBODY).gid(NOBODY);
        })
    }

    /// A daemon started from the binary at `exe` (a copy a test may replace, as a package
    /// upgrade does).
    pub fn start_from(root: &TestRoot, exe: &Path) -> Daemon {
        Daemon::start_binary(root, exe, |_| {})
    }

    pub fn start_with(root: &TestRoot, adjust: impl FnOnce(&mut Command)) -> Daemon {
        Daemon::start_binary(
            root,
            Path::new(env!("CARGO_BIN_EXE_piku-supervisor")),
            adjust,
        )
    }

    fn start_binary(root: &TestRoot, exe: &Path, adjust: impl FnOnce(&mut Command)) -> Daemon {
        let mut command = Command::new(exe);
        adjust(&mut command);
        Daemon::start_command(root, command)
    }

    /// A daemon started by `command` (the binary, or a wrapper that executes it), to which
    /// `--root` and the harness's environment and log file are added.
    pub fn start_command(root: &TestRoot, mut command: Command) -> Daemon {
        let log = fs::File::create(root.dir.path().join(format!(
            "daemon-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        )))
        .unwrap();
        command
            .arg("--root")
            .arg(root.root())
            .env("PIKU_LOG", "debug")
            // Set only in the daemon's environment: apps must never see it.
            .env("PIKU_TEST_DAEMON_ONLY", "leaked")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // A binary a test has just copied (`start_from`) can be refused with ETXTBSY for a
        // moment: a child another test thread forked meanwhile holds the copy's write
        // descriptor until it executes (close-on-exec closes it only then).
        let mut tries = 0;
        let child = loop {
            match command.spawn() {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                spawned => break spawned.expect("start piku-supervisor"),
            }
        };
        let daemon = Daemon {
            child: Some(child),
            socket: root.socket(),
        };
        wait_for("the daemon to answer", Duration::from_secs(10), || {
            Client::connect(&daemon.socket).ok().map(|_| ())
        });
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect")
    }

    /// Sends one request; returns the final frame (an error frame as `Err(message)`).
    pub fn call(&self, req: &Request) -> Result<Response, String> {
        self.client().call(req, |_| {}).map_err(|e| e.to_string())
    }

    pub fn apply(&self, spec: &AppSpec) -> ApplyReport {
        match self.call(&Request::Apply(Box::new(spec.clone()))) {
            Ok(Response::Applied(report)) => report,
            other => panic!("apply failed: {other:?}"),
        }
    }

    pub fn scale(&self, app: &str, formation: &[(&str, u32)]) -> ApplyReport {
        let formation = formation.iter().map(|(k, c)| (k.to_string(), *c)).collect();
        match self.call(&Request::Scale {
            app: app.into(),
            formation,
        }) {
            Ok(Response::Applied(report)) => report,
            other => panic!("scale failed: {other:?}"),
        }
    }

    pub fn status(&self, app: &str) -> AppStatus {
        match self.call(&Request::Status {
            app: Some(app.into()),
        }) {
            Ok(Response::Status { mut apps }) => apps.remove(0),
            other => panic!("status failed: {other:?}"),
        }
    }

    pub fn instance(&self, app: &str, name: &str) -> InstanceStatus {
        self.status(app)
            .instances
            .into_iter()
            .find(|i| i.name() == name)
            .unwrap_or_else(|| panic!("no instance {name}"))
    }

    /// Waits until `name` is in `state` with a pid, and returns its status.
    pub fn wait_state(&self, app: &str, name: &str, state: InstanceState) -> InstanceStatus {
        wait_for(
            &format!("{name} to be {state}"),
            Duration::from_secs(10),
            || {
                let i = self.instance(app, name);
                let needs_pid = matches!(state, InstanceState::Running | InstanceState::Starting);
                (i.state == state && (i.pid.is_some() || !needs_pid)).then_some(i)
            },
        )
    }

    /// SIGTERM, then wait for the exit (graceful stop of every app).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        signal(child.id(), Signal::SIGTERM);
        wait_exit(&mut child, Duration::from_secs(30))
    }

    /// SIGKILL: the daemon dies without stopping anything.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        signal(child.id(), Signal::SIGKILL);
        wait_exit(&mut child, Duration::from_secs(10));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let status = child.wait().expect("wait");
            panic!(
                "daemon did not exit within {limit:?} (killed: {:?})",
                status.signal()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `text` without its terminal colour codes (`ESC [ … m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Polls `f` every 5 ms until it gives a value; panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether `pid` is a live process (a zombie counts as dead).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("");
            state != "Z"
        }
        Err(_) => false,
    }
}

/// Whether `/proc/<pid>` exists at all (a zombie still does).
pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Every process whose process group is `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat"))
            && let Some((_, rest)) = stat.rsplit_once(')')
            && rest.split_whitespace().nth(2) == Some(&pgid.to_string())
        {
            out.push(pid);
        }
    }
    out
}

pub fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// The real python interpreter (not a version-manager shim, whose wrapper would be the
/// process we track).
pub fn python() -> String {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed by the supervisor tests");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
    .clone()
}

pub fn process(kind: &str, command: String, role: Role, count: u32) -> ProcessSpec {
    ProcessSpec {
        kind: kind.into(),
        command,
        role,
        count,
    }
}

/// A spec with a PATH (the env is all an app gets) and a short grace.
pub fn spec(app: &str, workdir: &Path, processes: Vec<ProcessSpec>) -> AppSpec {
    AppSpec {
        app: app.into(),
        release: "v1".into(),
        workdir: workdir.to_path_buf(),
        env: BTreeMap::from([
            (
                "PATH".to_string(),
                "/usr/local/bin:/usr/bin:/bin".to_string(),
            ),
            ("APP_SETTING".to_string(), "from-spec".to_string()),
        ]),
        processes,
        settings: AppSettings {
            stop_grace_ms: 2000,
            ..AppSettings::default()
        },
    }
}

pub fn web_process(count: u32) -> ProcessSpec {
    process(
        "web",
        format!("{} {}", python(), fixture("web.py")),
        Role::Web,
        count,
    )
}

pub fn sleeper(kind: &str, count: u32) -> ProcessSpec {
    process(kind, "sleep 1000".into(), Role::Worker, count)
}

/// Connects to `port` and reads the instance's self-description (`web.2 <pid>`).
pub fn ask_port(port: u16) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to instance");
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.trim().to_string()
}

/// The app of the hand-over tests (upgrade, crash recovery): two web instances behind a front
/// on a TCP port and a Unix socket (health checked on `/up`), and a worker printing a numbered
/// line every 100 ms.
pub fn web_and_ticker_app(root: &TestRoot) -> AppSpec {
    let web = process(
        "web",
        format!("{} {}", python(), fixture("httpapp.py")),
        Role::Web,
        2,
    );
    let ticker = process(
        "ticker",
        format!("{} {}", python(), fixture("ticker.py")),
        Role::Worker,
        1,
    );
    let mut spec = spec("up", &root.scratch(), vec![web, ticker]);
    spec.env.insert("CONTENT".into(), "v1".into());
    spec.settings.front = Some(piku_proto::FrontSpec {
        // As nginx reaches it; the load goes through the TCP port.
        unix_socket: Some(root.scratch().join("up.sock")),
        tcp: Some(piku_proto::TcpFront {
            bind: "127.0.0.1".into(),
            port: None,
        }),
        health_path: Some("/up".into()),
        health_deadline_ms: 10_000,
        drain_ms: 5_000,
        ..piku_proto::FrontSpec::default()
    });
    spec
}

/// The numbers of [`web_and_ticker_app`]'s ticker lines, in file order.
pub fn ticks(root: &TestRoot) -> Vec<u64> {
    fs::read_to_string(root.log_file("up", "ticker.1"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            l.split_once("tick ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// One `GET /` over a fresh TCP connection: the body of a 200, else what went wrong.
pub fn get_once(addr: &str) -> Result<String, String> {
    let stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    get_on(stream)
}

/// [`get_once`] on a stream already connected.
pub fn get_on(mut stream: impl std::io::Read + std::io::Write) -> Result<String, String> {
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    match response.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(format!("answer: {response:?}")),
    }
}
