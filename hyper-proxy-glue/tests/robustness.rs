//! Issue 14's front: timeouts that cut, bounded capacity per instance, routing around (and
//! reporting) a wedged instance, no amplification of a crashing request, and a body limit.
//!
//! Timing: these tests use real sockets, so they run on the real clock (tokio's paused clock
//! auto-advances whenever the runtime waits, including while the kernel completes a connect,
//! and would fire timeouts early); the exact timer logic is unit-tested on the paused clock
//! beside the code. Timeouts here are short, assertions on time are lower bounds (a timer never
//! fires early) with generous upper bounds.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either};
use hyper::{Request, StatusCode};
use hyper_proxy_glue::{Backend, BackendEvent, FrontConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Upper-bound slack for timings on a loaded machine.
const SLACK: Duration = Duration::from_secs(10);

use common::{
    Client, CrashingBackend, Generated, RunningFront, TestBackend, capture_logs, get, raw,
    status_of,
};

/// Issue 14 item 3: the front replayed a bodiless GET whose connection broke before any
/// answer, so `/crash` killed two workers. Now it reaches one instance, once, and gets 502.
#[tokio::test]
async fn a_request_that_crashes_an_instance_reaches_only_one() {
    let first = CrashingBackend::start().await;
    let second = CrashingBackend::start().await;
    let front = RunningFront::start(
        FrontConfig::default(),
        vec![
            Backend::new("web.1", first.addr),
            Backend::new("web.2", second.addr),
        ],
    )
    .await;
    for round in 1..=4u64 {
        let (status, body) = get(front.addr, "/crash").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        let hits = first.hits.load(Ordering::SeqCst) + second.hits.load(Ordering::SeqCst);
        assert_eq!(
            hits, round,
            "each crashing request must reach exactly one instance"
        );
    }
    let failed: u64 = front.front.backend_stats().iter().map(|s| s.failed).sum();
    assert_eq!(failed, 4);
    front.stop().await;
}

/// What may still move to another instance: a request that provably reached none.
#[tokio::test]
async fn a_refused_connect_still_moves_to_another_instance() {
    let app = TestBackend::start("web.2").await;
    let dead = common::dead_addr().await;
    let front = RunningFront::start(
        FrontConfig::default(),
        vec![Backend::new("web.1", dead), app.backend()],
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            get(front.addr, "/name").await,
            (StatusCode::OK, "web.2".into())
        );
    }
    front.stop().await;
}

/// Issue 14 item 1: a wedged request is cut at the response timeout with a 504, and the log
/// names the instance and the path.
#[tokio::test]
async fn a_wedged_request_gets_504_at_the_response_timeout_and_is_logged() {
    let logs = capture_logs();
    let app = TestBackend::start("web.1@41000").await;
    let config = FrontConfig {
        response_timeout: Duration::from_millis(500),
        ..FrontConfig::default()
    };
    let timeout = config.response_timeout;
    let front = RunningFront::start(config, vec![app.backend()]).await;
    let started = Instant::now();
    let (status, body) = get(front.addr, "/slow?ms=3600000").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    let took = started.elapsed();
    assert!(took >= timeout && took < timeout + SLACK, "{took:?}");
    let logs = logs.text();
    assert!(
        logs.lines().any(|line| line.contains("web.1@41000")
            && line.contains("/slow?ms=3600000")
            && line.contains("504")),
        "{logs}"
    );
    assert_eq!(front.front.in_flight("web.1@41000"), 0);
    // The instance's other requests are not held hostage.
    assert_eq!(get(front.addr, "/name").await.1, "web.1@41000");
    front.stop().await;
}

