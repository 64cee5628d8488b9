//! The release store: `releases/<app>/v<N>/` directories, their `release.json`, which one is
//! live (`apps/<app>` points at its `src`), and pruning old ones. Every path comes from
//! [`PikuRoot`]:
//!
//! ```text
//! releases/<app>/.lock              held while the app is being changed (see crate::lock)
//! releases/<app>/v<N>/src/          the checkout (plus build products); removed if the build failed
//! releases/<app>/v<N>/bin/          executables built outside the checkout (Go), on PATH
//! releases/<app>/v<N>/build.log     everything the deploy printed
//! releases/<app>/v<N>/release.json  a ReleaseRecord
//! envs/<app>/deps/<key>/            dependency environments (venv, node_modules…) shared by
//!                                   the releases whose manifests hash to <key>
//! ```

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;

use piku_model::{AppName, PikuRoot};
use serde::{Deserialize, Serialize};

use crate::error::{DeployError, IoContext};
use crate::files;

/// Where a release is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being built; a `building` release that is not the current deploy was interrupted.
    Building,
    /// Built and activated at least once: a rollback target.
    Ok,
    /// Its build, `release` command or activation failed; kept for its build log.
    Failed,
}

/// `release.json`: what was built and how to run it again without rebuilding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRecord {
    pub id: String,
    pub commit: String,
    /// RFC 3339.
    pub created: String,
    pub status: Status,
    /// The commit's subject when it built, the error when it failed.
    #[serde(default)]
    pub message: Option<String>,
    /// The runtime detected (`python`, `node`, …).
    #[serde(default)]
    pub runtime: Option<String>,
    /// Name of the dependency environment under `envs/<app>/deps/`, if the runtime has one.
    #[serde(default)]
    pub deps: Option<String>,
    /// The WSGI server installed for a `wsgi:` entry (`uwsgi`, `granian`, `gunicorn`, `waitress`).
    #[serde(default)]
    pub wsgi_server: Option<String>,
}

/// The releases of one app.
pub struct Store {
    root: PikuRoot,
    app: AppName,
}

impl Store {
    pub fn new(root: &PikuRoot, app: &AppName) -> Store {
        Store {
            root: root.clone(),
            app: app.clone(),
        }
    }

    /// `releases/<app>`.
    pub fn dir(&self) -> PathBuf {
        self.root.release_dir(&self.app)
    }

    /// `releases/<app>/<id>`.
    pub fn path(&self, id: &str) -> PathBuf {
        self.root.release(&self.app, id)
    }

    /// `releases/<app>/<id>/src`: the checkout, the processes' working directory.
    pub fn src(&self, id: &str) -> PathBuf {
        self.root.release_src(&self.app, id)
    }

    /// `releases/<app>/<id>/bin`: executables built outside the checkout.
    pub fn bin(&self, id: &str) -> PathBuf {
        self.root.release_bin(&self.app, id)
    }

    /// `releases/<app>/<id>/build.log`.
    pub fn build_log(&self, id: &str) -> PathBuf {
        self.root.build_log(&self.app, id)
    }

    /// `envs/<app>/deps/<name>`: a dependency environment.
    pub fn deps(&self, name: &str) -> PathBuf {
        self.root.deps_dir(&self.app).join(name)
    }

