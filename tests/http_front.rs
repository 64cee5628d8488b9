//! The HTTP front end to end: a real nginx (started by the harness on loopback ports with the
//! shipped `nginx/piku.conf`) → the supervisor's front on `nginx/<app>.sock` → the app's
//! instances, deployed with real `git push`es over sshd.
//!
//! Covered: an app served by host name, its static paths, an upgraded (`Upgrade: echo`)
//! connection through nginx and the front, an unknown host refused, HTTPS-only redirects, a
//! broken `NGINX_INCLUDE_FILE` refused with the old config still serving, a release that never
//! becomes healthy not switched to, and `wrk` load through ten redeploys and a
//! `ps:scale web=1→3→1` without one failed request, for a `web:` app and for a `wsgi:` app on
//! the default WSGI server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use piku_e2e::{
    AppRepo, CHANGE_TIMEOUT, Piku, http_get_host, make_app_repo, run_with_timeout, wait_until,
};

/// web-python behind nginx as `name`, with a static directory and extra ENV lines.
fn app_behind_nginx(piku: &Piku, name: &str, extra_env: &str) -> AppRepo {
    let nginx = piku.nginx.as_ref().expect("started with nginx");
    let repo = make_app_repo("web-python");
    repo.write("public/hello.txt", "static hello\n");
    repo.write(
        "ENV",
        &format!(
            "GREETING=hello\n{}NGINX_STATIC_PATHS=/static/:public/\nPIKU_DRAIN_TIMEOUT=2\n{extra_env}",
            nginx.app_env(name)
        ),
    );
    repo.commit("behind nginx");
    repo
}

fn http_port(piku: &Piku) -> u16 {
    piku.nginx.as_ref().expect("nginx").http_port
}

/// Waits until nginx answers `path` for `host` with a 200 whose body satisfies `pred`.
fn expect_via_nginx(piku: &Piku, host: &str, path: &str, pred: impl Fn(&str) -> bool) -> String {
    let port = http_port(piku);
    wait_until(CHANGE_TIMEOUT, || {
        http_get_host(port, host, path)
            .ok()
            .filter(|a| a.status == 200 && pred(&a.body))
            .map(|a| a.body)
    })
    .unwrap_or_else(|| {
        panic!(
            "nginx never answered {host}{path} as expected; last: {:?}\nnginx log:\n{}\n{}",
            http_get_host(port, host, path),
            piku.nginx
                .as_ref()
                .map(|n| n.error_log())
                .unwrap_or_default(),
            piku.diagnostics()
        )
    })
}

/// Opens a connection through nginx with `Upgrade: echo`, expects `101`, then checks that
/// what it sends comes back.
fn upgraded_echo(port: u16, host: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET /echo HTTP/1.1\r\nHost: {host}\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => {
                return Err(format!(
                    "connection ended in the head ({other:?}): {:?}",
                    String::from_utf8_lossy(&head)
                ));
            }
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("not switched: {head:?}"));
    }
    for message in ["ping\n", "second message\n"] {
        stream
            .write_all(message.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut got = vec![0u8; message.len()];
        stream
            .read_exact(&mut got)
            .map_err(|e| format!("no echo of {message:?}: {e}"))?;
        if got != message.as_bytes() {
            return Err(format!(
                "echo {:?} != {message:?}",
                String::from_utf8_lossy(&got)
            ));
        }
    }
    Ok(())
}

