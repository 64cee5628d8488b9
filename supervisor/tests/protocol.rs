//! The control socket refuses what it must (malformed, oversized, wrong version, garbage,
//! a foreign uid) with an error frame, and keeps serving everyone else.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::*;
use piku_proto::{PROTOCOL_VERSION, Request, Response, read_frame, write_frame};

fn raw(daemon: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&daemon.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn hello(s: &mut UnixStream) {
    write_frame(
        s,
        &Request::Hello {
            protocol: PROTOCOL_VERSION,
        },
    )
    .unwrap();
    let resp: Response = read_frame(s).unwrap().unwrap();
    assert!(matches!(resp, Response::Welcome { .. }), "{resp:?}");
}

/// The next frame must be an error naming `needle`, then the daemon must hang up.
fn expect_error_then_close(s: &mut UnixStream, needle: &str) {
    let resp: Response = read_frame(s).unwrap().expect("an error frame");
    match resp {
        Response::Error { message } => assert!(message.contains(needle), "{message}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "daemon kept talking: {rest:?}");
}

fn still_serves(daemon: &Daemon) {
    let resp = daemon.call(&Request::Status { app: None });
    assert!(matches!(resp, Ok(Response::Status { .. })), "{resp:?}");
}

#[test]
fn malformed_json_after_handshake_is_refused() {
    let root = TestRoot::new();
    let daemon = root.start();
    let mut s = raw(&daemon);
    hello(&mut s);
    let body = b"{\"type\": \"status\", oops";
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    expect_error_then_close(&mut s, "malformed request");
    still_serves(&daemon);
}

#[test]
fn unknown_request_type_is_refused() {
    let root = TestRoot::new();
    let daemon = root.start();
    let mut s = raw(&daemon);
    hello(&mut s);
    let body = br#"{"type":"format_disk"}"#;
    s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
    s.write_all(body).unwrap();
    expect_error_then_close(&mut s, "malformed request");
    still_serves(&daemon);
}

#[test]
fn oversized_frame_is_refused_before_its_body_is_read() {
    let root = TestRoot::new();
    let daemon = root.start();
    let mut s = raw(&daemon);
    hello(&mut s);
    // Only the header is sent: the daemon must not wait for 5 MiB.
    s.write_all(&(5u32 * 1024 * 1024).to_be_bytes()).unwrap();
    expect_error_then_close(&mut s, "bad frame");
    still_serves(&daemon);
}

#[test]
fn wrong_protocol_version_is_refused() {
    let root = TestRoot::new();
    let daemon = root.start();
    let mut s = raw(&daemon);
    write_frame(
        &mut s,
        &Request::Hello {
            protocol: PROTOCOL_VERSION + 41,
        },
    )
    .unwrap();
    expect_error_then_close(&mut s, "protocol version mismatch");
    still_serves(&daemon);
}

#[test]
fn garbage_before_the_handshake_is_refused() {
    let root = TestRoot::new();
    let daemon = root.start();
    // An HTTP request: its first four bytes read as a huge length.
    let mut s = raw(&daemon);
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    expect_error_then_close(&mut s, "bad frame");
    // A well-formed frame that is not a hello.
    let mut s = raw(&daemon);
    write_frame(&mut s, &Request::Status { app: None }).unwrap();
    expect_error_then_close(&mut s, "first request must be hello");
    still_serves(&daemon);
}

#[test]
fn silent_clients_are_dropped_and_do_not_block_others() {
    let root = TestRoot::new();
    let daemon = root.start();
    let mut silent = raw(&daemon);
    // While one client says nothing, others are served at once.
    still_serves(&daemon);
    expect_error_then_close(&mut silent, "no handshake in time");
}

#[test]
fn a_foreign_uid_is_refused() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root: it connects as uid 65534 to check the SO_PEERCRED refusal"
    );
    let root = TestRoot::new();
    let daemon = root.start();
    // Let uid 65534 reach the socket, so that only the peer check stands in its way.
    for dir in [root.dir.path().to_path_buf(), root.root()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let reply = connect_as_nobody(&daemon.socket);
    // The reply is one frame: a 4-byte length, then the JSON of an error.
    assert!(reply.len() > 4, "no reply frame: {reply:?}");
    let resp: Response = serde_json::from_slice(&reply[4..]).unwrap();
    match resp {
        Response::Error { message } => assert!(message.contains("uid 65534"), "{message}"),
        other => panic!("a foreign uid was answered {other:?}"),
    }
    still_serves(&daemon);
}

#[test]
fn logs_follow_streams_until_the_client_hangs_up() {
    let root = TestRoot::new();
    let daemon = root.start();
    let mut s = spec(
        "chatty",
        &root.scratch(),
        vec![process(
            "worker",
            "sh -c 'while true; do echo tick; sleep 0.05; done'".into(),
            piku_proto::Role::Worker,
            1,
        )],
    );
    s.settings.stop_grace_ms = 500;
    daemon.apply(&s);
    let mut client = daemon.client();
    client
        .send(&Request::Logs(piku_proto::LogsRequest {
            app: "chatty".into(),
            process: Some("worker".into()),
            lines: 5,
            follow: true,
        }))
        .unwrap();
    let mut ticks = 0;
    while ticks < 10 {
        match client.recv().unwrap() {
            Response::LogLine { process, line } => {
                assert_eq!(process, "worker.1");
                if line == "tick" {
                    ticks += 1;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(client);
    still_serves(&daemon);
    // Not following: the tail and a final frame.
    let mut client = daemon.client();
    let mut lines = 0;
    let last = client
        .call(
            &Request::Logs(piku_proto::LogsRequest {
                app: "chatty".into(),
                process: None,
                lines: 3,
                follow: false,
            }),
            |_| lines += 1,
        )
        .unwrap();
    assert!(matches!(last, Response::Done { .. }), "{last:?}");
    assert!((1..=3).contains(&lines), "{lines}");
}

/// Connects to `socket` as uid/gid 65534, sends a valid hello and returns every byte the
/// daemon sent before hanging up. The client runs in a forked child that never execs: it
/// drops to uid 65534, talks, writes the reply to its stdout and `_exit`s.
fn connect_as_nobody(socket: &std::path::Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let path = socket.as_os_str().as_bytes().to_vec();
    let hello = serde_json::to_vec(&Request::Hello {
        protocol: PROTOCOL_VERSION,
    })
    .unwrap();
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&hello);
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    assert!(path.len() < addr.sun_path.len(), "socket path too long");
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(&path) {
        *dst = *src as libc::c_char;
    }
    let mut cmd = Command::new("/bin/true"); // never executed: the child exits in pre_exec
    cmd.stdout(std::process::Stdio::piped());
    // SAFETY: the closure runs between fork and exec in the child, where only
    // async-signal-safe calls are allowed. It calls only raw syscalls (setgroups, setgid,
    // setuid, socket, connect, send, write, read, _exit) on memory prepared before the fork
    // (`addr`, `frame`) or on the stack, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                libc::_exit(90);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(91);
            }
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if libc::connect(fd, (&raw const addr).cast(), len) != 0 {
                libc::_exit(92);
            }
            let mut sent = 0;
            while sent < frame.len() {
                let rest = &frame[sent..];
                // MSG_NOSIGNAL: the daemon may already have hung up (no SIGPIPE death).
                let n = libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL);
                if n <= 0 {
                    break; // the daemon may close before reading the hello
                }
                sent += n as usize;
            }
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    break;
                }
                libc::write(1, buf.as_ptr().cast(), n as usize);
            }
            libc::_exit(0);
        });
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "client child failed: {:?}",
        out.status
    );
    out.stdout
}
