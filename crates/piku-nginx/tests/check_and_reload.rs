//! The two checks and the reload against the real nginx: the isolated check refuses what nginx
//! refuses (with nginx's line) and accepts what it accepts, even for addresses and ports the
//! checking user could not bind; the full test before the reload catches what the isolated
//! check cannot see and puts the old config back; a reload that did not happen is reported;
//! the watcher protocol carries all of it from a root-side reloader to the deploy.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Site, start_backend, wait_for};
use piku_nginx::reload::{Invocation, Outcome, test_and_reload};
use piku_nginx::{NginxCommand, NginxError, Reload, ReloadMode, Verdict, configure, watch};

/// An app `shop` whose `NGINX_INCLUDE_FILE` is `include`, on this site's ports, HTTPS only
/// (the include goes in the HTTPS server, which then does not listen on the HTTP port).
fn shop_with_include(site: &Site, include: &str) -> piku_nginx::NginxSettings {
    let app = site.app("shop");
    std::fs::write(site.root.app_dir(&app).join("nginx.inc"), include).unwrap();
    let env = site.env(
        "shop.test",
        &[
            ("NGINX_INCLUDE_FILE", "nginx.inc"),
            ("NGINX_HTTPS_ONLY", "true"),
        ],
    );
    site.settings(&app, &env)
}

/// `shop` configured and served through the running nginx: its settings and live config text.
fn serving_shop(site: &Site, nginx: &common::RunningNginx) -> (piku_nginx::NginxSettings, String) {
    let good = shop_with_include(site, "client_max_body_size 1m;\n");
    start_backend(&good.socket_path());
    nginx.reloaded(|| configure(&good, &site.command()).unwrap());
    let live = std::fs::read_to_string(good.conf_path()).unwrap();
    (good, live)
}

/// The old config still serves `shop` (over HTTPS: the app is HTTPS only).
fn still_serves(site: &Site, path: &str) {
    assert_eq!(
        body_over_tls(site, path),
        format!("backend shop.test {path} upgrade= connection=\n")
    );
}

/// GET over HTTPS through the test nginx (the app is HTTPS only).
fn body_over_tls(site: &Site, path: &str) -> String {
    let (ok, body, err) = common::curl_https("shop.test", site.https_port, path, None);
    assert!(ok, "{err}");
    body
}

#[test]
fn what_nginx_refuses_is_refused_with_its_line_and_the_old_config_serves() {
    let site = Site::new();
    let nginx = site.start_nginx();
    let (good, live) = serving_shop(&site, &nginx);

    for (include, expected) in [
        (
            "bogus_directive on;\n",
            "[emerg] unknown directive \"bogus_directive\"",
        ),
        (
            "client_max_body_size lots;\n",
            "[emerg] \"client_max_body_size\" directive invalid value",
        ),
        // Broken includes: a missing `;`, a file that is not there.
        (
            "client_max_body_size 1m\n",
            "[emerg] directive \"client_max_body_size\" is not terminated by \";\"",
        ),
        (
            "include /nonexistent/piku-extra.conf;\n",
            "[emerg] open() \"/nonexistent/piku-extra.conf\" failed (2: No such file or directory)",
        ),
    ] {
        let bad = shop_with_include(&site, include);
        let err = configure(&bad, &site.command()).unwrap_err();
        let NginxError::Rejected { message, .. } = &err else {
            panic!("{include:?}: expected a rejection, got {err}");
        };
        assert!(message.starts_with(expected), "{include:?}: {message}");
        assert!(!err.to_string().contains('\n'));
        assert_eq!(
            std::fs::read_to_string(good.conf_path()).unwrap(),
            live,
            "{include:?}"
        );
    }
    still_serves(&site, "/still");
}

