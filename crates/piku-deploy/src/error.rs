//! [`DeployError`], the crate's one error type, and the two helpers that build it at the call
//! site ([`IoContext`] for `io::Result`, [`Context`] to say what was being done).
//!
//! Every variant prints as one complete line naming what failed, its lower-level cause
//! included, and none exposes that cause again through `source()`: an error chain printed with
//! `{:#}` at the binary's edge says each cause once. When a file or the app's settings had
//! several problems, [`DeployError::lines`] gives one line per problem, which is how the push
//! shows them.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use piku_model::{EnvErrors, ProcfileErrors, ScalingErrors};
use piku_nginx::{NginxError, SettingsErrors};
use piku_proto::ProtoError;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A refusal, or a state the user has to act on, as a complete sentence.
    #[error("{0}")]
    Refused(String),
    /// The app's settings take what another app has (a host name, a cache directory).
    #[error("{0}")]
    Conflict(String),
    /// An operation on a file or a program failed: `doing` says which (`cannot create '/x'`,
    /// `pip install: cannot start 'pip'`), `error` why.
    #[error("{doing}: {error}")]
    Io { doing: String, error: io::Error },
    /// A command of the build (or git) ran and failed.
    #[error("{}", failed(what, status))]
    Failed { what: String, status: ExitStatus },
    /// A tool refused with a message of its own (git's stderr).
    #[error("{what}: {message}")]
    Tool { what: String, message: String },
    /// A release record that cannot be read or written.
    #[error("{doing}: {error}")]
    Record {
        doing: String,
        error: serde_json::Error,
    },
    /// The checkout's Procfile (every bad line).
    #[error(transparent)]
    Procfile(#[from] ProcfileErrors),
    /// An ENV file (every bad line); `what` names the file and says it is invalid.
    #[error("{what}: {errors}")]
    Env { what: String, errors: EnvErrors },
    /// A SCALING file (every bad line).
    #[error("'{path}': {errors}")]
    Scaling { path: String, errors: ScalingErrors },
    /// The app's `NGINX_*` settings (every bad one).
    #[error(transparent)]
    NginxSettings(#[from] SettingsErrors),
    #[error(transparent)]
    Nginx(#[from] NginxError),
    /// The supervisor is not running: how to start it.
    #[error(
        "the piku supervisor is not running (no listener on '{}'); start it with \
         `piku-supervisor --root {}` or `systemctl start piku-supervisor`",
        socket.display(),
        root.display()
    )]
    SupervisorDown { socket: PathBuf, root: PathBuf },
    #[error(transparent)]
    Supervisor(#[from] ProtoError),
    /// What was being done when `error` happened.
    #[error("{context}: {error}")]
    Context {
        context: String,
        error: Box<DeployError>,
    },
}

fn failed(what: &str, status: &ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("{what} failed (exit status {code})"),
        None => format!("{what} was killed ({status})"),
    }
}

impl DeployError {
    /// Shorthand for [`DeployError::Refused`].
    pub fn refused(sentence: impl fmt::Display) -> DeployError {
        DeployError::Refused(sentence.to_string())
    }

    /// Whether the change itself was refused (bad settings, nginx's or the supervisor's
    /// refusal), as opposed to a failure to carry it out (daemon down, disk error): a
    /// refused `config:set` is undone, one that could not be applied is kept.
    pub fn is_refusal(&self) -> bool {
        match self {
            DeployError::Conflict(_)
            | DeployError::Env { .. }
            | DeployError::Scaling { .. }
            | DeployError::NginxSettings(_)
            | DeployError::Nginx(_)
            | DeployError::Supervisor(ProtoError::Refused(_)) => true,
            DeployError::Context { error, .. } => error.is_refusal(),
            _ => false,
        }
    }

    /// One line per problem: several when a file or the app's settings had several problems
    /// (each with what was being done before it), else the error itself.
    pub fn lines(&self) -> Vec<String> {
        fn each<E: fmt::Display>(list: impl IntoIterator<Item = E>) -> Vec<String> {
            list.into_iter().map(|e| e.to_string()).collect()
        }
        match self {
            DeployError::Procfile(errors) => each(errors),
            DeployError::NginxSettings(errors) => each(errors),
            DeployError::Env { what, errors } => {
                errors.iter().map(|e| format!("{what}: {e}")).collect()
            }
            DeployError::Scaling { path, errors } => {
                errors.iter().map(|e| format!("'{path}': {e}")).collect()
            }
            DeployError::Context { context, error } => error
                .lines()
                .into_iter()
                .map(|line| format!("{context}: {line}"))
                .collect(),
            other => vec![other.to_string()],
        }
    }
}

/// Names what an `io::Result` was doing, as a [`DeployError::Io`].
pub trait IoContext<T> {
    /// `cannot {action} '{path}': {cause}`.
    fn cannot(self, action: &str, path: &Path) -> Result<T, DeployError>;
    /// `{doing}: {cause}`.
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, DeployError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn cannot(self, action: &str, path: &Path) -> Result<T, DeployError> {
        self.doing(|| format!("cannot {action} '{}'", path.display()))
    }

    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, DeployError> {
        self.map_err(|error| DeployError::Io {
            doing: doing(),
            error,
        })
    }
}

/// Says what was being done when a deploy step failed ([`DeployError::Context`]).
pub trait Context<T> {
    fn context(self, context: impl fmt::Display) -> Result<T, DeployError>;
}

impl<T, E: Into<DeployError>> Context<T> for Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T, DeployError> {
        self.map_err(|error| DeployError::Context {
            context: context.to_string(),
            error: Box::new(error.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn causes_are_printed_once() {
        let err = Err::<(), _>(io::Error::new(io::ErrorKind::PermissionDenied, "denied"))
            .cannot("create", Path::new("/r/envs/blog"))
            .context("the release was not made")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the release was not made: cannot create '/r/envs/blog': denied"
        );
        assert!(err.source().is_none());
    }

    #[test]
    fn a_file_with_several_problems_gives_one_line_each_with_its_context() {
        let errors = piku_model::parse_procfile("nope\nweb:\n").unwrap_err();
        let err = Err::<(), _>(DeployError::from(errors))
            .context("while reading the live release")
            .unwrap_err();
        assert_eq!(
            err.lines(),
            [
                "while reading the live release: Procfile line 1: expected 'kind: command', found 'nope'",
                "while reading the live release: Procfile line 2: process kind 'web' has an empty command",
            ]
        );
        assert_eq!(DeployError::refused("no Procfile").lines(), ["no Procfile"]);
    }
}
