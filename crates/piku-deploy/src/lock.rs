//! One deploy at a time per app: an exclusive `flock` on `releases/<app>/.lock`.
//!
//! Deploys, rollbacks and config re-applies of the same app wait for each other; different
//! apps never do. The kernel drops the lock when the process dies, so a killed deploy never
//! leaves a stale lock behind.
//!
//! A push takes the lock in `piku git-receive-pack`, *before* git reads the refs: git fixes
//! each ref's expected old value when the push starts, so a push that waited inside its hook
//! would then be refused because the other push moved the branch. The hook learns that its
//! parent holds the lock from [`HELD_VAR`] and does not wait on it (which would deadlock).

use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use piku_model::{AppName, PikuRoot};

use crate::buildlog::BuildLog;
use crate::error::{DeployError, IoContext};
use crate::files;

/// Set by `piku git-receive-pack` for the `git receive-pack` it runs, to the app whose lock
/// it holds while git (and so the deploy hook) runs.
pub const HELD_VAR: &str = "PIKU_DEPLOY_LOCK_HELD";

/// Held while an app is being changed; dropping it releases the lock.
pub struct AppLock {
    _lock: Option<Flock<File>>,
}

/// Locks `app` (creating `releases/<app>`), saying so on the log if another deploy holds it.
pub fn acquire(root: &PikuRoot, app: &AppName, log: &mut BuildLog) -> Result<AppLock, DeployError> {
    acquire_with(root, app, |msg| log.step(msg))
}

/// Whether the `piku git-receive-pack` that started this hook says it holds `app`'s lock.
pub fn held_by_parent(app: &AppName) -> bool {
    std::env::var(HELD_VAR).ok().as_deref() == Some(app.as_str())
}

/// [`acquire`] for the deploy hook: when `held_by_parent` ([`held_by_parent`]) and the lock is
/// taken, the `piku git-receive-pack` that started this push holds it for us. The lock is
/// still probed rather than trusted blindly, so a stray variable cannot let two deploys run at
/// once unless another deploy really holds the lock.
pub fn acquire_in_hook(
    root: &PikuRoot,
    app: &AppName,
    held_by_parent: bool,
    log: &mut BuildLog,
) -> Result<AppLock, DeployError> {
    if !held_by_parent {
        return acquire(root, app, log);
    }
    Ok(AppLock {
        _lock: try_lock(&root.deploy_lock(app))?,
    })
}

fn open(path: &Path) -> Result<File, DeployError> {
    if let Some(dir) = path.parent() {
        files::create_dir(dir)?;
    }
    piku_fs::open_nofollow(path, piku_fs::OpenFor::Lock, piku_fs::MODE_PRIVATE)
        .cannot("open lock file", path)
}

/// Takes the lock without waiting; `None` when someone else holds it.
fn try_lock(path: &Path) -> Result<Option<Flock<File>>, DeployError> {
    match Flock::lock(open(path)?, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(std::io::Error::from(errno)).cannot("lock", path),
    }
}

/// [`acquire`] telling `say` (once) when it has to wait.
pub fn acquire_with(
    root: &PikuRoot,
    app: &AppName,
    say: impl FnOnce(String),
) -> Result<AppLock, DeployError> {
    let path = root.deploy_lock(app);
    if let Some(lock) = try_lock(&path)? {
        return Ok(AppLock { _lock: Some(lock) });
    }
    say(format!("Waiting for another deploy of '{app}' to finish"));
    match Flock::lock(open(&path)?, FlockArg::LockExclusive) {
        Ok(lock) => Ok(AppLock { _lock: Some(lock) }),
        Err((_, errno)) => Err(std::io::Error::from(errno)).cannot("lock", &path),
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
        let root = PikuRoot::new(dir.path());
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
    fn a_hook_whose_parent_holds_the_lock_does_not_wait_and_one_without_takes_it() {
        let dir = tempfile::tempdir().unwrap();
        let app: AppName = "blog".parse().unwrap();
        let root = PikuRoot::new(dir.path());
        let lock_file = root.deploy_lock(&app);
        let parent = acquire(&root, &app, &mut BuildLog::terminal_only()).unwrap();
        // Would block for ever if it waited on the parent's lock.
        let hook = acquire_in_hook(&root, &app, true, &mut BuildLog::terminal_only()).unwrap();
        drop(hook);
        drop(parent);
        // Nobody holds it: the hook takes it, and a deploy must now wait.
        let hook = acquire_in_hook(&root, &app, true, &mut BuildLog::terminal_only()).unwrap();
        assert!(try_lock(&lock_file).unwrap().is_none());
        drop(hook);
        assert!(try_lock(&lock_file).unwrap().is_some());
    }

    #[test]
    fn different_apps_do_not_wait_for_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let a: AppName = "a".parse().unwrap();
        let b: AppName = "b".parse().unwrap();
        let root = PikuRoot::new(dir.path());
        let _la = acquire(&root, &a, &mut BuildLog::terminal_only()).unwrap();
        let _lb = acquire(&root, &b, &mut BuildLog::terminal_only()).unwrap();
    }
}
