//! One request through the front: checked, handed to an instance (tried elsewhere only when it
//! provably never reached one), bounded by the response timeout, and turned into the client's
//! response. Also what every request shares: [`Proxy`].

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Request, Response, StatusCode, Uri};
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;

use crate::backend::{BackendEvent, BackendState, InFlightGuard};
use crate::body::{self, Cut, IdleTimeout};
use crate::config::FrontConfig;
use crate::headers::{self, Peer};
use crate::pool::{NoPick, Pool, StallRule};
use crate::relay::{Release, ResponseBody};
use crate::shutdown::Shutdown;
use crate::tunnel;
use crate::upstream::{self, Sender, UpstreamBody};

/// What every listener, connection and request of one front shares.
pub(crate) struct Proxy {
    pub(crate) config: FrontConfig,
    pub(crate) pool: Pool,
    pub(crate) shutdown: Shutdown,
    pub(crate) events: broadcast::Sender<BackendEvent>,
}

impl Proxy {
    pub(crate) fn new(config: FrontConfig) -> Proxy {
        // Events are rare (one per change of an instance's health); a supervisor that falls
        // this far behind reads the rest from `backend_stats`.
        let events = broadcast::Sender::new(64);
        let stall = StallRule {
            after: config.stall_after,
            in_flight: config.stall_in_flight,
        };
        Proxy {
            pool: Pool::new(
                config.max_in_flight_per_backend,
                config.wedged_retry,
                stall,
                events.clone(),
            ),
            config,
            shutdown: Shutdown::new(),
            events,
        }
    }

    fn report(&self, event: Option<BackendEvent>) {
        self.pool.report(event);
    }
}

/// What the client receives: an instance's streamed body, or a short text the front wrote.
pub(crate) type ClientBody = Either<ResponseBody, Full<Bytes>>;

/// Why no instance's response could be relayed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the request body stalled")]
    UploadStalled,
    #[error("no instance of this app is running")]
    NoBackend,
    #[error("no instance accepted the connection")]
    Unreachable,
    #[error("every instance of this app is busy")]
    Busy,
    #[error("the app closed the connection without answering")]
    Broken,
    #[error("the app did not answer in time")]
    TimedOut,
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::BadRequest(_) => StatusCode::BAD_REQUEST,
            Failure::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Failure::UploadStalled => StatusCode::REQUEST_TIMEOUT,
            Failure::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Failure::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Failure::NoBackend | Failure::Unreachable | Failure::Broken => StatusCode::BAD_GATEWAY,
        }
    }
}

/// An instance's answer and what it is holding on to.
struct Answer {
    response: Response<Incoming>,
    conn: Sender,
    guard: InFlightGuard,
    /// When its head arrived.
    at: Instant,
}

/// Handles one request; `hold` is kept alive by a tunnel if the request becomes one.
pub(crate) async fn handle<H: Send + 'static>(
    proxy: Arc<Proxy>,
    peer: Peer,
    hold: H,
    mut request: Request<Incoming>,
) -> Result<Response<ClientBody>, Infallible> {
    let config = &proxy.config;
    to_origin_form(&mut request);
    // One pass over the fields serves the checks and the rewrite.
    let seen = headers::Seen::request(request.headers());
    if let Some(problem) = headers::host_problem(request.version(), &seen) {
        return Ok(failure_response(&Failure::BadRequest(problem)));
    }
    if let Some(limit) = config.max_request_body
        && request.body().size_hint().lower() > limit
    {
        return Ok(failure_response(&Failure::TooLarge(limit)));
    }
    let wants_upgrade = headers::wants_upgrade(request.headers(), &seen);
    headers::rewrite_request(request.headers_mut(), wants_upgrade, &peer, &seen);
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut request));

    let (parts, body) = request.into_parts();
    // Kept for the log line of a failure (a cheap clone: the URI shares the request's buffer).
    let target = parts.uri.clone();
    let (body, body_sent) = upstream_body(body, config);
    let request = Request::from_parts(parts, body);

    let Answer {
        mut response,
        conn,
        guard,
        at,
    } = match forward(&proxy, request, body_sent, &target).await {
        Ok(answer) => answer,
        Err(failure) => return Ok(failure_response(&failure)),
    };

    if let Some(client_upgrade) = client_upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        headers::rewrite_response(&mut parts.headers, true);
        // The instance connection now belongs to the tunnel; the sender is of no further use.
        drop(conn);
        tunnel::spawn(
            client_upgrade,
            backend_upgrade,
            guard,
            hold,
            proxy.shutdown.subscribe(),
        );
        return Ok(Response::from_parts(parts, Either::Right(Full::default())));
    }

    let (mut parts, body) = response.into_parts();
    headers::rewrite_response(&mut parts.headers, false);
    let release = Release {
        conn,
        max_idle: config.max_idle_per_backend,
        guard,
        head_at: at,
    };
    let body = if body.is_end_stream() {
        // Nothing to stream (204, 304, HEAD, empty): the connection is free now, and hyper
        // might never poll an empty body to find that out.
        release.finish();
        Either::Right(Full::default())
    } else {
        Either::Left(ResponseBody::new(body, config.body_idle_timeout, release))
    };
    Ok(Response::from_parts(parts, body))
}

