//! Lines to journald over its native protocol: one datagram per line on
//! `/run/systemd/journal/socket` (or `$PIKU_JOURNAL_SOCKET`).
//!
//! Each datagram carries `MESSAGE`, `PRIORITY` (6 = info for stdout, 3 = err for stderr,
//! 5 = notice for the supervisor's own `[piku]` notes), `SYSLOG_IDENTIFIER=<app>`,
//! `PIKU_APP=<app>` and `PIKU_PROCESS=<process>`. Read them with
//! `journalctl -t <app>` (one app) or `journalctl -t <app> PIKU_PROCESS=web.1` (one process).
//!
//! Hand-written rather than a crate because the protocol is ~40 lines and the maintained
//! crates (`tracing-journald`, `systemd-journal-logger`) send the daemon's *own* tracing/log
//! events with one fixed identifier; here each line is another program's output and needs its
//! own identifier and fields.
//!
//! The socket is non-blocking and never holds up the capture. When journald does not keep
//! up (EAGAIN: its queue is full), entries wait in a backlog of at most `backlog_bytes`
//! ([`BACKLOG_BYTES`] in the daemon), resent in order by the capture thread every [`RETRY`]
//! (each time until the queue is full again: `net.unix.max_dgram_qlen` datagrams, 512 under
//! systemd, so ~50 000 lines/s while behind). When the backlog is full too, further entries
//! are not sent but counted per process until the backlog has drained completely; then
//! journald gets one `[piku] N lines were not sent to journald …` entry per process, exactly
//! where the gap is, and the lines after it. So a
//! slow journald costs a bounded loss **of the journal copy only**: the file has every line,
//! and no app waits for journald. Back-pressure here would gain nothing: journald's own rate
//! limit (`RateLimitBurst=`, 10 000 lines per 30 s per service by default) drops a flood's
//! lines anyway, and a journald busy rotating or flushing its files would stall every app.
//! When journald is gone (no socket, connection refused) lines are counted as not journaled,
//! with a warning now and then.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::lock;

/// systemd's well-known native journal socket.
const SYSTEMD_JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Most bytes of encoded entries kept while journald is behind (≈ 40 000 short lines).
pub(crate) const BACKLOG_BYTES: usize = 4 * 1024 * 1024;

/// How often the backlog is resent while there is one.
pub(super) const RETRY: Duration = Duration::from_millis(10);

/// The socket to use: `$PIKU_JOURNAL_SOCKET` when set (empty = none), else systemd's when it
/// exists.
pub(super) fn default_socket() -> Option<PathBuf> {
    match std::env::var_os("PIKU_JOURNAL_SOCKET") {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(PathBuf::from(SYSTEMD_JOURNAL_SOCKET)).filter(|path| path.exists()),
    }
}

/// A connection-less sender to a journald socket. Shared by the capture thread and the
/// writers of slow sinks.
pub(super) struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
    backlog_bytes: usize,
    state: Mutex<Backlog>,
}

#[derive(Default)]
struct Backlog {
    entries: VecDeque<Vec<u8>>,
    bytes: usize,
    /// The backlog was full: new entries are counted, not queued, until it has drained.
    dropping: bool,
    /// Lines not sent because the backlog was full, per app and process, not yet noted
    /// (nested so that counting a line allocates nothing once its process has a count).
    unsent: BTreeMap<String, BTreeMap<String, u64>>,
    unsent_total: u64,
    /// Sends that failed because journald was gone or refused them.
    failures: u64,
}

