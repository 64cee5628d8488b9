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
//!
//! Files appended to in place (logs, build logs, locks) are opened with [`open_nofollow`]
//! (`O_NOFOLLOW`: a symlink planted there is an error, never written through), and private
//! directories are made with [`create_dir_mode`], which refuses a symlink in their place.

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Owner only: secrets (`ENV`, `LIVE_ENV`), the daemon's state, release records.
pub const MODE_PRIVATE: u32 = 0o600;
/// Owner writes, group reads: files nginx (in the group) must read, and logs.
pub const MODE_GROUP_READ: u32 = 0o640;
/// Readable by anyone: only what is public anyway.
pub const MODE_PUBLIC: u32 = 0o644;

/// Owner only, for directories: `envs/<app>/`, `supervisor/`.
pub const MODE_PRIVATE_DIR: u32 = 0o700;

/// How [`open_nofollow`] opens a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFor {
    /// Created if missing, written at the end (logs).
    Append,
    /// Created if missing, never truncated (locks: a second daemon must not empty the
    /// running one's lock file).
    Lock,
}

/// Opens `path` without following a symlink at it (`O_NOFOLLOW`), creating it if missing;
/// the file gets mode `mode` exactly. Anything but a regular file there is an error.
pub fn open_nofollow(path: &Path, how: OpenFor, mode: u32) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).mode(mode);
    match how {
        OpenFor::Append => options.append(true),
        OpenFor::Lock => options.read(true).write(true),
    };
    // O_NONBLOCK: a FIFO planted at the path must not hang the open; it is refused below.
    options.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
    let file = options.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is a symlink; refusing to follow it", path.display()),
            )
        } else {
            e
        }
    })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    clear_nonblock(&file)?;
    // fchmod on the open file: the umask cut the creation mode, and an older file may be wider.
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

fn clear_nonblock(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open for the life of `file`, borrowed here; F_GETFL/F_SETFL only read
    // and set the status flags of that descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates `dir` (and missing parents, as `mkdir -p`) with mode `mode` exactly; an existing
/// directory gets the mode too. A symlink or another file at `dir` is an error: the mode is
/// set through a descriptor opened with `O_NOFOLLOW`, never on what a planted link names.
pub fn create_dir_mode(dir: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    match DirBuilder::new().mode(mode).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory (a symlink?)", dir.display()),
            ),
            _ => e,
        })?;
    handle.set_permissions(Permissions::from_mode(mode))
}

/// The bytes of `rel` inside the directory `base` (a pushed checkout), or `None` when there
/// is no such file. Symlinks are resolved, and the file must be a regular file inside `base`
/// once they are: a committed symlink to `/etc/passwd` or to another app's `ENV` is an error
/// that names the file, never its content.
pub fn read_inside(base: &Path, rel: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let base = base.canonicalize()?;
    let resolved = match base.join(rel).canonicalize() {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if !resolved.starts_with(&base) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' leads outside the checkout", rel.display()),
        ));
    }
    // Resolved already: a symlink swapped in since is refused, and a FIFO cannot block us.
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&resolved)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{}' is not a regular file", rel.display()),
        ));
    }
    clear_nonblock(&file)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// Replaces `path` with `bytes`, mode `mode` exactly (the umask does not apply), durably:
/// synced to disk before and after the rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode, true)
}

/// Replaces `path` with `bytes` like [`write_atomic`], but without syncing to disk: a reader
/// sees the old content or the new one, whoever dies meanwhile, but a power cut may leave
/// either, or an empty file. For files that only matter while the machine stays up (what
/// runs now), where two syncs on every change would be the writer's main cost.
pub fn replace_unsynced(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace(path, bytes, mode, false)
}

fn replace(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> io::Result<()> {
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
    if durable {
        temp.as_file().sync_all()?;
    }
    // On failure the temporary file is removed when `temp` (inside the error) drops.
    temp.persist(path).map_err(|e| e.error)?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
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
    fn an_unsynced_replace_also_replaces_with_the_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("running.json");
        replace_unsynced(&path, b"one", MODE_PUBLIC).unwrap();
        replace_unsynced(&path, b"two", MODE_PRIVATE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
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
    fn open_nofollow_refuses_a_planted_symlink_and_sets_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("authorized_keys");
        fs::write(&victim, b"keep me").unwrap();
        let link = dir.path().join("web.1.log");
        symlink(&victim, &link).unwrap();
        let err = open_nofollow(&link, OpenFor::Append, MODE_GROUP_READ).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"keep me");

        let log = dir.path().join("build.log");
        fs::write(&log, b"old\n").unwrap();
        fs::set_permissions(&log, Permissions::from_mode(0o644)).unwrap();
        let mut file = open_nofollow(&log, OpenFor::Append, MODE_GROUP_READ).unwrap();
        file.write_all(b"new\n").unwrap();
        assert_eq!(fs::read(&log).unwrap(), b"old\nnew\n");
        assert_eq!(mode(&log), 0o640);
    }

    #[test]
    fn a_lock_file_is_not_truncated_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("daemon.lock");
        fs::write(&lock, b"12345\n").unwrap();
        open_nofollow(&lock, OpenFor::Lock, MODE_PRIVATE).unwrap();
        assert_eq!(fs::read(&lock).unwrap(), b"12345\n");
    }

    #[test]
    fn a_fifo_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("web.1.log");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        // O_WRONLY on a FIFO with no reader fails with ENXIO under O_NONBLOCK instead of waiting.
        assert!(open_nofollow(&fifo, OpenFor::Append, MODE_GROUP_READ).is_err());
    }

    #[test]
    fn private_dirs_are_0700_even_when_they_existed_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("envs").join("app");
        create_dir_mode(&fresh, MODE_PRIVATE_DIR).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let old = dir.path().join("supervisor");
        fs::create_dir(&old).unwrap();
        fs::set_permissions(&old, Permissions::from_mode(0o755)).unwrap();
        create_dir_mode(&old, MODE_PRIVATE_DIR).unwrap();
        assert_eq!(mode(&old), 0o700);

        let target = dir.path().join("elsewhere");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("envs").join("other");
        symlink(&target, &link).unwrap();
        assert!(create_dir_mode(&link, MODE_PRIVATE_DIR).is_err());
        assert_eq!(mode(&target), 0o755);
    }

    #[test]
    fn repo_files_are_read_only_inside_the_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let checkout = dir.path().join("src");
        fs::create_dir_all(checkout.join("conf")).unwrap();
        fs::write(checkout.join("Procfile.prod"), b"web: run\n").unwrap();
        symlink("Procfile.prod", checkout.join("Procfile")).unwrap();
        let secret = dir.path().join("ENV");
        fs::write(&secret, b"SECRET=1\n").unwrap();
        symlink(&secret, checkout.join("ENV")).unwrap();
        symlink("/", checkout.join("root")).unwrap();

        let read = |rel: &str| read_inside(&checkout, Path::new(rel));
        assert_eq!(read("Procfile").unwrap().unwrap(), b"web: run\n");
        assert!(read("missing").unwrap().is_none());
        let err = read("ENV").unwrap_err().to_string();
        assert_eq!(err, "'ENV' leads outside the checkout");
        assert!(read("root/etc/passwd").is_err());
        assert!(read("../ENV").is_err());
        assert_eq!(
            read("conf").unwrap_err().to_string(),
            "'conf' is not a regular file"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join("x");
        assert!(write_atomic(&path, b"x", MODE_PRIVATE).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
