//! piku-nginx against the real nginx binary on loopback ports: configs pass `nginx -t`, apps
//! are served by host name through the Unix socket, static files, HTTPS redirects, the
//! self-signed certificate, unknown hosts refused by the shipped snippet, WebSocket upgrades,
//! and a broken `NGINX_INCLUDE_FILE` rejected while the old config keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Site, curl_https, get, served_certificate, start_backend, wait_for};
use piku_nginx::{CertStatus, NginxError, NginxSettings, Reload, configure, install, render};

#[test]
fn a_config_with_every_setting_passes_nginx_t() {
    let site = Site::new();
    let app = site.app("full");
    let app_dir = site.root.app_dir(&app);
    std::fs::create_dir_all(app_dir.join("public")).unwrap();
    std::fs::write(app_dir.join("extra.conf"), "client_max_body_size $BODY;\n").unwrap();
    let env = site.env(
        "full.test www.full.test *.full.test",
        &[
            ("NGINX_HTTPS_ONLY", "true"),
            ("NGINX_STATIC_PATHS", "/static/:public,/media:data"),
            ("NGINX_CATCH_ALL", "/index.html"),
            ("NGINX_INCLUDE_FILE", "extra.conf"),
            ("BODY", "20m"),
            ("NGINX_CACHE_PREFIXES", "/api,/img"),
            ("NGINX_CLOUDFLARE_ACL", "true"),
            ("SSH_CLIENT", "192.0.2.10 40000 22"),
            ("PIKU_RESPONSE_TIMEOUT", "120"),
            ("PIKU_KEEPALIVE_TIMEOUT", "30"),
            ("NGINX_CLIENT_MAX_BODY_SIZE", "100m"),
        ],
    );
    let settings = site.settings(&app, &env);
    let nginx = site.command();
    let mut with_features = settings.clone();
    with_features.features = nginx.features().unwrap();
    piku_nginx::ensure_self_signed(&with_features).unwrap();
    let text = render(&with_features);
    // The front's timeouts and body limit, in the places nginx takes them (checked below).
    for line in [
        "proxy_read_timeout 130s;",
        "proxy_send_timeout 130s;",
        "client_max_body_size 104857600;",
        "keepalive_timeout 29s;",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    // Not running: the check alone must accept it, and install must put it in place even
    // though the reload has no nginx to signal.
    let outcome = install(&app, &site.root, &text, &nginx).unwrap();
    assert!(outcome.changed);
    assert!(
        matches!(outcome.reload, Reload::Failed(_)),
        "{:?}",
        outcome.reload
    );
    assert_eq!(std::fs::read_to_string(&outcome.conf).unwrap(), text);
    assert!(!site.root.nginx().join("full.conf.new").exists());
    // The same text again: nothing written, nothing reloaded.
    let again = install(&app, &site.root, &text, &nginx).unwrap();
    assert!(!again.changed);
    assert_eq!(again.reload, Reload::Skipped);
}

#[test]
fn app_served_by_host_name_and_unknown_hosts_refused() {
    let site = Site::new();
    let nginx = site.start_nginx();
    let app = site.app("blog");
    let settings = site.settings(&app, &site.env("blog.test", &[]));
    start_backend(&settings.socket_path());
    let done = nginx.reloaded(|| configure(&settings, &site.command()).unwrap());
    assert_eq!(done.certificate, CertStatus::Created);
    assert_eq!(done.install.reload, Reload::Done);

    wait_for("the app through nginx", || {
        get(site.http_port, "blog.test", "/").status == 200
    });
    let r = get(site.http_port, "blog.test", "/hello?x=1");
    assert_eq!(
        r.body,
        "backend blog.test /hello?x=1 upgrade= connection=\n"
    );
    assert_eq!(r.header("X-Deployed-By"), Some("Piku"));

    // Unknown host, plain HTTP: the snippet's default server closes without answering (444).
    let r = get(site.http_port, "other.test", "/");
    assert_eq!(r.raw, "", "unknown host got an answer");

    // TLS: the app's self-signed certificate, HTTP through to the backend.
    let (ok, body, err) = curl_https("blog.test", site.https_port, "/tls", None);
    assert!(ok, "{err}");
    assert_eq!(body, "backend blog.test /tls upgrade= connection=\n");
    let subject = served_certificate("blog.test", site.https_port);
    assert!(
        subject.contains("Self-Signed") && subject.contains("blog.test"),
        "{subject}"
    );

    // Unknown host, TLS: the handshake is refused (piku#409: the first app answered).
    let (ok, body, _) = curl_https("other.test", site.https_port, "/", None);
    assert!(!ok && body.is_empty(), "unknown TLS host got {body:?}");

    // A second deploy with the same settings changes nothing and reloads nothing.
    let again = configure(&settings, &site.command()).unwrap();
    assert_eq!(again.certificate, CertStatus::Kept);
    assert!(!again.install.changed);
}

#[test]
fn websocket_upgrade_passes_through() {
    let site = Site::new();
    let nginx = site.start_nginx();
    let app = site.app("ws");
    let settings = site.settings(&app, &site.env("ws.test", &[]));
    start_backend(&settings.socket_path());
    nginx.reloaded(|| configure(&settings, &site.command()).unwrap());
    wait_for("the app through nginx", || {
        get(site.http_port, "ws.test", "/").status == 200
    });

    let mut stream = TcpStream::connect(("127.0.0.1", site.http_port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /socket HTTP/1.1\r\nHost: ws.test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed in the 101 head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .write_all(b"ping over the upgraded connection")
        .unwrap();
    let mut echo = vec![0u8; 33];
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(echo, b"ping over the upgraded connection");
}

#[test]
fn static_paths_are_served_by_nginx() {
    let site = Site::new();
    let nginx = site.start_nginx();
    let app = site.app("docs");
    let public = site.root.app_dir(&app).join("public");
    std::fs::create_dir_all(public.join("sub")).unwrap();
    std::fs::write(public.join("hello.txt"), "static hello\n").unwrap();
    std::fs::write(public.join("page.html"), "<p>page</p>\n").unwrap();
    std::fs::write(public.join("index.html"), "<p>spa</p>\n").unwrap();
    let env = site.env(
        "docs.test",
        &[
            ("NGINX_STATIC_PATHS", "/static/:public"),
            ("NGINX_CATCH_ALL", "/index.html"),
        ],
    );
    let settings = site.settings(&app, &env);
    start_backend(&settings.socket_path());
    nginx.reloaded(|| configure(&settings, &site.command()).unwrap());
    wait_for("static file", || {
        get(site.http_port, "docs.test", "/static/hello.txt").status == 200
    });

    let r = get(site.http_port, "docs.test", "/static/hello.txt");
    assert_eq!(r.body, "static hello\n");
    assert_eq!(r.header("Content-Type"), Some("text/plain"));
    // try_files: $uri.html, then the catch-all.
    assert_eq!(
        get(site.http_port, "docs.test", "/static/page").body,
        "<p>page</p>\n"
    );
    assert_eq!(
        get(site.http_port, "docs.test", "/static/no/such/route").body,
        "<p>spa</p>\n"
    );
    // Everything else still goes to the app.
    assert!(
        get(site.http_port, "docs.test", "/api")
            .body
            .starts_with("backend docs.test /api")
    );
    // No traversal out of the alias (nginx's off-by-slash).
    let r = get(site.http_port, "docs.test", "/static../docs.conf");
    assert!(r.body.starts_with("backend docs.test"), "{}", r.raw);
}

#[test]
fn https_only_redirects_plain_http() {
    let site = Site::new();
    let nginx = site.start_nginx();
    let app = site.app("secure");
    let settings = site.settings(
        &app,
        &site.env("secure.test", &[("NGINX_HTTPS_ONLY", "true")]),
    );
    start_backend(&settings.socket_path());
    nginx.reloaded(|| configure(&settings, &site.command()).unwrap());
    wait_for("the redirect", || {
        get(site.http_port, "secure.test", "/x").status == 301
    });

    let r = get(site.http_port, "secure.test", "/x?y=1");
    assert_eq!(
        r.header("Location"),
        Some(format!("https://secure.test:{}/x?y=1", site.https_port).as_str())
    );
    // The ACME challenge stays reachable over plain HTTP.
    let dir = site.root.acme().join(".well-known/acme-challenge");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tok"), "proof").unwrap();
    let r = get(
        site.http_port,
        "secure.test",
        "/.well-known/acme-challenge/tok",
    );
    let log = std::fs::read_to_string(&nginx.error_log).unwrap_or_default();
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "proof"),
        "{}\n{log}",
        r.raw
    );
    let (ok, body, err) = curl_https("secure.test", site.https_port, "/x", None);
    assert!(ok, "{err}");
    assert!(body.starts_with("backend secure.test /x"));
}

#[test]
fn broken_include_file_is_rejected_and_the_old_config_keeps_serving() {
    let site = Site::new();
    let nginx = site.start_nginx();
    let app = site.app("shop");
    let app_dir = site.root.app_dir(&app);
    std::fs::write(app_dir.join("nginx.inc"), "client_max_body_size 1m;\n").unwrap();
    let env = site.env("shop.test", &[("NGINX_INCLUDE_FILE", "nginx.inc")]);
    let settings = site.settings(&app, &env);
    start_backend(&settings.socket_path());
    nginx.reloaded(|| configure(&settings, &site.command()).unwrap());
    wait_for("the app through nginx", || {
        get(site.http_port, "shop.test", "/").status == 200
    });
    let live = std::fs::read_to_string(settings.conf_path()).unwrap();

    std::fs::write(app_dir.join("nginx.inc"), "bogus_directive on;\n").unwrap();
    let broken = NginxSettings::from_env(&app, &site.root, &env, true, None)
        .unwrap()
        .unwrap();
    let err = configure(&broken, &site.command()).unwrap_err();
    let NginxError::Rejected { message, .. } = &err else {
        panic!("expected a rejection, got {err}");
    };
    assert!(
        message.starts_with("[emerg] unknown directive \"bogus_directive\""),
        "{message}"
    );
    assert!(!err.to_string().contains('\n'));
    assert_eq!(std::fs::read_to_string(settings.conf_path()).unwrap(), live);
    assert!(!site.root.nginx().join("shop.conf.new").exists());
    // A reload now (as the path unit would do) still loads the good config.
    assert_eq!(
        nginx.reloaded(|| site.command().reload().unwrap()),
        Reload::Done
    );
    assert_eq!(
        get(site.http_port, "shop.test", "/still").body,
        "backend shop.test /still upgrade= connection=\n"
    );
}

#[test]
fn another_apps_broken_config_does_not_fail_this_deploy() {
    let site = Site::new();
    std::fs::write(site.root.nginx().join("broken.conf"), "this is not nginx\n").unwrap();
    let app = site.app("fine");
    let settings = site.settings(&app, &site.env("fine.test", &[]));
    let nginx = site.command();
    let mut s = settings.clone();
    s.features = nginx.features().unwrap();
    piku_nginx::ensure_self_signed(&s).unwrap();
    nginx
        .check(&{
            let p = site.tmp.path().join("fine.conf");
            std::fs::write(&p, render(&s)).unwrap();
            p
        })
        .unwrap();
}
