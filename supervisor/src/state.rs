//! The desired state of every app, persisted at `$PIKU_ROOT/supervisor/state.json`.
//!
//! It holds what was asked (each app's last `AppSpec`, whether it is stopped) and what the
//! daemon decided for it (the port of each web instance), so that after a restart or a
//! reboot every app comes back at its formation, on the same ports, with no redeploy.
//! Writes are atomic: a temporary file in the same directory, fsync, rename, fsync of the dir.
//!
//! [`Store`] holds the state as it is now: each app's actor puts its part after a change and
//! then writes the whole file.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use piku_model::InstanceId;
use piku_proto::AppSpec;
use serde::{Deserialize, Serialize};

/// Bumped if the file's meaning changes; older files are still read when possible.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedState {
    pub version: u32,
    #[serde(default)]
    pub apps: BTreeMap<String, SavedApp>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedApp {
    pub spec: AppSpec,
    #[serde(default)]
    pub stopped: bool,
    /// `web.1` → port.
    #[serde(default)]
    pub ports: BTreeMap<InstanceId, u16>,
    /// The front's TCP port when the daemon chose it.
    #[serde(default)]
    pub front_port: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid state file")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}")]
    Write { path: PathBuf, source: io::Error },
}

/// Reads the state file; a missing file is an empty state (first start).
pub fn load(path: &Path) -> Result<SavedState, StateError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(SavedState {
            version: STATE_VERSION,
            apps: BTreeMap::new(),
        }),
        Err(source) => Err(StateError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

pub fn save(path: &Path, state: &SavedState) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Write {
        path: path.to_owned(),
        source: io::Error::other(e),
    })?;
    // 0600: the state holds every app's environment, secrets included.
    piku_fs::write_atomic(path, &bytes, piku_fs::MODE_PRIVATE).map_err(|source| StateError::Write {
        path: path.to_owned(),
        source,
    })
}

/// The desired state of every app, in memory and on disk.
pub struct Store {
    path: PathBuf,
    apps: Mutex<BTreeMap<String, SavedApp>>,
    /// Serialises writes of the file, so an older snapshot never overwrites a newer one.
    writing: tokio::sync::Mutex<()>,
}

impl Store {
    pub fn new(path: PathBuf, apps: BTreeMap<String, SavedApp>) -> Store {
        Store {
            path,
            apps: Mutex::new(apps),
            writing: tokio::sync::Mutex::new(()),
        }
    }

    /// `app`'s part from now on (written by the next [`Store::save`]).
    pub fn put(&self, app: &str, saved: SavedApp) {
        self.lock().insert(app.to_string(), saved);
    }

    pub fn remove(&self, app: &str) {
        self.lock().remove(app);
    }

    /// The whole state as it is now.
    pub fn snapshot(&self) -> SavedState {
        SavedState {
            version: STATE_VERSION,
            apps: self.lock().clone(),
        }
    }

    /// How many instances the apps other than `app` run (stopped apps run none).
    pub fn instances_except(&self, app: &str) -> u64 {
        self.lock()
            .iter()
            .filter(|(name, saved)| name.as_str() != app && !saved.stopped)
            .map(|(_, saved)| crate::validate::instances(&saved.spec))
            .sum()
    }

    /// The longest stop grace of any app: bounds a shutdown.
    pub fn max_grace(&self) -> Duration {
        self.lock()
            .values()
            .map(|a| Duration::from_millis(a.spec.settings.stop_grace_ms))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Writes the state as it is when the write begins (atomically, off the async threads).
    pub async fn save(&self) -> Result<(), StateError> {
        let _turn = self.writing.lock().await;
        let snapshot = self.snapshot();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || save(&path, &snapshot))
            .await
            .map_err(|e| StateError::Write {
                path: self.path.clone(),
                source: io::Error::other(e),
            })?
    }

    /// SIGHUP: re-reads the file and reports how it compares with what runs, touching no
    /// process; the file is rewritten from memory if it is missing or differs.
    pub async fn reload(&self) {
        let on_disk = match load(&self.path) {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(
                    "SIGHUP: {}; rewriting it from memory",
                    crate::report::chain(&e)
                );
                self.save_or_log().await;
                return;
            }
        };
        let in_memory = self.snapshot();
        if on_disk == in_memory {
            tracing::info!(
                apps = in_memory.apps.len(),
                "SIGHUP: state file re-read, matches what runs; nothing touched"
            );
        } else {
            tracing::warn!(
                "SIGHUP: state file differs from what runs (edited by hand?); running apps are \
                 left alone and the file is rewritten from memory: use `piku` to change apps"
            );
            self.save_or_log().await;
        }
    }

    async fn save_or_log(&self) {
        if let Err(e) = self.save().await {
            tracing::error!("SIGHUP: {}", crate::report::chain(&e));
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, SavedApp>> {
        // Every update is one insert or remove: consistent even if a holder panicked.
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use piku_proto::{AppSettings, ProcessSpec, Role};

    #[test]
    fn missing_file_is_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let state = load(&dir.path().join("state.json")).unwrap();
        assert!(state.apps.is_empty());
    }

    #[test]
    fn round_trip_keeps_specs_and_ports() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let spec = AppSpec {
            app: "blog".into(),
            release: "v2".into(),
            workdir: "/srv/blog".into(),
            env: BTreeMap::from([("A".into(), "1".into())]),
            processes: vec![ProcessSpec {
                kind: "web".into(),
                command: "app".into(),
                role: Role::Web,
                count: 2,
            }],
            settings: AppSettings::default(),
        };
        let state = SavedState {
            version: STATE_VERSION,
            apps: BTreeMap::from([(
                "blog".into(),
                SavedApp {
                    spec,
                    stopped: true,
                    ports: BTreeMap::from([
                        (InstanceId::new("web", 1), 4001),
                        (InstanceId::new("web", 2), 4002),
                    ]),
                    front_port: Some(4003),
                },
            )]),
        };
        save(&path, &state).unwrap();
        assert_eq!(load(&path).unwrap(), state);
        // Instances are named as everywhere else.
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""web.2": 4002"#), "{text}");
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn corrupt_file_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, b"{not json").unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
