//! `piku`: the forced command sshd runs for every push and every `ssh piku@host <cmd>`.
//!
//! This crate is the command surface: reading the ssh command, the dispatch table and each
//! command's arguments ([`commands`]), talking to the supervisor ([`daemon`]) and printing
//! ([`output`]). What a push, a rollback or a config change does is in `piku-deploy`.
//!
//! # How sshd invokes it
//!
//! `piku setup:ssh KEYFILE` writes one `~/.ssh/authorized_keys` line per key, in piku's format
//! (so tooling that reads piku's lines keeps working), minus the `$SSH_ORIGINAL_COMMAND`:
//!
//! ```text
//! command="FINGERPRINT=<fp> NAME=default /abs/path/to/piku",no-agent-forwarding,no-user-rc,no-X11-forwarding,no-port-forwarding ssh-ed25519 AAAA… comment
//! ```
//!
//! sshd puts what the client asked for (`git-receive-pack 'app'`, `config:set app X="a b"`)
//! in `SSH_ORIGINAL_COMMAND`. **When that variable is set, argv is ignored** and the variable is
//! split with POSIX shell-word rules (quotes and backslashes, no expansion, never through a
//! shell). piku instead let the login shell word-split `$SSH_ORIGINAL_COMMAND` unquoted, which
//! kept quotes literally and broke values with spaces (piku#297); existing piku lines of the form
//! `command="… piku $SSH_ORIGINAL_COMMAND"` still work with this binary because the variable is
//! re-parsed properly whatever argv the shell produced (`run` alone goes back to the text, to
//! run it through a shell as piku did). The variable is then removed from our
//! environment so nothing we start (git, the post-receive hook calling `piku git-hook`, builds,
//! `piku run`) mistakes itself for a fresh ssh session.
//!
//! Without `SSH_ORIGINAL_COMMAND` (a local admin running `piku setup`, the git hook), argv is
//! the command. An empty command prints the help.
//!
//! # Exit status
//!
//! 0 on success; on failure one `Error: …` line on stderr (one per problem when a file or the
//! app's settings had several) and a non-zero status (piku printed errors on stdout and exited 0). `run` passes the command's own status through; the git
//! commands pass git's.

mod commands;
mod daemon;
mod output;

use std::process::ExitCode;

use anyhow::{Context, anyhow};

fn main() -> ExitCode {
    let result = command_words().and_then(|(words, original)| commands::dispatch(words, original));
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            output::error(&err);
            ExitCode::FAILURE
        }
    }
}

/// The command to run: `SSH_ORIGINAL_COMMAND` split into shell words when sshd set it (with
/// the text itself, which `run` needs), otherwise argv without the program name.
fn command_words() -> anyhow::Result<(Vec<String>, Option<String>)> {
    if let Some(original) = std::env::var_os("SSH_ORIGINAL_COMMAND") {
        // SAFETY: nothing has started a thread yet (this runs first thing in `main`, before any
        // command code), so no other thread can be reading the environment concurrently.
        unsafe { std::env::remove_var("SSH_ORIGINAL_COMMAND") };
        let original = original
            .into_string()
            .map_err(|_| anyhow!("the ssh command is not valid UTF-8"))?;
        return Ok((split_command(&original)?, Some(original)));
    }
    let words = std::env::args_os()
        .skip(1)
        .map(|arg| {
            arg.into_string()
                .map_err(|arg| anyhow!("argument {arg:?} is not valid UTF-8"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((words, None))
}

/// Splits an ssh command line into words with POSIX shell quoting rules, without expanding
/// anything: `config:set app X="a b"` gives `["config:set", "app", "X=a b"]`.
fn split_command(line: &str) -> anyhow::Result<Vec<String>> {
    shell_words::split(line)
        .with_context(|| format!("cannot parse the ssh command {line:?} (unbalanced quotes?)"))
}

#[cfg(test)]
mod tests {
    use super::split_command;

    #[test]
    fn quotes_group_words_and_disappear() {
        assert_eq!(
            split_command(r#"config:set app X="a b" Y='c d' Z=e\ f"#).unwrap(),
            ["config:set", "app", "X=a b", "Y=c d", "Z=e f"]
        );
        assert_eq!(
            split_command("git-receive-pack 'app'").unwrap(),
            ["git-receive-pack", "app"]
        );
    }

    #[test]
    fn nothing_is_expanded() {
        assert_eq!(
            split_command("run app echo $HOME `id` $(id) ; rm").unwrap(),
            ["run", "app", "echo", "$HOME", "`id`", "$(id)", ";", "rm"]
        );
    }

    #[test]
    fn unbalanced_quotes_are_an_error() {
        let err = split_command("config:set app X=\"a b").unwrap_err();
        assert!(format!("{err:#}").contains("unbalanced quotes"), "{err:#}");
    }
}
