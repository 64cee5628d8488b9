//! The account the server side runs as.
//!
//! In production sshd's forced command, the supervisor, every build and every app process run
//! as one unprivileged `piku` user whose home nginx's `www-data` can traverse (README: `adduser
//! --ingroup www-data piku`, home 0750). When the tests run as root (CI), running the server
//! side as root would hide every permission problem, so the harness runs it as
//! [`NAME`], made the same way: primary group `www-data`, home 0750, a usable shell, no
//! password (not locked: sshd without PAM refuses a locked account). Run as anyone else, the
//! tests keep using the current user, who cannot switch.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use nix::unistd::{Gid, Uid, User};

use crate::binaries::Binaries;
use crate::process::run_with_timeout;

/// The dedicated account's name.
pub const NAME: &str = "piku-e2e";

/// Who runs the server side of a test.
#[derive(Debug, Clone)]
pub struct ServerUser {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    pub home: PathBuf,
    /// True when it is [`NAME`], a different account from the test's: files the server side
    /// must own are handed over and its processes are started with its uid and gid.
    pub switched: bool,
}

/// The account (created on first use when root); panics with the reason if it cannot be had.
pub fn server_user() -> &'static ServerUser {
    static USER: OnceLock<ServerUser> = OnceLock::new();
    USER.get_or_init(|| match resolve() {
        Ok(user) => user,
        Err(e) => panic!("e2e harness: no account for the server side: {e}"),
    })
}

fn resolve() -> Result<ServerUser, String> {
    let me = Uid::effective();
    if !me.is_root() {
        let user = User::from_uid(me)
            .ok()
            .flatten()
            .ok_or_else(|| format!("uid {me} has no passwd entry"))?;
        return Ok(ServerUser {
            name: user.name,
            uid: user.uid,
            gid: user.gid,
            home: user.dir,
            switched: false,
        });
    }
    if lookup()?.is_none() {
        create()?;
    }
    let user = lookup()?.ok_or_else(|| format!("useradd did not create '{NAME}'"))?;
    // adduser and useradd leave the home 0700 or 0755; production makes it 0750 so that
    // www-data (the group) reaches the sockets and static files and nobody else does.
    set_mode(&user.dir, 0o750)?;
    Ok(ServerUser {
        name: user.name,
        uid: user.uid,
        gid: user.gid,
        home: user.dir,
        switched: true,
    })
}

fn lookup() -> Result<Option<User>, String> {
    User::from_name(NAME).map_err(|e| format!("cannot look up '{NAME}': {e}"))
}

fn create() -> Result<(), String> {
    let mut cmd = Command::new("useradd");
    // `-p '*'`: no password but not locked ('!'), as adduser --disabled-password leaves it.
    cmd.args([
        "--create-home",
        "--gid",
        "www-data",
        "--shell",
        "/bin/sh",
        "--comment",
        "piku e2e server side",
        "-p",
        "*",
        NAME,
    ]);
    let run = run_with_timeout(cmd, None, Duration::from_secs(60));
    // Another test process may have created it first (useradd exits 9): that is fine.
    if run.success() || lookup()?.is_some() {
        return Ok(());
    }
    Err(format!("useradd {NAME} failed: {run}"))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o} {}: {e}", path.display()))
}

impl ServerUser {
    /// `cmd` set to run as this account (a no-op when it is the test's own).
    pub fn apply<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if self.switched {
            // std drops the supplementary groups when root switches uid; the account needs
            // none beyond its primary group, www-data, as in production.
            cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
        }
        cmd
    }

    /// Hands `path` and everything below it to this account (a no-op when not switched).
    pub fn own(&self, path: &Path) {
        if !self.switched {
            return;
        }
        let mut stack = vec![path.to_path_buf()];
        while let Some(p) = stack.pop() {
            if let Err(e) =
                std::os::unix::fs::lchown(&p, Some(self.uid.as_raw()), Some(self.gid.as_raw()))
            {
                panic!("chown {} to {}: {e}", p.display(), self.name);
            }
            let is_dir = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
            if is_dir && let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }

    /// `bins`, or copies of them in this account's home when it cannot reach them (a
    /// checkout under root's 0700 home): the forced command and the supervisor run as it.
    /// The copies are keyed by size and modification time, so test processes share them.
    pub fn reachable(&self, bins: &'static Binaries) -> &'static Binaries {
        static COPIES: OnceLock<Binaries> = OnceLock::new();
        if self.can_execute(&bins.piku) && self.can_execute(&bins.supervisor) {
            return bins;
        }
        COPIES.get_or_init(|| {
            let key = |p: &Path| {
                let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                format!("{}-{mtime}", m.len())
            };
            let dir = self.home.join(".e2e-bin").join(format!(
                "{}-{}",
                key(&bins.piku),
                key(&bins.supervisor)
            ));
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            let copy = |from: &Path| {
                let name = from.file_name().unwrap_or_default();
                let to = dir.join(name);
                if !to.exists() {
                    // Copied beside, then renamed: a concurrent test process never runs half a file.
                    let partial =
                        dir.join(format!("{}.{}", name.to_string_lossy(), std::process::id()));
                    std::fs::copy(from, &partial)
                        .and_then(|_| std::fs::rename(&partial, &to))
                        .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
                }
                to
            };
            Binaries {
                piku: copy(&bins.piku),
                supervisor: copy(&bins.supervisor),
            }
        })
    }

    /// Whether this account can reach and run `path` (its directories must be traversable).
    pub fn can_execute(&self, path: &Path) -> bool {
        if !self.switched {
            return true;
        }
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg("test -x \"$1\"").arg("sh").arg(path);
        self.apply(&mut cmd);
        run_with_timeout(cmd, None, Duration::from_secs(10)).success()
    }
}
