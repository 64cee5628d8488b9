//! Getting a commit's files out of the app's bare repo into a release directory, and reading
//! the files the deploy itself takes from it (`Procfile`, `ENV`, dependency manifests): every
//! such read goes through [`read_file`].
//!
//! The checkout runs inside the pre-receive hook, where the pushed objects are still in git's
//! quarantine directory: our git commands inherit the hook's `GIT_OBJECT_DIRECTORY` /
//! `GIT_ALTERNATE_OBJECT_DIRECTORIES` so they can read them. Commands that must not see
//! those variables (submodule clones, builds) get [`clean_git_env`].

use std::path::Path;
use std::process::Command;

use piku_model::{Procfile, parse_procfile};

use crate::buildlog::BuildLog;
use crate::error::{DeployError, IoContext};
use crate::files;

/// Variables git sets for hooks that would redirect any other git command (a build's
/// `git clone`, a submodule) at the app's repo or its quarantine.
pub fn clean_git_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `git --git-dir=<repo> <args>`, keeping the hook's object-directory variables.
fn git(repo: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir").arg(repo).args(args);
    // GIT_DIR=. (set for hooks) is overridden by --git-dir; GIT_WORK_TREE/INDEX must not leak.
    cmd.env_remove("GIT_WORK_TREE").env_remove("GIT_INDEX_FILE");
    cmd
}

