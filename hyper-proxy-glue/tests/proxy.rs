//! Requests through a front: streaming, headers, upgrades, spreading, failures, Unix socket.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty};
use hyper::{Request, StatusCode};
use hyper_proxy_glue::{Backend, Front, FrontConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};

use common::{Client, Flow, Generated, RunningFront, TestBackend, UNSET, dead_addr, get};

const BIG: u64 = 50 * 1024 * 1024;
/// A front that buffered a whole body would let the other side see data only after all 50 MiB
/// were produced. Loopback socket buffers on both hops stay far below this.
const STREAMED_BEFORE: u64 = BIG / 2;

#[tokio::test]
async fn get_is_relayed_with_status_and_body() {
    let app = TestBackend::start("web.1@v1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    assert_eq!(
        get(front.addr, "/name").await,
        (StatusCode::OK, "web.1@v1".into())
    );
    assert_eq!(
        get(front.addr, "/status?code=418").await.0,
        StatusCode::IM_A_TEAPOT
    );
    front.stop().await;
}

#[tokio::test]
async fn large_upload_streams_to_the_backend() {
    // The app notes, on its first chunk, how much the client had produced so far.
    let flow = Flow::new();
    let app = TestBackend::start_with("web.1@v1", flow.clone()).await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    let mut client = Client::connect(front.addr).await;
    let request = Request::post("/upload")
        .header("host", "app.test")
        .body(Either::Right(Generated::new(BIG, flow.clone())))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, BIG.to_string());
    let at_first = flow.produced_at_first_read.load(Ordering::SeqCst);
    assert_ne!(at_first, UNSET);
    eprintln!("upload: app's first byte after {at_first} bytes produced");
    assert!(
        at_first < STREAMED_BEFORE,
        "app saw its first byte only after {at_first} bytes were sent"
    );
    front.stop().await;
}

