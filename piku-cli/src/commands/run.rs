//! `piku run <app> <command> [args…]`: a one-off command in the app's environment, run as piku
//! runs it.
//!
//! piku joined the command's words with spaces and gave the line to `/bin/sh -c`, so
//! `run app -- 'python manage.py migrate && python manage.py check'` runs both commands and
//! `run app -- sh -c 'echo $HOME'` reaches the inner shell with its quotes. Over ssh the words
//! are those piku saw: the login shell split `$SSH_ORIGINAL_COMMAND` on whitespace without
//! removing quotes, so here the command is the ssh command's text after `run <app>`, split on
//! whitespace and joined with single spaces (run locally, it is argv joined the same way).
//! piku's click parser dropped the first `--` (`run app ls -- -al`); so do we. `run` already
//! executes anything as the app's user, so the shell adds no power.
//!
//! The command runs with cwd `apps/<app>` (the live checkout) and the inherited session
//! environment overlaid with `envs/<app>/LIVE_ENV`. `exec` replaces this process with the
//! shell, so the command gets our stdio as is: a real terminal when the client used `ssh -t`
//! (piku's `shell` does), pipes otherwise; signals from the terminal reach it directly; and its
//! exit status is the session's (piku exited 0 whatever the command did).

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::bail;
use piku_deploy::app_config::read_live_env;

use super::Ctx;
use super::args::{Args, is_deployed};

/// The shell piku ran commands with (`Popen(…, shell=True)`).
const SHELL: &str = "/bin/sh";

pub fn run(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("run", words);
    let app = args.existing_app(ctx)?;
    let command = args.at_least_one("command")?;
    let line = match ctx.ssh_command.as_deref() {
        Some(text) => shell_line(text.split_whitespace().skip(2)),
        None => shell_line(command.iter().map(String::as_str)),
    };
    if line.is_empty() {
        bail!("missing command; usage: piku run <app> <command> [args…]");
    }
    if !is_deployed(&ctx.root, &app) {
        bail!("app '{app}' is not deployed yet (no live release to run in)");
    }
    let env = read_live_env(&ctx.root, &app)?.unwrap_or_default();
    let workdir = ctx.root.app_dir(&app);
    // `exec` only returns on failure.
    let err = Command::new(SHELL)
        .arg("-c")
        .arg(&line)
        .envs(&env)
        // The logical path, as after `cd apps/<app>`, rather than the release it links to.
        .env("PWD", &workdir)
        .current_dir(&workdir)
        .exec();
    crate::output::error(&anyhow::anyhow!("cannot run {SHELL}: {err}"));
    Ok(126)
}

/// The words after `run <app>` as piku's shell got them: the first `--` dropped, the rest
/// joined with single spaces.
fn shell_line<'a>(words: impl Iterator<Item = &'a str>) -> String {
    let mut words: Vec<&str> = words.collect();
    if let Some(dashes) = words.iter().position(|w| *w == "--") {
        words.remove(dashes);
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn over_ssh(text: &str) -> String {
        shell_line(text.split_whitespace().skip(2))
    }

    #[test]
    fn the_ssh_text_after_run_app_is_the_shell_line_as_piku_made_it() {
        assert_eq!(
            over_ssh("run app -- python manage.py migrate && python manage.py check"),
            "python manage.py migrate && python manage.py check"
        );
        // Quotes reach the shell as the client sent them; whitespace runs collapse as they
        // did in piku's word splitting.
        assert_eq!(
            over_ssh("run 'app' sh -c 'echo  $HOME'"),
            "sh -c 'echo $HOME'"
        );
        assert_eq!(over_ssh("run app ls -- -al"), "ls -al");
        assert_eq!(over_ssh("run app --"), "");
    }

    #[test]
    fn local_words_are_joined_the_same_way() {
        let words = ["echo", "a b", "--", "c"];
        assert_eq!(shell_line(words.into_iter()), "echo a b c");
    }
}