    /// Every release with a readable `release.json`, newest first.
    pub fn list(&self) -> Result<Vec<ReleaseRecord>, DeployError> {
        let dir = self.dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).cannot("list", &dir),
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.cannot("list", &dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if release_number(&name).is_none() {
                continue;
            }
            // A directory without a readable record is a deploy that died at its first step.
            if let Ok(record) = self.load(&name) {
                records.push(record);
            }
        }
        records.sort_by_key(|r| std::cmp::Reverse(release_number(&r.id)));
        Ok(records)
    }

    /// Reads `release.json` of `id`.
    pub fn load(&self, id: &str) -> Result<ReleaseRecord, DeployError> {
        let path = self.root.release_record(&self.app, id);
        let text = std::fs::read_to_string(&path).cannot("read", &path)?;
        serde_json::from_str(&text).map_err(|error| DeployError::Record {
            doing: format!("'{}' is damaged", path.display()),
            error,
        })
    }

    /// Writes `release.json` atomically.
    pub fn save(&self, record: &ReleaseRecord) -> Result<(), DeployError> {
        let path = self.root.release_record(&self.app, &record.id);
        let json = serde_json::to_string_pretty(record).map_err(|error| DeployError::Record {
            doing: "cannot encode release.json".to_owned(),
            error,
        })?;
        files::write(&path, json.as_bytes(), piku_fs::MODE_PRIVATE)
    }

    /// The id the next release gets: `v<N>`, one more than any release directory present.
    /// The newest release is never pruned, so numbers are never reused.
    pub fn next_id(&self) -> Result<String, DeployError> {
        let dir = self.dir();
        let mut max = 0;
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    if let Some(n) = release_number(&entry.file_name().to_string_lossy()) {
                        max = max.max(n);
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).cannot("list", &dir),
        }
        Ok(format!("v{}", max + 1))
    }

    /// The live release: the one `apps/<app>` points into.
    pub fn live_id(&self) -> Option<String> {
        let target = std::fs::read_link(self.root.app_dir(&self.app)).ok()?;
        if target.file_name()? != "src" {
            return None;
        }
        let id = target.parent()?.file_name()?.to_str()?.to_owned();
        release_number(&id).map(|_| id)
    }

    /// Points `apps/<app>` at release `id`'s checkout, atomically: a new symlink renamed over
    /// the old one, so `apps/<app>` is never missing.
    pub fn make_live(&self, id: &str) -> Result<(), DeployError> {
        let target = self.src(id);
        let app_link = self.root.app_dir(&self.app);
        let apps = self.root.apps();
        files::create_dir(&apps)?;
        // An app first deployed by piku has a real checkout here; rename() cannot replace a
        // directory with a symlink, so move it out of the way first.
        if let Ok(meta) = std::fs::symlink_metadata(&app_link)
            && meta.is_dir()
        {
            let aside = self.dir().join("piku-checkout");
            let _ = std::fs::remove_dir_all(&aside);
            std::fs::rename(&app_link, &aside).cannot("move piku's checkout", &app_link)?;
        }
        let temp = apps.join(format!(".{}.{}.tmp", self.app, std::process::id()));
        let _ = std::fs::remove_file(&temp);
        std::os::unix::fs::symlink(&target, &temp).cannot("create symlink", &temp)?;
        std::fs::rename(&temp, &app_link).map_err(|error| {
            let _ = std::fs::remove_file(&temp);
            DeployError::Io {
                doing: format!("cannot point '{}' at {id}", app_link.display()),
                error,
            }
        })
    }

    /// Removes releases beyond the `keep` newest successful ones (the live one always stays)
    /// and beyond the `keep` newest failed ones, then dependency environments no remaining
    /// release uses. `current` (the release being deployed) is never removed. Returns the ids
    /// removed.
    pub fn prune(&self, keep: usize, current: Option<&str>) -> Result<Vec<String>, DeployError> {
        let live = self.live_id();
        let records = self.list()?;
        let mut removed = Vec::new();
        let (mut ok_seen, mut failed_seen) = (0, 0);
        for record in &records {
            let protected =
                Some(record.id.as_str()) == live.as_deref() || Some(record.id.as_str()) == current;
            let seen = match record.status {
                Status::Ok => &mut ok_seen,
                Status::Failed | Status::Building => &mut failed_seen,
            };
            *seen += 1;
            if protected || *seen <= keep {
                continue;
            }
            let path = self.path(&record.id);
            std::fs::remove_dir_all(&path).cannot("remove", &path)?;
            removed.push(record.id.clone());
        }
        let in_use: BTreeSet<String> = self
            .list()?
            .into_iter()
            .filter(|r| r.status == Status::Ok || Some(r.id.as_str()) == current)
            .filter_map(|r| r.deps)
            .collect();
        self.prune_deps(&in_use)?;
        Ok(removed)
    }

    fn prune_deps(&self, in_use: &BTreeSet<String>) -> Result<(), DeployError> {
        let deps_dir = self.root.deps_dir(&self.app);
        let entries = match std::fs::read_dir(&deps_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).cannot("list", &deps_dir),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !in_use.contains(&name) {
                std::fs::remove_dir_all(entry.path()).cannot("remove", &entry.path())?;
            }
        }
        Ok(())
    }

    /// Removes `releases/<app>` and `envs/<app>/deps`; the caller holds the app's lock.
    pub fn remove_all(&self) -> Result<(), DeployError> {
        files::remove_dir(&self.root.deps_dir(&self.app))?;
        files::remove_dir(&self.dir())
    }

    /// Whether the app has a `releases/<app>` directory at all.
    pub fn exists(&self) -> bool {
        self.dir().exists()
    }
}

