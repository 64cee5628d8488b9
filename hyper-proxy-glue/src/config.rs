//! The knobs of one front: timeouts, pool sizes and how long a refusing backend is avoided.

use std::time::Duration;

/// Settings of a [`Front`](crate::Front). `FrontConfig::default()` suits an app behind nginx.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontConfig {
    /// How long a TCP connect plus HTTP handshake to a backend may take before it counts as failed.
    pub connect_timeout: Duration,
    /// How long to wait for a backend's response headers once the request (with its body) has
    /// been sent (like nginx's `proxy_read_timeout` for the first byte). Exceeding it answers 504.
    pub response_header_timeout: Duration,
    /// How long a body (either direction) may keep its reader waiting for data, and how long a client
    /// keep-alive connection may sit without a new request, before it is closed.
    pub idle_timeout: Duration,
    /// How long an unused keep-alive connection to a backend is kept for reuse.
    pub pool_idle_timeout: Duration,
    /// At most this many unused keep-alive connections are kept per backend.
    pub max_idle_per_backend: usize,
    /// A backend that refused a connection is avoided for this long (unless no other is up).
    pub down_after_refusal: Duration,
    /// After shutdown, open client connections get this long to finish their current request.
    pub shutdown_grace: Duration,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            connect_timeout: Duration::from_secs(3),
            // nginx's own default for proxy_read_timeout: an app slower than nginx allows is
            // cut by nginx anyway.
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            // gunicorn's gthread keep-alive is 2 s and hyper notices the close; 15 s only bounds
            // how long an idle socket to a quiet app lingers.
            pool_idle_timeout: Duration::from_secs(15),
            max_idle_per_backend: 32,
            down_after_refusal: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
