//! End-to-end test harness: real `sshd`, real `git`, the real `piku` and `piku-supervisor`
//! binaries, all on 127.0.0.1 inside one temp dir per test.
//!
//! A test starts a [`Piku`] server, makes an app repo from `examples/` with
//! [`make_app_repo`], pushes it with [`Piku::git_push`] and talks to it with [`Piku::ssh`]
//! and [`http_get`]. Every process the harness starts is stopped by PID when its owner drops.
//!
//! Running: `cargo test -p piku-e2e` (the harness builds the binaries first; set
//! `PIKU_E2E_BIN_DIR` to use prebuilt ones). Needs `sshd`, `ssh`, `ssh-keygen`, `git`,
//! `python3` with venv, `nginx` and `wrk` (the HTTP front tests, [`Nginx`]), every runtime's
//! toolchain (`tests/runtimes.rs`), and PyPI, npm and crates.io for the apps that use them —
//! `scripts/install-test-deps` installs them as root. sshd logs in with a key whose forced command is our `piku`: as the
//! current user, or, when the tests run as root (CI), as the dedicated unprivileged account of
//! [`server_user()`], which runs the whole server side; as root the harness creates `/run/sshd`
//! if needed.

pub mod apps;
pub mod binaries;
pub mod http;
pub mod memory;
pub mod nginx;
pub mod process;
pub mod server;
pub mod server_user;
pub mod slowloris;
pub mod wait;

pub use apps::{AppRepo, copy_tree, example_dir, make_app_repo};
pub use binaries::{Binaries, binaries, repo_root};
pub use http::{Answer, get_ok, http_get, http_get_host};
pub use memory::{Memory, reset_peak};
pub use nginx::Nginx;
pub use process::{Run, Streaming, run_with_timeout};
pub use server::{Instance, Piku, free_port, git_command, instances_in, sweep};
pub use server_user::{ServerUser, server_user};
pub use slowloris::Slowloris;
pub use wait::wait_until;

use std::time::Duration;

/// How long a test waits for a state change it caused (a deploy, a restart, a scale).
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(60);
