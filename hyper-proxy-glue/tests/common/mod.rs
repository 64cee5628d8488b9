//! Test harness: real hyper backends on 127.0.0.1, a front on a port, and a small client.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_proxy_glue::{Backend, Front, FrontConfig};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

pub const CHUNK: usize = 64 * 1024;
pub const UNSET: u64 = u64::MAX;

/// Byte counters shared by a generator on one side and the first reader on the other, to
/// prove a body streams: the reader notes how much had been produced when its first data came.
/// Also what the app behind it has seen, and whether it answers at all.
#[derive(Default)]
pub struct Flow {
    pub produced: AtomicU64,
    pub produced_at_first_read: AtomicU64,
    /// Requests whose head reached the app.
    pub requests: AtomicU64,
    /// While set, the app answers nothing (every request hangs): a wedged instance.
    pub wedged: AtomicBool,
    /// Requests being handled now, and the most there ever were at once.
    pub active: AtomicU64,
    pub max_active: AtomicU64,
}

impl Flow {
    pub fn new() -> Arc<Flow> {
        Arc::new(Flow {
            produced: AtomicU64::new(0),
            produced_at_first_read: AtomicU64::new(UNSET),
            requests: AtomicU64::new(0),
            wedged: AtomicBool::new(false),
            active: AtomicU64::new(0),
            max_active: AtomicU64::new(0),
        })
    }

    pub fn note_first_read(&self) {
        let produced = self.produced.load(Ordering::SeqCst);
        let _ = self.produced_at_first_read.compare_exchange(
            UNSET,
            produced,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

/// A body of `remaining` bytes made on the fly in 64 KiB chunks (one shared buffer),
/// optionally one chunk per `pace`, or stalling for ever after the first chunk.
pub struct Generated {
    remaining: u64,
    chunk: Bytes,
    flow: Arc<Flow>,
    pace: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    stall_after_first: bool,
    sent_any: bool,
    /// Whether the length is announced (Content-Length) or left open (chunked).
    sized: bool,
}

impl Generated {
    pub fn new(total: u64, flow: Arc<Flow>) -> Generated {
        Generated {
            remaining: total,
            chunk: Bytes::from(vec![7u8; CHUNK]),
            flow,
            pace: None,
            stall_after_first: false,
            sent_any: false,
            sized: true,
        }
    }

    /// `total` bytes without an announced length: sent chunked.
    pub fn chunked(total: u64) -> Generated {
        Generated {
            sized: false,
            ..Generated::new(total, Flow::new())
        }
    }

    pub fn paced(total: u64, every: Duration) -> Generated {
        Generated {
            pace: Some((every, Box::pin(tokio::time::sleep(every)))),
            ..Generated::new(total, Flow::new())
        }
    }

    pub fn stalling(total: u64) -> Generated {
        Generated {
            stall_after_first: true,
            ..Generated::new(total, Flow::new())
        }
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.stall_after_first && self.sent_any {
            // Never woken: the other side must give up on its own.
            return Poll::Pending;
        }
        if let Some((every, timer)) = &mut self.pace {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = tokio::time::Instant::now() + *every;
            timer.as_mut().reset(next);
        }
        self.sent_any = true;
        let take = self.remaining.min(CHUNK as u64);
        self.remaining -= take;
        self.flow.produced.fetch_add(take, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..take as usize)))))
    }

    fn size_hint(&self) -> SizeHint {
        if self.sized {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

pub type TestBody = Either<Full<Bytes>, Generated>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut response = Response::new(Either::Left(Full::new(body.into())));
    *response.status_mut() = status;
    response
}

fn query_number(request: &Request<Incoming>, key: &str) -> u64 {
    request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The app every test talks to. Routes:
/// `/name` its name · `/headers` the request fields, one `name: value` a line · `/upload` reads
/// the body chunk by chunk and answers the byte count · `/download?bytes=N` streams N bytes ·
/// `/stall` sends one chunk of a longer body, then nothing · `/slow?ms=N` answers after N ms · `/status?code=N` answers N · `/upgrade` switches to an
/// echo protocol on `Upgrade: echo` · anything else 200 "ok".
async fn app(
    name: Arc<str>,
    flow: Arc<Flow>,
    mut request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    flow.requests.fetch_add(1, Ordering::SeqCst);
    let active = flow.active.fetch_add(1, Ordering::SeqCst) + 1;
    flow.max_active.fetch_max(active, Ordering::SeqCst);
    let _active = Active(Arc::clone(&flow));
    if flow.wedged.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let response = match request.uri().path() {
        "/name" => text(StatusCode::OK, name.to_string()),
        "/headers" => {
            let mut lines = String::new();
            for (field, value) in request.headers() {
                lines.push_str(&format!("{field}: {}\n", value.to_str().unwrap_or("?")));
            }
            text(StatusCode::OK, lines)
        }
        "/upload" => {
            let mut body = request.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Ok(text(StatusCode::BAD_REQUEST, "body failed"));
                };
                if let Some(data) = frame.data_ref() {
                    if total == 0 && !data.is_empty() {
                        flow.note_first_read();
                    }
                    total += data.len() as u64;
                }
            }
            text(StatusCode::OK, total.to_string())
        }
        "/download" => {
            let bytes = query_number(&request, "bytes");
            Response::new(Either::Right(Generated::new(bytes, Arc::clone(&flow))))
        }
        "/stall" => Response::new(Either::Right(Generated::stalling(10 * CHUNK as u64))),
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(query_number(&request, "ms"))).await;
            text(StatusCode::OK, "slow done")
        }
        "/status" => {
            let code = StatusCode::from_u16(query_number(&request, "code") as u16)
                .unwrap_or(StatusCode::IM_A_TEAPOT);
            text(code, "as asked")
        }
        "/upgrade"
            if request
                .headers()
                .get("upgrade")
                .is_some_and(|v| v == "echo") =>
        {
            let on_upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = vec![0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            let mut response = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
            response
                .headers_mut()
                .insert("upgrade", "echo".parse().unwrap());
            response
                .headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            response
        }
        _ => text(StatusCode::OK, "ok"),
    };
    Ok(response)
}