impl Journal {
    pub(super) fn connect(path: PathBuf, backlog_bytes: usize) -> io::Result<Journal> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Journal {
            socket,
            path,
            backlog_bytes,
            state: Mutex::default(),
        })
    }

    /// Sends one entry per line of `lines` (each `message` of `template` in turn), or queues
    /// them behind earlier ones; never blocks. `scratch` is a reusable encoding buffer.
    pub(super) fn send_lines<'a>(
        &self,
        template: &JournalEntry<'_>,
        lines: impl Iterator<Item = &'a str>,
        scratch: &mut Vec<u8>,
    ) {
        let mut state = lock(&self.state);
        let mut lines = lines.peekable();
        while let Some(line) = lines.peek() {
            if state.dropping {
                // Counted, not encoded: a flood costs journald's share of the CPU only once.
                let rest = lines.count() as u64;
                self.count_unsent(&mut state, template, rest);
                return;
            }
            scratch.clear();
            JournalEntry {
                message: line.as_bytes(),
                ..*template
            }
            .encode(scratch);
            if state.entries.is_empty() {
                match self.socket.send_to(scratch, &self.path) {
                    Ok(_) => {
                        lines.next();
                        continue;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => {
                        self.failed(&mut state, &err);
                        lines.next();
                        continue;
                    }
                }
            }
            if state.bytes + scratch.len() <= self.backlog_bytes {
                state.bytes += scratch.len();
                state.entries.push_back(scratch.clone());
                lines.next();
            } else {
                state.dropping = true;
            }
        }
    }

    fn count_unsent(&self, state: &mut Backlog, entry: &JournalEntry<'_>, lines: u64) {
        let processes = match state.unsent.get_mut(entry.app) {
            Some(processes) => processes,
            None => state.unsent.entry(entry.app.to_owned()).or_default(),
        };
        match processes.get_mut(entry.process) {
            Some(count) => *count += lines,
            None => {
                processes.insert(entry.process.to_owned(), lines);
            }
        }
        let before = state.unsent_total;
        state.unsent_total += lines;
        // The first time and then at every doubling: visible, without a flood of warnings.
        if before == 0 || before.leading_zeros() != state.unsent_total.leading_zeros() {
            tracing::warn!(path = %self.path.display(), lines = state.unsent_total, "journald does not keep up: lines not sent to it (the log files have them)");
        }
    }

    /// Whether [`Journal::retry`] has work.
    pub(super) fn behind(&self) -> bool {
        let state = lock(&self.state);
        !state.entries.is_empty() || state.dropping
    }

    /// Resends the backlog in order until journald pushes back again; once it is empty, says
    /// what could not be sent.
    pub(super) fn retry(&self) {
        let mut state = lock(&self.state);
        while let Some(entry) = state.entries.front() {
            match self.socket.send_to(entry, &self.path) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => self.failed(&mut state, &err),
            }
            if let Some(sent) = state.entries.pop_front() {
                state.bytes -= sent.len();
            }
        }
        let mut scratch = Vec::new();
        while let Some(mut entry) = state.unsent.first_entry() {
            let Some((process, lines)) = entry.get_mut().pop_first() else {
                entry.remove();
                continue;
            };
            let message = format!(
                "[piku] {lines} lines were not sent to journald (it did not keep up); the log file has them"
            );
            scratch.clear();
            JournalEntry {
                app: entry.key(),
                process: &process,
                priority: NOTE_PRIORITY,
                message: message.as_bytes(),
            }
            .encode(&mut scratch);
            match self.socket.send_to(&scratch, &self.path) {
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    entry.get_mut().insert(process, lines);
                    return;
                }
                Err(err) => self.failed(&mut state, &err),
            }
        }
        state.dropping = false;
    }

    fn failed(&self, state: &mut Backlog, err: &io::Error) {
        state.failures += 1;
        // The first failure and then one in 10 000: visible, but no flood when journald is gone.
        if state.failures % 10_000 == 1 {
            tracing::warn!(path = %self.path.display(), %err, failures = state.failures, "lines not sent to journald");
        }
    }
}

/// The priority of the supervisor's own `[piku]` lines (notice).
pub(super) const NOTE_PRIORITY: u8 = 5;

/// The fields of one journal entry.
#[derive(Clone, Copy)]
pub(super) struct JournalEntry<'a> {
    pub app: &'a str,
    pub process: &'a str,
    pub priority: u8,
    pub message: &'a [u8],
}

