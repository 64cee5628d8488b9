//! `piku setup` (the `$PIKU_ROOT` layout) and `piku setup:ssh <file|->` (authorize a key).
//!
//! `setup:ssh` appends one line per key to `~/.ssh/authorized_keys`, in piku's format but
//! without `$SSH_ORIGINAL_COMMAND` (this binary reads that variable itself, see `main.rs`):
//!
//! ```text
//! command="FINGERPRINT=<fp> NAME=default /abs/path/piku",no-agent-forwarding,no-user-rc,no-X11-forwarding,no-port-forwarding <key>
//! ```
//!
//! The path is the running binary's absolute path. Each key must start with its type: a line
//! that carries its own options (`command=…`, `from=…`) is refused, since options after ours
//! could not be trusted to mean what the operator intended. A key already present is not
//! added twice.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow, bail};

use super::Ctx;
use super::args::Args;
use crate::output;

/// The options piku put on every key; a pty stays allowed so `ssh -t … run app bash` works.
const KEY_OPTIONS: &str = "no-agent-forwarding,no-user-rc,no-X11-forwarding,no-port-forwarding";

pub fn setup(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    Args::new("setup", words).finish()?;
    let created = ctx
        .root
        .create_layout()
        .with_context(|| format!("cannot set up '{}'", ctx.root.path().display()))?;
    for dir in created {
        output::say(format_args!("Creating '{}'.", dir.display()));
    }
    Ok(0)
}

pub fn setup_ssh(_ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("setup:ssh", words);
    let file = args.required("public key file (or - for stdin)")?;
    args.finish()?;
    let text = if file == "-" {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the public key from stdin")?;
        text
    } else {
        match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                bail!("public key file '{file}' not found.")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read '{file}'")),
        }
    };
    let keys =
        key_lines(&text).map_err(|why| anyhow!("invalid public key file '{file}': {why}"))?;
    let piku = forced_command_path()?;
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("HOME is not set; cannot find ~/.ssh/authorized_keys")?;
    let ssh_dir = PathBuf::from(home).join(".ssh");
    let authorized = ssh_dir.join("authorized_keys");
    for key in keys {
        let fingerprint =
            fingerprint(key).map_err(|why| anyhow!("invalid public key file '{file}': {why}"))?;
        if already_authorized(&authorized, key)? {
            output::say(format_args!("Key '{fingerprint}' is already authorized."));
            continue;
        }
        output::say(format_args!("Adding key '{fingerprint}'."));
        append_key(
            &ssh_dir,
            &authorized,
            &authorized_keys_line(&fingerprint, &piku, key),
        )?;
    }
    Ok(0)
}

/// The key lines of a public key file (blank lines and comments skipped), each starting with
/// a key type.
fn key_lines(text: &str) -> Result<Vec<&str>, String> {
    let keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if keys.is_empty() {
        return Err("no key in it".into());
    }
    for key in &keys {
        let kind = key.split_whitespace().next().unwrap_or_default();
        let known = ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"]
            .iter()
            .any(|prefix| kind.starts_with(prefix));
        if !known {
            return Err(format!(
                "a key must start with its type (ssh-ed25519, ssh-rsa, …), not '{}'",
                kind.escape_debug()
            ));
        }
    }
    Ok(keys)
}

/// `ssh-keygen -lf -` on one key: field 2 of `256 SHA256:… comment (ED25519)`.
fn fingerprint(key: &str) -> Result<String, String> {
    let mut child = Command::new("ssh-keygen")
        .args(["-l", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ssh-keygen (install openssh-client): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error shows up as ssh-keygen's failure below.
        let _ = writeln!(stdin, "{key}");
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ssh-keygen failed: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.split_whitespace().nth(1) {
        Some(fp) if out.status.success() => Ok(fp.to_owned()),
        _ => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
    }
}

/// The absolute path of this binary, quoted for the login shell that runs the forced command
/// when it holds anything but plain path characters.
fn forced_command_path() -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the path of the piku binary")?;
    let exe = exe
        .to_str()
        .context("the path of the piku binary is not valid UTF-8")?;
    let plain = exe
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,@".contains(c));
    if plain {
        return Ok(exe.to_owned());
    }
    if exe.contains(['"', '\'', '\\', '\n', '\r']) {
        bail!(
            "the path of the piku binary '{}' cannot be written into authorized_keys",
            exe.escape_debug()
        );
    }
    Ok(format!("'{exe}'"))
}

fn authorized_keys_line(fingerprint: &str, piku: &str, key: &str) -> String {
    format!("command=\"FINGERPRINT={fingerprint} NAME=default {piku}\",{KEY_OPTIONS} {key}")
}

/// Whether `key` (type and base64 blob) already appears in the file.
fn already_authorized(authorized: &Path, key: &str) -> anyhow::Result<bool> {
    let mut parts = key.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Ok(false);
    };
    let text = match fs::read_to_string(authorized) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("cannot read '{}'", authorized.display())),
    };
    Ok(text.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.windows(2).any(|w| w[0] == kind && w[1] == blob)
    }))
}

/// Appends `line`, with `~/.ssh` at 0700 and the file at 0600 as sshd's StrictModes wants.
fn append_key(ssh_dir: &Path, authorized: &Path, line: &str) -> anyhow::Result<()> {
    fs::create_dir_all(ssh_dir)
        .with_context(|| format!("cannot create '{}'", ssh_dir.display()))?;
    fs::set_permissions(ssh_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod '{}'", ssh_dir.display()))?;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(authorized)
        .with_context(|| format!("cannot open '{}'", authorized.display()))?;
    // A file whose last line lacks its newline would swallow ours.
    let needs_newline = fs::read(authorized)
        .map(|bytes| bytes.last().is_some_and(|b| *b != b'\n'))
        .unwrap_or(false);
    let text = if needs_newline {
        format!("\n{line}\n")
    } else {
        format!("{line}\n")
    };
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write '{}'", authorized.display()))?;
    fs::set_permissions(authorized, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod '{}'", authorized.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_lines_skip_comments_and_refuse_options() {
        let keys = key_lines("# mine\n\nssh-ed25519 AAAA me@host\n").unwrap();
        assert_eq!(keys, ["ssh-ed25519 AAAA me@host"]);
        assert!(key_lines("").is_err());
        let err = key_lines("command=\"sh\" ssh-ed25519 AAAA\n").unwrap_err();
        assert!(err.contains("must start with its type"), "{err}");
    }

    #[test]
    fn line_has_piku_format() {
        assert_eq!(
            authorized_keys_line("SHA256:abc", "/usr/bin/piku", "ssh-ed25519 AAAA c"),
            "command=\"FINGERPRINT=SHA256:abc NAME=default /usr/bin/piku\",no-agent-forwarding,no-user-rc,no-X11-forwarding,no-port-forwarding ssh-ed25519 AAAA c"
        );
    }
}
