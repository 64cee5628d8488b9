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
//! The socket is non-blocking: when journald is gone, slow (EAGAIN) or refuses a datagram, the
//! line is counted as not journaled and capture goes on; the file copy is the reference.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// systemd's well-known native journal socket.
const SYSTEMD_JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// The socket to use: `$PIKU_JOURNAL_SOCKET` when set (empty = none), else systemd's when it
/// exists.
pub(super) fn default_socket() -> Option<PathBuf> {
    match std::env::var_os("PIKU_JOURNAL_SOCKET") {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(PathBuf::from(path)),
        None => Some(PathBuf::from(SYSTEMD_JOURNAL_SOCKET)).filter(|path| path.exists()),
    }
}

/// A connection-less sender to a journald socket. Shared by every sink (send is `&self`).
pub(super) struct Journal {
    socket: UnixDatagram,
    path: PathBuf,
    failures: AtomicU64,
}

impl Journal {
    pub(super) fn connect(path: PathBuf) -> io::Result<Journal> {
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Journal {
            socket,
            path,
            failures: AtomicU64::new(0),
        })
    }

    /// Sends one entry; never blocks. `scratch` is a reusable encoding buffer.
    pub(super) fn send(&self, entry: &JournalEntry<'_>, scratch: &mut Vec<u8>) {
        scratch.clear();
        entry.encode(scratch);
        if let Err(err) = self.socket.send_to(scratch, &self.path) {
            let failures = self.failures.fetch_add(1, Ordering::Relaxed);
            // The first failure and then one in 10 000: visible, but no flood when journald is gone.
            if failures.is_multiple_of(10_000) {
                tracing::warn!(path = %self.path.display(), %err, failures = failures + 1, "lines not sent to journald");
            }
        }
    }
}

/// The fields of one journal entry.
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
        let journal = Journal::connect(dir.path().join("nobody-listens")).unwrap();
        let entry = JournalEntry {
            app: "a",
            process: "web.1",
            priority: 6,
            message: b"x",
        };
        let mut scratch = Vec::new();
        journal.send(&entry, &mut scratch);
        journal.send(&entry, &mut scratch);
        assert_eq!(journal.failures.load(Ordering::Relaxed), 2);
    }
}
