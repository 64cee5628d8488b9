//! An app's HTTP front inside the daemon: one `hyper_proxy_glue::Front`, its listeners (a
//! Unix socket nginx proxies to, and/or the app's public TCP port) and the web instances it
//! sends traffic to.
//!
//! The pool follows the instances' own state: an instance is a backend while its actor says
//! `running` (its port accepts, or its health path answers). The app tells the front which
//! instances exist ([`AppFront::set_members`], which also applies at once, so an instance
//! removed from the members leaves the pool before it is drained and stopped); a small task
//! awaits every change the members' actors publish, so a crashed instance leaves and a
//! recovered or scaled-up one joins without anyone asking (and nothing wakes when nothing
//! changes).
//!
//! Across an upgrade (`handover`) a front's listening sockets are handed to the next image,
//! which takes them instead of binding ([`bind_unix`], [`bind_tcp`]) and accepts on them
//! only once the pool has a ready instance (or after [`HOLD_AT_MOST`]): meanwhile clients
//! wait in the listen backlog instead of getting a 502.
//!
//! The Unix socket is `0660`: nginx must run in the daemon's group (`www-data` under the
//! shipped systemd unit) to connect.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::select_all;
use hyper_proxy_glue::{Backend, Front, FrontConfig};
use piku_model::InstanceId;
use piku_proto::{FrontSpec, FrontStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::snapshot::Watch;

#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("front of {app}: cannot listen on {path}")]
    Unix {
        app: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("front of {app}: cannot listen on {addr}")]
    Tcp {
        app: String,
        addr: String,
        source: std::io::Error,
    },
}

/// A web instance the front may send traffic to once it is up.
#[derive(Clone)]
pub struct Member {
    pub id: InstanceId,
    pub port: u16,
    pub state: Watch,
}

/// The backend id of instance `id` on `port`: the name alone is shared by the old and new
/// generation during a switch, the port is not.
pub fn backend_id(id: &InstanceId, port: u16) -> String {
    format!("{id}@{port}")
}

/// Where a front listens: the part of its settings that needs a rebind when it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub unix_socket: Option<PathBuf>,
    pub tcp: Option<(String, u16)>,
}

impl Listen {
    /// The listeners `spec` asks for, with `tcp_port` the port chosen for its TCP listener.
    pub fn of(spec: &FrontSpec, tcp_port: Option<u16>) -> Listen {
        Listen {
            unix_socket: spec.unix_socket.clone(),
            tcp: spec
                .tcp
                .as_ref()
                .and_then(|tcp| tcp.port.or(tcp_port).map(|port| (tcp.bind.clone(), port))),
        }
    }
}

/// The glue's settings for `spec`: its timeouts, body limit and stall rule; the rest stays the
/// glue's defaults (see `FrontConfig`).
pub fn config_of(spec: &FrontSpec) -> FrontConfig {
    FrontConfig {
        response_timeout: Duration::from_millis(spec.response_timeout_ms),
        header_read_timeout: Duration::from_millis(spec.header_timeout_ms),
        keep_alive_timeout: Duration::from_millis(spec.keepalive_timeout_ms),
        max_request_body: spec.max_request_body,
        stall_after: spec.stall_after_ms.map(Duration::from_millis),
        max_in_flight_per_backend: spec
            .max_in_flight_per_instance
            .map_or(FrontConfig::default().max_in_flight_per_backend, |n| {
                usize::try_from(n).unwrap_or(usize::MAX).max(1)
            }),
        ..FrontConfig::default()
    }
}

/// The longest a front whose listeners were handed over waits for a ready instance before
/// it accepts anyway.
const HOLD_AT_MOST: Duration = Duration::from_secs(10);

/// A front that stopped accepting for an upgrade: its listening sockets, and the serving
/// tasks that end once the requests in flight have been answered.
pub struct FrozenFront {
    pub unix: Option<(PathBuf, std::os::unix::net::UnixListener)>,
    pub tcp: Option<(String, u16, std::net::TcpListener)>,
    pub serving: Vec<JoinHandle<()>>,
}

/// An open front: listeners bound and served, pool kept in step with the members.
pub struct AppFront {
    app: String,
    /// Tells fronts apart: a replaced front (new listeners or timeouts) has a new serial.
    serial: u64,
    listen: Listen,
    front: Front,
    members: watch::Sender<Vec<Member>>,
    follow: JoinHandle<()>,
    serving: Vec<JoinHandle<()>>,
    /// Our own handles on the listening sockets (the glue serves duplicates): a rebind that
    /// keeps a listener hands the same socket to the next front, so not one connection
    /// attempt is refused.
    kept_unix: Option<std::os::unix::net::UnixListener>,
    kept_tcp: Option<std::net::TcpListener>,
}

