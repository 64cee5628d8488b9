//! Kept-alive connections to an instance that closes them: a request goes elsewhere only when
//! the instance cannot have read it (the connection was closed before the request was
//! written), never when it may have (it read the request, then died).
//!
//! The instance here is a plain blocking server on its own threads, so a test decides exactly
//! when a connection closes and counts every request that reached the instance.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use hyper_proxy_glue::{Backend, FrontConfig};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use common::{Client, RunningFront, dead_addr, get, raw, status_of};

/// What the instance saw, shared with the test.
#[derive(Default)]
struct Seen {
    /// Each request read in full: the peer port of its connection (the front's side) and
    /// `"METHOD /path"`.
    requests: Vec<(u16, String)>,
    /// Connections the front closed (the instance read their end), by peer port.
    ended: Vec<u16>,
    /// Connections open now, by peer port, to close on the test's word.
    open: HashMap<u16, TcpStream>,
    /// `/hold` requests wait until this is set.
    released: bool,
}

/// An instance on 127.0.0.1: answers `200` with the path as body, keeping the connection
/// alive; `/crash` reads the whole request, then closes the connection without a byte of
/// answer; `/hold` waits for [`release`](Self::release).
struct Instance {
    addr: SocketAddr,
    seen: Arc<(Mutex<Seen>, Condvar)>,
}

impl Instance {
    fn start() -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new((Mutex::new(Seen::default()), Condvar::new()));
        let shared = Arc::clone(&seen);
        // Ends with the test binary (the test process), like the other threads here.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let seen = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &seen));
            }
        });
        Instance { addr, seen }
    }

    fn backend(&self, id: &str) -> Backend {
        Backend::new(id, self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Seen) -> T) -> T {
        f(&mut self.seen.0.lock().unwrap())
    }

    /// Waits (blocking) until `done` holds, for at most 10 s.
    fn wait(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let (lock, changed) = &*self.seen;
        let until = Instant::now() + Duration::from_secs(10);
        let mut seen = lock.lock().unwrap();
        while !done(&seen) {
            let left = until.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            seen = changed.wait_timeout(seen, left).unwrap().0;
        }
    }

    /// How many times a request for `what` (`"METHOD /path"`) reached the instance.
    fn deliveries(&self, what: &str) -> usize {
        self.with(|seen| seen.requests.iter().filter(|(_, r)| r == what).count())
    }

    /// The peer port of the connection that carried `what`.
    fn port_of(&self, what: &str) -> u16 {
        self.with(|seen| {
            seen.requests
                .iter()
                .find(|(_, r)| r == what)
                .map(|(port, _)| *port)
                .expect("the request reached the instance")
        })
    }

    /// Closes the connection from `port` as a dying process would (FIN to the front), and
    /// waits until the front's kernel has it: its side is in CLOSE_WAIT. Blocking.
    fn close(&self, port: u16) {
        let stream = self.with(|seen| seen.open.remove(&port));
        if let Some(stream) = stream {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let until = Instant::now() + Duration::from_secs(10);
        while !close_wait(port) {
            assert!(
                Instant::now() < until,
                "port {port} never reached CLOSE_WAIT"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn release(&self) {
        self.with(|seen| seen.released = true);
        self.seen.1.notify_all();
    }
}

/// A `GET /hold` the instance keeps unanswered until [`Instance::release`], sent once the
/// call returns (it has reached the instance).
async fn hold(front: SocketAddr, instance: &Instance) -> HeldRequest {
    let mut holding = Client::connect(front).await;
    let held = tokio::spawn(async move { holding.get("/hold").await });
    while instance.deliveries("GET /hold") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    held
}

type HeldRequest = tokio::task::JoinHandle<hyper::Result<(StatusCode, String)>>;

/// Lets the held request go and checks that it got its answer.
async fn release(instance: &Instance, held: HeldRequest) {
    instance.release();
    assert_eq!(
        held.await.unwrap().unwrap(),
        (StatusCode::OK, "/hold".into())
    );
}

/// Two instances, web.1 and web.2, behind a front with the default settings.
async fn two_instances() -> (Instance, Instance, RunningFront) {
    let first = Instance::start();
    let second = Instance::start();
    let front = RunningFront::start(
        FrontConfig::default(),
        vec![first.backend("web.1"), second.backend("web.2")],
    )
    .await;
    (first, second, front)
}

/// Waits, off the runtime (the front runs on it), until the connection from `port` has ended.
async fn until_ended(instance: &Arc<Instance>, what: &'static str, port: u16) {
    let waiting = Arc::clone(instance);
    tokio::task::spawn_blocking(move || waiting.wait(what, |seen| seen.ended.contains(&port)))
        .await
        .unwrap();
}

/// One connection: requests one after another until the peer closes.
fn serve(mut stream: TcpStream, seen: &(Mutex<Seen>, Condvar)) {
    let Ok(peer) = stream.peer_addr() else { return };
    let port = peer.port();
    if let Ok(clone) = stream.try_clone() {
        seen.0.lock().unwrap().open.insert(port, clone);
    }
    let mut buffer = Vec::new();
    while let Some((line, body_len, head_len)) = read_head(&mut stream, &mut buffer) {
        while buffer.len() < head_len + body_len {
            if !fill(&mut stream, &mut buffer) {
                break;
            }
        }
        buffer.drain(..(head_len + body_len).min(buffer.len()));
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("").to_owned();
        let path = parts.next().unwrap_or("").to_owned();
        {
            let mut state = seen.0.lock().unwrap();
            state.requests.push((port, format!("{method} {path}")));
            seen.1.notify_all();
        }
        match path.as_str() {
            "/crash" => {
                let _ = stream.shutdown(Shutdown::Both);
                break;
            }
            "/hold" => {
                let mut state = seen.0.lock().unwrap();
                while !state.released {
                    state = seen.1.wait(state).unwrap();
                }
            }
            _ => {}
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
            path.len()
        );
        if stream.write_all(answer.as_bytes()).is_err() {
            break;
        }
    }
    let mut state = seen.0.lock().unwrap();
    state.open.remove(&port);
    state.ended.push(port);
    seen.1.notify_all();
}

/// Reads until a whole request head is buffered: its request line, body length (from
/// `content-length`) and head length. `None` once the peer closed.
fn read_head(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Option<(String, usize, usize)> {
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let line = lines.next().unwrap_or("").to_owned();
            let body_len = lines
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, value)| value.trim().parse().ok())
                .unwrap_or(0);
            return Some((line, body_len, end + 4));
        }
        if !fill(stream, buffer) {
            return None;
        }
    }
}