/// Ends one request's count in `Flow::active`.
struct Active(Arc<Flow>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running test app. Dropping it (or `stop`) closes its listener and every open connection,
/// as if the process had died.
pub struct TestBackend {
    pub name: String,
    pub addr: SocketAddr,
    pub flow: Arc<Flow>,
    task: JoinHandle<()>,
}

impl TestBackend {
    pub async fn start(name: &str) -> TestBackend {
        TestBackend::start_with(name, Flow::new()).await
    }

    /// Like `start`, with the byte counters shared with a test's own generator.
    pub async fn start_with(name: &str, flow: Arc<Flow>) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared_name: Arc<str> = Arc::from(name);
        let app_flow = Arc::clone(&flow);
        let task = tokio::spawn(async move {
            // Owned here, so aborting this task aborts every connection with it.
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (name, flow) = (Arc::clone(&shared_name), Arc::clone(&app_flow));
                        connections.spawn(async move {
                            let service = service_fn(move |request| app(Arc::clone(&name), Arc::clone(&flow), request));
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .with_upgrades()
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        TestBackend {
            name: name.to_owned(),
            addr,
            flow,
            task,
        }
    }

    pub fn backend(&self) -> Backend {
        Backend::new(self.name.clone(), self.addr)
    }

    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address where nothing listens (bound once, then released).
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A front serving a TCP port; `stop` shuts it down and waits for `serve_tcp` to return.
pub struct RunningFront {
    pub front: Front,
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningFront {
    pub async fn start(config: FrontConfig, backends: Vec<Backend>) -> RunningFront {
        let front = Front::new(config);
        front.set_backends(backends);
        // A backlog of 1024 (std's and mio's bind use 128), so a flood test's connections past
        // the front's cap wait in the kernel instead of being dropped by it.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = front.clone();
        let task = tokio::spawn(async move { serving.serve_tcp(listener).await });
        RunningFront { front, addr, task }
    }

    pub async fn stop(self) {
        self.front.shutdown();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("serve_tcp returns after shutdown")
            .unwrap();
    }
}

/// One keep-alive client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Either<Empty<Bytes>, Generated>>,
    driver: JoinHandle<()>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        Client::over(stream).await
    }

    pub async fn over<S>(stream: S) -> Client
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender, driver }
    }

    pub async fn send(
        &mut self,
        request: Request<Either<Empty<Bytes>, Generated>>,
    ) -> hyper::Result<Response<Incoming>> {
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }

    /// GET `path`, read the whole (small) body.
    pub async fn get(&mut self, path: &str) -> hyper::Result<(StatusCode, String)> {
        let request = Request::get(path)
            .header("host", "app.test")
            .body(Either::Left(Empty::new()))
            .unwrap();
        let response = self.send(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// GET over a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    Client::connect(addr).await.get(path).await.unwrap()
}

/// An instance that dies of every request: it reads the request head, then closes the
/// connection without a byte of answer (what a segfaulting worker looks like from outside).
/// Counts the requests that reached it.
pub struct CrashingBackend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl CrashingBackend {
    pub async fn start() -> CrashingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&hits);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let counted = Arc::clone(&counted);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    drop(stream);
                });
            }
        });
        CrashingBackend { addr, hits, task }
    }
}

impl Drop for CrashingBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `request` as is on a fresh connection and reads until the front closes it (send
/// `Connection: close`, or expect the front to close).
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// The status code of a raw HTTP/1.1 response (0 if there is none).
pub fn status_of(answer: &str) -> u16 {
    answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// What the glue logs, from every test of this binary: tests look for lines that name their
/// own instance. One global subscriber, installed once — a per-thread `set_default` lost events
/// in CI: tracing caches each call site's interest process-wide, and a test on another thread
/// without a subscriber could register the call site first (seen as an empty capture).
pub fn capture_logs() -> Logs {
    static LOGS: std::sync::OnceLock<Logs> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(logs.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
        logs
    })
    .clone()
}

#[derive(Clone, Default)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}
