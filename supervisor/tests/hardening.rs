//! Issue 10, the daemon's side: each test is the attack from the audit, run against the
//! real daemon, and what must hold instead.
//!
//! Lab shortcut: the daemon runs as the test's user (root in CI) in a temp PIKU_ROOT, not as
//! the `piku` user under systemd, and "another local user" is checked through file modes and
//! O_NOFOLLOW rather than by a second account: the attacks are on the daemon's own files and
//! socket, which behave the same for any owner. The production shape is scripts/systemd-e2e's.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::*;

fn mode(path: &std::path::Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Item 3: `supervisor/` holds every app's environment (state.json): a directory an older
/// daemon left 0755 is closed to other users at start.
#[test]
fn the_state_directory_is_private() {
    let root = TestRoot::new();
    let sup = root.root().join("supervisor");
    fs::create_dir_all(&sup).unwrap();
    fs::set_permissions(&sup, fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = root.start();
    assert_eq!(mode(&sup), 0o700);
    let app = spec("a", &root.scratch(), vec![sleeper("worker", 1)]);
    daemon.apply(&app);
    assert_eq!(mode(&sup.join("state.json")), 0o600);
}

/// A daemon whose file descriptor limit is `soft`:`hard`, as a service's `LimitNOFILE` sets.
fn start_with_nofile(root: &TestRoot, soft: u64, hard: u64) -> Daemon {
    use std::os::unix::process::CommandExt;
    Daemon::start_with(root, |cmd| {
        // SAFETY: runs in the forked child before exec; setrlimit is one async-signal-safe
        // system call on a stack value.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

fn nofile_limits(pid: u32) -> (u64, u64) {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut words = line.split_whitespace().skip(3);
    let soft = words.next().unwrap().parse().unwrap();
    let hard = words.next().unwrap().parse().unwrap();
    (soft, hard)
}

/// Item 1: a Procfile of 3,000 kinds (each under the per-kind cap) is refused whole, in one
/// line, before any process starts; the daemon still serves other apps.
#[test]
fn an_app_of_thousands_of_instances_is_refused() {
    let root = TestRoot::new();
    let daemon = root.start();
    let kinds = (0..3000).map(|i| sleeper(&format!("k{i}"), 1)).collect();
    let greedy = spec("greedy", &root.scratch(), kinds);
    let err = daemon
        .call(&piku_proto::Request::Apply(Box::new(greedy)))
        .unwrap_err();
    assert!(
        err.contains("3000 instances in all is more than the 512 an app may have"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
    assert!(
        daemon
            .call(&piku_proto::Request::Status {
                app: Some("greedy".into())
            })
            .is_err()
    );

    // Scaling kinds past the app's total is refused the same way, nothing started.
    let three = spec(
        "three",
        &root.scratch(),
        vec![sleeper("a", 1), sleeper("b", 1), sleeper("c", 1)],
    );
    daemon.apply(&three);
    let err = daemon
        .call(&piku_proto::Request::Scale {
            app: "three".into(),
            formation: [("a", 200u32), ("b", 200), ("c", 200)]
                .map(|(k, n)| (k.to_string(), n))
                .into(),
        })
        .unwrap_err();
    assert_eq!(
        err,
        "supervisor refused: app three: 600 instances in all is more than the 512 an app may have"
    );
    assert_eq!(daemon.status("three").instances.len(), 3);
    let other = spec("other", &root.scratch(), vec![sleeper("worker", 1)]);
    daemon.apply(&other);
    daemon.wait_state("other", "worker.1", piku_proto::InstanceState::Running);
}

/// Item 1: the daemon takes its hard descriptor limit, gives its apps the soft one back,
/// and refuses (naming the app) what would not fit in it.
#[test]
fn instances_beyond_the_descriptor_budget_are_refused_naming_the_app() {
    let root = TestRoot::new();
    // Hard 256: (256 - 128) / 4 = 32 instances in all.
    let daemon = start_with_nofile(&root, 200, 256);
    assert_eq!(nofile_limits(daemon.pid()), (256, 256));
    let first = spec("first", &root.scratch(), vec![sleeper("worker", 20)]);
    daemon.apply(&first);
    let pid = daemon
        .wait_state("first", "worker.1", piku_proto::InstanceState::Running)
        .pid
        .unwrap();
    assert_eq!(nofile_limits(pid), (200, 256));

    let hog = spec("hog", &root.scratch(), vec![sleeper("worker", 13)]);
    let err = daemon
        .call(&piku_proto::Request::Apply(Box::new(hog)))
        .unwrap_err();
    assert!(
        err.contains("app hog: 13 instances (besides 20 of other apps)"),
        "{err}"
    );
    assert!(err.contains("limit of 256"), "{err}");
    let err = daemon
        .call(&piku_proto::Request::Scale {
            app: "first".into(),
            formation: [("worker".to_string(), 33u32)].into(),
        })
        .unwrap_err();
    assert!(err.contains("app first: 33 instances"), "{err}");
    assert_eq!(daemon.status("first").instances.len(), 20);
    let fits = spec("fits", &root.scratch(), vec![sleeper("worker", 12)]);
    daemon.apply(&fits);
}

fn greeted(daemon: &Daemon) -> std::os::unix::net::UnixStream {
    use piku_proto::{PROTOCOL_VERSION, Request, Response, read_frame, write_frame};
    let mut s = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    write_frame(
        &mut s,
        &Request::Hello {
            protocol: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    let resp: Response = read_frame(&mut s).unwrap().unwrap();
    assert!(matches!(resp, Response::Welcome { .. }), "{resp:?}");
    s
}

/// Item 7: 300 clients that connect, greet and then sit idle never block a command: when
/// every place is taken, the client idle longest is closed for the newcomer.
#[test]
fn idle_clients_never_starve_the_control_socket() {
    use std::io::Read;
    let root = TestRoot::new();
    let daemon = root.start();
    let mut idle: Vec<_> = (0..300).map(|_| greeted(&daemon)).collect();
    let started = std::time::Instant::now();
    let resp = daemon.call(&piku_proto::Request::Status { app: None });
    assert!(
        matches!(resp, Ok(piku_proto::Response::Status { .. })),
        "{resp:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The first ones were closed to make room (EOF), the last ones are still served.
    let mut rest = Vec::new();
    assert_eq!(idle[0].read_to_end(&mut rest).unwrap(), 0);
    let last = idle.last_mut().unwrap();
    last.set_nonblocking(true).unwrap();
    let open = last.read(&mut [0u8; 1]);
    assert!(
        open.as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "{open:?}"
    );
}

/// Item 7: log followers have 32 places of their own; the 33rd is refused in one line, and
/// commands still run.
#[test]
fn log_followers_cannot_take_every_place() {
    use piku_proto::{LogsRequest, Request, Response, read_frame, write_frame};
    let root = TestRoot::new();
    let daemon = root.start();
    let chatty = spec(
        "chatty",
        &root.scratch(),
        vec![process(
            "worker",
            "sh -c 'echo hello; exec sleep 1000'".into(),
            piku_proto::Role::Worker,
            1,
        )],
    );
    daemon.apply(&chatty);
    root.wait_log("chatty", "worker.1", "hello");
    let follow = || {
        let mut s = greeted(&daemon);
        let req = Request::Logs(LogsRequest {
            app: "chatty".into(),
            process: None,
            lines: 10,
            follow: true,
        });
        write_frame(&mut s, &req).unwrap();
        let first: Response = read_frame(&mut s).unwrap().unwrap();
        (s, first)
    };
    let mut followers = Vec::new();
    for _ in 0..32 {
        let (s, first) = follow();
        assert!(matches!(first, Response::LogLine { .. }), "{first:?}");
        followers.push(s);
    }
    let (_, refused) = follow();
    match refused {
        Response::Error { message } => assert_eq!(
            message,
            "32 clients already follow logs; try again when one stops"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let resp = daemon.call(&Request::Status { app: None });
    assert!(matches!(resp, Ok(Response::Status { .. })), "{resp:?}");
    drop(followers.pop());
    wait_for(
        "a follower's place to be free again",
        std::time::Duration::from_secs(10),
        || {
            let (s, first) = follow();
            matches!(first, Response::LogLine { .. }).then_some(s)
        },
    );
}

fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Item 12: asking about thousands of apps that do not exist (`logs -f`, `ps`, `stop`) leaves
/// nothing behind in the daemon: its memory stays where it was.
#[test]
fn unknown_app_names_leave_no_state() {
    use piku_proto::{LogsRequest, Request, Response, read_frame, write_frame};
    let root = TestRoot::new();
    let daemon = root.start();
    let mut s = greeted(&daemon);
    let mut ask = |req: &Request| {
        write_frame(&mut s, req).unwrap();
        let resp: Response = read_frame(&mut s).unwrap().unwrap();
        assert!(matches!(resp, Response::Error { .. }), "{resp:?}");
    };
    // Warm up the allocator and the connection's buffers first.
    for i in 0..200 {
        ask(&Request::Status {
            app: Some(format!("warm{i}")),
        });
    }
    let before = rss_kib(daemon.pid());
    for i in 0..3000 {
        let app = format!("ghost{i}");
        ask(&Request::Logs(LogsRequest {
            app: app.clone(),
            process: None,
            lines: 10,
            follow: true,
        }));
        ask(&Request::Status {
            app: Some(app.clone()),
        });
        ask(&Request::Stop { app });
    }
    let grown = rss_kib(daemon.pid()).saturating_sub(before);
    println!("3000 unknown names × (logs -f, ps, stop): the daemon grew by {grown} KiB");
    // A live-line channel per name was ~80 KiB: 3000 of them ≈ 240 MB.
    assert!(grown < 20 * 1024, "the daemon grew by {grown} KiB");
    assert!(!root.root().join("logs").join("ghost1").exists());
}

/// The log files the daemon holds open for `app`.
fn open_logs(daemon: &Daemon, app: &str) -> Vec<String> {
    let dir = format!("/proc/{}/fd", daemon.pid());
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|fd| fs::read_link(fd.path()).ok())
        .filter(|target| {
            target
                .parent()
                .is_some_and(|p| p.ends_with(format!("logs/{app}")))
        })
        .filter_map(|target| Some(target.file_name()?.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    names
}

/// Item 12: instances scaled away do not keep their log files open in the daemon.
#[test]
fn scale_down_closes_the_removed_instances_logs() {
    let root = TestRoot::new();
    let daemon = root.start();
    let talk = process(
        "worker",
        "sh -c 'echo up; exec sleep 1000'".into(),
        piku_proto::Role::Worker,
        12,
    );
    daemon.apply(&spec("many", &root.scratch(), vec![talk]));
    for n in 1..=12 {
        root.wait_log("many", &format!("worker.{n}"), "up");
    }
    assert_eq!(open_logs(&daemon, "many").len(), 12);
    daemon.scale("many", &[("worker", 1)]);
    wait_for(
        "the daemon to close the logs of worker.2..12",
        std::time::Duration::from_secs(10),
        || (open_logs(&daemon, "many") == ["worker.1.log"]).then_some(()),
    );
}

/// Item 11: a stop grace of "forever" (`PIKU_STOP_GRACE=1e30`) is refused in one line, so a
/// stop always ends; an older state file holding one still brings its app back.
#[test]
fn an_endless_stop_grace_is_refused() {
    let root = TestRoot::new();
    let mut daemon = root.start();
    let mut app = spec("slow", &root.scratch(), vec![sleeper("worker", 1)]);
    app.settings.stop_grace_ms = u64::MAX;
    let err = daemon
        .call(&piku_proto::Request::Apply(Box::new(app.clone())))
        .unwrap_err();
    assert_eq!(
        err,
        format!(
            "supervisor refused: stop_grace_ms {} is more than 300000 (5 minutes)",
            u64::MAX
        )
    );
    app.settings.stop_grace_ms = 300_000;
    daemon.apply(&app);
    daemon.terminate();
    let state = root.root().join("supervisor/state.json");
    let text = fs::read_to_string(&state).unwrap();
    assert!(text.contains("\"stop_grace_ms\": 300000"), "{text}");
    fs::write(
        &state,
        text.replace(
            "\"stop_grace_ms\": 300000",
            &format!("\"stop_grace_ms\": {}", u64::MAX),
        ),
    )
    .unwrap();
    let daemon = root.start();
    daemon.wait_state("slow", "worker.1", piku_proto::InstanceState::Running);
}

/// An app whose front listens on TCP `port` (`None`: the daemon chooses), health checked.
fn fronted(app: &str, root: &TestRoot, port: Option<u16>) -> piku_proto::AppSpec {
    let web = process(
        "web",
        format!("{} {}", python(), fixture("httpapp.py")),
        piku_proto::Role::Web,
        1,
    );
    let mut spec = spec(app, &root.scratch(), vec![web]);
    spec.settings.front = Some(piku_proto::FrontSpec {
        tcp: Some(piku_proto::TcpFront {
            bind: "127.0.0.1".into(),
            port,
        }),
        health_path: Some("/up".into()),
        health_deadline_ms: 10_000,
        ..piku_proto::FrontSpec::default()
    });
    spec
}

/// Item 15: `PORT=<another app's port>` is refused naming that app (it used to report
/// success while the daemon only logged the failed bind).
#[test]
fn a_port_of_another_app_is_refused_naming_it() {
    let root = TestRoot::new();
    let daemon = root.start();
    daemon.apply(&fronted("first", &root, None));
    let tcp = daemon.status("first").front.unwrap().tcp.unwrap();
    let taken: u16 = tcp.rsplit_once(':').unwrap().1.parse().unwrap();
    let err = daemon
        .call(&piku_proto::Request::Apply(Box::new(fronted(
            "second",
            &root,
            Some(taken),
        ))))
        .unwrap_err();
    assert_eq!(
        err,
        format!("supervisor refused: app second: port {taken} is already used by app first")
    );

    // A pinned port is held too.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    daemon.apply(&fronted("third", &root, Some(free)));
    let err = daemon
        .call(&piku_proto::Request::Apply(Box::new(fronted(
            "fourth",
            &root,
            Some(free),
        ))))
        .unwrap_err();
    assert!(
        err.ends_with(&format!("port {free} is already used by app third")),
        "{err}"
    );
    // The app keeps its own port across a redeploy.
    let mut again = fronted("third", &root, Some(free));
    again.release = "v2".into();
    daemon.apply(&again);
}

/// Item 10: a symlink planted in `logs/<app>/` never makes the daemon append to the file it
/// names (it pointed at `authorized_keys`); the lock file of a running daemon is not
/// truncated by a second one.
#[test]
fn planted_log_symlinks_are_not_followed_and_the_lock_is_not_truncated() {
    let root = TestRoot::new();
    let victim = root.scratch().join("authorized_keys");
    fs::write(&victim, "ssh-ed25519 AAAA keep\n").unwrap();
    let logs = root.root().join("logs").join("victim");
    fs::create_dir_all(&logs).unwrap();
    std::os::unix::fs::symlink(&victim, logs.join("worker.1.log")).unwrap();
    let sup = root.root().join("supervisor");
    fs::create_dir_all(&sup).unwrap();
    fs::write(sup.join("daemon.lock"), "held by 4242\n").unwrap();

    let daemon = root.start();
    let talk = process(
        "worker",
        "sh -c 'echo attack; exec sleep 1000'".into(),
        piku_proto::Role::Worker,
        2,
    );
    daemon.apply(&spec("victim", &root.scratch(), vec![talk]));
    // worker.2 logs normally, so worker.1's line has been handled by then too.
    root.wait_log("victim", "worker.2", "attack");
    daemon.wait_state("victim", "worker.1", piku_proto::InstanceState::Running);
    let _ = daemon.call(&piku_proto::Request::Logs(piku_proto::LogsRequest {
        app: "victim".into(),
        process: None,
        lines: 10,
        follow: false,
    }));
    assert_eq!(
        fs::read_to_string(&victim).unwrap(),
        "ssh-ed25519 AAAA keep\n"
    );
    assert_eq!(
        fs::read_to_string(sup.join("daemon.lock")).unwrap(),
        "held by 4242\n"
    );
}
