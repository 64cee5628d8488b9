//! git over the forced command: [`receive_pack`] (creating the app's bare repo and hook on
//! first use), [`upload_pack`], and [`hook`], which turns a push into one deploy.
//!
//! We run `git receive-pack <repo>` directly instead of piku's `git-shell -c "git-receive-pack
//! '<app>'"`: the app name has already passed the model's rule and the repo path goes to git
//! as one argv element, so no shell parses anything and git-shell's command filter adds
//! nothing.
//!
//! The deploy runs from the **pre-receive** hook, not piku's post-receive: git ignores a
//! post-receive exit status (the refs are already updated), so only pre-receive can make a
//! failed build fail the push. The pushed objects are readable there through git's quarantine
//! variables, and a rejected push leaves the branch where it was, matching the live release.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;

use piku_model::{AppName, PikuRoot};

use crate::buildlog::{BuildLog, step_to_stderr};
use crate::checkout::{clean_git_env, ref_value};
use crate::error::{DeployError, IoContext};
use crate::files;
use crate::lock;
use crate::pipeline::{self, Target};

/// Serves `git push` for the app (creating its bare repo on first use); returns git's exit code.
///
/// The app's deploy lock is taken before git starts, so a second push waits here (saying so
/// on stderr, which the pusher sees as `remote:` lines) and then reads the refs the first push
/// left: see [`crate::lock`].
pub fn receive_pack(root: &PikuRoot, app: &AppName) -> Result<i32, DeployError> {
    let repo = prepare_repo(root, app)?;
    // stdout is git's protocol stream here: the waiting line must go to stderr.
    let _lock = lock::acquire_with(root, app, step_to_stderr)?;
    serve_with_env("receive-pack", &repo, &[(lock::HELD_VAR, app.as_str())])
}

/// Serves `git clone`/`git fetch` of the app's repo; returns git's exit code.
pub fn upload_pack(root: &PikuRoot, app: &AppName) -> Result<i32, DeployError> {
    let repo = root.repo_dir(app);
    if !repo.join("HEAD").is_file() {
        return Err(DeployError::refused(format!("app '{app}' not found")));
    }
    serve("upload-pack", &repo)
}

/// The git hook: reads `old new ref` lines and deploys the pushed branch once. An error
/// makes the hook exit non-zero, which refuses the push.
pub fn hook(root: &PikuRoot, app: &AppName, stdin: &mut dyn BufRead) -> Result<(), DeployError> {
    let updates = read_updates(stdin)?;
    let Some(update) = choose(&updates) else {
        if !updates.is_empty() {
            BuildLog::terminal_only()
                .step("No branch pushed (only tags or deletions): nothing to deploy");
        }
        return Ok(());
    };
    let repo = root.repo_dir(app);
    adopt_head(&repo, &update.name);
    pipeline::deploy(
        root,
        app,
        &Target {
            rev: update.new.clone(),
            expect: Some((update.name.clone(), old_value(update))),
            from_hook: true,
        },
    )
}

/// The hook git runs before updating refs; its exit status accepts or refuses the push.
const HOOK: &str = "pre-receive";

/// One `old new ref` line of the hook's input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    pub name: String,
}

impl RefUpdate {
    fn is_deletion(&self) -> bool {
        is_zero(&self.new)
    }
}

fn is_zero(id: &str) -> bool {
    !id.is_empty() && id.bytes().all(|b| b == b'0')
}

/// Parses the hook's stdin; malformed lines are an error (git never sends them).
pub fn read_updates(input: &mut dyn BufRead) -> Result<Vec<RefUpdate>, DeployError> {
    let mut updates = Vec::new();
    for line in input.lines() {
        let line = line.doing(|| "cannot read the hook's input".to_owned())?;
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(old), Some(new), Some(name), None) => updates.push(RefUpdate {
                old: old.to_owned(),
                new: new.to_owned(),
                name: name.to_owned(),
            }),
            _ => {
                return Err(DeployError::refused(format!(
                    "unexpected hook input line '{line}'"
                )));
            }
        }
    }
    Ok(updates)
}

/// The one update a push deploys: a branch (not a tag, not a deletion), `main` first, then
/// `master`, then the first branch pushed.
pub fn choose(updates: &[RefUpdate]) -> Option<&RefUpdate> {
    let branches: Vec<&RefUpdate> = updates
        .iter()
        .filter(|u| u.name.starts_with("refs/heads/") && !u.is_deletion())
        .collect();
    ["refs/heads/main", "refs/heads/master"]
        .iter()
        .find_map(|wanted| branches.iter().find(|u| u.name == *wanted))
        .or(branches.first())
        .copied()
}

/// The value a ref had before the push, `None` if it is being created.
pub fn old_value(update: &RefUpdate) -> Option<String> {
    (!is_zero(&update.old)).then(|| update.old.clone())
}

