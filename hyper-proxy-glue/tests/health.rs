//! Readiness probes against real listeners.

mod common;

use std::time::Duration;

use hyper_proxy_glue::{HealthCheck, LastSeen, wait_healthy};
use tokio::net::TcpListener;

use common::{TestBackend, dead_addr};

fn http(path: &str) -> HealthCheck {
    HealthCheck::Http { path: path.into() }
}

#[tokio::test]
async fn tcp_check_passes_when_the_port_accepts() {
    let app = TestBackend::start("web.1@v1").await;
    wait_healthy(app.addr, &HealthCheck::Tcp, Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn tcp_check_reports_connection_refused() {
    let addr = dead_addr().await;
    let err = wait_healthy(addr, &HealthCheck::Tcp, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert_eq!(err.last, LastSeen::Refused);
    let message = err.to_string();
    assert!(message.contains("connection refused"), "{message}");
    assert!(message.contains(&addr.to_string()), "{message}");
}

#[tokio::test]
async fn check_waits_for_a_late_listener() {
    let addr = dead_addr().await;
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = TcpListener::bind(addr).await.unwrap();
        // Keep it open while the probe connects.
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(listener);
    });
    wait_healthy(addr, &HealthCheck::Tcp, Duration::from_secs(5))
        .await
        .unwrap();
    late.abort();
}

#[tokio::test]
async fn http_check_passes_on_2xx_and_3xx() {
    let app = TestBackend::start("web.1@v1").await;
    wait_healthy(app.addr, &http("/up"), Duration::from_secs(5))
        .await
        .unwrap();
    wait_healthy(app.addr, &http("status?code=302"), Duration::from_secs(5))
        .await
        .unwrap();
}

#[tokio::test]
async fn http_check_reports_the_last_status() {
    let app = TestBackend::start("web.1@v1").await;
    let err = wait_healthy(
        app.addr,
        &http("/status?code=500"),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert_eq!(err.last, LastSeen::Status(500));
    assert!(err.to_string().contains("status 500"), "{err}");
}

#[tokio::test]
async fn http_check_reports_refused_before_the_app_listens() {
    let err = wait_healthy(dead_addr().await, &http("/up"), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(err.last, LastSeen::Refused);
}

#[tokio::test]
async fn http_check_reports_a_timeout_when_nothing_answers() {
    // The kernel completes the handshake from the backlog, but nobody ever reads the request.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let err = wait_healthy(addr, &http("/up"), Duration::from_millis(700))
        .await
        .unwrap_err();
    assert_eq!(err.last, LastSeen::TimedOut);
    assert!(err.to_string().contains("timeout"), "{err}");
    drop(silent);
}

#[tokio::test]
async fn http_check_rejects_an_invalid_path_at_once() {
    let app = TestBackend::start("web.1@v1").await;
    let err = wait_healthy(app.addr, &http("/bad path"), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err.last, LastSeen::BadPath(_)), "{err}");
    assert_eq!(err.waited, Duration::ZERO);
}
