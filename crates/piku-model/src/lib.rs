//! The piku app model: everything about an app that can be known without running it.
//!
//! - [`paths`]: the `$PIKU_ROOT` directory layout ([`PikuRoot`]).
//! - [`app_name`]: the one rule every app name must pass ([`AppName`]).
//! - [`procfile`]: parsing a `Procfile` into process kinds ([`parse_procfile`]).
//! - [`env`](mod@env): piku-compatible `ENV` files with `$VAR` expansion ([`parse_env`]).
//! - [`scaling`]: `SCALING` files and `ps:scale` arguments ([`parse_scaling`]).
//! - [`kind`]: process kind names, instance caps and [`InstanceId`] (`web.1`).
//! - [`cron`]: cron schedules for `cron*` Procfile kinds ([`CronSchedule`]).
//! - [`front`]: the HTTP path's timeouts and body limit (`PIKU_RESPONSE_TIMEOUT`, …)
//!   ([`FrontSettings`]).
//! - [`limits`]: per-instance resource limits (`PIKU_MEMORY_MAX`, …) ([`Limits`]).
//! - [`problems`]: [`Problems`], every problem of one input at once.
//!
//! The crate is pure: it never touches the disk except [`PikuRoot::create_layout`], and it
//! never sanitises input silently. Every parser either returns what it was given or one-line
//! errors naming each problem (and its line number where there is one): a file parser reports
//! every bad line at once. No error type here has a `source()`: each message is complete, so
//! an error chain printed with `{:#}` says each cause once.

pub mod app_name;
pub mod cron;
pub mod env;
pub mod front;
pub mod kind;
pub mod limits;
pub mod paths;
pub mod problems;
pub mod procfile;
pub mod scaling;

pub use app_name::{AppName, AppNameRule, InvalidAppName, MAX_APP_NAME_LEN};
pub use cron::{CronError, CronSchedule, split_cron_line};
pub use env::{
    EnvError, EnvErrors, EnvKeyError, check_env_key, expand_vars, parse_env, parse_env_literal,
    render_env,
};
pub use front::{FrontSettingError, FrontSettings};
pub use kind::{
    InstanceId, KindError, MAX_INSTANCES_PER_APP, MAX_INSTANCES_PER_KIND, MAX_KIND_LEN,
    check_app_total, check_count, check_kind, is_valid_kind, running_count,
};
pub use limits::{LimitError, Limits};
pub use paths::{ModelError, PikuRoot};
pub use problems::Problems;
pub use procfile::{
    ProcessClass, Procfile, ProcfileEntry, ProcfileError, ProcfileErrors, ProcfileProblem,
    parse_procfile,
};
pub use scaling::{ScalingError, ScalingErrors, parse_scale_args, parse_scaling, render_scaling};

/// An app's environment: variable name to value, kept sorted so rendering is stable.
pub type EnvMap = std::collections::BTreeMap<String, String>;
