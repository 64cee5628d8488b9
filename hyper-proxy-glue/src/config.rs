//! The knobs of one front: its timeouts, its limits, and how it treats instances that refuse
//! connections or stop answering.

use std::time::Duration;

/// Settings of a [`Front`](crate::Front). `FrontConfig::default()` suits an app behind nginx
/// with piku's nginx config; every field can be set per app.
///
/// **Who gives up first.** The front answers before nginx does: its
/// [`response_timeout`](Self::response_timeout) and [`body_idle_timeout`](Self::body_idle_timeout)
/// (30 s) are below nginx's `proxy_read_timeout` / `proxy_send_timeout` (piku's nginx config
/// sets them 10 s past the app's response timeout, at least 60 s: piku-model's `front`), so a
/// slow instance is answered with the front's 504, logged with the instance and the path, and
/// counted against that instance — nginx only passes the 504 on. The other way round for idle
/// keep-alive connections: nginx closes its idle upstream connections a second before the
/// front's keep-alive timeout, at most after 60 s (`keepalive_timeout` of an `upstream`), so the
/// front's [`keep_alive_timeout`](Self::keep_alive_timeout) is longer, and
/// nginx never sends a request on a connection the front is closing at that moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontConfig {
    // --- toward the app's instances ---
    /// A TCP connect to an instance (plus the HTTP/1.1 handshake) taking longer counts as a
    /// refusal. Default 3 s: an instance on loopback connects in microseconds or not at all.
    pub connect_timeout: Duration,
    /// How long an instance may take to send its response head once the request (with its
    /// body) has been sent. Past it the client gets `504 Gateway Timeout`, the instance and
    /// path are logged, and the timeout counts toward [`wedged_after`](Self::wedged_after).
    /// Default 30 s (Heroku's router cuts at 30 s too), below nginx's 60 s, see above.
    pub response_timeout: Duration,
    /// A body (the client's upload or the instance's response) that makes no progress for this
    /// long is cut: the connection is closed, and an upload that stalled before the instance
    /// answered gets `408 Request Timeout`. Default 30 s, below nginx's 60 s.
    pub body_idle_timeout: Duration,
    /// At most this many requests (and open upgraded connections) are on one instance at a
    /// time. When every instance is full a request waits in the front for a free place, for up
    /// to [`response_timeout`](Self::response_timeout), then gets `503 Service Unavailable`.
    /// Bounds what a wedged instance can hold. Default 128.
    pub max_in_flight_per_backend: usize,
    /// An instance whose last this-many requests all hit the response timeout (nothing answered
    /// in between) is *wedged*: the front avoids it while another instance can take the request,
    /// retries it with one request every [`wedged_retry`](Self::wedged_retry), and reports it
    /// once with [`BackendEvent::Wedged`](crate::BackendEvent::Wedged) so the supervisor can
    /// recycle it. Default 3.
    pub wedged_after: u32,
    /// How long a wedged instance gets no requests before one is tried again. Default 10 s.
    pub wedged_retry: Duration,
    /// An instance on which at least [`stall_in_flight`](Self::stall_in_flight) requests (or as
    /// many as it may take) wait for their response head, and which has answered or finished
    /// none for this long, is *stalled* (open tunnels and streaming bodies wait for nothing and
    /// do not count): every worker it has
    /// is held (stuck requests, long before they reach the response timeout), and what it was
    /// sent since waits in its listen queue. The front then sends it nothing more (requests
    /// wait in the front for another instance, as when every instance is full), counts it
    /// wedged and reports [`BackendEvent::Stalled`](crate::BackendEvent::Stalled) so the
    /// supervisor starts a replacement at once; it is back as soon as it answers. Default
    /// 500 ms: fifty times the gap between answers of a busy instance (`piku-bench robust`:
    /// each moment of it costs the requests sent to the stuck instance meanwhile, which are
    /// lost with it), while a healthy instance with that many requests on it finishes one
    /// well within it. A false alarm costs a restart (not a request: the old instance drains).
    /// `None`: no stall rule (an app whose requests may all take long on purpose, e.g. long
    /// polls on few threads); a stuck instance is then found by its response timeouts only.
    pub stall_after: Option<Duration>,
    /// See [`stall_after`](Self::stall_after). Default 8: twice the threads of piku's default
    /// worker, so a busy instance with a short queue is never taken for a stalled one.
    pub stall_in_flight: usize,
    /// A backend that refused a connection is avoided for this long (unless no other is up).
    /// Default 2 s.
    pub down_after_refusal: Duration,
    /// How long an unused keep-alive connection to an instance is kept for reuse. Default 1 s:
    /// below the keep-alive timeout of every common app server (gunicorn's is 2 s), so the
    /// front never sends a request on a connection the instance is closing at that moment — a
    /// request that may have reached the instance is never sent twice, so that race would
    /// cost a 502. Under load connections are reused long before this.
    pub pool_idle_timeout: Duration,
    /// At most this many unused keep-alive connections are kept per instance. Default 32.
    pub max_idle_per_backend: usize,

    // --- toward clients (nginx on the Unix socket, anyone on the public TCP port) ---
    /// At most this many client connections are open at once (both listeners of the front
    /// together, upgraded ones included). Past the cap the front stops accepting: new
    /// connections wait in the kernel's listen backlog until an open one closes (idle ones are
    /// closed by the two timeouts below), so a flood of idle connections to one app costs
    /// this app its capacity, never the daemon's file descriptors or other apps' fronts.
    /// Every open client connection may also hold one connection to an instance. Default 512.
    pub max_connections: usize,
    /// A client must send a complete request head within this long of its first byte (and a
    /// new connection its first request within this long of being accepted); otherwise the
    /// connection is closed. nginx sends a head in one write; only slow or hostile clients of
    /// the public TCP port ever meet this. Default 10 s.
    pub header_read_timeout: Duration,
    /// A client connection that sits between requests for this long is closed. Default 75 s:
    /// longer than nginx's upstream `keepalive_timeout` (60 s), see above.
    pub keep_alive_timeout: Duration,
    /// Requests whose body is larger get `413 Content Too Large` (before anything reaches the
    /// instance when the length is declared; a chunked upload is cut when it passes the limit).
    /// `None`: no limit. The supervisor sets it from `NGINX_CLIENT_MAX_BODY_SIZE`, so a request
    /// on the public port meets the same limit as one through nginx. Default `None`.
    pub max_request_body: Option<u64>,
    /// After shutdown, open client connections get this long to finish their current request.
    /// Default 10 s.
    pub shutdown_grace: Duration,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            max_in_flight_per_backend: 128,
            wedged_after: 3,
            wedged_retry: Duration::from_secs(10),
            stall_after: Some(Duration::from_millis(500)),
            stall_in_flight: 8,
            down_after_refusal: Duration::from_secs(2),
            pool_idle_timeout: Duration::from_secs(1),
            max_idle_per_backend: 32,
            max_connections: 512,
            header_read_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(75),
            max_request_body: None,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}
