//! The one error type of the crate: every variant prints as a single line that names the
//! setting, file or command at fault.
//!
//! Each message is complete, lower-level cause included, and no variant exposes that cause
//! again through `source()`: an error chain printed with `{:#}` says each cause once.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum NginxError {
    /// A setting from the app's ENV has a value we refuse (the message names the setting).
    #[error("{setting}: {problem}")]
    Setting {
        setting: &'static str,
        problem: String,
    },
    /// `nginx -t` rejected a new config; `message` is nginx's `[emerg]` line.
    #[error("nginx rejected {}: {message}", path.display())]
    Rejected { path: PathBuf, message: String },
    /// The full test before a reload (`nginx -T`, as nginx's own user) refused the
    /// configuration; `message` is nginx's line, naming the file at fault.
    #[error("nginx refused to reload: {message}")]
    Refused { message: String },
    /// The reload did not happen, or nginx did not show that it had (one line, with the fix).
    #[error("{message}")]
    NotReloaded { message: String },
    /// nginx (or systemctl) could not be run or failed to reload.
    #[error("{command}: {message}")]
    Command { command: String, message: String },
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Certificate generation or parsing.
    #[error("certificate {}: {message}", path.display())]
    Certificate { path: PathBuf, message: String },
    /// The ACME exchange failed.
    #[error("ACME: {0}")]
    Acme(String),
}

impl NginxError {
    pub(crate) fn setting(setting: &'static str, problem: impl Into<String>) -> NginxError {
        NginxError::Setting {
            setting,
            problem: problem.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> NginxError {
        let path = path.into();
        move |error| NginxError::Io { path, error }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn an_io_error_names_the_path_and_its_cause_once() {
        let err = NginxError::io("/r/nginx/blog.conf")(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "denied",
        ));
        assert_eq!(err.to_string(), "/r/nginx/blog.conf: denied");
        assert!(err.source().is_none());
    }
}