/// Issue 14 item 1: a client that never completes its request head (slowloris: one more
/// header line every 100 ms) is cut at the header read timeout, counted from its first byte;
/// an idle keep-alive connection is closed at the keep-alive timeout, not at the shorter
/// header read timeout.
#[tokio::test]
async fn a_slow_head_is_cut_and_an_idle_connection_closed_at_their_timeouts() {
    let app = TestBackend::start("web.1").await;
    let config = FrontConfig {
        header_read_timeout: Duration::from_millis(500),
        keep_alive_timeout: Duration::from_secs(4),
        ..FrontConfig::default()
    };
    let (head_limit, keep_alive) = (config.header_read_timeout, config.keep_alive_timeout);
    let front = RunningFront::start(config, vec![app.backend()]).await;

    let mut slow = TcpStream::connect(front.addr).await.unwrap();
    let started = Instant::now();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        .await
        .unwrap();
    let mut byte = [0u8; 1];
    let mut n = 0;
    let read = loop {
        tokio::select! {
            read = slow.read(&mut byte) => break read,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                n += 1;
                // Writes may fail once the front has closed; the read reports it either way.
                let _ = slow.write_all(format!("X-Slow-{n}: 1\r\n").as_bytes()).await;
            }
        }
    };
    let took = started.elapsed();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        took >= head_limit && took < head_limit + SLACK,
        "cut after {took:?}"
    );
    assert_eq!(app.flow.requests.load(Ordering::SeqCst), 0);

    let mut client = Client::connect(front.addr).await;
    assert_eq!(client.get("/name").await.unwrap().1, "web.1");
    // Idle for three times the header read timeout: still open.
    tokio::time::sleep(head_limit * 3).await;
    assert_eq!(client.get("/name").await.unwrap().1, "web.1");
    tokio::time::sleep(keep_alive + Duration::from_secs(1)).await;
    assert!(
        client.get("/name").await.is_err(),
        "the idle connection is closed"
    );
    front.stop().await;
}

/// Issue 14 item 2: no more than `max_in_flight_per_backend` requests on one instance at a
/// time (the others wait in the front for a place), and 503 when none frees within the
/// response timeout.
#[tokio::test]
async fn in_flight_requests_per_instance_are_bounded() {
    let app = TestBackend::start("web.1").await;
    let config = FrontConfig {
        max_in_flight_per_backend: 2,
        response_timeout: Duration::from_secs(1),
        ..FrontConfig::default()
    };
    let timeout = config.response_timeout;
    let front = RunningFront::start(config, vec![app.backend()]).await;
    let addr = front.addr;
    let burst: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(addr, "/slow?ms=200").await }))
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), (StatusCode::OK, "slow done".into()));
    }
    assert_eq!(app.flow.requests.load(Ordering::SeqCst), 6);
    assert_eq!(
        app.flow.max_active.load(Ordering::SeqCst),
        2,
        "the app never had more than the cap"
    );

    // Both places held (by two open websocket-style tunnels) past the response timeout: the
    // next request gets 503, and the instance never sees it.
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        let mut tunnel = TcpStream::connect(addr).await.unwrap();
        tunnel
            .write_all(b"GET /upgrade HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        tunnel.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 101");
        tunnels.push(tunnel);
    }
    assert_eq!(front.front.in_flight("web.1"), 2);
    let seen = app.flow.requests.load(Ordering::SeqCst);
    let started = Instant::now();
    let (status, body) = get(addr, "/name").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let took = started.elapsed();
    assert!(took >= timeout && took < timeout + SLACK, "{took:?}");
    assert_eq!(app.flow.requests.load(Ordering::SeqCst), seen);
    drop(tunnels);
    front.stop().await;
}

