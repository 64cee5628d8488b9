//! piku's build side: how a `git push` becomes a running release, and what the commands that
//! change an app's releases do. `piku` (the forced command) parses arguments and prints; the
//! work is here. It talks to the daemon only through `piku-proto`.
//!
//! A push, in the order the code runs:
//!
//! 1. [`git::receive_pack`]: the app's bare repo and `pre-receive` hook, the app's deploy lock
//!    ([`lock`]), then `git receive-pack`, which runs the hook: `piku git-hook <app>` →
//!    [`git::hook`].
//! 2. [`pipeline::deploy`]: a new release in the [`store`], [`checkout`] of the commit,
//!    `preflight`, the runtime's build ([`runtime`], one file per runtime), the `release`
//!    command.
//! 3. [`activate`]: the environment ([`env`](mod@env)), the front ([`front`]: nginx config, ACME,
//!    the wait until the app answers), the
//!    supervisor's `Request::Apply` ([`supervisor`]), then `LIVE_ENV`/`SCALING`
//!    ([`app_config`]) and `apps/<app>` switched to the new checkout.
//!
//! Everything the deploy prints goes through [`buildlog::BuildLog`] (stdout and the release's
//! `build.log`); every error is a [`DeployError`], one complete line per problem.
//!
//! Modules depend on each other in one direction only (no cycles): `git` → `pipeline` →
//! `activate` (`releases` → `activate` too) → `front`, `runtime`, `env`, `store`,
//! `app_config`, `supervisor` → the small parts everything uses (`checkout`, `lock`, `files`,
//! `buildlog`, `settings`, `error`). A runtime's file uses only `runtime::build`,
//! `runtime::deps` and the small parts, so it can be read and tested on its own.

pub mod activate;
pub mod app_config;
pub mod buildlog;
pub mod checkout;
pub mod env;
pub mod error;
pub mod files;
pub mod front;
pub mod git;
pub mod lock;
pub mod pipeline;
pub mod pushed;
pub mod releases;
pub mod runtime;
pub mod settings;
pub mod store;
pub mod supervisor;

pub use error::DeployError;
