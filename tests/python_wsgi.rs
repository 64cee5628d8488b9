//! The Flask example end to end: pip installs Flask from PyPI into the app's venv, the build
//! adds a WSGI server (uWSGI, from the pyuwsgi wheels, by default), and the `wsgi:`, `worker:`
//! and `cron1:` entries all run under the supervisor; and an ASGI app served by granian. With
//! `tests/http_front.rs`'s load test of a `wsgi:` app, these are the e2e tests that need PyPI.

use std::time::Duration;

use piku_e2e::{CHANGE_TIMEOUT, Piku, get_ok, make_app_repo};

#[test]
fn flask_app_is_served_by_uwsgi_with_a_worker_and_a_cron_job() {
    let piku = Piku::start();
    let app = "flask";
    let repo = make_app_repo("python-wsgi");
    let push = piku.git_push(repo.path(), app);
    push.assert_ok();
    assert!(push.combined().contains("-----> "), "{push}");

    let (port, body) = piku.expect_serving(app, |b| b == "hello from flask v1\n", "the Flask page");
    assert_eq!(
        get_ok(port, "/env/APP").as_deref(),
        Some("flask\n"),
        "{body}"
    );

    // The wsgi instance is uWSGI (the translation happens in the CLI).
    let instances = piku.instances(app);
    let (pid, cmdline) = instance_on(&instances, port);
    assert!(
        cmdline.contains("bin/uwsgi ") && cmdline.contains("--http11-socket"),
        "the wsgi instance is not uWSGI: {cmdline:?}"
    );
    let venv = piku.ssh(&format!("run {app} -- sh -c 'echo $VIRTUAL_ENV'"));
    assert!(
        !venv.stdout.trim().is_empty() && cmdline.contains(venv.stdout.trim()),
        "uWSGI does not come from the app's venv ({}): {cmdline:?}",
        venv.stdout.trim()
    );

    // UWSGI_PROCESSES=2 (the example's ENV) becomes two uWSGI workers under a master.
    let workers = piku_e2e::wait_until(CHANGE_TIMEOUT, || {
        let kids = children(pid);
        (kids.len() == 2).then_some(kids)
    });
    assert!(
        workers.is_some(),
        "UWSGI_PROCESSES=2 did not give 2 uWSGI workers under {pid}: {:?}",
        children(pid)
    );

    // worker and cron entries are known to the supervisor.
    let kinds: Vec<&str> = instances.iter().map(|i| i.kind.as_str()).collect();
    assert!(kinds.contains(&"worker"), "no worker in {instances:?}");
    assert!(kinds.contains(&"cron1"), "no cron1 in {instances:?}");

    // Their output reaches `logs`: every request is logged (as piku's uWSGI does), the worker
    // ticks every 3 s, the cron job runs every minute.
    let mut logs = piku.ssh_streaming(&format!("logs {app}"));
    let request = logs.wait_for_line(CHANGE_TIMEOUT, |l| {
        l.starts_with("wsgi.1") && l.contains("\"GET /env/APP HTTP/1.")
    });
    assert!(
        request.is_some(),
        "no request line in logs: {:#?}",
        logs.seen()
    );
    let tick = logs.wait_for_line(CHANGE_TIMEOUT, |l| {
        l.starts_with("worker.1") && l.contains("| worker tick")
    });
    assert!(tick.is_some(), "no worker tick in logs: {:#?}", logs.seen());
    let cron = logs.wait_for_line(Duration::from_secs(130), |l| {
        l.starts_with("cron1") && l.contains("cron job ran") && l.contains("app=flask")
    });
    assert!(
        cron.is_some(),
        "the cron job never ran (or never logged): {:#?}",
        logs.seen()
    );

    // A redeploy reuses what pip installed and serves the new version.
    repo.set_version("v2");
    piku.git_push(repo.path(), app).assert_ok();
    piku.expect_serving(
        app,
        |b| b == "hello from flask v2\n",
        "the Flask page after a redeploy",
    );
}

#[test]
fn asgi_app_is_served_by_granian_when_uwsgi_asyncio_is_set() {
    let piku = Piku::start();
    let app = "asgi";
    let repo = make_app_repo("python-asgi");
    let push = piku.git_push(repo.path(), app);
    push.assert_ok();
    assert!(
        push.combined().contains("granian"),
        "the build did not install granian: {push}"
    );
    // lifespan=True: granian ran the app's lifespan startup before serving.
    let (port, _) = piku.expect_serving(
        app,
        |b| b == "hello from asgi asgi lifespan=True\n",
        "the ASGI page",
    );
    let instances = piku.instances(app);
    let (_, cmdline) = instance_on(&instances, port);
    assert!(
        cmdline.contains("bin/granian") && cmdline.contains("--interface asgi"),
        "the instance is not granian serving ASGI: {cmdline:?}"
    );
}

/// The pid and command line of the instance serving on `port`.
fn instance_on(instances: &[piku_e2e::Instance], port: u16) -> (u32, String) {
    let wsgi = instances
        .iter()
        .find(|i| i.port == Some(port))
        .unwrap_or_else(|| panic!("no instance on port {port}: {instances:?}"));
    let pid = wsgi.pid.expect("wsgi pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default();
    (pid, cmdline)
}

/// Direct children of `pid` (from /proc/<pid>/task/*/children).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}