/// Runs `cmd` and returns its trimmed stdout, or an error with its stderr.
fn output(mut cmd: Command, what: &str) -> Result<String, DeployError> {
    let out = cmd.output().doing(|| format!("{what}: cannot run git"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(DeployError::Tool {
            what: what.to_owned(),
            message: err.trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The text of `name` in the checkout `src`, or `None` when the commit has no such file.
pub fn read_file(src: &Path, name: &str) -> Result<Option<String>, DeployError> {
    let Some(bytes) = read_bytes(src, name)? else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| DeployError::refused(format!("'{name}' in this commit is not UTF-8 text")))
}

/// The bytes of `name` in the checkout `src` (a dependency manifest need not be UTF-8), or
/// `None` when the commit has no such file.
pub fn read_bytes(src: &Path, name: &str) -> Result<Option<Vec<u8>>, DeployError> {
    // The one door through which the deploy reads the repo's files: only regular files
    // inside the checkout, symlinks resolved (a committed link to another app's ENV or to
    // /etc/passwd is refused without a word of its content).
    piku_fs::read_inside(src, Path::new(name)).cannot("read", &src.join(name))
}

/// The checkout's Procfile, its warnings printed. A missing Procfile is a one-line error; a
/// broken one lists every bad line.
pub fn read_procfile(src: &Path, log: &mut BuildLog) -> Result<Procfile, DeployError> {
    let text = read_file(src, "Procfile")?.ok_or_else(|| {
        DeployError::refused(
            "no Procfile in this commit; add one, e.g. 'web: python3 -m http.server $PORT'",
        )
    })?;
    let procfile = parse_procfile(&text)?;
    for warning in &procfile.warnings {
        log.step(format!("Warning: {warning}"));
    }
    Ok(procfile)
}

/// The full commit id `rev` names in `repo`.
pub fn resolve_commit(repo: &Path, rev: &str) -> Result<String, DeployError> {
    let spec = format!("{rev}^{{commit}}");
    output(
        git(repo, &["rev-parse", "--verify", "--quiet", &spec]),
        &format!("'{rev}' is not a commit"),
    )
}

/// The commit's subject line, for `piku releases`.
pub fn commit_subject(repo: &Path, commit: &str) -> Option<String> {
    output(git(repo, &["log", "-1", "--format=%s", commit]), "git log")
        .ok()
        .filter(|s| !s.is_empty())
}

/// The commit a ref points at now, if it exists.
pub fn ref_value(repo: &Path, reference: &str) -> Option<String> {
    output(
        git(repo, &["rev-parse", "--verify", "--quiet", reference]),
        "rev-parse",
    )
    .ok()
}

/// Writes `commit`'s tree into `dest` (created, must be empty), then its submodules.
pub fn checkout(
    repo: &Path,
    commit: &str,
    dest: &Path,
    log: &mut BuildLog,
) -> Result<(), DeployError> {
    files::create_dir(dest)?;
    // Beside the checkout, in the release directory: never inside what the app sees.
    let index = dest.with_file_name(".checkout-index");
    // A throwaway index: read-tree -u writes the files without touching the repo's HEAD.
    let mut cmd = git(repo, &["read-tree", "-u", "--reset", commit]);
    cmd.env("GIT_INDEX_FILE", &index).env("GIT_WORK_TREE", dest);
    let result = output(cmd, "checkout failed");
    let _ = std::fs::remove_file(&index);
    result?;
    if dest.join(".gitmodules").is_file() {
        checkout_submodules(repo, commit, dest, log)?;
    }
    Ok(())
}

/// Clones each submodule listed in `.gitmodules` at the commit the superproject records.
fn checkout_submodules(
    repo: &Path,
    commit: &str,
    dest: &Path,
    log: &mut BuildLog,
) -> Result<(), DeployError> {
    let modules = dest.join(".gitmodules");
    let mut list = Command::new("git");
    clean_git_env(&mut list)
        .arg("config")
        .arg("--file")
        .arg(&modules)
        .args(["--get-regexp", r"^submodule\..*\.path$"]);
    // No match is exit 1 with no output: a .gitmodules without entries.
    let listed = list.output().cannot("read", &modules)?;
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for line in listed.lines() {
        let Some((key, path)) = line.split_once(' ') else {
            continue;
        };
        let name = key
            .strip_prefix("submodule.")
            .and_then(|k| k.strip_suffix(".path"))
            .ok_or_else(|| DeployError::refused(format!("unexpected .gitmodules key '{key}'")))?;
        let url_key = format!("submodule.{name}.url");
        let mut get_url = Command::new("git");
        clean_git_env(&mut get_url)
            .arg("config")
            .arg("--file")
            .arg(&modules)
            .args(["--get", &url_key]);
        let url = output(get_url, &format!("submodule '{name}' has no url"))?;
        if url.starts_with("./") || url.starts_with("../") {
            return Err(DeployError::refused(format!(
                "submodule '{name}' has a relative url '{url}'; use an absolute one"
            )));
        }
        let tree = output(
            git(repo, &["ls-tree", commit, "--", path]),
            &format!("submodule '{name}'"),
        )?;
        // "160000 commit <sha>\t<path>"
        let sha = tree
            .split_whitespace()
            .nth(2)
            .filter(|_| tree.split_whitespace().nth(1) == Some("commit"))
            .ok_or_else(|| {
                DeployError::refused(format!(
                    "submodule '{name}' has no commit recorded at '{path}'"
                ))
            })?
            .to_owned();
        let target = dest.join(path);
        log.step(format!(
            "Cloning submodule '{name}' ({url}) at {}",
            short(&sha)
        ));
        let mut clone = Command::new("git");
        clean_git_env(&mut clone)
            .args(["clone", "--quiet", "--no-checkout", &url])
            .arg(&target);
        log.run(clone, &format!("cloning submodule '{name}'"))?;
        let mut co = Command::new("git");
        clean_git_env(&mut co)
            .arg("-C")
            .arg(&target)
            .args(["checkout", "--quiet", &sha]);
        log.run(co, &format!("checking out submodule '{name}'"))?;
        let mut nested = Command::new("git");
        clean_git_env(&mut nested).arg("-C").arg(&target).args([
            "submodule",
            "update",
            "--init",
            "--recursive",
            "--quiet",
        ]);
        log.run(nested, &format!("submodules of '{name}'"))?;
    }
    Ok(())
}

/// The first 7 characters of a commit id, as git shows them.
pub fn short(commit: &str) -> &str {
    commit.get(..7).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let ok = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[test]
    fn checkout_writes_the_commit_tree_with_modes_and_leaves_no_index() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(work.join("bin")).unwrap();
        std::fs::write(work.join("Procfile"), "web: bin/run\n").unwrap();
        std::fs::write(work.join("bin/run"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.join("bin/run"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        run(&work, &["init", "--quiet"]);
        run(&work, &["add", "."]);
        run(&work, &["commit", "--quiet", "-m", "first one"]);
        let repo = dir.path().join("repo.git");
        run(
            dir.path(),
            &["clone", "--quiet", "--bare", "work", "repo.git"],
        );

        let commit = resolve_commit(&repo, "HEAD").unwrap();
        assert_eq!(commit.len(), 40);
        assert_eq!(commit_subject(&repo, &commit).as_deref(), Some("first one"));
        let dest = dir.path().join("v1/src");
        checkout(&repo, &commit, &dest, &mut BuildLog::terminal_only()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("Procfile")).unwrap(),
            "web: bin/run\n"
        );
        let mode = std::fs::metadata(dest.join("bin/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        assert!(!dir.path().join("v1/.checkout-index").exists());
        assert!(!dest.join(".git").exists());
        assert!(resolve_commit(&repo, "no-such-branch").is_err());
    }

    #[test]
    fn submodules_are_cloned_at_the_recorded_commit() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("lib.txt"), "old\n").unwrap();
        run(&sub, &["init", "--quiet"]);
        run(&sub, &["add", "."]);
        run(&sub, &["commit", "--quiet", "-m", "old"]);
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        std::fs::write(work.join("Procfile"), "web: x\n").unwrap();
        run(&work, &["init", "--quiet"]);
        let sub_url = sub.to_string_lossy().into_owned();
        run(
            &work,
            &[
                "-c",
                "protocol.file.allow=always",
                "submodule",
                "add",
                "--quiet",
                &sub_url,
                "vendor/lib",
            ],
        );
        run(&work, &["add", "."]);
        run(&work, &["commit", "--quiet", "-m", "with submodule"]);
        // A later commit in the submodule must not be what the release gets.
        std::fs::write(sub.join("lib.txt"), "new\n").unwrap();
        run(&sub, &["commit", "--quiet", "-am", "new"]);
        let repo = dir.path().join("repo.git");
        run(
            dir.path(),
            &["clone", "--quiet", "--bare", "work", "repo.git"],
        );

        let commit = resolve_commit(&repo, "HEAD").unwrap();
        let dest = dir.path().join("v1/src");
        checkout(&repo, &commit, &dest, &mut BuildLog::terminal_only()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("vendor/lib/lib.txt")).unwrap(),
            "old\n"
        );
    }

    /// Issue 10 item 13: a committed symlink to a file outside the checkout (another app's
    /// ENV, `authorized_keys`) is refused, and its content appears nowhere in the error.
    #[test]
    fn repo_files_that_lead_outside_the_checkout_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let secret = dir.path().join("other-ENV");
        std::fs::write(&secret, "ssh-ed25519 AAAAsecret\n").unwrap();
        std::os::unix::fs::symlink(&secret, src.join("Procfile")).unwrap();
        std::os::unix::fs::symlink(&secret, src.join("ENV")).unwrap();
        let mut log = BuildLog::terminal_only();
        let err = read_procfile(&src, &mut log).unwrap_err().to_string();
        assert!(err.contains("leads outside the checkout"), "{err}");
        assert!(!err.contains("AAAAsecret"), "{err}");
        assert!(read_file(&src, "ENV").is_err());
    }
}
