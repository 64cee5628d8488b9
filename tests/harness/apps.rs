//! Client-side app repositories: a copy of an `examples/` app in a temp dir, committed on
//! `main`, ready to `git push`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::binaries::repo_root;
use crate::process::run_with_timeout;
use crate::server::git_command;

/// A git work tree holding one app.
pub struct AppRepo {
    dir: TempDir,
}

/// `examples/<name>` in this repository.
pub fn example_dir(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// Copies `examples/<example>` into a new temp dir, `git init -b main`, commits it.
pub fn make_app_repo(example: &str) -> AppRepo {
    let dir = tempfile::Builder::new()
        .prefix("piku-e2e-app-")
        .tempdir()
        .expect("temp dir");
    copy_tree(&example_dir(example), dir.path());
    let repo = AppRepo { dir };
    repo.git(&["init", "-q", "-b", "main"]);
    repo.commit(&format!("{example}: initial"));
    repo
}

impl AppRepo {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs git in the work tree; panics if it fails.
    pub fn git(&self, args: &[&str]) -> String {
        let run = run_with_timeout(
            git_command(self.path(), args),
            None,
            Duration::from_secs(60),
        );
        run.assert_ok();
        run.stdout
    }

    /// Writes a file (relative path) in the work tree.
    pub fn write(&self, rel: &str, content: &str) {
        let path = self.path().join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("mkdir");
        }
        fs::write(path, content).expect("write");
    }

    /// `git add -A && git commit`; returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.head()
    }

    /// Writes `VERSION` and commits it: the simplest visible redeploy.
    pub fn set_version(&self, version: &str) -> String {
        self.write("VERSION", &format!("{version}\n"));
        self.commit(&format!("version {version}"))
    }

    /// Replaces every tracked file with `examples/<example>` (history is kept) and commits.
    pub fn replace_with_example(&self, example: &str) -> String {
        for entry in fs::read_dir(self.path()).expect("read_dir").flatten() {
            if entry.file_name() == ".git" {
                continue;
            }
            let p = entry.path();
            if p.is_dir() {
                fs::remove_dir_all(&p).expect("rm -r");
            } else {
                fs::remove_file(&p).expect("rm");
            }
        }
        copy_tree(&example_dir(example), self.path());
        self.commit(&format!("switch to {example}"))
    }

    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    /// A second clone-like copy of this work tree (same history), for concurrent pushes.
    pub fn duplicate(&self) -> AppRepo {
        let dir = tempfile::Builder::new()
            .prefix("piku-e2e-app-")
            .tempdir()
            .expect("temp dir");
        copy_tree(self.path(), dir.path());
        AppRepo { dir }
    }
}

/// `cp -r src/. dst/` (files and directories; symlinks are not expected in examples).
pub fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).expect("mkdir");
    for entry in fs::read_dir(src)
        .unwrap_or_else(|e| panic!("read {}: {e}", src.display()))
        .flatten()
    {
        let from = entry.path();
        let to = dst.join(entry.file_name());
        if from.is_dir() {
            copy_tree(&from, &to);
        } else {
            fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
        }
    }
}