#[tokio::test]
async fn large_download_streams_to_the_client() {
    let app = TestBackend::start("web.1@v1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    let mut client = Client::connect(front.addr).await;
    let request = Request::get(format!("/download?bytes={BIG}"))
        .header("host", "app.test")
        .body(Either::Left(Empty::new()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut total = 0u64;
    let mut produced_at_first = None;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.unwrap().data_ref() {
            if produced_at_first.is_none() && !data.is_empty() {
                produced_at_first = Some(app.flow.produced.load(Ordering::SeqCst));
            }
            total += data.len() as u64;
        }
    }
    assert_eq!(total, BIG);
    let at_first = produced_at_first.unwrap();
    eprintln!("download: client's first byte after {at_first} bytes produced");
    assert!(
        at_first < STREAMED_BEFORE,
        "client saw its first byte only after the app produced {at_first}"
    );
    // The connection is reused afterwards: the body ended cleanly.
    assert_eq!(client.get("/name").await.unwrap().1, "web.1@v1");
    front.stop().await;
}

fn header_lines(body: &str) -> HashMap<String, String> {
    body.lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test]
async fn forwarded_headers_are_added_and_hop_by_hop_removed() {
    let app = TestBackend::start("web.1@v1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    let mut client = Client::connect(front.addr).await;
    let request = Request::get("/headers")
        .header("host", "app.test:8080")
        .header("x-forwarded-for", "203.0.113.5")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("x-app", "kept")
        .body(Either::Left(Empty::new()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen = header_lines(&String::from_utf8_lossy(&body));
    // The TCP port is public: a client's claims about its address or scheme are not believed.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "app.test:8080");
    assert_eq!(seen["x-forwarded-port"], front.addr.port().to_string());
    assert_eq!(seen["x-app"], "kept");
    for gone in ["x-private", "keep-alive", "te"] {
        assert!(!seen.contains_key(gone), "{gone} reached the app: {seen:?}");
    }
    front.stop().await;
}

/// Reads a response head byte by byte (so nothing after it is consumed).
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = stream.read_u8().await.unwrap();
        head.push(byte);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn upgrade_is_tunnelled_both_ways() {
    let app = TestBackend::start("web.1@v1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    let mut stream = TcpStream::connect(front.addr).await.unwrap();
    stream
        .write_all(b"GET /upgrade HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: echo"),
        "{head}"
    );
    assert_eq!(
        front.front.in_flight("web.1@v1"),
        1,
        "an open tunnel counts as in flight"
    );
    for round in 0..20 {
        let message = format!("message {round} through the tunnel");
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
    drop(stream);
    assert!(
        front
            .front
            .drained(&["web.1@v1"], Duration::from_secs(5))
            .await
    );
    front.stop().await;
}

#[tokio::test]
async fn requests_spread_over_three_backends() {
    let apps = [
        TestBackend::start("web.1@v1").await,
        TestBackend::start("web.2@v1").await,
        TestBackend::start("web.3@v1").await,
    ];
    let front = RunningFront::start(
        FrontConfig::default(),
        apps.iter().map(TestBackend::backend).collect(),
    )
    .await;
    let mut client = Client::connect(front.addr).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..60 {
        let (status, name) = client.get("/name").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        *counts.entry(name).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n >= 10), "uneven: {counts:?}");
    front.stop().await;
}

#[tokio::test]
async fn dead_backend_never_shows_when_another_is_up() {
    let app = TestBackend::start("web.2@v1").await;
    let backends = vec![Backend::new("web.1@v1", dead_addr().await), app.backend()];
    let front = RunningFront::start(FrontConfig::default(), backends).await;
    for _ in 0..30 {
        assert_eq!(
            get(front.addr, "/name").await,
            (StatusCode::OK, "web.2@v1".into())
        );
    }
    // A request with a body is retried too: a refused connect has sent nothing.
    let mut client = Client::connect(front.addr).await;
    for _ in 0..5 {
        let request = Request::post("/upload")
            .header("host", "app.test")
            .body(Either::Right(Generated::new(1000, Flow::new())))
            .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    front.stop().await;
}

#[tokio::test]
async fn two_dead_of_three_still_no_502() {
    let app = TestBackend::start("web.3@v1").await;
    let backends = vec![
        Backend::new("web.1@v1", dead_addr().await),
        Backend::new("web.2@v1", dead_addr().await),
        app.backend(),
    ];
    let front = RunningFront::start(FrontConfig::default(), backends).await;
    for _ in 0..20 {
        assert_eq!(
            get(front.addr, "/name").await,
            (StatusCode::OK, "web.3@v1".into())
        );
    }
    front.stop().await;
}

#[tokio::test]
async fn backend_crash_between_requests_is_not_seen() {
    let first = TestBackend::start("web.1@v1").await;
    let second = TestBackend::start("web.2@v1").await;
    let front = RunningFront::start(
        FrontConfig::default(),
        vec![first.backend(), second.backend()],
    )
    .await;
    let mut client = Client::connect(front.addr).await;
    // Warm both backends' keep-alive pools, then kill one without telling the front.
    for _ in 0..10 {
        assert_eq!(client.get("/name").await.unwrap().0, StatusCode::OK);
    }
    first.stop().await;
    for _ in 0..30 {
        assert_eq!(
            client.get("/name").await.unwrap(),
            (StatusCode::OK, "web.2@v1".into())
        );
    }
    front.stop().await;
}

#[tokio::test]
async fn all_dead_or_none_answers_502() {
    let front = RunningFront::start(FrontConfig::default(), vec![]).await;
    let (status, body) = get(front.addr, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        body.contains("no instance of this app is running"),
        "{body}"
    );

    front.front.set_backends(vec![
        Backend::new("web.1@v1", dead_addr().await),
        Backend::new("web.2@v1", dead_addr().await),
    ]);
    let (status, body) = get(front.addr, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.starts_with("502 Bad Gateway"), "{body}");
    front.stop().await;
}

#[tokio::test]
async fn slow_response_head_answers_504() {
    let app = TestBackend::start("web.1@v1").await;
    let config = FrontConfig {
        response_timeout: Duration::from_millis(200),
        ..FrontConfig::default()
    };
    let front = RunningFront::start(config, vec![app.backend()]).await;
    let (status, body) = get(front.addr, "/slow?ms=3000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(body.starts_with("504"), "{body}");
    assert_eq!(front.front.in_flight("web.1@v1"), 0);
    front.stop().await;
}

#[tokio::test]
async fn head_keeps_content_length_and_connection_is_reused() {
    let app = TestBackend::start("web.1@v1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    let mut client = Client::connect(front.addr).await;
    let request = Request::head("/download?bytes=1234")
        .header("host", "app.test")
        .body(Either::Left(Empty::<Bytes>::new()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "1234");
    assert!(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );
    assert_eq!(client.get("/name").await.unwrap().1, "web.1@v1");
    front.stop().await;
}

#[tokio::test]
async fn serves_a_unix_socket_and_keeps_nginx_forwarded_headers() {
    let app = TestBackend::start("web.1@v1").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let front = Front::new(FrontConfig::default());
    front.set_backends(vec![app.backend()]);
    let serving = front.clone();
    let task = tokio::spawn(async move { serving.serve_unix(listener).await });

    let mut client = Client::over(UnixStream::connect(&path).await.unwrap()).await;
    let request = Request::get("/headers")
        .header("host", "app.example")
        .header("x-forwarded-for", "198.51.100.4")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-port", "443")
        .body(Either::Left(Empty::new()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen = header_lines(&String::from_utf8_lossy(&body));
    assert_eq!(seen["x-forwarded-for"], "198.51.100.4");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-forwarded-port"], "443");
    assert_eq!(seen["x-forwarded-host"], "app.example");

    drop(client);
    front.shutdown();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn stalled_response_body_is_cut_after_the_idle_timeout() {
    let app = TestBackend::start("web.1@v1").await;
    let config = FrontConfig {
        body_idle_timeout: Duration::from_millis(300),
        ..FrontConfig::default()
    };
    let front = RunningFront::start(config, vec![app.backend()]).await;
    let mut client = Client::connect(front.addr).await;
    let request = Request::get("/stall")
        .header("host", "app.test")
        .body(Either::Left(Empty::new()))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let read = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect()).await;
    assert!(
        matches!(read, Ok(Err(_))),
        "the truncated body must fail, not hang: {read:?}"
    );
    assert!(
        front
            .front
            .drained(&["web.1@v1"], Duration::from_secs(5))
            .await
    );
    front.stop().await;
}

#[tokio::test]
async fn slow_upload_is_not_cut_by_the_response_head_timeout() {
    let app = TestBackend::start("web.1@v1").await;
    let config = FrontConfig {
        response_timeout: Duration::from_millis(300),
        ..FrontConfig::default()
    };
    let front = RunningFront::start(config, vec![app.backend()]).await;
    let mut client = Client::connect(front.addr).await;
    // 8 chunks, one every 100 ms: the upload takes longer than the response-head timeout.
    let total = 8 * common::CHUNK as u64;
    let request = Request::post("/upload")
        .header("host", "app.test")
        .body(Either::Right(Generated::paced(
            total,
            Duration::from_millis(100),
        )))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, total.to_string());
    front.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_request_in_progress_finish() {
    let app = TestBackend::start("web.1@v1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    let addr = front.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=400").await });
    while front.front.in_flight("web.1@v1") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    front.stop().await;
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "slow done".into()));
    // The listener is closed now.
    assert!(TcpStream::connect(addr).await.is_err());
}