#[test]
fn an_app_is_served_by_host_name_through_nginx_and_the_front() {
    let piku = Piku::start_with_nginx();
    let port = http_port(&piku);
    let repo = app_behind_nginx(&piku, "front.test", "");
    let push = piku.git_push(repo.path(), "front");
    push.assert_ok();
    let out = push.combined();
    eprintln!("the first push behind nginx:\n{out}");
    assert!(
        out.contains("nginx will map app 'front' to hostname(s) 'front.test'"),
        "{out}"
    );
    assert!(out.contains("answers via nginx for front.test"), "{out}");
    assert!(
        piku.root.join("nginx/front.conf").is_file(),
        "no nginx/front.conf"
    );

    let body = expect_via_nginx(&piku, "front.test", "/", |b| b.contains("hello from front"));
    assert!(body.contains("version=v1"), "{body}");
    assert_eq!(
        expect_via_nginx(&piku, "front.test", "/static/hello.txt", |_| true),
        "static hello\n"
    );
    upgraded_echo(port, "front.test").expect("an upgraded connection through nginx");

    // piku#409: a name no app claims gets no answer, not the first app.
    let unknown = http_get_host(port, "unknown.test", "/");
    assert!(
        unknown.is_err() || unknown.as_ref().is_ok_and(|a| a.status >= 400),
        "an unknown host was answered: {unknown:?}"
    );

    let ps = piku.ssh("ps front");
    ps.assert_ok();
    assert!(ps.stdout.contains("front:"), "ps shows no front: {ps}");

    // HTTPS only: plain HTTP is redirected, HTTPS (self-signed) serves the app.
    piku.ssh("config:set front NGINX_HTTPS_ONLY=true")
        .assert_ok();
    let https_port = piku.nginx.as_ref().expect("nginx").https_port;
    let redirect = wait_until(CHANGE_TIMEOUT, || {
        http_get_host(port, "front.test", "/")
            .ok()
            .filter(|a| a.status == 301)
    })
    .expect("plain HTTP redirected once NGINX_HTTPS_ONLY=true");
    let location = redirect.header("location").unwrap_or_default().to_owned();
    assert!(location.starts_with("https://front.test"), "{location}");
    let curl = run_with_timeout(
        {
            let mut c = Command::new("curl");
            c.args(["-sk", "--max-time", "10", "--resolve"])
                .arg(format!("front.test:{https_port}:127.0.0.1"))
                .arg(format!("https://front.test:{https_port}/"));
            c
        },
        None,
        Duration::from_secs(20),
    );
    assert!(
        curl.stdout.contains("hello from front"),
        "HTTPS did not serve the app: {curl}"
    );

    // destroy takes the app's config out of nginx.
    piku.ssh("destroy front").assert_ok();
    assert!(!piku.root.join("nginx/front.conf").exists());
    let gone = wait_until(CHANGE_TIMEOUT, || {
        let a = http_get_host(port, "front.test", "/");
        (a.is_err() || a.is_ok_and(|a| a.status >= 400)).then_some(())
    });
    assert!(gone.is_some(), "nginx still serves a destroyed app");
}

#[test]
fn a_broken_include_file_is_refused_and_the_old_config_stays() {
    let piku = Piku::start_with_nginx();
    let repo = app_behind_nginx(&piku, "inc.test", "");
    piku.git_push(repo.path(), "inc").assert_ok();
    expect_via_nginx(&piku, "inc.test", "/", |b| b.contains("version=v1"));
    let conf = piku.root.join("nginx/inc.conf");
    let before = std::fs::read_to_string(&conf).expect("inc.conf");

    repo.write("broken.conf", "this_is_not_a_directive on;\n");
    let env = std::fs::read_to_string(repo.path().join("ENV")).expect("ENV");
    repo.write("ENV", &format!("{env}NGINX_INCLUDE_FILE=broken.conf\n"));
    repo.set_version("v2");
    let push = piku.git_push(repo.path(), "inc");
    push.assert_failed();
    assert!(
        push.combined().contains("this_is_not_a_directive"),
        "the push does not say what nginx refused: {push}"
    );
    assert_eq!(std::fs::read_to_string(&conf).expect("inc.conf"), before);
    let body = expect_via_nginx(&piku, "inc.test", "/", |_| true);
    assert!(body.contains("version=v1"), "{body}");

    // Without NGINX_SERVER_NAME the app leaves nginx and answers on its own public port.
    repo.write("ENV", "GREETING=hello\n");
    repo.set_version("v3");
    piku.git_push(repo.path(), "inc").assert_ok();
    assert!(
        !conf.exists(),
        "nginx/inc.conf stayed without a server name"
    );
    let port = front_port(&piku, "inc").expect("a TCP front once nginx is gone");
    let v3 = wait_until(CHANGE_TIMEOUT, || {
        piku_e2e::get_ok(port, "/").filter(|b| b.contains("version=v3"))
    });
    assert!(v3.is_some(), "v3 never answered on port {port}");
    let nginx_port = http_port(&piku);
    let gone = wait_until(CHANGE_TIMEOUT, || {
        let a = http_get_host(nginx_port, "inc.test", "/");
        (a.is_err() || a.is_ok_and(|a| a.status >= 400)).then_some(())
    });
    assert!(gone.is_some(), "nginx still serves inc.test");
}

