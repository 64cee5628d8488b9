//! The app's HTTP front at activation, in three parts:
//!
//! - [`spec`]: what the front is. From the app's merged env and Procfile: the supervisor's
//!   front (a Unix socket for nginx, or piku's public `$BIND_ADDRESS:$PORT`), how it tells a new
//!   instance is healthy, and the app's nginx settings; also where the app answers, for the
//!   deploy's last line and `piku ps`.
//! - [`nginx`]: the nginx config in front of it: checked and installed before the supervisor's
//!   `Apply`, put back if the supervisor refuses, removed with the app; the one nginx reload.
//! - [`acme`]: certificates from an ACME CA after the `Apply`, and the daily renewal entry.
//! - [`ready`]: after the `Apply`, waiting until the app answers where users reach it (nginx
//!   routing its host name, or piku's public port) before the push says so.
//!
//! Order matters for "a bad push changes nothing": the nginx config is checked (`nginx -t`)
//! and installed *before* the supervisor's `Apply`, so a broken `NGINX_INCLUDE_FILE` fails the
//! push while the old config and the old release keep serving. A certificate from ACME is
//! asked for only after the `Apply` (the CA validates through the live config); its failure is
//! a warning and the self-signed certificate stays.

pub mod acme;
pub mod conflicts;
pub mod nginx;
pub mod ready;
pub mod spec;
