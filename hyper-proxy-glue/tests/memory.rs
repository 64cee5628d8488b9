//! Issue 14 item 5: uploads and downloads stream through the front; its memory stays bounded
//! during a 1 GiB transfer each way. Alone in its test binary, so no other test's memory is
//! counted.
//!
//! Why this cannot pass by accident: the bodies are made and consumed on the fly (one shared
//! 64 KiB chunk on the producing side, counted and dropped on the consuming side), so the only
//! place a whole body could be held is the front. A front that buffered either body would push
//! the process's peak resident set (VmHWM, which only grows) past 1 GiB; the bound is 64 MiB.
//! Both transfers are checked to have moved every byte.

mod common;

use std::time::Duration;

use http_body_util::{BodyExt, Either, Empty};
use hyper::{Request, StatusCode};
use hyper_proxy_glue::FrontConfig;

use common::{Client, Flow, Generated, RunningFront, TestBackend};

const GIB: u64 = 1024 * 1024 * 1024;
const BOUND: u64 = 64 * 1024 * 1024;

/// The process's peak resident set so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gib_each_way_streams_in_bounded_memory() {
    let app = TestBackend::start("web.1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    // Warm everything up (connections, buffers, the allocator) before the baseline.
    let mut client = Client::connect(front.addr).await;
    assert_eq!(
        client.get("/download?bytes=1000000").await.unwrap().1.len(),
        1_000_000
    );
    let before = peak_rss();

    let addr = front.addr;
    let upload = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let request = Request::post("/upload")
            .header("host", "app.test")
            .body(Either::Right(Generated::new(GIB, Flow::new())))
            .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let counted = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(counted, GIB.to_string(), "the app got every byte");
    });
    let download = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let request = Request::get(format!("/download?bytes={GIB}"))
            .header("host", "app.test")
            .body(Either::Left(Empty::new()))
            .unwrap();
        let response = client.send(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame.unwrap().data_ref() {
                total += data.len() as u64;
            }
        }
        assert_eq!(total, GIB, "the client got every byte");
    });
    let moved = tokio::time::timeout(Duration::from_secs(600), async {
        upload.await.unwrap();
        download.await.unwrap();
    })
    .await;
    assert!(moved.is_ok(), "2 GiB through loopback took over 10 minutes");

    let grown = peak_rss().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {:.1} MiB while 1 GiB went each way",
        grown as f64 / 1048576.0
    );
    assert!(
        grown < BOUND,
        "peak RSS grew by {grown} bytes: a body was buffered"
    );
    front.stop().await;
}
