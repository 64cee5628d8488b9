//! `hyper-proxy-glue`: the HTTP front between nginx and one app's instances.
//!
//! A [`Front`] accepts HTTP/1.1 on a Unix socket (nginx's upstream) and/or a TCP port (the
//! app's public `$BIND_ADDRESS:$PORT` when it has no server name), and relays each request to
//! one of its [`Backend`]s: streamed both ways, upgrades tunnelled, client address fields set
//! only by who may set them, never sent twice where it may have arrived, bounded by timeouts
//! and caps. The supervisor owns the listeners and the instances; it tells
//! the front which instances exist with [`Front::set_backends`], asks [`wait_healthy`] before
//! adding one, and [`Front::drained`] before stopping one.
//!
//! ```no_run
//! use std::time::Duration;
//! use hyper_proxy_glue::{Backend, Front, FrontConfig, HealthCheck, wait_healthy};
//!
//! # async fn demo(nginx: tokio::net::UnixListener, old: Vec<Backend>, new: Vec<Backend>)
//! # -> Result<(), hyper_proxy_glue::HealthError> {
//! let front = Front::new(FrontConfig::default());
//! front.set_backends(old.clone());
//! let serving = front.clone();
//! let listener = tokio::spawn(async move { serving.serve_unix(nginx).await });
//!
//! // A zero-downtime switch: health first, then swap, drain, and only then stop the old ones.
//! let check = HealthCheck::Http { path: "/up".into() };
//! for backend in &new {
//!     wait_healthy(backend.addr, &check, Duration::from_secs(30)).await?;
//! }
//! front.set_backends(new);
//! let old_ids: Vec<String> = old.into_iter().map(|backend| backend.id).collect();
//! let drained = front.drained(&old_ids, Duration::from_secs(30)).await;
//! // ... stop the old instances (now, or after the bound if `drained` is false) ...
//!
//! front.shutdown();
//! let _ = listener.await;
//! # let _ = drained;
//! # Ok(())
//! # }
//! ```
//!
//! What the supervisor wires per app: the [`FrontConfig`] (timeouts, caps, body limit; each
//! field documents its default and how it relates to nginx), [`Front::events`] (an instance is
//! wedged: recycle it) and [`Front::backend_stats`] (counters for `ps`).
//!
//! Modules, each depending only on those listed after it: `front` (public handle, listeners,
//! connection cap) → `connection` (one client connection, its idle and header timeouts) →
//! `proxy` (one request: checks, choice, no replay, response timeout) → `tunnel` (upgrades),
//! `relay` (response bodies giving their connection back) → `pool` (the backend set and the
//! choice) → `backend` (one instance: load, health, events, idle connections) and `line`
//! (requests waiting for a place, oldest first; a freed place is handed over by `backend`) → `upstream`
//! (connections to instances) → `body` (stall and size limits); `headers` (rewriting and the
//! Host rules), `shutdown`, `config` and `health` (readiness probes) stand alone.

mod backend;
mod body;
mod config;
mod connection;
mod front;
mod headers;
mod health;
mod line;
mod pool;
mod proxy;
mod relay;
mod shutdown;
mod tunnel;
mod upstream;

pub use backend::{Backend, BackendEvent, BackendStats};
pub use config::FrontConfig;
pub use front::Front;
pub use health::{HealthCheck, HealthError, LastSeen, wait_healthy};