#[test]
fn a_release_that_never_becomes_healthy_is_not_switched_to() {
    let piku = Piku::start_with_nginx();
    let repo = app_behind_nginx(
        &piku,
        "sick.test",
        "PIKU_HEALTHCHECK=/up\nPIKU_HEALTHCHECK_TIMEOUT=5\n",
    );
    piku.git_push(repo.path(), "sick").assert_ok();
    expect_via_nginx(&piku, "sick.test", "/", |b| b.contains("version=v1"));

    let conf = piku.root.join("nginx/sick.conf");
    let conf_before = std::fs::read_to_string(&conf).expect("sick.conf");
    // The sick release also maps a new static path: its nginx config must not stay either.
    let env = std::fs::read_to_string(repo.path().join("ENV")).expect("ENV");
    let env = env.replace(
        "NGINX_STATIC_PATHS=/static/:public/",
        "NGINX_STATIC_PATHS=/static/:public/,/assets/:public/",
    );
    repo.write("ENV", &format!("{env}UP_STATUS=500\n"));
    repo.set_version("v2");
    let push = piku.git_push(repo.path(), "sick");
    eprintln!("the push of a release that never becomes healthy:\n{push}");
    push.assert_failed();
    assert_eq!(
        std::fs::read_to_string(&conf).expect("sick.conf"),
        conf_before,
        "the refused release's nginx config stayed: {push}"
    );
    let body = expect_via_nginx(&piku, "sick.test", "/", |_| true);
    assert!(
        body.contains("version=v1"),
        "the sick release went live: {body}"
    );
    let releases = piku.releases("sick").expect("releases");
    let live: Vec<&serde_json::Value> = releases
        .iter()
        .filter(|r| r["live"].as_bool() == Some(true))
        .collect();
    assert_eq!(live.len(), 1, "{releases:?}");
    assert_eq!(live[0]["id"].as_str(), Some("v1"), "{releases:?}");
}

/// `wrk` through nginx for `seconds`, as a child we stop by PID when done.
struct Load {
    child: std::process::Child,
}

impl Load {
    fn start(port: u16, host: &str, seconds: u32) -> Load {
        let child = Command::new("/usr/bin/wrk")
            .args(["-t2", "-c8", "--timeout", "10s"])
            .arg(format!("-d{seconds}s"))
            .args(["-H", &format!("Host: {host}")])
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wrk (apt-get install wrk)");
        Load { child }
    }

    /// Stops wrk with SIGINT (it then prints its summary) and returns its output.
    fn finish(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let mut out = String::new();
        if let Some(mut s) = self.child.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        if let Some(mut s) = self.child.stderr.take() {
            let _ = s.read_to_string(&mut out);
        }
        let _ = self.child.wait();
        out
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// wrk's failure counts: non-2xx/3xx answers and socket errors (connect, read, write, timeout).
fn failures(report: &str) -> (u64, u64) {
    let mut non_2xx = 0;
    let mut socket = 0;
    for line in report.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = n.trim().parse().unwrap_or(u64::MAX);
        }
        if let Some(rest) = line.strip_prefix("Socket errors:") {
            socket = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        }
    }
    (non_2xx, socket)
}

fn requests(report: &str) -> u64 {
    report
        .lines()
        .find_map(|l| {
            let (n, _) = l.trim().split_once(" requests in ")?;
            n.parse().ok()
        })
        .unwrap_or(0)
}

#[test]
fn no_request_fails_through_ten_redeploys_and_scaling_under_load() {
    let piku = Piku::start_with_nginx();
    let repo = app_behind_nginx(&piku, "load.test", "PIKU_HEALTHCHECK=/up\n");
    redeploys_and_scaling_lose_no_request(&piku, &repo, "load", "load.test", "web", |b, v| {
        b.contains(&format!("version={v} ")) || b.ends_with(&format!("version={v}\n"))
    });
}

/// The same with the Flask example behind `wsgi:`, so the default WSGI server (and how it
/// stops and starts) is what the switches go through. Needs PyPI for Flask and the server.
#[test]
fn no_request_to_a_wsgi_app_fails_through_ten_redeploys_and_scaling_under_load() {
    let piku = Piku::start_with_nginx();
    let nginx = piku.nginx.as_ref().expect("started with nginx");
    let repo = make_app_repo("python-wsgi");
    repo.write(
        "ENV",
        &format!(
            "{}PIKU_HEALTHCHECK=/\nPIKU_DRAIN_TIMEOUT=2\n",
            nginx.app_env("wsgi.test")
        ),
    );
    repo.commit("behind nginx");
    redeploys_and_scaling_lose_no_request(&piku, &repo, "wsgiload", "wsgi.test", "wsgi", |b, v| {
        b == format!("hello from wsgiload {v}\n")
    });
}

