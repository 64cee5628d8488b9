//! Dependency environments shared between releases: `envs/<app>/deps/<runtime>-<key>/`, where
//! `<key>` hashes the dependency manifests and the toolchain's version.
//!
//! A later release with the same manifests reuses the directory as is, so a code-only
//! redeploy installs nothing, and each kept release keeps the environment it was built with,
//! so a rollback needs no rebuild. A directory is only reused once its build finished
//! (`.piku-complete`); a half-built one is wiped and built again.

use std::path::PathBuf;

use crate::error::DeployError;
use crate::files;
use crate::runtime::build::BuildCtx;

/// Marks a dependency directory whose build completed.
const COMPLETE: &str = ".piku-complete";

/// A dependency directory, and whether it is already built.
pub struct Deps {
    /// The directory's name under `envs/<app>/deps/`, recorded in `release.json`.
    pub name: String,
    pub dir: PathBuf,
    /// Built by an earlier release: use it as it is.
    pub ready: bool,
}

impl Deps {
    /// The directory for `runtime` whose key hashes `inputs`; wiped if a build of it did not
    /// finish.
    pub fn open(ctx: &BuildCtx, runtime: &str, inputs: &[&[u8]]) -> Result<Deps, DeployError> {
        let name = format!("{runtime}-{:016x}", key(inputs));
        let dir = ctx.root.deps_dir(ctx.app).join(&name);
        let ready = dir.join(COMPLETE).is_file();
        if !ready {
            files::remove_dir(&dir)?;
            files::create_dir(&dir)?;
        }
        Ok(Deps { name, dir, ready })
    }

    /// Marks the directory complete: later releases with the same key reuse it.
    pub fn mark_ready(&self) -> Result<(), DeployError> {
        files::write(&self.dir.join(COMPLETE), b"", piku_fs::MODE_PRIVATE)
    }
}

/// FNV-1a (64 bit) over length-prefixed inputs: stable across Rust versions, which a cache
/// key kept on disk needs (std's hasher is not), and plenty for telling manifests apart.
fn key(inputs: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for input in inputs {
        eat(&(input.len() as u64).to_le_bytes());
        eat(input);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use piku_model::{AppName, EnvMap, PikuRoot};

    #[test]
    fn the_key_changes_with_any_input_and_with_where_inputs_split() {
        let base = key(&[b"flask\n", b"Python 3.11.7"]);
        assert_eq!(base, key(&[b"flask\n", b"Python 3.11.7"]));
        assert_ne!(base, key(&[b"flask==3\n", b"Python 3.11.7"]));
        assert_ne!(base, key(&[b"flask\n", b"Python 3.12.0"]));
        assert_ne!(key(&[b"ab", b"c"]), key(&[b"a", b"bc"]));
    }

    #[test]
    fn an_unfinished_deps_dir_is_wiped_and_a_finished_one_reused() {
        let dir = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(dir.path());
        let app: AppName = "blog".parse().unwrap();
        let env = EnvMap::new();
        let ctx = BuildCtx {
            root: &root,
            app: &app,
            src: dir.path(),
            release_bin: dir.path(),
            commit: "c",
            env: &env,
            wsgi: None,
            rack: None,
        };
        let first = Deps::open(&ctx, "python", &[b"x"]).unwrap();
        assert!(!first.ready);
        std::fs::write(first.dir.join("half-installed"), "").unwrap();
        let again = Deps::open(&ctx, "python", &[b"x"]).unwrap();
        assert!(!again.ready);
        assert!(!again.dir.join("half-installed").exists());
        again.mark_ready().unwrap();
        let reused = Deps::open(&ctx, "python", &[b"x"]).unwrap();
        assert!(reused.ready);
        assert_eq!(reused.name, first.name);
        assert!(first.name.starts_with("python-"));
    }
}