impl AppFront {
    /// Binds every listener of `listen` (reusing those `previous` already has for the same
    /// address) and starts serving `members`. Nothing new is left bound if one fails; the
    /// caller closes `previous` once this succeeded.
    pub async fn open(
        app: &str,
        listen: Listen,
        config: FrontConfig,
        members: Vec<Member>,
        previous: Option<&AppFront>,
    ) -> Result<AppFront, FrontError> {
        let unix_error = |path: &Path, source| FrontError::Unix {
            app: app.to_string(),
            path: path.to_path_buf(),
            source,
        };
        let tcp_error = |bind: &str, port: u16, source| FrontError::Tcp {
            app: app.to_string(),
            addr: format_addr(bind, port),
            source,
        };
        let reuse_unix = previous
            .filter(|p| p.listen.unix_socket == listen.unix_socket)
            .and_then(|p| p.kept_unix.as_ref());
        let mut handed_over = false;
        let kept_unix = match (&listen.unix_socket, reuse_unix) {
            (Some(path), Some(kept)) => Some(kept.try_clone().map_err(|e| unix_error(path, e))?),
            (Some(path), None) => match crate::handover::take_unix(path) {
                Some(listener) => {
                    handed_over = true;
                    Some(listener)
                }
                None => Some(bind_unix(path).map_err(|e| unix_error(path, e))?),
            },
            (None, _) => None,
        };
        let reuse_tcp = previous
            .filter(|p| p.listen.tcp == listen.tcp)
            .and_then(|p| p.kept_tcp.as_ref());
        let kept_tcp = match &listen.tcp {
            Some((bind, port)) => {
                let bound = match (reuse_tcp, crate::handover::take_tcp(bind, *port)) {
                    (Some(kept), _) => kept.try_clone(),
                    (None, Some(listener)) => {
                        handed_over = true;
                        Ok(listener)
                    }
                    (None, None) => bind_tcp(bind, *port).await,
                };
                match bound {
                    Ok(listener) => Some(listener),
                    Err(source) => {
                        if reuse_unix.is_none()
                            && let Some(path) = &listen.unix_socket
                        {
                            let _ = std::fs::remove_file(path);
                        }
                        return Err(tcp_error(bind, *port, source));
                    }
                }
            }
            None => None,
        };
        let front = Front::new(config);
        // The pool first: the first request accepted must find the instances.
        let (pool, has_pool) = watch::channel(false);
        sync(&front, &members, &pool);
        // Listeners of the previous image: their clients wait in the backlog until an
        // instance is ready, rather than being answered 502.
        let hold = handed_over.then_some(has_pool);
        let mut serving = Vec::new();
        if let (Some(kept), Some(path)) = (&kept_unix, &listen.unix_socket) {
            let listener = kept
                .try_clone()
                .and_then(tokio::net::UnixListener::from_std)
                .map_err(|e| unix_error(path, e))?;
            let (front, hold) = (front.clone(), hold.clone());
            serving.push(tokio::spawn(async move {
                held(hold).await;
                front.serve_unix(listener).await
            }));
        }
        if let (Some(kept), Some((bind, port))) = (&kept_tcp, &listen.tcp) {
            let listener = kept
                .try_clone()
                .and_then(tokio::net::TcpListener::from_std)
                .map_err(|e| tcp_error(bind, *port, e))?;
            let (front, hold) = (front.clone(), hold.clone());
            serving.push(tokio::spawn(async move {
                held(hold).await;
                front.serve_tcp(listener).await
            }));
        }
        // Kept by systemd too: after a crash of the daemon, clients wait in the backlog for
        // the next one (`fdstore`).
        let [unix_name, tcp_name] = crate::fdstore::front_names(app);
        match &kept_unix {
            Some(listener) => crate::fdstore::store(&unix_name, listener.as_fd()),
            None => crate::fdstore::remove(&unix_name),
        }
        match &kept_tcp {
            Some(listener) => crate::fdstore::store(&tcp_name, listener.as_fd()),
            None => crate::fdstore::remove(&tcp_name),
        }
        let (members, watched) = watch::channel(members);
        let follow = tokio::spawn(follow(front.clone(), watched, pool));
        tracing::info!(app, ?listen, "front listening");
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        Ok(AppFront {
            app: app.to_string(),
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            listen,
            front,
            members,
            follow,
            serving,
            kept_unix,
            kept_tcp,
        })
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Stops accepting for an upgrade, keeping the listening sockets (and the socket file)
    /// for the next image; requests in flight go on until the serving tasks end.
    pub fn freeze(self) -> FrozenFront {
        self.front.shutdown();
        self.follow.abort();
        let unix = self.listen.unix_socket.clone().zip(self.kept_unix);
        let tcp = self
            .listen
            .tcp
            .clone()
            .zip(self.kept_tcp)
            .map(|((bind, port), listener)| (bind, port, listener));
        FrozenFront {
            unix,
            tcp,
            serving: self.serving,
        }
    }

    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    pub fn front(&self) -> &Front {
        &self.front
    }

    /// The instances that exist now; the pool follows at once (an instance no longer listed
    /// gets no new request once this returns).
    pub fn set_members(&self, members: Vec<Member>) {
        let up = up(&members);
        if self.front.backends() != up {
            self.front.set_backends(up);
        }
        self.members.send_replace(members);
    }

    /// Stops listening (open connections finish their request within the glue's grace) and
    /// removes the socket file, unless `successor` (the front replacing this one) serves it.
    pub fn close(self, successor: Option<&AppFront>) {
        self.front.shutdown();
        self.follow.abort();
        drop(self.serving);
        if successor.is_none() {
            crate::fdstore::front_names(&self.app)
                .iter()
                .for_each(|name| crate::fdstore::remove(name));
        }
        let inherited = successor.is_some_and(|s| s.listen.unix_socket == self.listen.unix_socket);
        if !inherited && let Some(path) = &self.listen.unix_socket {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!(app = %self.app, "front closed");
    }

    pub fn status(&self) -> FrontStatus {
        FrontStatus {
            unix_socket: self.listen.unix_socket.clone(),
            tcp: self
                .listen
                .tcp
                .as_ref()
                .map(|(bind, port)| format_addr(bind, *port)),
            backends: self
                .front
                .backends()
                .into_iter()
                .map(|b| match b.id.split_once('@') {
                    Some((name, _)) => name.to_string(),
                    None => b.id,
                })
                .collect(),
        }
    }
}

/// The members that are up, in member order, as backends.
fn up(members: &[Member]) -> Vec<Backend> {
    members
        .iter()
        .filter(|m| m.state.borrow().ready())
        .map(|m| {
            Backend::new(
                backend_id(&m.id, m.port),
                SocketAddr::from(([127, 0, 0, 1], m.port)),
            )
        })
        .collect()
}

/// Makes the pool the members that are up, in member order; untouched when already so.
/// `pool` says whether it has a backend.
fn sync(front: &Front, members: &[Member], pool: &watch::Sender<bool>) {
    let up = up(members);
    let has_backends = !up.is_empty();
    if front.backends() != up {
        tracing::debug!(backends = ?up.iter().map(|b| &b.id).collect::<Vec<_>>(), "front pool");
        front.set_backends(up);
    }
    // After the pool is set: a held listener released now must find the instances.
    pool.send_if_modified(|has| std::mem::replace(has, has_backends) != has_backends);
}

/// Returns once the pool has a backend or [`HOLD_AT_MOST`] has passed (`None`: at once), or
/// once the front closes or freezes (its `follow` task, which owns the sender, is aborted).
async fn held(hold: Option<watch::Receiver<bool>>) {
    if let Some(mut has_pool) = hold {
        let _ = tokio::time::timeout(HOLD_AT_MOST, has_pool.wait_for(|has| *has)).await;
    }
}

/// Keeps the pool in step with the members' states for the front's life: wakes when a
/// member's actor publishes a change or the members change, never otherwise.
async fn follow(
    front: Front,
    mut members: watch::Receiver<Vec<Member>>,
    pool: watch::Sender<bool>,
) {
    loop {
        let mut states: Vec<Watch> = members
            .borrow_and_update()
            .iter()
            .map(|m| m.state.clone())
            .collect();
        for state in &mut states {
            state.mark_unchanged();
        }
        sync(&front, &members.borrow(), &pool);
        let member_changed = async {
            if states.is_empty() {
                return std::future::pending().await;
            }
            // An actor that ended publishes nothing more: it no longer wakes us.
            let changes = states.iter_mut().map(|state| {
                Box::pin(async move {
                    if state.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
            });
            select_all(changes).await;
        };
        tokio::select! {
            changed = members.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = member_changed => {}
        }
    }
}

fn format_addr(bind: &str, port: u16) -> String {
    match bind.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        Ok(IpAddr::V4(_)) | Err(_) => format!("{bind}:{port}"),
    }
}

/// Creates the parent directory, replaces a stale socket file (one nobody answers on) and
/// binds with mode 0660.
fn bind_unix(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process answers on this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    deepen_backlog(&listener)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// std listens with a backlog of 128. Past the front's connection cap new connections wait in
/// this queue, and a burst of connections overflows 128 at once: the kernel then drops the
/// handshakes it has no room for and each such client waits for its retransmission (1 s, then
/// 3 s) — 500 slow clients reconnecting together cost a normal request 1.3–1.6 s that way
/// (`tests/robustness.rs`). Listening again with the host's maximum (`net.core.somaxconn`,
/// 4096 by default; nginx asks for 511) lets a burst wait in the queue instead.
fn deepen_backlog<F: std::os::fd::AsFd>(listener: &F) -> std::io::Result<()> {
    nix::sys::socket::listen(listener, nix::sys::socket::Backlog::MAXCONN)
        .map_err(std::io::Error::from)
}

async fn bind_tcp(bind: &str, port: u16) -> std::io::Result<std::net::TcpListener> {
    let ip: IpAddr = bind.parse().map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{bind:?} is not an IP address"),
        )
    })?;
    // std sets SO_REUSEADDR on Unix, so a port in TIME_WAIT after a restart binds again.
    // A front closed a moment ago (Stop then Start) releases its port when its listener
    // task has ended, which takes a few milliseconds: retry briefly, asleep on the timer
    // (never blocking an async worker).
    let mut attempts = 0;
    let listener = loop {
        match std::net::TcpListener::bind((ip, port)) {
            Ok(listener) => break listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < BIND_RETRIES => {
                attempts += 1;
                tokio::time::sleep(BIND_RETRY_EVERY).await;
            }
            Err(e) => return Err(e),
        }
    };
    deepen_backlog(&listener)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Retries of a TCP bind that found the port in use (see [`bind_tcp`]): 0.5 s at most.
const BIND_RETRIES: u32 = 25;
const BIND_RETRY_EVERY: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    use super::*;
    use piku_proto::TcpFront;

    #[test]
    fn a_pinned_port_wins_over_the_chosen_one() {
        let mut spec = FrontSpec {
            tcp: Some(TcpFront {
                bind: "0.0.0.0".into(),
                port: Some(5000),
            }),
            ..FrontSpec::default()
        };
        assert_eq!(
            Listen::of(&spec, Some(41000)).tcp,
            Some(("0.0.0.0".into(), 5000))
        );
        if let Some(tcp) = spec.tcp.as_mut() {
            tcp.port = None;
        }
        assert_eq!(
            Listen::of(&spec, Some(41000)).tcp,
            Some(("0.0.0.0".into(), 41000))
        );
        spec.tcp = None;
        assert_eq!(Listen::of(&spec, Some(41000)).tcp, None);
    }

    /// A burst of connections the front has not accepted yet is all in the listen queue when
    /// it next accepts. With std's backlog of 128 the kernel drops the handshakes past it (the
    /// client believes it is connected) and they arrive a retransmission (1 s) later.
    #[tokio::test]
    async fn a_burst_of_connections_waits_in_the_listen_queue() {
        let listener = bind_tcp("127.0.0.1", 0).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let clients: Vec<_> = (0..300)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut accepted = 0;
        let mut quiet_since = std::time::Instant::now();
        // Patience for a loaded machine, well below the retransmission.
        while accepted < clients.len() && quiet_since.elapsed() < Duration::from_millis(300) {
            match listener.accept() {
                Ok(_) => {
                    accepted += 1;
                    quiet_since = std::time::Instant::now();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("accept: {e}"),
            }
        }
        assert_eq!(
            accepted,
            clients.len(),
            "connections of the burst were dropped"
        );
    }

    #[test]
    fn a_bound_on_requests_per_instance_reaches_the_glue_only_when_set() {
        let mut spec = FrontSpec::default();
        assert_eq!(
            config_of(&spec).max_in_flight_per_backend,
            FrontConfig::default().max_in_flight_per_backend
        );
        spec.max_in_flight_per_instance = Some(4);
        assert_eq!(config_of(&spec).max_in_flight_per_backend, 4);
        // Serialized only when set, so that a spec without it reads the same in an older daemon.
        let json = serde_json::to_string(&FrontSpec::default()).unwrap();
        assert!(!json.contains("max_in_flight"), "{json}");
    }

    #[test]
    fn addresses_print_as_clients_write_them() {
        assert_eq!(format_addr("127.0.0.1", 80), "127.0.0.1:80");
        assert_eq!(format_addr("::1", 80), "[::1]:80");
    }

    #[tokio::test]
    async fn a_live_socket_is_never_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("app.sock");
        let first = bind_unix(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        let err = bind_unix(&path).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        drop(first);
        // Now stale: replaced.
        bind_unix(&path).unwrap();
    }
}