/// Pushes `repo` as `app`, then keeps wrk on it through nginx across ten redeploys and
/// `ps:scale <kind>=3`, `=1`, and requires that no request failed. `serves(body, version)`
/// says whether a page is the given version's.
fn redeploys_and_scaling_lose_no_request(
    piku: &Piku,
    repo: &AppRepo,
    app: &str,
    host: &str,
    kind: &str,
    serves: impl Fn(&str, &str) -> bool,
) {
    let port = http_port(piku);
    piku.git_push(repo.path(), app).assert_ok();
    expect_via_nginx(piku, host, "/", |b| serves(b, "v1"));

    let load = Load::start(port, host, 600);
    // Let wrk connect before the first switch.
    std::thread::sleep(Duration::from_secs(1));
    for n in 2..=11 {
        let version = format!("v{n}");
        repo.set_version(&version);
        piku.git_push(repo.path(), app).assert_ok();
        expect_via_nginx(piku, host, "/", |b| serves(b, &version));
    }
    for count in [3, 1] {
        piku.ssh(&format!("ps:scale {app} {kind}={count}"))
            .assert_ok();
        let serving = wait_until(CHANGE_TIMEOUT, || {
            let ps = piku.ps_json(app).ok()?;
            let backends = ps["front"]["backends"].as_array()?.len();
            (backends == count).then_some(())
        });
        assert!(
            serving.is_some(),
            "the front never served from {count} instance(s): {:?}",
            piku.ps_json(app)
        );
    }
    let report = load.finish();
    eprintln!("wrk through 10 redeploys and {kind}=1→3→1:\n{report}");
    let (non_2xx, socket) = failures(&report);
    assert!(requests(&report) > 0, "wrk made no requests:\n{report}");
    assert_eq!(
        (non_2xx, socket),
        (0, 0),
        "requests failed during the redeploys:\n{report}\n{}",
        piku.nginx
            .as_ref()
            .map(|n| n.error_log())
            .unwrap_or_default()
    );
}

#[test]
fn wrk_failure_counts_are_read_from_its_report() {
    let report = "  10 requests in 1.00s, 1.2KB read\n  Socket errors: connect 1, read 2, write 0, timeout 3\n  Non-2xx or 3xx responses: 4\n";
    assert_eq!(failures(report), (4, 6));
    assert_eq!(requests(report), 10);
    assert_eq!(failures("  10 requests in 1.00s, 1KB read\n"), (0, 0));
}

/// A CA and a `localhost`/127.0.0.1 certificate for pebble's own HTTPS, made with `openssl`.
/// Returns (ca.pem, cert.pem, key.pem).
fn pebble_tls(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let script = "set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=e2e-pebble-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout key.pem -out leaf.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > san.ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 2 -extfile san.ext 2>/dev/null
";
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).current_dir(dir);
    run_with_timeout(cmd, None, Duration::from_secs(30)).assert_ok();
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

