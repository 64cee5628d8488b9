//! A size-capped log file with piku's backup naming.
//!
//! Lines are appended whole: before a line that would take the file past `max_bytes`, the file
//! is closed and renamed to its backup name, and a fresh one is created (O_APPEND, mode 0640).
//! A line is never split across two files, and since rotation happens only between writes of
//! this one writer, no line is lost or written twice. Backup names ([`super::Rotation`]):
//! `backups == 1` → `<p>.log.old` (piku / uWSGI `log-backupname`), `backups == N > 1` →
//! `<p>.log.1` (newest) .. `<p>.log.N`, `backups == 0` → the full file is deleted.
//!
//! The file is also reopened when someone else moved or deleted it (e.g. an admin's
//! logrotate), so lines never go on into an unlinked inode.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Rotation, with_suffix};

/// The name of backup number `n` (1 = newest) under `rotation`.
pub(super) fn backup_path(path: &Path, n: u32, backups: u32) -> PathBuf {
    if backups <= 1 {
        with_suffix(path, ".old")
    } else {
        with_suffix(path, &format!(".{n}"))
    }
}

/// An append-only log file that rotates itself by size. Opened lazily on the first write.
pub(super) struct RotatingFile {
    path: PathBuf,
    file: Option<File>,
    /// (device, inode) of `file`, to notice that the path now names another file.
    identity: (u64, u64),
    size: u64,
    /// Batched bytes not yet written.
    pending: Vec<u8>,
}

impl RotatingFile {
    pub(super) fn new(path: PathBuf) -> RotatingFile {
        RotatingFile {
            path,
            file: None,
            identity: (0, 0),
            size: 0,
            pending: Vec::new(),
        }
    }

    /// Appends each of `lines` plus '\n', rotating between lines as `rotation` says.
    /// On error the lines not yet written are discarded; the caller counts them.
    pub(super) fn write_lines<'a>(
        &mut self,
        lines: impl IntoIterator<Item = &'a [u8]>,
        rotation: Rotation,
    ) -> io::Result<()> {
        self.reopen_if_moved();
        self.pending.clear();
        let result = self.append_all(lines, rotation);
        self.pending.clear();
        if self.pending.capacity() > MAX_KEPT_BUFFER {
            self.pending = Vec::new();
        }
        result
    }

    fn append_all<'a>(
        &mut self,
        lines: impl IntoIterator<Item = &'a [u8]>,
        rotation: Rotation,
    ) -> io::Result<()> {
        for line in lines {
            let needed = line.len() as u64 + 1;
            let used = self.current_size()? + self.pending.len() as u64;
            if rotation.max_bytes > 0 && used > 0 && used + needed > rotation.max_bytes {
                self.write_pending()?;
                self.rotate(rotation.backups);
            }
            self.pending.extend_from_slice(line);
            self.pending.push(b'\n');
            if self.pending.len() >= WRITE_CHUNK {
                self.write_pending()?;
            }
        }
        self.write_pending()
    }

    /// Closes the file (the next write reopens it).
    pub(super) fn close(&mut self) {
        self.file = None;
    }

    /// The size of the file on disk, opening it if needed.
    fn current_size(&mut self) -> io::Result<u64> {
        self.open()?;
        Ok(self.size)
    }

    fn open(&mut self) -> io::Result<&mut File> {
        let file = match self.file.take() {
            Some(file) => file,
            None => {
                if let Some(dir) = self.path.parent() {
                    DirBuilder::new().recursive(true).mode(0o750).create(dir)?;
                }
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .open(&self.path)?;
                let meta = file.metadata()?;
                self.identity = (meta.dev(), meta.ino());
                self.size = meta.len();
                file
            }
        };
        Ok(self.file.insert(file))
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let result = self.open().and_then(|file| file.write_all(&pending));
        if result.is_ok() {
            self.size += pending.len() as u64;
        }
        self.pending = pending;
        self.pending.clear();
        result
    }

    /// One stat per batch: if the path no longer names our open file, drop it so `open`
    /// creates a new one.
    fn reopen_if_moved(&mut self) {
        if self.file.is_some() {
            let same = fs::metadata(&self.path)
                .map(|meta| (meta.dev(), meta.ino()) == self.identity)
                .unwrap_or(false);
            if !same {
                self.file = None;
            }
        }
    }

    /// Moves the full file to its backup name. A failure is logged and the file simply keeps
    /// growing (a line is worth more than the size cap); it is retried after another
    /// `max_bytes`.
    fn rotate(&mut self, backups: u32) {
        self.file = None;
        self.size = 0;
        if let Err(err) = shift_backups(&self.path, backups) {
            tracing::warn!(path = %self.path.display(), %err, "log rotation failed; appending to the current file");
        }
    }
}

