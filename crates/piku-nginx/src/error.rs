//! The one error type of the crate: every variant prints as a single line that names the
//! setting, file or command at fault.

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
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
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
        move |source| NginxError::Io { path, source }
    }
}