#[test]
fn what_nginx_accepts_passes_even_on_addresses_and_ports_the_checker_cannot_bind() {
    let site = Site::new();
    let app = site.app("wide");
    let nginx = site.command();
    let mut cases = Vec::new();
    // The privileged ports of a root nginx (the piku user may not bind them), and an address
    // this machine does not have (192.0.2.0/24 is TEST-NET-1) on both families.
    for (v4, v6, http, https) in [
        ("0.0.0.0", "[::]", "80", "443"),
        ("192.0.2.7", "[2001:db8::7]", "80", "443"),
        ("192.0.2.7", "[2001:db8::7]", "8080", "8443"),
    ] {
        let env = site.env(
            "wide.test",
            &[
                ("NGINX_IPV4_ADDRESS", v4),
                ("NGINX_IPV6_ADDRESS", v6),
                ("DISABLE_IPV6", "false"),
                ("NGINX_HTTP_PORT", http),
                ("NGINX_HTTPS_PORT", https),
            ],
        );
        let mut settings = site.settings(&app, &env);
        settings.features = nginx.features().unwrap();
        piku_nginx::ensure_self_signed(&settings).unwrap();
        let file = site.tmp.path().join(format!("wide-{v4}-{http}.conf"));
        std::fs::write(&file, piku_nginx::render(&settings)).unwrap();
        cases.push((file, format!("{v4}:{http}/{https}")));
    }
    for (file, what) in cases {
        assert_eq!(nginx.check(&file).unwrap(), Verdict::Passed, "{what}");
    }
}

#[test]
fn a_clash_only_the_full_test_sees_puts_the_old_config_back() {
    let site = Site::new();
    let nginx = site.start_nginx();
    let (good, live) = serving_shop(&site, &nginx);

    // Alone this is a fine server; with the main config's default server on the same
    // address:port it is a second default, which only the whole configuration shows.
    let clash = shop_with_include(
        &site,
        &format!("listen 127.0.0.1:{} default_server;\n", site.http_port),
    );
    let mut with_features = clash.clone();
    with_features.features = site.command().features().unwrap();
    let candidate = site.tmp.path().join("candidate.conf");
    std::fs::write(&candidate, piku_nginx::render(&with_features)).unwrap();
    assert_eq!(
        site.command().check(&candidate).unwrap(),
        Verdict::Passed,
        "the isolated check cannot see the clash"
    );

    let err = configure(&clash, &site.command()).unwrap_err();
    let NginxError::Rejected { path, message } = &err else {
        panic!("expected a rejection, got {err}");
    };
    assert_eq!(path, &good.conf_path());
    assert!(
        message.starts_with("[emerg] a duplicate default server")
            && message.contains("/nginx/shop.conf:"),
        "{message}"
    );
    assert_eq!(std::fs::read_to_string(good.conf_path()).unwrap(), live);
    still_serves(&site, "/after");
}

#[test]
fn a_refusal_at_another_file_is_a_failed_reload_and_this_config_stays() {
    let site = Site::new();
    let _nginx = site.start_nginx();
    let settings = shop_with_include(&site, "client_max_body_size 1m;\n");
    std::fs::write(site.root.nginx().join("broken.conf"), "this is not nginx\n").unwrap();
    let done = configure(&settings, &site.command()).unwrap();
    let Reload::Failed(why) = &done.install.reload else {
        panic!("expected a failed reload, got {:?}", done.install.reload);
    };
    assert!(
        why.starts_with("nginx refused to reload: [emerg] unexpected end of file")
            && why.contains("/nginx/broken.conf:2"),
        "{why}"
    );
    assert!(settings.conf_path().exists());
}