fn fill(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Whether this host's side of a loopback connection from local `port` is in CLOSE_WAIT: the
/// peer's FIN has arrived in the kernel.
fn close_wait(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1).is_some_and(|local| {
            local.starts_with("0100007F:") && local.ends_with(&format!(":{port:04X}"))
        }) && fields.get(3) == Some(&"08")
    })
}

/// Runs a hook, once, on the first "instance unreachable" line the front logs: the moment a
/// request's connect was refused and it is about to try the next instance, inside the same
/// poll of the request's task (the hook blocks that task, and with it the test's runtime).
type Hook = Box<dyn FnOnce() + Send>;
static ON_REFUSAL: Mutex<Option<Hook>> = Mutex::new(None);

struct RefusalHook;

impl<S: tracing::Subscriber> Layer<S> for RefusalHook {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        struct Message(bool);
        impl Visit for Message {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 |= format!("{value:?}") == "instance unreachable";
                }
            }
        }
        let mut message = Message(false);
        event.record(&mut message);
        if message.0 {
            let hook = ON_REFUSAL.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
        }
    }
}

/// Installs [`RefusalHook`] for the whole test binary, before the front logs anything.
fn install_subscriber() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let subscriber = tracing_subscriber::registry().with(RefusalHook);
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
    });
}

