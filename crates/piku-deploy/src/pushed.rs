//! Closing the gap between a deploy and git's ref update.
//!
//! git updates the pushed ref only after the pre-receive hook (and with it our lock) is gone.
//! A second push of the same branch from the same base, waiting on the lock, could get it in
//! that instant, still see the old ref value, and deploy over the first push while git then
//! refuses its ref update. So a successful push records `<ref> <new commit> <time>` in
//! `releases/<app>/.last-push` before letting go of the lock, and a push that expects the
//! ref at some other value within `FRESH` of that record is refused like any push whose
//! ref moved.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use piku_model::{AppName, PikuRoot};

use crate::files;

/// How long a record outweighs the ref itself: git's update follows the hook by milliseconds;
/// a record this old whose update never landed must not block the app's pushes for long.
const FRESH: Duration = Duration::from_secs(120);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Remembers that `reference` of `app` is about to become `commit`.
pub fn record(root: &PikuRoot, app: &AppName, reference: &str, commit: &str) {
    let text = format!("{reference} {commit} {}\n", now());
    // Best effort: without the record only the narrow race above remains.
    let _ = files::write(&root.last_push(app), text.as_bytes(), piku_fs::MODE_PRIVATE);
}

/// True if a fresh record says `reference` was just pushed to a value other than `old`.
pub fn moved_by_recent_push(
    root: &PikuRoot,
    app: &AppName,
    reference: &str,
    old: Option<&str>,
) -> bool {
    let Ok(text) = std::fs::read_to_string(root.last_push(app)) else {
        return false;
    };
    let mut parts = text.split_whitespace();
    let (Some(r), Some(new), Some(at)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let fresh = at
        .parse::<u64>()
        .is_ok_and(|at| now().saturating_sub(at) < FRESH.as_secs());
    r == reference && fresh && Some(new) != old
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_from_the_base_another_push_just_replaced_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        std::fs::create_dir_all(root.release_dir(&app)).unwrap();
        let moved = |reference, old| moved_by_recent_push(&root, &app, reference, old);
        assert!(!moved("refs/heads/main", None));
        record(&root, &app, "refs/heads/main", "bbb");
        assert!(moved("refs/heads/main", Some("aaa")));
        assert!(moved("refs/heads/main", None));
        assert!(!moved("refs/heads/main", Some("bbb")));
        assert!(!moved("refs/heads/other", Some("aaa")));
    }
}
