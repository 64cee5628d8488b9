//! How piku writes a file that somebody reads: the one home of that rule, used by the daemon,
//! the CLI and the nginx crate alike.
//!
//! [`write_atomic`] replaces a file so that a reader, or a crash at any instant, sees either the
//! old content or the new, never a mix: the bytes go to a fresh temporary file beside the target
//! (created with `O_EXCL` under an unpredictable name, so a planted file or symlink is never
//! written through), which gets its mode, is fsynced and renamed over the target; then the
//! directory is fsynced, so the rename itself survives a power cut. A symlink planted at the
//! target is replaced, not followed. Every write pays the two fsyncs: piku writes these files
//! once per deploy or request, never per log line, and one rule is worth more than the
//! milliseconds.

use std::fs::{File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Owner only: secrets (`ENV`, `LIVE_ENV`), the daemon's state, release records.
pub const MODE_PRIVATE: u32 = 0o600;
/// Owner writes, group reads: files nginx (in the group) must read, and logs.
pub const MODE_GROUP_READ: u32 = 0o640;
/// Readable by anyone: only what is public anyway.
pub const MODE_PUBLIC: u32 = 0o644;

/// Replaces `path` with `bytes`, mode `mode` exactly (the umask does not apply).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        Some(_) => Path::new("."),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no parent directory", path.display()),
            ));
        }
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)?;
    // Set after creation: the mode given at open(2) is cut by the umask.
    temp.as_file()
        .set_permissions(Permissions::from_mode(mode))?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    // On failure the temporary file is removed when `temp` (inside the error) drops.
    temp.persist(path).map_err(|e| e.error)?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_replace_the_content_with_the_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", MODE_PUBLIC).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o644);
        write_atomic(&path, b"two", MODE_PRIVATE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        // Nothing left beside it.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_planted_symlink_is_replaced_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("authorized_keys");
        fs::write(&victim, b"keep me").unwrap();
        let path = dir.path().join("app.conf");
        symlink(&victim, &path).unwrap();
        write_atomic(&path, b"config", MODE_GROUP_READ).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&path).unwrap(), b"config");
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join("x");
        assert!(write_atomic(&path, b"x", MODE_PRIVATE).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