#[test]
fn a_deploy_gets_an_acme_certificate_that_nginx_serves() {
    use piku_e2e::free_port;
    use piku_e2e::process::Guarded;

    let piku = Piku::start_with_nginx();
    let nginx = piku.nginx.as_ref().expect("nginx");
    let dir = piku.tmp.path().join("pebble");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let (ca, cert, key) = pebble_tls(&dir);

    // pebble resolves every name to 127.0.0.1 through pebble-challtestsrv's DNS.
    let dns_port = free_port();
    let challtest_mgmt = free_port();
    let mut dns = Command::new("pebble-challtestsrv");
    dns.args(["-dns01", &format!("127.0.0.1:{dns_port}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .args(["-management", &format!("127.0.0.1:{challtest_mgmt}")])
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _dns = Guarded::spawn("pebble-challtestsrv", dns, Duration::from_secs(5))
        .expect("pebble-challtestsrv (apt-get install pebble)");
    let acme_port = free_port();
    let config = serde_json::json!({
        "pebble": {
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{}", free_port()),
            "certificate": cert,
            "privateKey": key,
            "httpPort": nginx.http_port,
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }
    });
    let config_path = dir.join("pebble-config.json");
    std::fs::write(&config_path, config.to_string()).expect("pebble config");
    let mut pebble = Command::new("pebble");
    pebble
        .arg("-config")
        .arg(&config_path)
        .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _pebble = Guarded::spawn("pebble", pebble, Duration::from_secs(5))
        .expect("pebble (apt-get install pebble)");
    let up = wait_until(Duration::from_secs(20), || {
        (TcpStream::connect(("127.0.0.1", acme_port)).is_ok()
            && TcpStream::connect(("127.0.0.1", challtest_mgmt)).is_ok())
        .then_some(())
    });
    assert!(up.is_some(), "pebble did not start");

    let repo = app_behind_nginx(
        &piku,
        "acme.test",
        &format!(
            "PIKU_ACME_DIRECTORY=https://127.0.0.1:{acme_port}/dir\nPIKU_ACME_CA={}\n",
            ca.display()
        ),
    );
    let push = piku.git_push(repo.path(), "acme");
    eprintln!("the push asking for an ACME certificate:\n{push}");
    push.assert_ok();
    assert!(
        push.combined()
            .contains("Certificate issued for 'acme.test'"),
        "no certificate issued: {push}"
    );
    let https_port = nginx.https_port;
    let issuer = wait_until(CHANGE_TIMEOUT, || {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "openssl s_client -connect 127.0.0.1:{https_port} -servername acme.test </dev/null 2>/dev/null | openssl x509 -noout -issuer"
        ));
        let run = run_with_timeout(cmd, None, Duration::from_secs(20));
        run.stdout
            .to_lowercase()
            .contains("pebble")
            .then_some(run.stdout)
    });
    assert!(
        issuer.is_some(),
        "nginx does not serve pebble's certificate for acme.test"
    );

    // A redeploy keeps the current certificate instead of asking the CA again.
    repo.set_version("v2");
    let again = piku.git_push(repo.path(), "acme");
    again.assert_ok();
    assert!(
        again.combined().contains("is current") && !again.combined().contains("Requesting"),
        "a redeploy asked the CA again: {again}"
    );

    // Renewal is the supervisor's: a daily cron entry that runs `acme:renew`, which leaves a
    // certificate that is not due alone.
    let ps = piku.ssh("ps acme --json");
    ps.assert_ok();
    assert!(
        ps.stdout.contains("\"acme-renew\"") && ps.stdout.contains("next_run"),
        "no renewal entry scheduled by the supervisor: {ps}"
    );
    let renew = piku.ssh("acme:renew acme");
    renew.assert_ok();
    assert!(
        renew.combined().contains("is current") && !renew.combined().contains("Requesting"),
        "acme:renew asked the CA for a certificate that is not due: {renew}"
    );
}

/// The front's public TCP port (`front.tcp` in `ps --json`) of an app without a server name.
fn front_port(piku: &Piku, app: &str) -> Option<u16> {
    let ps = piku.ps_json(app).ok()?;
    ps["front"]["tcp"]
        .as_str()?
        .rsplit_once(':')?
        .1
        .parse()
        .ok()
}

#[test]
fn without_nginx_the_public_port_stays_the_same_across_redeploys_and_scaling() {
    let piku = Piku::start();
    let repo = make_app_repo("web-python");
    let push = piku.git_push(repo.path(), "plain");
    push.assert_ok();
    let port = front_port(&piku, "plain").expect("a TCP front for an app without a server name");
    assert!(
        push.combined()
            .contains(&format!("'plain' answers on http://127.0.0.1:{port}/")),
        "{push}"
    );
    let answers = |version: &str| {
        let version = format!("version={version}");
        wait_until(CHANGE_TIMEOUT, || {
            piku_e2e::get_ok(port, "/").filter(|b| b.contains(&version))
        })
        .unwrap_or_else(|| {
            panic!(
                "port {port} never answered {version}: {}",
                piku.diagnostics()
            )
        })
    };
    answers("v1");
    repo.set_version("v2");
    piku.git_push(repo.path(), "plain").assert_ok();
    answers("v2");
    piku.ssh("ps:scale plain web=2").assert_ok();
    let pids = wait_until(CHANGE_TIMEOUT, || {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..40 {
            let body = piku_e2e::get_ok(port, "/")?;
            seen.insert(
                body.split("pid=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_owned(),
            );
        }
        (seen.len() == 2).then_some(seen)
    });
    assert!(
        pids.is_some(),
        "two instances never both answered on the public port: {:?}",
        piku.ps_json("plain")
    );
    assert_eq!(front_port(&piku, "plain"), Some(port));
}
