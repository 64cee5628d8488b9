//! `piku run <app> <command> [args…]`: a one-off command in the app's environment.
//!
//! The command runs with cwd `apps/<app>` (the live checkout) and the inherited session
//! environment overlaid with `envs/<app>/LIVE_ENV`, exactly as the ssh words arrived: the
//! words are executed directly (`execvp`), never re-joined and re-parsed by a shell as piku
//! did, so `run app sh -c 'echo $HOME'` means what it says. For shell features, ask for a shell.
//! piku's click parser dropped the first `--` (`run app ls -- -al`); so do we.
//!
//! `exec` replaces this process, so the command gets our stdio as is: a real terminal when the
//! client used `ssh -t` (piku's `shell` does), pipes otherwise; signals from the terminal reach
//! it directly; and its exit status is the session's.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::bail;
use piku_deploy::app_config::read_live_env;

use super::Ctx;
use super::args::{Args, is_deployed};

pub fn run(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("run", words);
    let app = args.existing_app(ctx)?;
    let mut command = args.at_least_one("command")?;
    if let Some(dashes) = command.iter().position(|w| w == "--") {
        command.remove(dashes);
    }
    let Some((program, program_args)) = command.split_first() else {
        bail!("missing command; usage: piku run <app> <command> [args…]");
    };
    if !is_deployed(&ctx.root, &app) {
        bail!("app '{app}' is not deployed yet (no live release to run in)");
    }
    let env = read_live_env(&ctx.root, &app)?.unwrap_or_default();
    let workdir = ctx.root.app_dir(&app);
    // `exec` only returns on failure.
    let err = Command::new(program)
        .args(program_args)
        .envs(&env)
        // The logical path, as after `cd apps/<app>`, rather than the release it links to.
        .env("PWD", &workdir)
        .current_dir(&workdir)
        .exec();
    let status = if err.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    };
    crate::output::error(&anyhow::anyhow!(
        "cannot run '{}': {err}",
        program.escape_debug()
    ));
    Ok(status)
}
