//! `hyper-proxy-glue`: the HTTP front between nginx and one app's instances.
//!
//! A [`Front`] accepts HTTP/1.1 on a Unix socket (nginx's upstream) and/or a TCP port (the
//! app's public `$BIND_ADDRESS:$PORT` when it has no server name), and relays each request to
//! one of its [`Backend`]s: streamed both ways, upgrades tunnelled, `X-Forwarded-*` added,
//! bounded by timeouts. The supervisor owns the listeners and the instances; it tells the front
//! which instances exist with [`Front::set_backends`], asks [`wait_healthy`] before adding one,
//! and [`Front::drained`] before stopping one.
//!
//! Modules: `front` (listeners, shutdown, public handle), `proxy` (one request), `pool`
//! (backend set and choice), `backend` (one instance's state), `upstream` (connections to
//! instances), `body` (streaming bodies with idle limits), `headers` (rewriting), `upgrade`
//! (tunnels), `health` (readiness probes), `config`.

mod backend;
mod body;
mod config;
mod front;
mod headers;
mod health;
mod pool;
mod proxy;
mod upgrade;
mod upstream;

pub use backend::Backend;
pub use config::FrontConfig;
pub use front::Front;
pub use health::{HealthCheck, HealthError, LastSeen, wait_healthy};
