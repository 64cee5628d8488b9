//! How the build side reads and writes its own files: every file it replaces is written with
//! [`piku_fs::write_atomic`] (temp file, exact mode, fsync, rename, never through a planted
//! symlink), and a file that may be absent reads as `None`.

use std::io;
use std::path::Path;

use crate::error::{DeployError, IoContext};

/// Replaces `path` with `bytes`, mode `mode` exactly (see [`piku_fs::write_atomic`]).
pub fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DeployError> {
    piku_fs::write_atomic(path, bytes, mode).cannot("write", path)
}

/// The file's text, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, DeployError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).cannot("read", path),
    }
}

/// Creates `dir` and its parents if they are missing.
pub fn create_dir(dir: &Path) -> Result<(), DeployError> {
    std::fs::create_dir_all(dir).cannot("create", dir)
}

/// Creates `dir` (parents as needed) as a private directory, 0700 even if it existed; a
/// symlink in its place is an error (see [`piku_fs::create_dir_mode`]).
pub fn create_private_dir(dir: &Path) -> Result<(), DeployError> {
    piku_fs::create_dir_mode(dir, piku_fs::MODE_PRIVATE_DIR).cannot("create", dir)
}

/// Removes a directory tree; one that is already gone is fine.
pub fn remove_dir(dir: &Path) -> Result<(), DeployError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).cannot("remove", dir),
    }
}