/// Issue 14 item 2: an instance whose requests all time out is routed around, reported once
/// as wedged (the supervisor's cue to recycle it), tried again now and then, and reported
/// recovered when it answers.
#[tokio::test]
async fn a_wedged_instance_is_routed_around_and_reported() {
    let stuck = TestBackend::start("web.1").await;
    let healthy = TestBackend::start("web.2").await;
    stuck.flow.wedged.store(true, Ordering::SeqCst);
    let config = FrontConfig {
        response_timeout: Duration::from_millis(300),
        wedged_retry: Duration::from_secs(3),
        ..FrontConfig::default()
    };
    let (wedged_after, retry) = (config.wedged_after, config.wedged_retry);
    let front = RunningFront::start(config, vec![stuck.backend(), healthy.backend()]).await;
    let mut events = front.front.events();

    // Requests one after another: equal load, so the instances take turns, and every other
    // one lands on web.1 and times out until web.1 is known to be wedged.
    let mut timeouts = 0;
    let mut sent = 0;
    while timeouts < wedged_after {
        sent += 1;
        assert!(sent < 20, "web.1 never got {wedged_after} requests");
        let (status, _) = get(front.addr, "/name").await;
        if status == StatusCode::GATEWAY_TIMEOUT {
            timeouts += 1;
        }
    }
    assert_eq!(
        events.try_recv().unwrap(),
        BackendEvent::Wedged {
            id: "web.1".into(),
            timeouts: wedged_after
        }
    );
    let before = stuck.flow.requests.load(Ordering::SeqCst);
    // (20 requests take milliseconds, far less than the retry period.)
    for _ in 0..20 {
        assert_eq!(
            get(front.addr, "/name").await,
            (StatusCode::OK, "web.2".into())
        );
    }
    assert_eq!(
        stuck.flow.requests.load(Ordering::SeqCst),
        before,
        "routed around"
    );
    assert!(
        front
            .front
            .backend_stats()
            .iter()
            .any(|s| s.id == "web.1" && s.wedged)
    );

    // It unwedges; after the retry period one request tries it, it answers, it is back.
    stuck.flow.wedged.store(false, Ordering::SeqCst);
    tokio::time::sleep(retry).await;
    let mut names = Vec::new();
    for _ in 0..4 {
        names.push(get(front.addr, "/name").await.1);
    }
    assert!(names.contains(&"web.1".to_owned()), "{names:?}");
    assert_eq!(
        events.try_recv().unwrap(),
        BackendEvent::Recovered { id: "web.1".into() }
    );
    assert!(events.try_recv().is_err(), "each change is reported once");
    front.stop().await;
}

