//! One deploy at a time per app: an exclusive `flock` on `releases/<app>/.lock`.
//!
//! Deploys, rollbacks and config re-applies of the same app wait for each other; different
//! apps never do. The kernel drops the lock when the process dies, so a killed deploy never
//! leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::path::Path;

use anyhow::{Context, bail};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use piku_model::AppName;

use super::buildlog::BuildLog;

/// Held while an app is being changed; dropping it releases the lock.
pub struct AppLock {
    _lock: Flock<File>,
}

/// Locks `releases/<app>` (creating it), saying so on the log if another deploy holds it.
pub fn acquire(release_root: &Path, app: &AppName, log: &mut BuildLog) -> anyhow::Result<AppLock> {
    std::fs::create_dir_all(release_root)
        .with_context(|| format!("cannot create '{}'", release_root.display()))?;
    let path = release_root.join(".lock");
    let open = || {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock file '{}'", path.display()))
    };
    match Flock::lock(open()?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => return Ok(AppLock { _lock: lock }),
        Err((_, Errno::EWOULDBLOCK)) => {}
        Err((_, errno)) => bail!("cannot lock '{}': {errno}", path.display()),
    }
    log.step(format!("Waiting for another deploy of '{app}' to finish"));
    match Flock::lock(open()?, FlockArg::LockExclusive) {
        Ok(lock) => Ok(AppLock { _lock: lock }),
        Err((_, errno)) => bail!("cannot lock '{}': {errno}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn a_second_deploy_waits_until_the_first_releases_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let app: AppName = "blog".parse().unwrap();
        let root = dir.path().join("releases/blog");
        let first = acquire(&root, &app, &mut BuildLog::terminal_only()).unwrap();
        let (tx, rx) = mpsc::channel();
        let (root2, app2) = (root.clone(), app.clone());
        let waiter = std::thread::spawn(move || {
            let lock = acquire(&root2, &app2, &mut BuildLog::terminal_only()).unwrap();
            tx.send(()).unwrap();
            drop(lock);
        });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn different_apps_do_not_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let a: AppName = "a".parse().unwrap();
        let b: AppName = "b".parse().unwrap();
        let _la = acquire(&dir.path().join("a"), &a, &mut BuildLog::terminal_only()).unwrap();
        let _lb = acquire(&dir.path().join("b"), &b, &mut BuildLog::terminal_only()).unwrap();
    }
}
