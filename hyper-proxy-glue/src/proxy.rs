//! One request through the front: choose a backend, hand the request over (retrying where
//! nothing can have reached the app), and turn the outcome into the client's response.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Empty, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::http::uri::PathAndQuery;
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::sync::oneshot;

use crate::backend::{BackendState, InFlightGuard};
use crate::body::{IdleTimeout, Release, ResponseBody};
use crate::front::Shared;
use crate::headers::{self, Peer};
use crate::upgrade;
use crate::upstream::{self, Sender, UpstreamBody};

/// What the client receives: a backend's streamed body, or a short text the front wrote.
pub(crate) type ClientBody = Either<ResponseBody, Full<Bytes>>;

/// Why no backend response could be relayed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("no instance of this app is running")]
    NoBackend,
    #[error("no instance accepted the connection")]
    Unreachable,
    #[error("the app closed the connection without answering")]
    Broken,
    #[error("the app did not answer in time")]
    TimedOut,
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            Failure::NoBackend | Failure::Unreachable | Failure::Broken => StatusCode::BAD_GATEWAY,
        }
    }
}

/// A backend's answer and what it is holding on to.
struct Answer {
    response: Response<Incoming>,
    conn: Sender,
    guard: InFlightGuard,
}

/// Method, target and fields of a bodiless request, kept to send it again on a fresh
/// connection if a reused one turns out to have been closed by the backend.
struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Replay {
    fn of(request: &Request<UpstreamBody>) -> Replay {
        Replay {
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        }
    }

    fn into_request(self) -> Request<UpstreamBody> {
        let mut request = Request::new(Either::Right(Empty::new()));
        *request.method_mut() = self.method;
        *request.uri_mut() = self.uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers;
        request
    }
}

pub(crate) async fn handle(
    shared: Arc<Shared>,
    peer: Peer,
    mut request: Request<Incoming>,
) -> Result<Response<ClientBody>, Infallible> {
    let wants_upgrade = headers::wants_upgrade(request.headers());
    headers::rewrite_request(request.headers_mut(), wants_upgrade, &peer);
    to_origin_form(request.uri_mut());
    let client_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut request));

    let (parts, body) = request.into_parts();
    // Replaying is only safe when nothing but the head is sent and sending it twice is harmless.
    let replayable = body.is_end_stream()
        && !wants_upgrade
        && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    let mut body = IdleTimeout::new(body, shared.config.idle_timeout);
    let body_done = if body.is_end_stream() {
        None
    } else {
        let (done, body_done) = oneshot::channel();
        body = body.with_end_signal(done);
        Some(body_done)
    };
    let request = Request::from_parts(parts, Either::Left(body));

    let answer = match forward(&shared, request, replayable, body_done).await {
        Ok(answer) => answer,
        Err(failure) => return Ok(failure_response(&failure)),
    };
    let Answer {
        mut response,
        conn,
        guard,
    } = answer;

    if let Some(client_upgrade) = client_upgrade
        && response.status() == StatusCode::SWITCHING_PROTOCOLS
    {
        let backend_upgrade = hyper::upgrade::on(&mut response);
        let (mut parts, _) = response.into_parts();
        headers::rewrite_response(&mut parts.headers, true);
        // The backend connection now belongs to the tunnel; the sender is of no further use.
        drop(conn);
        upgrade::spawn_tunnel(
            client_upgrade,
            backend_upgrade,
            guard,
            shared.shutdown.subscribe(),
        );
        return Ok(Response::from_parts(parts, Either::Right(Full::default())));
    }

    let (mut parts, body) = response.into_parts();
    headers::rewrite_response(&mut parts.headers, false);
    let release = Release {
        conn,
        max_idle: shared.config.max_idle_per_backend,
        guard,
    };
    let body = if body.is_end_stream() {
        // Nothing to stream (204, 304, HEAD, empty): the connection is free now, and hyper
        // might never poll an empty body to find that out.
        release.finish();
        Either::Right(Full::default())
    } else {
        Either::Left(ResponseBody::new(body, shared.config.idle_timeout, release))
    };
    Ok(Response::from_parts(parts, body))
}

