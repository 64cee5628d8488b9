//! A push says the app answers only once it does, where users reach it: on a first deploy the
//! very first request after the push returns gets the app's page, behind nginx (whose reload
//! lands after the deploy asked for it) and on piku's public port (an app slow to listen).
//!
//! Lab shortcut: this harness's nginx is reloaded by signal, as `PIKU_NGINX_RELOAD=signal`
//! does, not through the root-owned path unit; the signal returns before nginx's new workers
//! serve the new config, which is the same race in a smaller window.

use piku_e2e::{Piku, http_get, http_get_host, make_app_repo};

#[test]
fn behind_nginx_the_first_request_after_a_first_push_reaches_the_app() {
    let piku = Piku::start_with_nginx();
    let nginx = piku.nginx.as_ref().expect("nginx");
    let repo = make_app_repo("web-python");
    repo.write("ENV", &nginx.app_env("ready.test"));
    repo.commit("behind nginx");
    let push = piku.git_push(repo.path(), "ready");
    push.assert_ok();
    assert!(
        push.combined()
            .contains("'ready' answers via nginx for ready.test"),
        "{push}"
    );
    let answer = http_get_host(nginx.http_port, "ready.test", "/");
    let answer = answer.unwrap_or_else(|e| {
        panic!(
            "nginx did not answer right after the push: {e}\n{push}\n{}",
            nginx.error_log()
        )
    });
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.starts_with("hello from ready"), "{answer:?}");
}

#[test]
fn on_the_public_port_a_slow_starter_is_announced_once_it_answers() {
    let piku = Piku::start();
    let repo = make_app_repo("web-python");
    // Two seconds before it listens, as a JVM or a big framework takes.
    repo.write("Procfile", "web: sleep 2 && exec python3 -u app.py\n");
    repo.commit("slow to start");
    let push = piku.git_push(repo.path(), "slow");
    push.assert_ok();
    let out = push.combined();
    let url = out
        .lines()
        .find_map(|l| l.split("'slow' answers on http://").nth(1))
        .unwrap_or_else(|| panic!("no 'answers on' line: {push}"));
    let port: u16 = url
        .trim()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {url:?}"));
    let answer = http_get(port, "/").expect("GET right after the push");
    assert_eq!(answer.0, 200, "{answer:?}\n{push}");
    assert!(answer.1.starts_with("hello from slow"), "{answer:?}");
}
