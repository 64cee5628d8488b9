//! Issue 15: crash recovery. The daemon is killed with SIGKILL under load and started again
//! with the descriptors it had put in systemd's file descriptor store: it adopts the apps
//! still running (same pids), their output is still captured, the front's clients wait in
//! the backlog, the exit of an adopted process is noticed, cron goes on.
//!
//! Lab shortcut: no systemd here; the test plays its part for real, as the protocol says
//! (sd_notify(3), sd_listen_fds(3)): a datagram socket at `$NOTIFY_SOCKET` that keeps the
//! descriptors of `FDSTORE=1` messages under their `FDNAME` and closes those of
//! `FDSTOREREMOVE=1`, then a restart that passes them at fd 3 onwards with `LISTEN_FDS`,
//! `LISTEN_FDNAMES` and `LISTEN_PID` (the daemon's own pid: set by a shell that then
//! executes it). What systemd adds (keeping the store across `Restart=always`, not killing
//! the apps with `KillMode=process`, killing them on a clean stop) is proven under the real
//! one by `check_supervisor_crash` in tests/systemd/checks.sh.

mod common;

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use piku_proto::{InstanceState, Role};

/// systemd's side of the file descriptor store.
struct FakeSystemd {
    path: PathBuf,
    store: Arc<Mutex<Vec<(String, OwnedFd)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeSystemd {
    fn new(root: &TestRoot) -> FakeSystemd {
        let path = root.dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let store: Arc<Mutex<Vec<(String, OwnedFd)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some((text, fds)) = receive(&socket) {
                        keep(&store, &text, fds);
                    }
                }
            })
        };
        FakeSystemd {
            path,
            store,
            stop,
            thread: Some(thread),
        }
    }

    fn names(&self) -> Vec<String> {
        self.store
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Starts the daemon again as systemd would after a crash: the store's descriptors at
    /// 3, 4, … and their names.
    fn restart(&self, root: &TestRoot) -> Daemon {
        let store = self.store.lock().unwrap();
        let count = RawFd::try_from(store.len()).unwrap();
        // Copies above every target number, so that placing one never closes another.
        let high: Vec<OwnedFd> = store
            .iter()
            .map(|(_, fd)| {
                let raw = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(100 + count))
                    .unwrap();
                // SAFETY: fcntl just returned this new descriptor; nothing else owns it.
                unsafe { OwnedFd::from_raw_fd(raw) }
            })
            .collect();
        let names: Vec<String> = store.iter().map(|(n, _)| n.clone()).collect();
        // Unlocked: the new daemon stores descriptors too while it starts.
        drop(store);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
            .arg(env!("CARGO_BIN_EXE_piku-supervisor"))
            .env("NOTIFY_SOCKET", &self.path)
            .env("LISTEN_FDS", count.to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
        let raws: Vec<RawFd> = high.iter().map(AsRawFd::as_raw_fd).collect();
        // SAFETY: between fork and exec the closure only calls dup2(2), which is
        // async-signal-safe, on descriptors the parent keeps open (`high`) until spawn
        // returns; it allocates nothing.
        unsafe {
            command.pre_exec(move || {
                for (i, raw) in raws.iter().enumerate() {
                    // dup2 clears close-on-exec on the new number: the daemon gets it.
                    if libc::dup2(*raw, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let daemon = Daemon::start_command(root, command);
        drop(high);
        daemon
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One notify datagram: its text and descriptors.
fn receive(socket: &UnixDatagram) -> Option<(String, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 16]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .ok()?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(raws) = c {
            // SAFETY: the kernel just installed these descriptors in this process for
            // this message; nothing else owns them.
            fds.extend(raws.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    let len = msg.bytes;
    Some((String::from_utf8_lossy(&buf[..len]).into_owned(), fds))
}

/// What systemd does with a message: FDSTORE keeps (under FDNAME), FDSTOREREMOVE closes.
fn keep(store: &Mutex<Vec<(String, OwnedFd)>>, text: &str, fds: Vec<OwnedFd>) {
    let fields: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
    let name = fields.get("FDNAME").copied().unwrap_or("stored").to_owned();
    let mut store = store.lock().unwrap();
    if fields.get("FDSTOREREMOVE") == Some(&"1") {
        store.retain(|(n, _)| *n != name);
    }
    if fields.get("FDSTORE") == Some(&"1") {
        store.extend(fds.into_iter().map(|fd| (name.clone(), fd)));
    }
}

/// A request's outcome: when it was sent, how long it took, what went wrong.
type Outcome = (Instant, Duration, Option<String>);

/// 4 threads sending requests one after another through the front.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
}

impl Load {
    fn start(addr: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
        let threads = (0..4)
            .map(|_| {
                let (addr, stop, outcomes) = (addr.to_string(), stop.clone(), outcomes.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let sent = Instant::now();
                        let failed = get_once(&addr).err();
                        outcomes
                            .lock()
                            .unwrap()
                            .push((sent, sent.elapsed(), failed));
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            outcomes,
        }
    }

    fn served(&self) -> usize {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, f)| f.is_none())
            .count()
    }

    fn wait_more(&self, more: usize) {
        let target = self.served() + more;
        wait_for("requests to be served", Duration::from_secs(30), || {
            (self.served() >= target).then_some(())
        });
    }

    fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

fn pids(daemon: &Daemon) -> Vec<(String, Option<u32>)> {
    daemon
        .status("up")
        .instances
        .iter()
        .map(|i| (i.name(), i.pid))
        .collect()
}

/// Every daemon log of this root, in the order they were started.
fn daemon_log(root: &TestRoot) -> String {
    let mut logs: Vec<PathBuf> = std::fs::read_dir(root.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("daemon-"))
        })
        .collect();
    logs.sort();
    logs.iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect()
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[test]
fn a_daemon_killed_under_load_comes_back_with_every_app_still_running() {
    let root = TestRoot::new();
    let systemd = FakeSystemd::new(&root);
    let mut daemon = Daemon::start_with(&root, |c| {
        c.env("NOTIFY_SOCKET", &systemd.path);
    });
    daemon.apply(&web_and_ticker_app(&root));
    let runs = root.scratch().join("cron-runs");
    daemon.apply(&spec(
        "cr",
        &root.scratch(),
        vec![process(
            "cron1",
            format!("sh -c 'echo run >> {}'", runs.display()),
            Role::Cron {
                schedule: "* * * * * *".into(),
            },
            1,
        )],
    ));
    daemon.wait_state("up", "ticker.1", InstanceState::Running);
    wait_for("2 backends", Duration::from_secs(20), || {
        (daemon.status("up").front?.backends.len() == 2).then_some(())
    });
    let before = pids(&daemon);
    let expected: Vec<String> = before
        .iter()
        .flat_map(|(_, pid)| {
            let pid = pid.expect("every instance runs");
            [format!("out.{pid}"), format!("err.{pid}")]
        })
        .chain(["control".into(), "unix.up".into(), "tcp.up".into()])
        .collect();
    wait_for(
        "the store to hold every descriptor",
        Duration::from_secs(10),
        || {
            let names = systemd.names();
            expected.iter().all(|e| names.contains(e)).then_some(())
        },
    );
    let addr = daemon
        .status("up")
        .front
        .and_then(|f| f.tcp)
        .expect("a TCP front");
    let load = Load::start(&addr);
    load.wait_more(20);

    daemon.kill9();
    let killed = Instant::now();
    let mut daemon = systemd.restart(&root);
    load.wait_more(40);
    let outcomes = load.finish();
    let after = pids(&daemon);
    assert_eq!(after, before, "every process adopted, none restarted");
    let said = daemon_log(&root);
    assert!(
        said.contains("recovered after a crash: adopted 3 processes still running"),
        "{said}"
    );
    assert!(
        said.contains("kept running across the supervisor's crash"),
        "{said}"
    );

    // Requests: those cut mid-way by the kill (at most one per thread) fail; none is
    // refused, the others waited in the backlog.
    let refused: Vec<&Outcome> = outcomes
        .iter()
        .filter(|(_, _, f)| f.as_deref().is_some_and(|f| f.starts_with("connect")))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let failed: Vec<&Outcome> = outcomes.iter().filter(|(_, _, f)| f.is_some()).collect();
    assert!(failed.len() <= 4, "failed: {failed:?}");
    let served_after = outcomes
        .iter()
        .filter(|(sent, _, f)| f.is_none() && *sent + Duration::from_millis(1) >= killed)
        .map(|(sent, took, _)| *sent + *took)
        .min()
        .expect("a request served after the kill");
    let slowest = outcomes.iter().map(|(_, took, _)| *took).max().unwrap();

    // The worker's lines: every one, in order, across the crash (they waited in the pipe).
    let last = *ticks(&root).last().unwrap();
    wait_for("the ticker to go on", Duration::from_secs(10), || {
        (ticks(&root).last() > Some(&(last + 2))).then_some(())
    });
    let ticks = ticks(&root);
    let expected: Vec<u64> = (ticks[0]..ticks[0] + ticks.len() as u64).collect();
    let lost = (ticks.last().unwrap() - ticks[0] + 1) as usize - ticks.len();
    assert_eq!(ticks, expected, "ticker lines lost or out of order");

    // Cron goes on.
    let cron_runs = lines(&runs);
    wait_for("cron to run again", Duration::from_secs(10), || {
        (lines(&runs) >= cron_runs + 2).then_some(())
    });

    // An adopted process that dies is noticed and restarted; how it ended is unknown.
    let (_, web_pid) = after.iter().find(|(n, _)| n == "web.1").unwrap().clone();
    let web_pid = web_pid.unwrap();
    signal(web_pid, Signal::SIGKILL);
    let web = wait_for("web.1 restarted", Duration::from_secs(20), || {
        let i = daemon.instance("up", "web.1");
        (i.pid.is_some() && i.pid != Some(web_pid) && i.state == InstanceState::Running)
            .then_some(i)
    });
    assert_eq!(
        web.last_exit.as_deref(),
        Some("exited (status unknown: adopted after a crash)"),
        "{web:?}"
    );
    // Its replacement's pipes are stored in turn; the dead one's are gone.
    let new_pid = web.pid.unwrap();
    wait_for("the new pipes stored", Duration::from_secs(10), || {
        let names = systemd.names();
        (names.contains(&format!("out.{new_pid}")) && !names.contains(&format!("out.{web_pid}")))
            .then_some(())
    });
    // A clean stop empties the store (systemd 252 keeps it across `systemctl restart`):
    // the next daemon starts afresh.
    assert!(daemon.terminate().success());
    wait_for("the store to be empty", Duration::from_secs(5), || {
        systemd.names().is_empty().then_some(())
    });
    eprintln!(
        "kill -9 → first request served: {} ms; slowest request {} ms; {} requests, {} cut \
         by the kill, 0 refused; ticker lines lost: {lost}",
        (served_after - killed).as_millis(),
        slowest.as_millis(),
        outcomes.len(),
        failed.len()
    );
}

/// Without the store (no systemd) a crash restarts the apps, as before: the new daemon
/// stops what the dead one left and starts every instance afresh.
#[test]
fn without_the_store_a_crash_restarts_the_apps() {
    let root = TestRoot::new();
    let mut daemon = Daemon::start(&root);
    daemon.apply(&web_and_ticker_app(&root));
    let old = daemon
        .wait_state("up", "ticker.1", InstanceState::Running)
        .pid
        .unwrap();
    daemon.kill9();
    let daemon = Daemon::start(&root);
    let new = daemon
        .wait_state("up", "ticker.1", InstanceState::Running)
        .pid
        .unwrap();
    assert_ne!(old, new);
    wait_for("the leftover stopped", Duration::from_secs(15), || {
        (!alive(old)).then_some(())
    });
}