impl JournalEntry<'_> {
    /// The native wire format: `KEY=value\n`, or for a value containing '\n'
    /// `KEY\n<u64 little-endian length><value>\n`.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        field(out, "MESSAGE", self.message);
        field(out, "PRIORITY", &[b'0' + self.priority.min(7)]);
        field(out, "SYSLOG_IDENTIFIER", self.app.as_bytes());
        field(out, "PIKU_APP", self.app.as_bytes());
        field(out, "PIKU_PROCESS", self.process.as_bytes());
    }
}

fn field(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        out.push(b'=');
    }
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_fields_use_key_equals_value() {
        let mut out = Vec::new();
        JournalEntry {
            app: "shop",
            process: "web.1",
            priority: 6,
            message: b"hello",
        }
        .encode(&mut out);
        assert_eq!(
            out,
            b"MESSAGE=hello\nPRIORITY=6\nSYSLOG_IDENTIFIER=shop\nPIKU_APP=shop\nPIKU_PROCESS=web.1\n"
        );
    }

    #[test]
    fn a_value_with_a_newline_is_length_prefixed() {
        let mut out = Vec::new();
        field(&mut out, "MESSAGE", b"a\nb");
        let mut expected = b"MESSAGE\n".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"a\nb\n");
        assert_eq!(out, expected);
    }

    #[test]
    fn a_missing_socket_is_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::connect(dir.path().join("nobody-listens"), BACKLOG_BYTES).unwrap();
        let entry = JournalEntry {
            app: "a",
            process: "web.1",
            priority: 6,
            message: b"x",
        };
        journal.send_lines(&entry, ["x", "y"].into_iter(), &mut Vec::new());
        assert_eq!(lock(&journal.state).failures, 2);
        assert!(!journal.behind());
    }

    fn entry(n: usize) -> String {
        format!("line {n}")
    }

    fn send_line(journal: &Journal, message: &str) {
        let entry = JournalEntry {
            app: "shop",
            process: "worker.1",
            priority: 6,
            message: &[],
        };
        journal.send_lines(&entry, std::iter::once(message), &mut Vec::new());
    }

    fn message_of(datagram: &[u8]) -> String {
        let text = String::from_utf8_lossy(datagram);
        text.lines()
            .find_map(|l| l.strip_prefix("MESSAGE="))
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn a_slow_journald_gets_the_backlog_in_order_then_a_note_for_what_did_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.sock");
        let journald = UnixDatagram::bind(&path).unwrap();
        journald.set_nonblocking(true).unwrap();
        let journal = Journal::connect(path, BACKLOG_BYTES).unwrap();

        // journald reads nothing: its queue fills, then the backlog, then lines are counted.
        let total = 200_000;
        for n in 0..total {
            send_line(&journal, &entry(n));
        }
        assert!(journal.behind());
        let unsent = lock(&journal.state).unsent_total;
        assert!(unsent > 0, "a 4 MiB backlog cannot hold 200 000 lines");
        assert!(lock(&journal.state).bytes <= BACKLOG_BYTES);

        // journald catches up: everything it gets is in order, without a gap until the
        // point where the backlog was full, then the note.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        for _ in 0..10_000 {
            journal.retry();
            loop {
                match journald.recv(&mut buf) {
                    Ok(n) => got.push(message_of(&buf[..n])),
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => panic!("{err}"),
                }
            }
            if !journal.behind() {
                break;
            }
        }
        assert!(!journal.behind());
        let note = got.pop().unwrap();
        assert_eq!(
            note,
            format!(
                "[piku] {unsent} lines were not sent to journald (it did not keep up); the log file has them"
            )
        );
        let expected: Vec<String> = (0..got.len()).map(entry).collect();
        assert!(got == expected, "the journal copy is a gap-free prefix");
        assert_eq!(got.len() as u64 + unsent, total as u64);
    }
}