/// `v12` → 12; anything else is not a release directory.
pub fn release_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, status: Status, deps: Option<&str>) -> ReleaseRecord {
        ReleaseRecord {
            id: id.into(),
            commit: "abc".into(),
            created: "2026-01-01T00:00:00Z".into(),
            status,
            message: None,
            runtime: None,
            deps: deps.map(str::to_owned),
            wsgi_server: None,
        }
    }

    fn store_with(records: &[ReleaseRecord]) -> (tempfile::TempDir, PikuRoot, Store) {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        let store = Store::new(&root, &app);
        for r in records {
            std::fs::create_dir_all(store.src(&r.id)).unwrap();
            store.save(r).unwrap();
            if let Some(deps) = &r.deps {
                std::fs::create_dir_all(store.deps(deps)).unwrap();
            }
        }
        (dir, root, store)
    }

    fn ids(store: &Store) -> Vec<String> {
        store.list().unwrap().into_iter().map(|r| r.id).collect()
    }

    #[test]
    fn release_numbers_sort_numerically_and_the_next_id_follows_the_highest() {
        let (_d, _root, store) = store_with(&[
            record("v2", Status::Ok, None),
            record("v10", Status::Failed, None),
            record("v9", Status::Ok, None),
        ]);
        assert_eq!(ids(&store), ["v10", "v9", "v2"]);
        assert_eq!(store.next_id().unwrap(), "v11");
        assert_eq!(release_number("v0x"), None);
        assert_eq!(release_number("v"), None);
    }

    #[test]
    fn make_live_swaps_the_app_link_and_live_id_reads_it() {
        let (_d, root, store) = store_with(&[
            record("v1", Status::Ok, None),
            record("v2", Status::Ok, None),
        ]);
        assert_eq!(store.live_id(), None);
        store.make_live("v1").unwrap();
        assert_eq!(store.live_id().as_deref(), Some("v1"));
        store.make_live("v2").unwrap();
        assert_eq!(store.live_id().as_deref(), Some("v2"));
        let app: AppName = "blog".parse().unwrap();
        assert_eq!(
            std::fs::read_link(root.app_dir(&app)).unwrap(),
            store.src("v2")
        );
    }

    #[test]
    fn prune_keeps_the_newest_ok_and_failed_releases_the_live_one_and_their_deps() {
        let (_d, root, store) = store_with(&[
            record("v1", Status::Ok, Some("d1")),
            record("v2", Status::Ok, Some("d2")),
            record("v3", Status::Failed, Some("d3")),
            record("v4", Status::Ok, Some("d2")),
            record("v5", Status::Failed, None),
            record("v6", Status::Ok, Some("d6")),
        ]);
        store.make_live("v1").unwrap();
        let removed = store.prune(1, None).unwrap();
        assert_eq!(removed, ["v4", "v3", "v2"]);
        assert_eq!(ids(&store), ["v6", "v5", "v1"]);
        let app: AppName = "blog".parse().unwrap();
        let mut deps: Vec<String> = std::fs::read_dir(root.deps_dir(&app))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        deps.sort();
        assert_eq!(deps, ["d1", "d6"]);
    }
}
