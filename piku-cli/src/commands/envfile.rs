//! Reading and writing the small `KEY=value` / `kind:count` files under `envs/<app>/`.
//!
//! `ENV` (the `config:set` overrides) and `LIVE_ENV` are read **verbatim**: no `$VAR`
//! expansion, so `config:set app URL='$HOME/x'` stays `$HOME/x` however often it is rewritten
//! (expansion happens once, when a deploy merges the layers). Files are replaced atomically
//! (temp file + rename) so a concurrent deploy never reads half a file.

use std::fs;
use std::io;
use std::path::Path;

use anyhow::{Context, bail};
use piku_model::{EnvMap, check_env_key};

/// The file's text, or `None` if it does not exist.
pub fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read '{}'", path.display())),
    }
}

/// Parses `KEY=value` lines without expanding anything (blank and `#` lines skipped, split on
/// the first `=`, both sides trimmed, keys checked).
pub fn parse_verbatim(text: &str, path: &Path) -> anyhow::Result<EnvMap> {
    let mut env = EnvMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            bail!(
                "'{}' line {}: malformed setting '{}'",
                path.display(),
                index + 1,
                line.escape_debug()
            );
        };
        let key = key.trim();
        check_env_key(key).with_context(|| format!("'{}' line {}", path.display(), index + 1))?;
        env.insert(key.to_owned(), value.trim().to_owned());
    }
    Ok(env)
}

/// Reads an env file verbatim; `None` if it does not exist.
pub fn read_env(path: &Path) -> anyhow::Result<Option<EnvMap>> {
    read_optional(path)?
        .map(|text| parse_verbatim(&text, path))
        .transpose()
}

/// Replaces `path` with `text` atomically, mode 0600 (ENV files hold secrets), creating the
/// parent directory if needed.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("'{}' has no parent directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    piku_fs::write_atomic(path, text.as_bytes(), piku_fs::MODE_PRIVATE)
        .with_context(|| format!("cannot write '{}'", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_verbatim() {
        let env = parse_verbatim("# c\nA=1\nB = $A/x \nC=\"q\"\n", Path::new("ENV")).unwrap();
        assert_eq!(env["A"], "1");
        assert_eq!(env["B"], "$A/x");
        assert_eq!(env["C"], "\"q\"");
    }

    #[test]
    fn malformed_lines_and_keys_are_errors() {
        let err = parse_verbatim("A=1\nnope\n", Path::new("ENV")).unwrap_err();
        assert_eq!(err.to_string(), "'ENV' line 2: malformed setting 'nope'");
        assert!(parse_verbatim("1A=x\n", Path::new("ENV")).is_err());
    }

    #[test]
    fn atomic_write_creates_the_directory_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("envs/app/ENV");
        write_atomic(&path, "A=1\n").unwrap();
        write_atomic(&path, "A=2\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "A=2\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