/// The client's body as the instance gets it, and a receiver that resolves once it has been
/// sent to its end (`None`: there is no body).
fn upstream_body(
    body: Incoming,
    config: &FrontConfig,
) -> (UpstreamBody, Option<oneshot::Receiver<()>>) {
    if body.is_end_stream() {
        return (Either::Right(Empty::new()), None);
    }
    let limit = config.max_request_body.map_or(usize::MAX, |limit| {
        usize::try_from(limit).unwrap_or(usize::MAX)
    });
    let (done, sent) = oneshot::channel();
    let body =
        IdleTimeout::new(Limited::new(body, limit), config.body_idle_timeout).with_end_signal(done);
    (Either::Left(body), Some(sent))
}

/// Sends `request` to an instance and waits for the response head.
///
/// No request is ever sent twice to where it may have arrived (a request that crashed an
/// instance must not crash a second one): a request moves on only when it provably reached no
/// instance — its connect was refused or timed out (that instance is then avoided and another
/// tried, each at most once), or hyper hands it back unwritten because the kept-alive
/// connection it was given had closed. Once any byte may have been written, a broken
/// connection is answered 502 and nothing else.
///
/// The response timeout runs from when the request body has been sent (`body_sent`), so a
/// long upload is bounded by the body idle timeout instead; a bodiless request's runs from
/// its arrival, waiting for a free place included.
async fn forward(
    proxy: &Proxy,
    mut request: Request<UpstreamBody>,
    body_sent: Option<oneshot::Receiver<()>>,
    target: &Uri,
) -> Result<Answer, Failure> {
    let config = &proxy.config;
    let arrived = Instant::now();
    let deadline = async {
        match body_sent {
            Some(sent) => {
                // Dropped unfinished counts as done: the send then fails on its own.
                let _ = sent.await;
                tokio::time::sleep(config.response_timeout).await;
            }
            None => tokio::time::sleep_until(arrived + config.response_timeout).await,
        }
    };
    tokio::pin!(deadline);
    // Instances that refused this request (allocates only on that path).
    let mut unreachable: Vec<Arc<BackendState>> = Vec::new();
    // Each round either takes a kept-alive connection out of circulation or tries an instance
    // not tried yet, so the loop ends anyway; the bound only caps pathological churn.
    for round in 0..(config.max_idle_per_backend + 8) {
        // The clock is read once per step, and not again where a step takes no time: the
        // first pick starts as the request arrives, a kept-alive connection is in hand as soon
        // as it is taken.
        let picking = if round == 0 { arrived } else { Instant::now() };
        let mut guard = proxy
            .pool
            .pick(&unreachable, arrived + config.response_timeout)
            .await
            .map_err(|no| match no {
                NoPick::Empty => Failure::NoBackend,
                NoPick::Unreachable => Failure::Unreachable,
                NoPick::Busy => Failure::Busy,
            })?;
        let backend = Arc::clone(guard.backend());
        let checkout = Instant::now();

        let (mut conn, reused) = match backend.take_idle(config.pool_idle_timeout, checkout) {
            Some(conn) => (conn, true),
            None => match upstream::connect(backend.backend.addr, config.connect_timeout).await {
                Ok(conn) => (conn, false),
                Err(err) => {
                    tracing::warn!(instance = %backend.backend.id, %err, "instance unreachable");
                    backend.mark_refused(config.down_after_refusal);
                    unreachable.push(backend);
                    continue;
                }
            },
        };

        let sending = if reused { checkout } else { Instant::now() };
        let sent = tokio::select! {
            // The answer first: no coin toss per request, and an answer that is there wins.
            biased;
            sent = send(&mut conn, reused, request) => sent,
            () = &mut deadline => {
                tracing::warn!(
                    instance = %backend.backend.id,
                    path = %target,
                    "no response head within {:?}; answered 504",
                    config.response_timeout,
                );
                proxy.report(backend.record_timeout(config.wedged_after, config.wedged_retry));
                // Dropping the in-flight send closes the connection: its state is unknown.
                return Err(Failure::TimedOut);
            }
        };
        match sent {
            Ok(response) => {
                let answered = Instant::now();
                timing(
                    &backend,
                    target,
                    reused,
                    [picking, checkout, sending, answered],
                );
                proxy.report(backend.record_answer(answered));
                guard.answered();
                return Ok(Answer {
                    response,
                    conn,
                    guard,
                    at: answered,
                });
            }
            Err(NotAnswered::Unsent(unsent)) => {
                tracing::debug!(instance = %backend.backend.id, "kept-alive connection closed before the request was written; using another");
                request = *unsent;
            }
            Err(NotAnswered::Sent(err)) => {
                return Err(match body::cause(&err) {
                    Some(Cut::TooLarge) => {
                        Failure::TooLarge(config.max_request_body.unwrap_or(u64::MAX))
                    }
                    Some(Cut::Stalled) => Failure::UploadStalled,
                    None => {
                        tracing::warn!(instance = %backend.backend.id, path = %target, reused, %err, "connection to the instance broke after the request was sent; answered 502, not replayed");
                        backend.record_failure();
                        Failure::Broken
                    }
                });
            }
        }
    }
    Err(Failure::Broken)
}