/// The hook script: runs this very `piku` binary with the hook's stdin.
fn hook_script(root: &Path, exe: &Path, app: &AppName) -> String {
    let q = |p: &Path| shell_words::quote(&p.to_string_lossy()).into_owned();
    format!(
        "#!/bin/sh\n\
         # Written by piku: deploys the pushed branch; a failed deploy refuses the push.\n\
         PIKU_ROOT={root}\n\
         export PIKU_ROOT\n\
         exec {exe} git-hook {app}\n",
        root = q(root),
        exe = q(exe),
        app = shell_words::quote(app.as_str()),
    )
}

/// Creates `repos/<app>` if needed and (re)writes its hook so it calls the current binary.
pub fn prepare_repo(root: &PikuRoot, app: &AppName) -> Result<PathBuf, DeployError> {
    let repo = root.repo_dir(app);
    if !repo.join("HEAD").is_file() {
        files::create_dir(&repo)?;
        let status = Command::new("git")
            .args(["init", "--quiet", "--bare"])
            .arg(&repo)
            .status()
            .doing(|| "cannot run git".to_owned())?;
        if !status.success() {
            return Err(DeployError::Failed {
                what: format!("git init of '{}'", repo.display()),
                status,
            });
        }
    }
    let exe = std::env::current_exe().doing(|| "cannot find the piku executable".to_owned())?;
    let hooks = root.repo_hooks(app);
    files::create_dir(&hooks)?;
    let script = hook_script(root.path(), &exe, app);
    let hook = hooks.join(HOOK);
    if std::fs::read_to_string(&hook).ok().as_deref() != Some(script.as_str()) {
        files::write(&hook, script.as_bytes(), 0o755)?;
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
        .cannot("make executable", &hook)?;
    // A repo first pushed to piku has a post-receive that would deploy a second time.
    let legacy = hooks.join("post-receive");
    if std::fs::read_to_string(&legacy).is_ok_and(|s| s.contains("git-hook")) {
        std::fs::remove_file(&legacy).cannot("remove", &legacy)?;
    }
    Ok(repo)
}

/// Runs `git <service> <repo>` with the ssh session's stdio; returns its exit code.
fn serve(service: &str, repo: &Path) -> Result<i32, DeployError> {
    serve_with_env(service, repo, &[])
}

/// [`serve`] with extra environment variables for git (and so for its hooks).
fn serve_with_env(service: &str, repo: &Path, env: &[(&str, &str)]) -> Result<i32, DeployError> {
    let status = Command::new("git")
        .envs(env.iter().copied())
        .arg(service)
        .arg(repo)
        .status()
        .doing(|| format!("cannot run git {service}"))?;
    Ok(status.code().unwrap_or(1))
}

/// Points the bare repo's HEAD at `branch` if HEAD names a branch that does not exist (the
/// first push of `main` to a repo whose default is `master`), so `git clone` checks it out.
fn adopt_head(repo: &Path, branch: &str) {
    let head = Command::new("git")
        .arg("--git-dir")
        .arg(repo)
        .args(["symbolic-ref", "--quiet", "HEAD"])
        .output();
    let Ok(head) = head else { return };
    let current = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    if ref_value(repo, &current).is_none() {
        let mut cmd = Command::new("git");
        // Inside the hook git forbids ref updates while the quarantine variables are set.
        let _ = clean_git_env(&mut cmd)
            .arg("--git-dir")
            .arg(repo)
            .args(["symbolic-ref", "HEAD", branch])
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: &str = "0000000000000000000000000000000000000000";
    const A: &str = "1111111111111111111111111111111111111111";

    fn update(name: &str, new: &str) -> RefUpdate {
        RefUpdate {
            old: Z.into(),
            new: new.into(),
            name: name.into(),
        }
    }

    #[test]
    fn one_branch_is_chosen_main_first_and_tags_and_deletions_ignored() {
        let ups = vec![
            update("refs/tags/v1", A),
            update("refs/heads/feature", A),
            update("refs/heads/master", A),
            update("refs/heads/main", A),
        ];
        assert_eq!(choose(&ups).unwrap().name, "refs/heads/main");
        assert_eq!(choose(&ups[..3]).unwrap().name, "refs/heads/master");
        assert_eq!(choose(&ups[..2]).unwrap().name, "refs/heads/feature");
        assert_eq!(choose(&ups[..1]), None);
        assert_eq!(choose(&[update("refs/heads/main", Z)]), None);
    }

    #[test]
    fn hook_input_is_parsed_and_garbage_refused() {
        let text = format!("{Z} {A} refs/heads/main\n\n");
        let ups = read_updates(&mut text.as_bytes()).unwrap();
        assert_eq!(ups, [update("refs/heads/main", A)]);
        assert_eq!(old_value(&ups[0]), None);
        assert!(read_updates(&mut "x y".as_bytes()).is_err());
    }

    #[test]
    fn the_hook_script_quotes_paths() {
        let app: AppName = "blog".parse().unwrap();
        let script = hook_script(Path::new("/srv/my piku"), Path::new("/opt/pi'ku"), &app);
        assert!(script.contains("PIKU_ROOT='/srv/my piku'\n"), "{script}");
        assert!(
            script.contains("exec '/opt/pi'\\''ku' git-hook blog\n"),
            "{script}"
        );
    }
}