#[test]
fn a_reload_nginx_does_not_act_on_is_reported() {
    let site = Site::new();
    let nginx = site.start_nginx();
    let conf = site.nginx_dir().join("nginx.conf");
    let invocation = Invocation {
        binary: common::NGINX.into(),
        conf: Some(conf),
        prefix: Some(site.nginx_dir()),
    };
    assert_eq!(
        test_and_reload(&invocation, Duration::from_secs(5)),
        Outcome::Reloaded { pid: nginx.pid() }
    );

    // A "master" that ignores SIGHUP and starts nothing stands in for an nginx that could not
    // load the new configuration and kept its old workers.
    let mut deaf = Command::new("sh")
        .args(["-c", "trap '' HUP; sleep 30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = site.nginx_dir().join("nginx.pid");
    let real_pid = std::fs::read_to_string(&pid_file).unwrap();
    std::fs::write(&pid_file, deaf.id().to_string()).unwrap();
    let outcome = test_and_reload(&invocation, Duration::from_millis(300));
    std::fs::write(&pid_file, real_pid).unwrap();
    let _ = deaf.kill();
    let _ = deaf.wait();
    let Outcome::Failed { message } = &outcome else {
        panic!("expected a failure, got {outcome:?}");
    };
    assert!(message.contains("started no new workers"), "{message}");

    // Not running at all.
    drop(nginx);
    let Outcome::Failed { message } = test_and_reload(&invocation, Duration::from_secs(1)) else {
        panic!("expected a failure");
    };
    assert!(message.starts_with("nginx is not running"), "{message}");
}

/// Stands in for `piku-nginx.path` + `piku-nginx.service`: whenever the request file changes,
/// one [`watch::serve`] run, as the same user here (root in production).
struct FakePathUnit {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakePathUnit {
    fn start(nginx_dir: &Path, status: &Path, nginx: Invocation) -> FakePathUnit {
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, status, flag) = (nginx_dir.to_path_buf(), status.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut last = None;
            while !flag.load(Ordering::Relaxed) {
                let now = watch::read_request(&dir);
                if now.is_some() && now != last {
                    watch::serve(&dir, &status, &nginx, Duration::from_secs(5)).unwrap();
                    last = now;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        FakePathUnit {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakePathUnit {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn the_watcher_answers_each_deploy_through_its_status() {
    let site = Site::new();
    let nginx = site.start_nginx();
    let status = site.tmp.path().join("run/status.json");
    let invocation = Invocation {
        binary: common::NGINX.into(),
        conf: Some(site.nginx_dir().join("nginx.conf")),
        prefix: Some(site.nginx_dir()),
    };
    let _unit = FakePathUnit::start(&site.root.nginx(), &status, invocation);
    let command = NginxCommand::new(
        common::NGINX,
        ReloadMode::Watcher {
            nginx_dir: site.root.nginx(),
            status: status.clone(),
            timeout: Duration::from_secs(10),
        },
    );

    let good = shop_with_include(&site, "client_max_body_size 1m;\n");
    start_backend(&good.socket_path());
    let done = nginx.reloaded(|| configure(&good, &command).unwrap());
    assert_eq!(done.install.reload, Reload::Done);
    wait_for("the app through nginx", || {
        common::curl_https("shop.test", site.https_port, "/", None).0
    });
    let answer = watch::read_status(&status).unwrap();
    assert_eq!(answer.outcome, Outcome::Reloaded { pid: nginx.pid() });
    let live = std::fs::read_to_string(good.conf_path()).unwrap();

    let clash = shop_with_include(
        &site,
        &format!("listen 127.0.0.1:{} default_server;\n", site.http_port),
    );
    let err = configure(&clash, &command).unwrap_err();
    assert!(
        matches!(&err, NginxError::Rejected { message, .. } if message.starts_with("[emerg] a duplicate default server")),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(good.conf_path()).unwrap(), live);

    // nginx stopped: the deploy hears it, in one line.
    drop(nginx);
    let err = command.reload().unwrap_err();
    assert!(
        matches!(&err, NginxError::NotReloaded { message } if message.starts_with("nginx is not running")),
        "{err}"
    );
}

#[test]
fn without_a_watcher_the_deploy_says_so_after_its_timeout() {
    let site = Site::new();
    let command = NginxCommand::new(
        common::NGINX,
        ReloadMode::Watcher {
            nginx_dir: site.root.nginx(),
            status: site.tmp.path().join("status.json"),
            timeout: Duration::from_millis(200),
        },
    );
    let err = command.reload().unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no answer from the piku-nginx.path watcher within 0.2 s"),
        "{err}"
    );
}
