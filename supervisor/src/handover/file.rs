//! `$PIKU_ROOT/supervisor/handover.json`: what one image of the daemon leaves the next across
//! an `execve` of the same process (mode 0600, read once and removed at once).
//!
//! It names file descriptors by number: they stay open across `execve` because the old image
//! cleared their close-on-exec flag. A file whose `pid` is not ours is from another process
//! (a daemon that died mid-upgrade): its numbers mean nothing here and it is ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::instance::machine::History;

/// Bumped whenever the file's meaning changes: an image refuses to hand over to a binary that
/// answers another number to `--handover-version`.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    pub version: u32,
    /// The daemon's pid, which `execve` keeps.
    pub pid: u32,
    /// When SIGUSR2 arrived (ns since the epoch), for the new image's "upgraded in" line.
    pub signalled_at_ns: u128,
    /// The control socket's listening socket.
    pub control_socket: i32,
    pub fronts: Vec<FrontFds>,
    pub instances: Vec<Adoptee>,
    /// Instances with no process, waiting to restart.
    #[serde(default)]
    pub waiting: Vec<Waiting>,
}

/// An instance the old image was waiting to restart (its back-off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Waiting {
    pub key: String,
    pub history: History,
    pub due_in_ms: u64,
}

/// The listening sockets of one app's front.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrontFds {
    pub app: String,
    pub unix: Option<UnixFd>,
    pub tcp: Option<TcpFd>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixFd {
    pub path: PathBuf,
    pub fd: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpFd {
    pub bind: String,
    pub port: u16,
    pub fd: i32,
}

/// A running process the next image takes over: its instance (by running-table key), its
/// history and the read ends of its pipes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adoptee {
    /// `app/web.1@4001` (`InstanceConfig::running_key`).
    pub key: String,
    pub pid: u32,
    /// With `pid`, names the process (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    pub history: History,
    /// How long it had been running.
    pub up_ms: u64,
    pub stdout: Option<PipeFd>,
    pub stderr: Option<PipeFd>,
}

/// A pipe's read end and the start of a line read from it but not finished yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipeFd {
    pub fd: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot parse {path}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is version {found}, this binary reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

impl Handover {
    /// Every file descriptor the file names.
    pub fn fds(&self) -> Vec<i32> {
        let mut fds = vec![self.control_socket];
        for front in &self.fronts {
            fds.extend(front.unix.as_ref().map(|u| u.fd));
            fds.extend(front.tcp.as_ref().map(|t| t.fd));
        }
        for adoptee in &self.instances {
            fds.extend(adoptee.stdout.as_ref().map(|p| p.fd));
            fds.extend(adoptee.stderr.as_ref().map(|p| p.fd));
        }
        fds
    }
}

/// Writes the file, 0600 from its first byte (it names the daemon's sockets).
pub fn write(path: &Path, handover: &Handover) -> Result<(), FileError> {
    let bytes = serde_json::to_vec(handover).map_err(|source| FileError::Write {
        path: path.to_path_buf(),
        source: std::io::Error::other(source),
    })?;
    piku_fs::write_atomic(path, &bytes, piku_fs::MODE_PRIVATE).map_err(|source| FileError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads and removes the file. `Ok(None)`: there is none, or it was left for another process
/// (its `pid` is not `pid`).
pub fn take(path: &Path, pid: u32) -> Result<Option<Handover>, FileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FileError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    // Read once: a crash later in the start must not make a later daemon trust it.
    let _ = std::fs::remove_file(path);
    let handover: Handover = serde_json::from_slice(&bytes).map_err(|source| FileError::Parse {
        path: path.to_path_buf(),
        source,
    })?;
    if handover.version != VERSION {
        return Err(FileError::Version {
            path: path.to_path_buf(),
            found: handover.version,
        });
    }
    if handover.pid != pid {
        tracing::warn!(
            "ignoring {}: left by pid {}, not by this process",
            path.display(),
            handover.pid
        );
        return Ok(None);
    }
    Ok(Some(handover))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn sample(pid: u32) -> Handover {
        Handover {
            version: VERSION,
            pid,
            signalled_at_ns: 1,
            control_socket: 3,
            fronts: vec![FrontFds {
                app: "a".into(),
                unix: Some(UnixFd {
                    path: "/r/nginx/a.sock".into(),
                    fd: 4,
                }),
                tcp: Some(TcpFd {
                    bind: "127.0.0.1".into(),
                    port: 5000,
                    fd: 5,
                }),
            }],
            instances: vec![Adoptee {
                key: "a/web.1@4001".into(),
                pid: 77,
                start_ticks: 12,
                history: History {
                    restarts: 2,
                    exits: 2,
                    last_exit: Some("exit 1".into()),
                    failed_starts: 0,
                },
                up_ms: 1500,
                stdout: Some(PipeFd {
                    fd: 6,
                    partial: b"half a li".to_vec(),
                }),
                stderr: Some(PipeFd {
                    fd: 7,
                    partial: Vec::new(),
                }),
            }],
            waiting: vec![Waiting {
                key: "a/worker.1".into(),
                history: History {
                    restarts: 7,
                    exits: 8,
                    last_exit: Some("exit 3".into()),
                    failed_starts: 7,
                },
                due_in_ms: 1600,
            }],
        }
    }

    #[test]
    fn what_is_written_is_read_back_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.json");
        write(&path, &sample(42)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(take(&path, 42).unwrap(), Some(sample(42)));
        assert!(!path.exists(), "read once");
        assert_eq!(take(&path, 42).unwrap(), None);
    }

    #[test]
    fn another_process_file_is_ignored_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.json");
        write(&path, &sample(42)).unwrap();
        assert_eq!(take(&path, 43).unwrap(), None);
        assert!(!path.exists());
    }

    #[test]
    fn another_version_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("handover.json");
        let mut old = sample(42);
        old.version = VERSION + 1;
        write(&path, &old).unwrap();
        assert!(matches!(take(&path, 42), Err(FileError::Version { .. })));
        std::fs::write(&path, b"{").unwrap();
        assert!(matches!(take(&path, 42), Err(FileError::Parse { .. })));
    }

    #[test]
    fn every_fd_is_listed() {
        assert_eq!(sample(1).fds(), vec![3, 4, 5, 6, 7]);
    }
}