/// Chunk size of writes within one batch: large enough to amortise the syscall, small enough
/// to keep the buffer modest.
const WRITE_CHUNK: usize = 256 * 1024;
/// After a huge batch, don't keep a huge buffer around for an idle sink.
const MAX_KEPT_BUFFER: usize = 1024 * 1024;

fn shift_backups(path: &Path, backups: u32) -> io::Result<()> {
    match backups {
        0 => ignore_missing(fs::remove_file(path)),
        1 => fs::rename(path, backup_path(path, 1, 1)),
        n => {
            for i in (1..n).rev() {
                ignore_missing(fs::rename(
                    backup_path(path, i, n),
                    backup_path(path, i + 1, n),
                ))?;
            }
            fs::rename(path, backup_path(path, 1, n))
        }
    }
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(file: &mut RotatingFile, lines: &[&str], rotation: Rotation) {
        file.write_lines(lines.iter().map(|l| l.as_bytes()), rotation)
            .unwrap();
    }

    #[test]
    fn rotates_to_old_between_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app/web.1.log");
        let mut file = RotatingFile::new(path.clone());
        let rotation = Rotation {
            max_bytes: 10,
            backups: 1,
        };
        write(&mut file, &["aaaa", "bbbb"], rotation); // 10 bytes: fits exactly
        write(&mut file, &["cc"], rotation); // would be 13 → rotate first
        assert_eq!(
            fs::read_to_string(with_suffix(&path, ".old")).unwrap(),
            "aaaa\nbbbb\n"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "cc\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
    }

    #[test]
    fn a_line_longer_than_the_cap_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let mut file = RotatingFile::new(path.clone());
        let rotation = Rotation {
            max_bytes: 4,
            backups: 1,
        };
        write(&mut file, &["a", "0123456789", "b"], rotation);
        assert_eq!(fs::read_to_string(&path).unwrap(), "b\n");
        assert_eq!(
            fs::read_to_string(with_suffix(&path, ".old")).unwrap(),
            "0123456789\n"
        );
    }

    #[test]
    fn several_backups_shift_numbered_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let mut file = RotatingFile::new(path.clone());
        let rotation = Rotation {
            max_bytes: 2,
            backups: 3,
        };
        write(&mut file, &["1", "2", "3", "4", "5"], rotation);
        assert_eq!(fs::read_to_string(&path).unwrap(), "5\n");
        assert_eq!(fs::read_to_string(with_suffix(&path, ".1")).unwrap(), "4\n");
        assert_eq!(fs::read_to_string(with_suffix(&path, ".2")).unwrap(), "3\n");
        assert_eq!(fs::read_to_string(with_suffix(&path, ".3")).unwrap(), "2\n");
        assert!(!with_suffix(&path, ".4").exists());
        assert!(!with_suffix(&path, ".old").exists());
    }

    #[test]
    fn zero_backups_deletes_and_zero_cap_never_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let mut file = RotatingFile::new(path.clone());
        write(
            &mut file,
            &["1", "2"],
            Rotation {
                max_bytes: 2,
                backups: 0,
            },
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "2\n");
        assert!(!with_suffix(&path, ".old").exists());
        write(
            &mut file,
            &["3", "4", "5"],
            Rotation {
                max_bytes: 0,
                backups: 1,
            },
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "2\n3\n4\n5\n");
    }

    #[test]
    fn appends_to_an_existing_file_and_counts_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        fs::write(&path, "old1\nold2\n").unwrap();
        let mut file = RotatingFile::new(path.clone());
        write(
            &mut file,
            &["new"],
            Rotation {
                max_bytes: 12,
                backups: 1,
            },
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(
            fs::read_to_string(with_suffix(&path, ".old")).unwrap(),
            "old1\nold2\n"
        );
    }

    #[test]
    fn reopens_when_the_file_was_moved_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let mut file = RotatingFile::new(path.clone());
        write(&mut file, &["before"], Rotation::PIKU);
        fs::rename(&path, dir.path().join("elsewhere")).unwrap();
        write(&mut file, &["after"], Rotation::PIKU);
        assert_eq!(fs::read_to_string(&path).unwrap(), "after\n");
        assert_eq!(
            fs::read_to_string(dir.path().join("elsewhere")).unwrap(),
            "before\n"
        );
    }
}
