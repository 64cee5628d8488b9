//! Which Python an app asks for, and which interpreter on the server it gets.
//!
//! As Heroku and piku read it, first found wins: `PYTHON_VERSION` (ENV or `config:set`), the
//! checkout's `.python-version` (`3.12`, `3.12.1`), its `runtime.txt` (`python-3.12.1`). The
//! interpreter is `python<major>.<minor>` when that is on `PATH`, else `python3`, and the
//! build says so in one line naming the interpreter it used. The server's interpreters are
//! what the operator installed: nothing is downloaded.

use std::ffi::OsStr;
use std::path::Path;

use piku_model::EnvMap;

use crate::checkout::read_file;
use crate::error::DeployError;
use crate::runtime::build::find_program;

/// The interpreter used when the app asks for nothing, or for what is not installed.
pub const DEFAULT: &str = "python3";

/// A version the app asked for, and where it said so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// As written, trimmed (`3.12`, `3.12.1`, `3`).
    pub version: String,
    /// `PYTHON_VERSION`, `.python-version` or `runtime.txt`.
    pub source: &'static str,
}

/// The version the app asks for, if any.
pub fn wanted(env: &EnvMap, src: &Path) -> Result<Option<Wanted>, DeployError> {
    if let Some(v) = env.get("PYTHON_VERSION").map(|v| v.trim())
        && !v.is_empty()
    {
        return Ok(Some(Wanted {
            version: v.to_owned(),
            source: "PYTHON_VERSION",
        }));
    }
    if let Some(text) = read_file(src, ".python-version")?
        && let Some(v) = first_line(&text)
    {
        return Ok(Some(Wanted {
            version: v.to_owned(),
            source: ".python-version",
        }));
    }
    if let Some(text) = read_file(src, "runtime.txt")?
        && let Some(v) = first_line(&text)
    {
        return Ok(Some(Wanted {
            version: v.strip_prefix("python-").unwrap_or(v).to_owned(),
            source: "runtime.txt",
        }));
    }
    Ok(None)
}

/// The first line that is not blank or a comment (`.python-version` allows both).
fn first_line(text: &str) -> Option<&str> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The interpreter for `wanted` on `path`: `python<major>[.<minor>]` when installed, else
/// [`DEFAULT`] and `Some(why)`, the line to show.
pub fn interpreter(wanted: Option<&Wanted>, path: &OsStr) -> (String, Option<String>) {
    let Some(wanted) = wanted else {
        return (DEFAULT.to_owned(), None);
    };
    let program = match program_for(&wanted.version) {
        Some(program) => program,
        None => {
            return (
                DEFAULT.to_owned(),
                Some(format!(
                    "{}='{}' is not a Python version like 3.12; using {DEFAULT}",
                    wanted.source, wanted.version
                )),
            );
        }
    };
    if find_program(&program, path).is_some() {
        return (program, None);
    }
    (
        DEFAULT.to_owned(),
        Some(format!(
            "Python {} (from {}) is not installed on the server (no '{program}'); using {DEFAULT}",
            wanted.version, wanted.source
        )),
    )
}

/// `python3.12` for `3.12` or `3.12.1`, `python3` for `3`; `None` for what is no version.
fn program_for(version: &str) -> Option<String> {
    let version = version.strip_prefix('v').unwrap_or(version);
    let parts: Vec<&str> = version.split('.').collect();
    if parts.is_empty()
        || parts.len() > 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    Some(match parts.as_slice() {
        [major] => format!("python{major}"),
        [major, minor, ..] => format!("python{major}.{minor}"),
        [] => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkout(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn python_version_wins_then_python_version_file_then_runtime_txt() {
        let dir = checkout(&[
            (".python-version", "# pinned\n3.12\n"),
            ("runtime.txt", "python-3.10.4\n"),
        ]);
        let env = EnvMap::from([("PYTHON_VERSION".into(), " 3.11 ".into())]);
        let w = wanted(&env, dir.path()).unwrap().unwrap();
        assert_eq!((w.version.as_str(), w.source), ("3.11", "PYTHON_VERSION"));
        let w = wanted(&EnvMap::new(), dir.path()).unwrap().unwrap();
        assert_eq!((w.version.as_str(), w.source), ("3.12", ".python-version"));
        let dir = checkout(&[("runtime.txt", "python-3.10.4\n")]);
        let w = wanted(&EnvMap::new(), dir.path()).unwrap().unwrap();
        assert_eq!((w.version.as_str(), w.source), ("3.10.4", "runtime.txt"));
        assert_eq!(wanted(&EnvMap::new(), checkout(&[]).path()).unwrap(), None);
    }

    #[test]
    fn an_installed_interpreter_is_used_and_a_missing_one_is_named() {
        let bin = tempfile::tempdir().unwrap();
        let exe = bin.path().join("python3.12");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = bin.path().as_os_str();
        let want = |v: &str| Wanted {
            version: v.into(),
            source: ".python-version",
        };
        assert_eq!(interpreter(None, path), ("python3".into(), None));
        assert_eq!(
            interpreter(Some(&want("3.12.1")), path),
            ("python3.12".into(), None)
        );
        let (program, why) = interpreter(Some(&want("3.9")), path);
        assert_eq!(program, "python3");
        assert_eq!(
            why.unwrap(),
            "Python 3.9 (from .python-version) is not installed on the server (no \
             'python3.9'); using python3"
        );
        let (program, why) = interpreter(Some(&want("latest")), path);
        assert_eq!(program, "python3");
        assert!(why.unwrap().contains("not a Python version"));
    }
}
