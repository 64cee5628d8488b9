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
use std::time::{Duration, Instant};

use super::{Rotation, with_suffix};

/// The name of backup number `n` (1 = newest) when `backups` are kept.
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
    /// After a failed rotation, no new attempt (and warning) before this time.
    rotation_blocked_until: Option<Instant>,
}

/// How long a failed rotation waits before it is tried again.
const ROTATION_RETRY: Duration = Duration::from_secs(10);

impl RotatingFile {
    pub(super) fn new(path: PathBuf) -> RotatingFile {
        RotatingFile {
            path,
            file: None,
            identity: (0, 0),
            size: 0,
            pending: Vec::new(),
            rotation_blocked_until: None,
        }
    }

    /// Appends `chunks` (each made of whole lines ending in '\n'), rotating between lines as
    /// `rotation` says. On error the rest of the batch is discarded; the caller counts it.
    pub(super) fn write_chunks<'a>(
        &mut self,
        chunks: impl IntoIterator<Item = &'a [u8]>,
        rotation: Rotation,
    ) -> io::Result<()> {
        self.reopen_if_moved();
        self.pending.clear();
        let result = chunks
            .into_iter()
            .try_for_each(|chunk| self.append(chunk, rotation))
            .and_then(|()| self.write_pending());
        self.pending.clear();
        // A flood's buffer is not kept for the quiet times after it.
        if self.pending.capacity() > KEEP_BUFFER {
            self.pending = Vec::new();
        }
        result
    }

    /// Appends whole lines to the pending buffer, rotating before the first line that would
    /// take the file past `max_bytes`.
    fn append(&mut self, mut rest: &[u8], rotation: Rotation) -> io::Result<()> {
        let blocked = self
            .rotation_blocked_until
            .is_some_and(|until| Instant::now() < until);
        let max = if blocked { 0 } else { rotation.max_bytes };
        while !rest.is_empty() {
            let used = self.current_size()? + self.pending.len() as u64;
            if max == 0 || used + rest.len() as u64 <= max {
                self.pending.extend_from_slice(rest);
                break;
            }
            // The whole lines that still fit, then the file is full.
            let room = (max.saturating_sub(used) as usize).min(rest.len());
            let fit = rest[..room]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            self.pending.extend_from_slice(&rest[..fit]);
            rest = &rest[fit..];
            if used + fit as u64 > 0 {
                self.write_pending()?;
                if !self.rotate(rotation.backups) {
                    // Keep every line rather than the cap; try again later.
                    self.rotation_blocked_until = Some(Instant::now() + ROTATION_RETRY);
                    self.pending.extend_from_slice(rest);
                    break;
                }
            } else {
                // An empty file and a line longer than the cap: it gets the file to itself.
                let end = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
                self.pending.extend_from_slice(&rest[..end]);
                rest = &rest[end..];
            }
            if self.pending.len() >= WRITE_CHUNK {
                self.write_pending()?;
            }
        }
        if self.pending.len() >= WRITE_CHUNK {
            self.write_pending()?;
        }
        Ok(())
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
                // O_NOFOLLOW: a symlink planted in the app's log directory is an error, never
                // a way to make the daemon append to a file outside PIKU_ROOT.
                let file = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o640)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
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

    /// Moves the full file to its backup name; the next write creates a new one. On failure
    /// (logged) the file stays and keeps growing for `ROTATION_RETRY`: a line is worth more
    /// than the size cap.
    fn rotate(&mut self, backups: u32) -> bool {
        self.file = None;
        match shift_backups(&self.path, backups) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(path = %self.path.display(), %err, "log rotation failed; appending to the current file");
                false
            }
        }
    }
}

/// Chunk size of writes within one batch: large enough to amortise the syscall, small enough
/// to keep the buffer modest.
const WRITE_CHUNK: usize = 256 * 1024;

/// The largest write buffer kept between batches.
const KEEP_BUFFER: usize = 16 * 1024;

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

    /// Writes each of `lines` as its own chunk.
    fn write(file: &mut RotatingFile, lines: &[&str], rotation: Rotation) {
        let texts: Vec<String> = lines.iter().map(|l| format!("{l}\n")).collect();
        file.write_chunks(texts.iter().map(|t| t.as_bytes()), rotation)
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
    fn a_chunk_of_many_lines_rotates_between_its_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        let mut file = RotatingFile::new(path.clone());
        let rotation = Rotation {
            max_bytes: 4,
            backups: 3,
        };
        file.write_chunks([b"1\n2\n3\n".as_slice(), b"4\n5\n"], rotation)
            .unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "5\n");
        assert_eq!(
            fs::read_to_string(with_suffix(&path, ".1")).unwrap(),
            "3\n4\n"
        );
        assert_eq!(
            fs::read_to_string(with_suffix(&path, ".2")).unwrap(),
            "1\n2\n"
        );
    }

    #[test]
    fn a_failed_rotation_keeps_the_lines_in_the_current_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.log");
        // A directory where the backup should go makes the rename fail.
        fs::create_dir(with_suffix(&path, ".old")).unwrap();
        fs::write(with_suffix(&path, ".old").join("x"), "").unwrap();
        let mut file = RotatingFile::new(path.clone());
        let rotation = Rotation {
            max_bytes: 4,
            backups: 1,
        };
        write(&mut file, &["1", "2", "3", "4"], rotation);
        write(&mut file, &["5"], rotation);
        assert_eq!(fs::read_to_string(&path).unwrap(), "1\n2\n3\n4\n5\n");
        assert!(file.rotation_blocked_until.is_some());

        // Once the obstacle is gone and the pause is over, rotation resumes.
        fs::remove_dir_all(with_suffix(&path, ".old")).unwrap();
        file.rotation_blocked_until = Some(Instant::now());
        write(&mut file, &["6"], rotation);
        assert_eq!(fs::read_to_string(&path).unwrap(), "6\n");
        assert_eq!(
            fs::read_to_string(with_suffix(&path, ".old")).unwrap(),
            "1\n2\n3\n4\n5\n"
        );
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
