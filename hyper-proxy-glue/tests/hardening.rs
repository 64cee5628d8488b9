//! Issue 10's attacks on the front, each test the attack itself: forged client-address fields
//! and Host games on the public TCP port (item 14), and a flood of idle connections (item 2).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper::StatusCode;
use hyper_proxy_glue::FrontConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use common::{RunningFront, TestBackend, get, raw, status_of};

/// The `name: value` lines the test app echoes on `/headers`, from a raw response.
fn echoed_fields(answer: &str) -> HashMap<String, Vec<String>> {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let mut fields: HashMap<String, Vec<String>> = HashMap::new();
    for (name, value) in body.lines().filter_map(|line| line.split_once(": ")) {
        fields
            .entry(name.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    fields
}

#[tokio::test]
async fn the_public_port_never_passes_forged_client_address_fields() {
    let app = TestBackend::start("web.1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    let answer = raw(
        front.addr,
        "GET /headers HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\
         X-Real-IP: 6.6.6.6\r\nX-Remote-Address: 6.6.6.6\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 7.7.7.7\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: bank.example\r\nX-Forwarded-Port: 443\r\n\
         X-Forwarded-Ssl: on\r\nForwarded: for=6.6.6.6;proto=https\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let seen = echoed_fields(&answer);
    let peer = "127.0.0.1".to_owned();
    for name in ["x-forwarded-for", "x-real-ip", "x-remote-address"] {
        assert_eq!(
            seen.get(name),
            Some(&vec![peer.clone()]),
            "{name}: {seen:?}"
        );
    }
    assert_eq!(seen["x-forwarded-proto"], ["http"]);
    assert_eq!(seen["x-forwarded-host"], ["app.example"]);
    assert_eq!(seen["x-forwarded-port"], [front.addr.port().to_string()]);
    for name in ["x-forwarded-ssl", "forwarded"] {
        assert!(!seen.contains_key(name), "{name} reached the app: {seen:?}");
    }
    front.stop().await;
}

#[tokio::test]
async fn connection_close_host_does_not_strip_host() {
    let app = TestBackend::start("web.1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    let answer = raw(
        front.addr,
        "GET /headers HTTP/1.1\r\nHost: app.example\r\nConnection: close, Host\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert_eq!(
        echoed_fields(&answer).get("host"),
        Some(&vec!["app.example".to_owned()])
    );
    front.stop().await;
}

#[tokio::test]
async fn http_1_1_without_host_is_refused_before_the_app() {
    let app = TestBackend::start("web.1").await;
    let front = RunningFront::start(FrontConfig::default(), vec![app.backend()]).await;
    let answer = raw(
        front.addr,
        "GET /headers HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    let twice = raw(
        front.addr,
        "GET /headers HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&twice), 400, "{twice}");
    assert_eq!(
        app.flow.requests.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // HTTP/1.0 had no Host requirement.
    let old = raw(front.addr, "GET /name HTTP/1.0\r\n\r\n").await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    front.stop().await;
}

/// A thousand idle connections to one app's public port (the attack) hold at most the
/// front's cap: the rest wait in the listen backlog, another front keeps answering, and a real
/// client of the flooded app is served once the header read timeout has cut idle ones — not
/// before (a front without a cap would serve it at once, with every idle connection open).
#[tokio::test]
async fn a_thousand_idle_connections_hold_no_more_than_the_cap() {
    let config = FrontConfig {
        header_read_timeout: Duration::from_secs(3),
        ..FrontConfig::default()
    };
    let cap = config.max_connections;
    let app = TestBackend::start("web.1").await;
    let victim = RunningFront::start(config.clone(), vec![app.backend()]).await;
    let other_app = TestBackend::start("other.1").await;
    let other = RunningFront::start(config.clone(), vec![other_app.backend()]).await;

    // The most connections the victim ever held, sampled all along.
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (front, most) = (victim.front.clone(), Arc::clone(&most));
        tokio::spawn(async move {
            loop {
                most.fetch_max(front.connections(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };

    let mut connecting = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        connecting.spawn(TcpStream::connect(victim.addr));
    }
    let idle: Vec<TcpStream> = connecting
        .join_all()
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let started = Instant::now();
    while victim.front.connections() < cap {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the flood never filled the front"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Another app's front is unaffected.
    assert_eq!(
        get(other.addr, "/name").await,
        (StatusCode::OK, "other.1".into())
    );

    let mut late = TcpStream::connect(victim.addr).await.unwrap();
    late.write_all(b"GET /name HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), late.read_to_end(&mut answer))
        .await
        .expect("served once idle connections were cut")
        .unwrap();
    let closed_by_front = idle
        .iter()
        .filter(|stream| {
            let mut byte = [0u8; 1];
            !matches!(stream.try_read(&mut byte), Err(err) if err.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(answer.ends_with("web.1"), "{answer}");
    assert!(
        closed_by_front > 0,
        "served while every idle connection was still open: the cap did not hold"
    );
    sampler.abort();
    let most = most.load(Ordering::Relaxed);
    assert_eq!(most, cap, "at most the cap, and the flood reached it");
    drop(idle);
    victim.stop().await;
    other.stop().await;
}