/// A request slower than this to get its response head is logged at debug level with where
/// its time went; every request is, at trace level.
pub(crate) const SLOW_HEAD: std::time::Duration = std::time::Duration::from_millis(100);

/// Where one answered request's time went: waiting for a place on an instance, taking or
/// opening a connection to it, and from sending the request to the response head.
fn timing(
    backend: &BackendState,
    target: &Uri,
    reused: bool,
    [picking, checkout, sending, answered]: [Instant; 4],
) {
    let total = answered - picking;
    let slow = total >= SLOW_HEAD;
    if slow && tracing::enabled!(tracing::Level::DEBUG) || tracing::enabled!(tracing::Level::TRACE)
    {
        let wait_us = (checkout - picking).as_micros();
        let conn_us = (sending - checkout).as_micros();
        let head_us = (answered - sending).as_micros();
        if slow {
            tracing::debug!(instance = %backend.backend.id, path = %target, reused, wait_us, conn_us, head_us, "slow response head");
        } else {
            tracing::trace!(instance = %backend.backend.id, path = %target, reused, wait_us, conn_us, head_us, "response head");
        }
    }
}

enum NotAnswered {
    /// The request, given back: no byte of it was written. (Boxed: the rare path pays.)
    Unsent(Box<Request<UpstreamBody>>),
    /// The request may have reached the instance.
    Sent(hyper::Error),
}

async fn send(
    conn: &mut Sender,
    reused: bool,
    request: Request<UpstreamBody>,
) -> Result<Response<Incoming>, NotAnswered> {
    if reused && conn.ready().await.is_err() {
        return Err(NotAnswered::Unsent(Box::new(request)));
    }
    conn.try_send_request(request)
        .await
        .map_err(|mut err| match err.take_message() {
            Some(request) => NotAnswered::Unsent(Box::new(request)),
            None => NotAnswered::Sent(err.into_error()),
        })
}

/// Backends get `/path?query`. A client may have sent the absolute form `http://host/path`,
/// whose authority then replaces any `Host` field (RFC 9112 §3.2.2).
fn to_origin_form(request: &mut Request<Incoming>) {
    let uri = request.uri();
    if uri.scheme().is_none() && uri.authority().is_none() {
        return;
    }
    let authority = uri
        .authority()
        .map(|authority| authority.as_str().to_owned());
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
    if let Some(host) = authority.and_then(|host| HeaderValue::from_str(&host).ok()) {
        request.headers_mut().insert(header::HOST, host);
    }
}

fn failure_response(failure: &Failure) -> Response<ClientBody> {
    let status = failure.status();
    let text = format!(
        "{} {}: {failure}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(text))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match failure {
        Failure::Busy => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // The rest of the client's body was not read: the connection cannot carry another request.
        Failure::TooLarge(_) | Failure::UploadStalled => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    response
}