/// Sends `request` to a backend and waits for the response head.
///
/// Retries, all bounded: a backend refusing the connection (or not connecting in time) is
/// marked down and the request goes to another backend, each tried at most once — nothing was
/// sent, so this is safe for any request, and two instances crashing together still cost no
/// request while a third is up; a reused connection that closed before the request was written
/// is replaced; a bodiless GET/HEAD/OPTIONS that met a reused connection closing under it is
/// sent once more, and so is one whose fresh connection broke before any answer (the instance
/// died under it), to another backend.
///
/// The response-head timeout runs from when the request body has been sent (`body_done`), so a
/// long upload is bounded by the idle timeout instead.
async fn forward(
    shared: &Shared,
    mut request: Request<UpstreamBody>,
    replayable: bool,
    mut body_done: Option<oneshot::Receiver<()>>,
) -> Result<Answer, Failure> {
    let config = &shared.config;
    // Backends that failed to connect for this request (allocates only on that path).
    let mut unreachable: Vec<Arc<BackendState>> = Vec::new();
    let mut replayed = false;
    // Each round takes a pooled connection out of circulation or tries a backend not tried
    // yet, so the loop ends anyway; the bound only caps pathological churn.
    for _ in 0..(config.max_idle_per_backend + 8) {
        let guard = shared
            .pool
            .pick(&unreachable)
            .ok_or(if unreachable.is_empty() {
                Failure::NoBackend
            } else {
                Failure::Unreachable
            })?;
        let backend = Arc::clone(guard.backend());

        let (mut conn, reused) = match backend.take_idle(config.pool_idle_timeout) {
            Some(conn) => (conn, true),
            None => match upstream::connect(backend.backend.addr, config.connect_timeout).await {
                Ok(conn) => (conn, false),
                Err(err) => {
                    tracing::warn!(backend = %backend.backend.id, %err, "backend unreachable");
                    backend.mark_down(config.down_after_refusal);
                    unreachable.push(backend);
                    continue;
                }
            },
        };
        if reused
            && tokio::time::timeout(config.connect_timeout, conn.ready())
                .await
                .map_or(true, |ready| ready.is_err())
        {
            continue;
        }

        // Kept for one more try: on a reused connection the backend may have closed it just
        // before the request went out; on a fresh one the instance may have died (crash,
        // kill) with the request in its socket. A bodiless GET/HEAD/OPTIONS is safe to send
        // again either way (RFC 9110 §9.2.2).
        let replay = (replayable && !replayed).then(|| Replay::of(&request));
        let sent = tokio::select! {
            sent = conn.try_send_request(request) => Ok(sent),
            () = async {
                body_sent(&mut body_done).await;
                tokio::time::sleep(config.response_header_timeout).await;
            } => Err(()),
        };
        match sent {
            Ok(Ok(response)) => {
                return Ok(Answer {
                    response,
                    conn,
                    guard,
                });
            }
            Ok(Err(mut err)) => {
                if let Some(unsent) = err.take_message() {
                    request = unsent;
                    continue;
                }
                if let Some(replay) = replay {
                    tracing::debug!(backend = %backend.backend.id, reused, err = %err.error(), "connection failed before an answer; replaying");
                    if !reused {
                        // A fresh connection failing is the instance's fault: try another.
                        backend.mark_down(config.down_after_refusal);
                        unreachable.push(backend);
                    }
                    replayed = true;
                    request = replay.into_request();
                    continue;
                }
                tracing::warn!(backend = %backend.backend.id, err = %err.into_error(), "request to backend failed");
                return Err(Failure::Broken);
            }
            Err(()) => {
                tracing::warn!(backend = %backend.backend.id, "no response head within {:?}", config.response_header_timeout);
                return Err(Failure::TimedOut);
            }
        }
    }
    Err(Failure::Broken)
}

/// Resolves once the request body has been read to its end or dropped (at once if there is none).
async fn body_sent(body_done: &mut Option<oneshot::Receiver<()>>) {
    if let Some(done) = body_done {
        let _ = done.await;
    }
    // A finished receiver must not be polled again.
    *body_done = None;
}

/// Backends get `/path?query`; a client may have sent the absolute form `http://host/path`.
fn to_origin_form(uri: &mut Uri) {
    if uri.scheme().is_some() || uri.authority().is_some() {
        let path = uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *uri = Uri::from(path);
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
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