/// The race behind the 502s of an instance crash under load: the instance has closed a
/// kept-alive connection (the FIN is in the front's kernel) but the front's runtime has not
/// polled for I/O since, so hyper's own look for a close before writing sees nothing. The
/// request must still go to a fresh connection, and reach the instance exactly once.
///
/// The close happens while a request is between instances (its connect to a dead one was
/// just refused), on the test's current-thread runtime, so no I/O poll can come between the
/// close and the front handing the request to the closed connection.
#[tokio::test]
async fn a_connection_closed_before_the_request_is_written_costs_no_request() {
    install_subscriber();
    let instance = Arc::new(Instance::start());
    let front = RunningFront::start(FrontConfig::default(), vec![instance.backend("web.2")]).await;
    // One request held on the instance, so that the front will try an idle instance before
    // it: the dead one, listed below.
    let held = hold(front.addr, &instance).await;
    // A kept-alive connection to the instance, idle in the front's pool.
    assert_eq!(
        get(front.addr, "/first").await,
        (StatusCode::OK, "/first".into())
    );
    let idle_port = instance.port_of("GET /first");
    // The instance keeps its state (its idle connection included).
    front.front.set_backends(vec![
        Backend::new("web.1", dead_addr().await),
        instance.backend("web.2"),
    ]);
    let closer = Arc::clone(&instance);
    let (hooked, was_hooked) = std::sync::mpsc::channel();
    *ON_REFUSAL.lock().unwrap() = Some(Box::new(move || {
        closer.close(idle_port);
        let _ = hooked.send(());
    }));

    let answer = get(front.addr, "/second").await;
    assert!(
        was_hooked.try_recv().is_ok(),
        "the dead instance was tried first"
    );
    assert_eq!(answer, (StatusCode::OK, "/second".into()));
    assert_eq!(instance.deliveries("GET /second"), 1);
    let failed: u64 = front.front.backend_stats().iter().map(|s| s.failed).sum();
    assert_eq!(failed, 0, "no request broke on the closed connection");

    release(&instance, held).await;
    front.stop().await;
}

/// The other side of the rule: a POST the instance read in full before its connection closed
/// (it crashed while handling it) is answered 502 and sent nowhere else, on a reused
/// connection as on a fresh one, even with another instance ready.
#[tokio::test]
async fn a_post_the_instance_read_before_dying_is_answered_502_and_never_sent_again() {
    let (first, second, front) = two_instances().await;
    let mut client = Client::connect(front.addr).await;
    for round in 1..=4 {
        // Both instances have a kept-alive connection in the front's pool.
        for _ in 0..4 {
            assert_eq!(client.get("/warm").await.unwrap().0, StatusCode::OK);
        }
        let answer = raw(
            front.addr,
            "POST /crash HTTP/1.1\r\nhost: app.test\r\ncontent-length: 7\r\nconnection: close\r\n\r\norder=1",
        )
        .await;
        assert_eq!(status_of(&answer), 502, "{answer}");
        assert!(
            answer.contains("the app closed the connection without answering"),
            "{answer}"
        );
        assert_eq!(
            first.deliveries("POST /crash") + second.deliveries("POST /crash"),
            round,
            "each POST reaches exactly one instance"
        );
    }
    front.stop().await;
}

/// An instance the supervisor takes out of the set (it exited, or is being stopped) has its
/// idle connections closed at once, not when its last request ends, and the connection of that
/// request is not kept either.
#[tokio::test]
async fn an_instance_leaving_the_set_has_its_idle_connections_closed_at_once() {
    let instance = Arc::new(Instance::start());
    let front = RunningFront::start(FrontConfig::default(), vec![instance.backend("web.1")]).await;
    let held = hold(front.addr, &instance).await;
    let held_port = instance.port_of("GET /hold");
    assert_eq!(get(front.addr, "/first").await.0, StatusCode::OK);
    let idle_port = instance.port_of("GET /first");

    front.front.set_backends(Vec::new());
    until_ended(&instance, "the idle connection to close", idle_port).await;
    assert!(
        instance.with(|seen| !seen.ended.contains(&held_port)),
        "the held request's connection stays open while it runs"
    );

    release(&instance, held).await;
    until_ended(
        &instance,
        "the held request's connection to close",
        held_port,
    )
    .await;
    front.stop().await;
}
