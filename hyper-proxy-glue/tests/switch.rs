//! Replacing a front's backends while requests keep coming: nothing may fail.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty};
use hyper::{Request, StatusCode};
use hyper_proxy_glue::{FrontConfig, HealthCheck, wait_healthy};

use common::{Client, Flow, Generated, RunningFront, TestBackend, get};

#[tokio::test]
async fn drained_waits_for_a_slow_request_on_a_removed_backend() {
    let old = TestBackend::start("web.1@v1").await;
    let new = TestBackend::start("web.1@v2").await;
    let front = RunningFront::start(FrontConfig::default(), vec![old.backend()]).await;

    let addr = front.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=800").await });
    while front.front.in_flight("web.1@v1") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    front.front.set_backends(vec![new.backend()]);
    assert_eq!(
        get(front.addr, "/name").await.1,
        "web.1@v2",
        "new requests go to the new set"
    );
    assert_eq!(front.front.in_flight("web.1@v1"), 1);
    assert!(
        !front
            .front
            .drained(&["web.1@v1"], Duration::from_millis(100))
            .await
    );
    assert!(
        front
            .front
            .drained(&["web.1@v1"], Duration::from_secs(10))
            .await
    );
    assert!(
        slow.is_finished()
            || tokio::time::timeout(Duration::from_secs(1), &mut { slow })
                .await
                .is_ok()
    );
    old.stop().await;
    front.stop().await;
}

#[tokio::test]
async fn drained_result_of_the_slow_request_is_complete() {
    let old = TestBackend::start("web.1@v1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![old.backend()]).await;
    let addr = front.addr;
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=300").await });
    while front.front.in_flight("web.1@v1") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    front.front.set_backends(vec![]);
    assert!(
        front
            .front
            .drained(&["web.1@v1"], Duration::from_secs(10))
            .await
    );
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, "slow done".into()));
    front.stop().await;
}

/// One client's loop: GETs, small uploads and short slow requests on one keep-alive
/// connection (reconnecting only if the front closed it), counting anything but a 200.
async fn client_loop(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
) {
    let mut client = Client::connect(addr).await;
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let request = match round % 10 {
            0 => Request::post("/upload")
                .header("host", "app.test")
                .body(Either::Right(Generated::new(100_000, Flow::new()))),
            5 => Request::get("/slow?ms=20")
                .header("host", "app.test")
                .body(Either::Left(Empty::<Bytes>::new())),
            _ => Request::get("/name")
                .header("host", "app.test")
                .body(Either::Left(Empty::<Bytes>::new())),
        }
        .unwrap();
        let outcome = match client.send(request).await {
            Ok(response) => {
                let status = response.status();
                match response.into_body().collect().await {
                    Ok(_) if status == StatusCode::OK => Ok(()),
                    Ok(body) => Err(format!("{status}: {:?}", body.to_bytes())),
                    Err(err) => Err(format!("body: {err}")),
                }
            }
            Err(err) => Err(format!("request: {err}")),
        };
        match outcome {
            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
            Err(why) => {
                eprintln!("failed request: {why}");
                client = Client::connect(addr).await;
                failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_and_scaling_under_load_loses_no_request() {
    const CLIENTS: usize = 4;
    const MIN_REQUESTS: usize = 2000;
    let mut generation = vec![
        TestBackend::start("web.1@v0").await,
        TestBackend::start("web.2@v0").await,
    ];
    let front = RunningFront::start(
        FrontConfig::default(),
        generation.iter().map(TestBackend::backend).collect(),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(client_loop(
                front.addr,
                stop.clone(),
                ok.clone(),
                failed.clone(),
            ))
        })
        .collect();

    // Redeploys (2 → 2) and scaling (2 → 3 → 1 → 2), the supervisor's way: start, health,
    // switch, drain, stop.
    let sizes = [2, 3, 1, 2, 2, 3, 1, 2];
    for (release, size) in sizes.into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let mut next = Vec::new();
        for n in 1..=size {
            let app = TestBackend::start(&format!("web.{n}@v{}", release + 1)).await;
            wait_healthy(
                app.addr,
                &HealthCheck::Http { path: "/up".into() },
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            next.push(app);
        }
        front
            .front
            .set_backends(next.iter().map(TestBackend::backend).collect());
        let old_ids: Vec<String> = generation.iter().map(|app| app.name.clone()).collect();
        assert!(
            front.front.drained(&old_ids, Duration::from_secs(10)).await,
            "old instances drained"
        );
        for app in std::mem::replace(&mut generation, next) {
            app.stop().await;
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ok.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < MIN_REQUESTS
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!(
        "{ok} requests ok, {failed} failed over {} switches",
        sizes.len()
    );
    assert_eq!(failed, 0);
    assert!(ok >= MIN_REQUESTS, "only {ok} requests in time");
    front.stop().await;
}