/// A wedged instance is found long before its requests time out: once it holds
/// `stall_in_flight` requests and finishes none for `stall_after`, it is reported stalled (the
/// supervisor's cue to replace it at once), gets nothing more (a request waits in the front
/// instead of joining the stuck ones), and what waited goes to the replacement as soon as
/// it joins.
#[tokio::test]
async fn a_stalled_instance_gets_nothing_more_and_waiting_requests_go_to_its_replacement() {
    let stuck = TestBackend::start("web.1").await;
    stuck.flow.wedged.store(true, Ordering::SeqCst);
    let stall_after = Duration::from_millis(300);
    let config = FrontConfig {
        response_timeout: Duration::from_secs(20),
        stall_after: Some(stall_after),
        stall_in_flight: 3,
        ..FrontConfig::default()
    };
    let front = RunningFront::start(config, vec![stuck.backend()]).await;
    let mut events = front.front.events();

    let addr = front.addr;
    let held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "/name").await }))
        .collect();
    let deadline = Instant::now() + SLACK;
    while stuck.flow.requests.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "3 requests never reached web.1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held_since = Instant::now();
    // Within the stall period a request still goes to web.1 (one more stuck); past it, the
    // next request's choice finds web.1 stalled.
    tokio::time::sleep(stall_after).await;
    let waiting = tokio::spawn(async move { get(addr, "/name").await });
    let event = tokio::time::timeout(SLACK, events.recv())
        .await
        .expect("a stalled instance is reported")
        .unwrap();
    assert_eq!(
        event,
        BackendEvent::Stalled {
            id: "web.1".into(),
            in_flight: 3
        }
    );
    assert!(held_since.elapsed() >= stall_after);
    assert!(
        front
            .front
            .backend_stats()
            .iter()
            .any(|s| s.id == "web.1" && s.wedged)
    );
    // Another request arriving meanwhile waits too: web.1 got only the first three.
    let also_waiting = tokio::spawn(async move { get(addr, "/name").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished() && !also_waiting.is_finished());
    assert_eq!(stuck.flow.requests.load(Ordering::SeqCst), 3);

    let replacement = TestBackend::start("web.2").await;
    front.front.set_backends(vec![replacement.backend()]);
    for request in [waiting, also_waiting] {
        let answer = tokio::time::timeout(SLACK, request).await.unwrap().unwrap();
        assert_eq!(answer, (StatusCode::OK, "web.2".into()));
    }
    assert_eq!(stuck.flow.requests.load(Ordering::SeqCst), 3);
    // The stuck instance stops: its held requests end (502), and the front can stop.
    stuck.stop().await;
    for request in held {
        let (status, _) = tokio::time::timeout(SLACK, request).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    front.stop().await;
}

/// `stall_after: None` (`PIKU_STALL_TIMEOUT=0`): an instance holding more than the stall mark
/// for longer than the stall period is never found stalled — it keeps getting requests (up
/// to its in-flight bound) and nothing is reported; only the response timeout ends them.
#[tokio::test]
async fn without_the_stall_rule_a_busy_instance_keeps_its_requests() {
    let stuck = TestBackend::start("web.1").await;
    stuck.flow.wedged.store(true, Ordering::SeqCst);
    let config = FrontConfig {
        response_timeout: Duration::from_secs(20),
        stall_after: None,
        stall_in_flight: 3,
        ..FrontConfig::default()
    };
    let front = RunningFront::start(config, vec![stuck.backend()]).await;
    let mut events = front.front.events();
    let addr = front.addr;
    let mut held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "/name").await }))
        .collect();
    let deadline = Instant::now() + SLACK;
    while stuck.flow.requests.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "3 requests never reached web.1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Well past the default stall period (500 ms), one more goes to the instance all the same.
    tokio::time::sleep(Duration::from_millis(800)).await;
    held.push(tokio::spawn(async move { get(addr, "/name").await }));
    while stuck.flow.requests.load(Ordering::SeqCst) < 4 {
        assert!(
            Instant::now() < deadline,
            "the 4th request waited in the front: {:?}",
            front.front.backend_stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(events.try_recv().is_err(), "an event without a stall rule");
    assert!(front.front.backend_stats().iter().all(|s| !s.wedged));
    stuck.stop().await;
    for request in held {
        let (status, _) = tokio::time::timeout(SLACK, request).await.unwrap().unwrap();
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
    front.stop().await;
}

/// Issue 14 item 5: a body over the limit gets 413 — at once when its length is declared
/// (the instance sees nothing), and when a chunked upload passes the limit (the instance never
/// gets a complete request). Under the limit it streams through.
#[tokio::test]
async fn a_body_over_the_limit_gets_413() {
    let app = TestBackend::start("web.1").await;
    let limit = 1024 * 1024;
    let config = FrontConfig {
        max_request_body: Some(limit),
        ..FrontConfig::default()
    };
    let front = RunningFront::start(config, vec![app.backend()]).await;

    let declared = raw(
        front.addr,
        &format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n",
            limit + 1
        ),
    )
    .await;
    assert_eq!(status_of(&declared), 413, "{declared}");
    assert_eq!(app.flow.requests.load(Ordering::SeqCst), 0);

    // Chunked (no declared length): cut where it passes the limit.
    let mut client = Client::connect(front.addr).await;
    let request = Request::post("/upload")
        .header("host", "app.test")
        .header("transfer-encoding", "chunked")
        .body(Either::Right(Generated::chunked(4 * limit)))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // At the limit: passes.
    let mut client = Client::connect(front.addr).await;
    let request = Request::post("/upload")
        .header("host", "app.test")
        .body(Either::Right(Generated::new(limit, common::Flow::new())))
        .unwrap();
    let response = client.send(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, limit.to_string());
    front.stop().await;
}
