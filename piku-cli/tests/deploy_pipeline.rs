//! The deploy pipeline end to end on one machine: real `git push` into our `piku
//! git-receive-pack` (through a stand-in for ssh that sets `SSH_ORIGINAL_COMMAND` like sshd's
//! forced command does), the pre-receive hook, the build, and a real `piku-supervisor`
//! running the app in a temporary `PIKU_ROOT`; the app is then asked over HTTP on 127.0.0.1.
//!
//! Needs `cargo build -p piku-supervisor` first (the binary is looked up next to `piku`), plus
//! `git` and `python3` with `venv`. No network: Python dependencies come from a local wheel
//! directory (`PIP_NO_INDEX`/`PIP_FIND_LINKS`) holding a stand-in `gunicorn` built here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const DEADLINE: Duration = Duration::from_secs(20);

/// A temporary PIKU_ROOT with a supervisor running on it.
struct Server {
    _dir: TempDir,
    base: PathBuf,
    root: PathBuf,
    supervisor: Child,
    ssh: PathBuf,
    wheels: PathBuf,
}

fn piku_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_piku"))
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let root = base.join("piku");
        std::fs::create_dir_all(&root).unwrap();
        let supervisor_exe = piku_exe().with_file_name("piku-supervisor");
        assert!(
            supervisor_exe.is_file(),
            "{} is missing: build the workspace test targets first (`cargo test --workspace --no-run`, as scripts/test-all does)",
            supervisor_exe.display()
        );
        let log = std::fs::File::create(base.join("supervisor.log")).unwrap();
        let supervisor = Command::new(&supervisor_exe)
            .arg("--root")
            .arg(&root)
            .env("PIKU_ROOT", &root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        // ssh stand-in: git calls it as `<ssh> [options] host "git-receive-pack 'app'"`.
        let ssh = base.join("ssh");
        std::fs::write(
            &ssh,
            format!(
                "#!/bin/sh\nfor last; do :; done\nSSH_ORIGINAL_COMMAND=\"$last\" exec '{}'\n",
                piku_exe().display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755)).unwrap();
        let wheels = base.join("wheels");
        std::fs::create_dir_all(&wheels).unwrap();
        let server = Server {
            _dir: dir,
            base,
            root,
            supervisor,
            ssh,
            wheels,
        };
        let socket = server.root.join("supervisor.sock");
        wait_for(|| socket.exists().then_some(()), "the supervisor socket");
        server
    }

    /// Environment every piku invocation gets (through git and the hook too).
    fn env(&self, cmd: &mut Command) {
        cmd.env("PIKU_ROOT", &self.root)
            .env("GIT_SSH_COMMAND", &self.ssh)
            .env("PIP_NO_INDEX", "1")
            .env("PIP_FIND_LINKS", &self.wheels)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com");
    }

    /// `git push piku@host:<app> HEAD:main` from `work`; (success, everything git printed).
    fn push(&self, work: &Path, app: &str) -> (bool, String) {
        let mut cmd = Command::new("git");
        cmd.current_dir(work)
            .args(["push", &format!("piku@host:{app}"), "HEAD:main"]);
        self.env(&mut cmd);
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `piku <args>` as an ssh command would run it.
    fn piku(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(piku_exe());
        cmd.args(args).stdin(Stdio::null());
        self.env(&mut cmd);
        cmd.output().unwrap()
    }

    fn releases(&self, app: &str) -> Vec<serde_json::Value> {
        let out = self.piku(&["releases", "--json", app]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Builds the stand-in `gunicorn` wheel: it serves `module:app` with wsgiref on the
    /// `--bind` address and records its arguments in `$DATA_ROOT/gunicorn-args`.
    fn build_fake_gunicorn(&self) {
        let script = r#"
import base64, hashlib, sys, zipfile
out, name, ver = sys.argv[1], 'gunicorn', '99.0'
server = '''
import os, sys
from wsgiref.simple_server import make_server, WSGIRequestHandler
def main():
    args = sys.argv[1:]
    with open(os.path.join(os.environ['DATA_ROOT'], 'gunicorn-args'), 'w') as f:
        f.write(' '.join(args))
    host, port = args[args.index('--bind') + 1].rsplit(':', 1)
    sys.path.insert(0, os.getcwd())
    module, attr = args[-1].split(':')
    app = getattr(__import__(module), attr)
    class Quiet(WSGIRequestHandler):
        def log_message(self, *a): pass
    make_server(host, int(port), app, handler_class=Quiet).serve_forever()
'''
info = f'{name}-{ver}.dist-info'
files = {
    'fake_gunicorn.py': server,
    f'{info}/METADATA': f'Metadata-Version: 2.1\nName: {name}\nVersion: {ver}\n',
    f'{info}/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n',
    f'{info}/entry_points.txt': '[console_scripts]\ngunicorn = fake_gunicorn:main\n',
}
record = []
with zipfile.ZipFile(f'{out}/{name}-{ver}-py3-none-any.whl', 'w') as z:
    for path, text in files.items():
        data = text.encode()
        z.writestr(path, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
        record.append(f'{path},sha256={digest},{len(data)}')
    record.append(f'{info}/RECORD,,')
    z.writestr(f'{info}/RECORD', '\n'.join(record) + '\n')
"#;
        let ok = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(&self.wheels)
            .status()
            .unwrap()
            .success();
        assert!(ok, "building the stand-in gunicorn wheel failed");
    }
}

impl Server {
    /// Stops the supervisor (and with it every app process) and waits for it to exit.
    fn stop_supervisor(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.supervisor.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.supervisor.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM: the supervisor stops every app process it started, then exits.
        let pid = nix::unistd::Pid::from_raw(self.supervisor.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.supervisor.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
        eprintln!(
            "supervisor log:\n{}",
            std::fs::read_to_string(self.base.join("supervisor.log")).unwrap_or_default()
        );
    }
}

fn wait_for<T>(mut probe: impl FnMut() -> Option<T>, what: &str) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body of `GET /` on 127.0.0.1:`port`, if it answers 200.
fn get(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

/// Waits until the app on `port` answers exactly `body`.
fn wait_for_body(port: u16, body: &str) {
    wait_for(
        || (get(port).as_deref() == Some(body)).then_some(()),
        &format!("port {port} to answer {body:?}"),
    );
}

/// The port of the last `'app' answers on http://127.0.0.1:N/` line (the app's front), or
/// without a front of the last `'app:web.1' listening on 127.0.0.1:N` line.
fn web_port(output: &str) -> u16 {
    output
        .lines()
        .filter_map(|l| {
            l.split("answers on http://127.0.0.1:")
                .nth(1)
                .map(|p| p.trim().trim_end_matches('/'))
                .or_else(|| l.split("listening on 127.0.0.1:").nth(1))
        })
        .filter_map(|p| p.trim().parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no web port in:\n{output}"))
}

/// A git work tree for a fixture app.
struct App {
    dir: PathBuf,
}

impl App {
    fn new(server: &Server, name: &str) -> App {
        let dir = server.base.join("work").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let app = App { dir };
        app.git(server, &["init", "--quiet", "-b", "main"]);
        app
    }

    fn write(&self, path: &str, text: &str) -> &App {
        std::fs::write(self.dir.join(path), text).unwrap();
        self
    }

    fn commit(&self, server: &Server, message: &str) {
        self.git(server, &["add", "-A"]);
        self.git(server, &["commit", "--quiet", "-m", message]);
    }

    fn git(&self, server: &Server, args: &[&str]) {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.dir).args(args);
        server.env(&mut cmd);
        assert!(cmd.status().unwrap().success(), "git {args:?}");
    }
}

/// A plain `web:` app (no runtime to build) that answers `<VERSION> <GREETING>`.
const WEB_APP: &str = r#"import http.server, os
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        version = open('VERSION').read().strip()
        body = f"{version} {os.environ.get('GREETING', '-')}".encode()
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer((os.environ['BIND_ADDRESS'], int(os.environ['PORT'])), Handler).serve_forever()
"#;

fn web_app(server: &Server, name: &str, version: &str) -> App {
    let app = App::new(server, name);
    app.write("server.py", WEB_APP)
        .write("Procfile", "web: python3 -u server.py\n")
        .write("ENV", "GREETING=from-repo\n")
        .write("VERSION", version);
    app.commit(server, &format!("version {version}"));
    app
}

#[test]
fn deploy_redeploy_releases_rollback_and_config_reapply() {
    let server = Server::start();
    let app = web_app(&server, "hello", "v1");
    let (ok, out) = server.push(&app.dir, "hello");
    assert!(ok, "{out}");
    assert!(out.contains("-----> Deploying app 'hello'"), "{out}");
    assert!(out.contains("-----> Generic app detected."), "{out}");
    assert!(out.contains("spawning 'hello:web.1'"), "{out}");
    let port = web_port(&out);
    wait_for_body(port, "v1 from-repo");
    let link = std::fs::read_link(server.root.join("apps/hello")).unwrap();
    assert_eq!(link, server.root.join("releases/hello/v1/src"));
    let build_log =
        std::fs::read_to_string(server.root.join("releases/hello/v1/build.log")).unwrap();
    assert!(
        build_log.starts_with("-----> Deploying app 'hello'\n"),
        "{build_log}"
    );
    assert!(
        build_log.contains("Release v1 of 'hello' is live"),
        "{build_log}"
    );

    // git-upload-pack serves clones; the first push made `main` the repo's HEAD.
    let clone = server.base.join("clone");
    let mut cmd = Command::new("git");
    cmd.arg("clone")
        .arg("--quiet")
        .arg("piku@host:hello")
        .arg(&clone);
    server.env(&mut cmd);
    assert!(cmd.status().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(clone.join("VERSION")).unwrap(),
        "v1"
    );

    app.write("VERSION", "v2");
    app.commit(&server, "version v2");
    let (ok, out) = server.push(&app.dir, "hello");
    assert!(ok, "{out}");
    let port = web_port(&out);
    wait_for_body(port, "v2 from-repo");

    let releases = server.releases("hello");
    let summary: Vec<(String, String)> = releases
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().into(),
                r["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("v2".into(), "live".into()), ("v1".into(), "ok".into())]
    );
    assert_eq!(releases[0]["message"], "version v2");

    let out = server.piku(&["rollback", "hello"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("Rolling back 'hello' to v1"), "{text}");
    wait_for_body(web_port(&text), "v1 from-repo");
    assert_eq!(server.releases("hello")[1]["status"], "live");

    // config:set re-applies the live release (v1) with the override; nothing is rebuilt.
    let out = server.piku(&["config:set", "hello", "GREETING=from-config"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.contains("detected"),
        "config:set must not rebuild: {text}"
    );
    let live_env = std::fs::read_to_string(server.root.join("envs/hello/LIVE_ENV")).unwrap();
    assert!(live_env.contains("GREETING=from-config\n"), "{live_env}");
    wait_for_body(port_of(&server, "hello"), "v1 from-config");

    let out = server.piku(&["rollback", "hello", "v2"]);
    assert!(out.status.success(), "{out:?}");
    wait_for_body(port_of(&server, "hello"), "v2 from-config");
    let out = server.piku(&["rollback", "hello", "v2"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already live"),
        "{out:?}"
    );

    // `piku deploy` rebuilds the live commit as a new release.
    let out = server.piku(&["deploy", "hello"]);
    assert!(out.status.success(), "{out:?}");
    let releases = server.releases("hello");
    assert_eq!(releases[0]["id"], "v3");
    assert_eq!(releases[0]["status"], "live");
    assert_eq!(releases[0]["commit"], releases[1]["commit"]);
    wait_for_body(port_of(&server, "hello"), "v2 from-config");
}

/// The port of `web.1` as the supervisor reports it.
fn port_of(server: &Server, app: &str) -> u16 {
    let out = server.piku(&["ps", "--json", app]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    find_port(&value).unwrap_or_else(|| panic!("no port in ps --json: {text}"))
}

fn find_port(value: &serde_json::Value) -> Option<u16> {
    match value {
        serde_json::Value::Object(map) => map
            .get("port")
            .and_then(|p| p.as_u64())
            .map(|p| p as u16)
            .or_else(|| map.values().find_map(find_port)),
        serde_json::Value::Array(items) => items.iter().find_map(find_port),
        _ => None,
    }
}

#[test]
fn failed_preflight_or_release_refuses_the_push_and_the_live_release_keeps_serving() {
    let server = Server::start();
    let app = web_app(&server, "steady", "good");
    let (ok, out) = server.push(&app.dir, "steady");
    assert!(ok, "{out}");
    let port = web_port(&out);
    wait_for_body(port, "good from-repo");

    app.write("VERSION", "broken-preflight")
        .write("Procfile", "preflight: exit 1\nweb: python3 -u server.py\n");
    app.commit(&server, "preflight fails");
    let (ok, out) = server.push(&app.dir, "steady");
    assert!(!ok, "the push must fail:\n{out}");
    assert!(
        out.contains("preflight command failed (exit status 1)"),
        "{out}"
    );
    assert!(out.contains("pre-receive hook declined"), "{out}");

    app.write("VERSION", "broken-release").write(
        "Procfile",
        "release: echo migrating; exit 7\nweb: python3 -u server.py\n",
    );
    app.commit(&server, "release fails");
    let (ok, out) = server.push(&app.dir, "steady");
    assert!(!ok, "the push must fail:\n{out}");
    assert!(out.contains("migrating"), "{out}");
    assert!(
        out.contains("release command failed (exit status 7)"),
        "{out}"
    );

    assert_eq!(get(port).as_deref(), Some("good from-repo"));
    let releases = server.releases("steady");
    let statuses: Vec<&str> = releases
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["failed", "failed", "live"]);
    assert!(
        releases[0]["message"]
            .as_str()
            .unwrap()
            .contains("release command failed")
    );
    let log = std::fs::read_to_string(server.root.join("releases/steady/v3/build.log")).unwrap();
    assert!(log.contains("migrating"), "{log}");
    assert!(!server.root.join("releases/steady/v3/src").exists());
    assert_eq!(
        std::fs::read_link(server.root.join("apps/steady")).unwrap(),
        server.root.join("releases/steady/v1/src")
    );
    // The refused pushes did not move the branch: it still names the live commit.
    let repo_head = Command::new("git")
        .arg("--git-dir")
        .arg(server.root.join("repos/steady"))
        .args(["log", "-1", "--format=%s", "main"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&repo_head.stdout).trim(),
        "version good"
    );

    // A broken Procfile is one error line per bad line, each naming its line number.
    app.write(
        "Procfile",
        "web: python3 -u server.py\nthis line has no colon\nworker:\n",
    );
    app.commit(&server, "bad procfile");
    let (ok, out) = server.push(&app.dir, "steady");
    assert!(!ok, "{out}");
    let errors: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_once("Error: ").map(|(_, e)| e.trim_end()))
        .collect();
    assert_eq!(
        errors,
        [
            "Procfile line 2: expected 'kind: command', found 'this line has no colon'",
            "Procfile line 3: process kind 'worker' has an empty command",
        ],
        "{out}"
    );
}

#[test]
fn python_wsgi_app_runs_under_gunicorn_from_its_venv_which_redeploys_reuse() {
    let server = Server::start();
    server.build_fake_gunicorn();
    let app = App::new(&server, "pyapp");
    app.write("requirements.txt", "# no dependencies\n")
        .write(
            "wsgi_app.py",
            "def app(environ, start_response):\n    start_response('200 OK', [('Content-Type', 'text/plain')])\n    return [open('VERSION').read().strip().encode()]\n",
        )
        .write("Procfile", "wsgi: wsgi_app:app\n")
        // The stand-in server is a gunicorn wheel (this test installs offline), so the app
        // asks for gunicorn rather than the default server.
        .write("ENV", "UWSGI_PROCESSES=3\nPIKU_WSGI_SERVER=gunicorn\n")
        .write("VERSION", "w1");
    app.commit(&server, "wsgi app");
    let (ok, out) = server.push(&app.dir, "pyapp");
    eprintln!("first push of the wsgi app:\n{out}");
    assert!(ok, "{out}");
    assert!(out.contains("-----> Python app detected."), "{out}");
    assert!(out.contains("-----> Running pip for 'pyapp'"), "{out}");
    assert!(
        out.contains("Adding gunicorn to serve the 'wsgi:' entry"),
        "{out}"
    );
    let port = web_port(&out);
    wait_for_body(port, "w1");
    let args = std::fs::read_to_string(server.root.join("data/pyapp/gunicorn-args")).unwrap();
    assert!(args.contains("--workers 3 --threads 4"), "{args}");
    // No request-count recycling unless UWSGI_MAX_REQUESTS asks for it.
    assert!(!args.contains("--max-requests"), "{args}");

    // Code-only change: the venv is reused, nothing is installed.
    app.write("VERSION", "w2");
    app.commit(&server, "w2");
    let (ok, out) = server.push(&app.dir, "pyapp");
    assert!(ok, "{out}");
    assert!(out.contains("Reusing the virtualenv"), "{out}");
    assert!(!out.contains("Running pip"), "{out}");
    wait_for_body(web_port(&out), "w2");

    // A dependency that cannot be installed fails the push; w2 keeps serving.
    app.write("requirements.txt", "no-such-package-for-piku-tests==1.0\n")
        .write("VERSION", "w3");
    app.commit(&server, "bad dependency");
    let (ok, out) = server.push(&app.dir, "pyapp");
    assert!(!ok, "{out}");
    assert!(
        out.contains("pip install -r requirements.txt failed"),
        "{out}"
    );
    assert_eq!(get(port_of(&server, "pyapp")).as_deref(), Some("w2"));

    // Back to the first requirements: the old venv is still there and is reused.
    app.write("requirements.txt", "# no dependencies\n");
    app.commit(&server, "fixed");
    let (ok, out) = server.push(&app.dir, "pyapp");
    assert!(ok, "{out}");
    assert!(out.contains("Reusing the virtualenv"), "{out}");
    wait_for_body(web_port(&out), "w3");
}

#[test]
fn concurrent_pushes_of_one_app_deploy_one_winner_and_other_apps_deploy_in_parallel() {
    let server = Server::start();
    let first = web_app(&server, "race", "base");
    let (ok, out) = server.push(&first.dir, "race");
    assert!(ok, "{out}");
    let second_dir = server.base.join("work/race-clone");
    let status = Command::new("git")
        .arg("clone")
        .arg("--quiet")
        .arg(&first.dir)
        .arg(&second_dir)
        .status()
        .unwrap();
    assert!(status.success());
    let second = App { dir: second_dir };
    first.write("VERSION", "first");
    first.commit(&server, "first");
    second.write("VERSION", "second");
    second.commit(&server, "second");
    let other = web_app(&server, "bystander", "other");

    let (a, b, c) = std::thread::scope(|s| {
        let a = s.spawn(|| server.push(&first.dir, "race"));
        let b = s.spawn(|| server.push(&second.dir, "race"));
        let c = s.spawn(|| server.push(&other.dir, "bystander"));
        (a.join().unwrap(), b.join().unwrap(), c.join().unwrap())
    });
    assert!(c.0, "{}", c.1);
    assert!(
        a.0 != b.0,
        "exactly one push must win:\n{}\n---\n{}",
        a.1,
        b.1
    );
    let (winner, loser) = if a.0 {
        ("first", &b.1)
    } else {
        ("second", &a.1)
    };
    assert!(
        loser.contains("changed by another push") || loser.contains("fetch first"),
        "{loser}"
    );
    eprintln!("losing push:\n{loser}");
    wait_for_body(port_of(&server, "race"), &format!("{winner} from-repo"));
    wait_for_body(port_of(&server, "bystander"), "other from-repo");
}

#[test]
fn node_app_gets_its_dependencies_built_outside_the_release() {
    let server = Server::start();
    let app = App::new(&server, "nodeapp");
    app.write(
        "package.json",
        r#"{"name": "nodeapp", "version": "1.0.0", "private": true}"#,
    )
    .write(
        "server.js",
        "require('http').createServer((q, r) => r.end(process.env.APP + ' ' + \
         (process.env.PATH.split(':')[0].includes('/deps/node-') ? 'deps-on-path' : 'no-deps'))) \
         .listen(process.env.PORT, process.env.BIND_ADDRESS);\n",
    )
    .write("Procfile", "web: node server.js\n");
    app.commit(&server, "node app");
    let (ok, out) = server.push(&app.dir, "nodeapp");
    assert!(ok, "{out}");
    assert!(out.contains("-----> Node app detected."), "{out}");
    assert!(out.contains("Installing Node dependencies"), "{out}");
    wait_for_body(web_port(&out), "nodeapp deps-on-path");
}

#[test]
fn static_only_app_is_activated_without_processes() {
    let server = Server::start();
    let app = App::new(&server, "site");
    std::fs::create_dir_all(app.dir.join("public")).unwrap();
    app.write("public/index.html", "<h1>hi</h1>\n")
        .write("Procfile", "static: public\n");
    app.commit(&server, "static site");
    let (ok, out) = server.push(&app.dir, "site");
    assert!(ok, "{out}");
    assert!(out.contains("-----> Static app detected."), "{out}");
    assert!(!out.contains("spawning"), "{out}");
    assert_eq!(server.releases("site")[0]["status"], "live");
    assert!(server.root.join("apps/site/public/index.html").is_file());
    let scaling = std::fs::read_to_string(server.root.join("envs/site/SCALING")).unwrap();
    assert_eq!(scaling, "");
}

#[test]
fn rust_app_is_built_with_cargo_release_in_its_checkout() {
    let server = Server::start();
    let app = App::new(&server, "rusty");
    std::fs::create_dir_all(app.dir.join("src")).unwrap();
    app.write(
        "Cargo.toml",
        "[package]\nname = \"rusty\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .write(
        "src/main.rs",
        r#"use std::io::{Read, Write};
fn main() {
    let addr = format!("{}:{}", std::env::var("BIND_ADDRESS").unwrap(), std::env::var("PORT").unwrap());
    let listener = std::net::TcpListener::bind(addr).unwrap();
    for stream in listener.incoming() {
        let mut stream = stream.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf);
        let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nrust");
    }
}
"#,
    )
    .write(".gitignore", "target/\n")
    .write("Procfile", "web: ./target/release/rusty\n");
    app.commit(&server, "rust app");
    let (ok, out) = server.push(&app.dir, "rusty");
    assert!(ok, "{out}");
    assert!(out.contains("-----> Rust app detected."), "{out}");
    wait_for_body(web_port(&out), "rust");
}

#[test]
fn a_push_the_supervisor_cannot_take_fails_and_leaves_the_live_release_alone() {
    let mut server = Server::start();
    let app = web_app(&server, "orphan", "one");
    let (ok, out) = server.push(&app.dir, "orphan");
    assert!(ok, "{out}");
    server.stop_supervisor();
    app.write("VERSION", "two");
    app.commit(&server, "two");
    let (ok, out) = server.push(&app.dir, "orphan");
    assert!(!ok, "{out}");
    assert!(out.contains("supervisor is not running"), "{out}");
    assert_eq!(
        std::fs::read_link(server.root.join("apps/orphan")).unwrap(),
        server.root.join("releases/orphan/v1/src")
    );
    let statuses: Vec<String> = server
        .releases("orphan")
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, ["failed", "live"]);
}

/// Issue 10 item 15: `config:set PORT=<another app's port>` is refused naming that app, and
/// the refused value is not saved (it used to be kept while the daemon only logged an error).
#[test]
fn a_port_of_another_app_is_refused_and_not_saved() {
    let server = Server::start();
    for name in ["one", "two"] {
        let app = web_app(&server, name, name);
        let (ok, out) = server.push(&app.dir, name);
        assert!(ok, "{out}");
        // Nothing but text reaches the pusher.
        assert!(!out.contains('\0'), "{out:?}");
    }
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = server.piku(&["config:set", "one", &format!("PORT={free}")]);
    assert!(out.status.success(), "{out:?}");
    let before = std::fs::read_to_string(server.root.join("envs/two/ENV")).ok();
    let out = server.piku(&["config:set", "two", &format!("PORT={free}"), "EXTRA=1"]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("port {free} is already used by app one")),
        "{stderr}"
    );
    assert!(stderr.contains("refused and is unchanged"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(server.root.join("envs/two/ENV")).ok(),
        before
    );
}

/// Issue 10 item 9: a `release:` that never ends is stopped at `PIKU_RELEASE_TIMEOUT`, the
/// push fails saying so, and the app's lock is free for the next push.
#[test]
fn a_release_that_never_ends_is_stopped_and_frees_the_app() {
    let server = Server::start();
    let app = App::new(&server, "stuck");
    app.write("server.py", WEB_APP)
        .write(
            "Procfile",
            "web: python3 -u server.py\nrelease: sleep 1000\n",
        )
        .write("ENV", "PIKU_RELEASE_TIMEOUT=2\n")
        .write("VERSION", "one");
    app.commit(&server, "stuck release");
    let started = std::time::Instant::now();
    let (ok, out) = server.push(&app.dir, "stuck");
    assert!(!ok, "{out}");
    assert!(
        out.contains("release command did not finish within 2s; stopped it"),
        "{out}"
    );
    assert!(out.contains("-----> Running release command"), "{out}");
    assert!(!out.contains('\0'), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "{out}");
    app.write("Procfile", "web: python3 -u server.py\nrelease: true\n");
    app.commit(&server, "release ends");
    let (ok, out) = server.push(&app.dir, "stuck");
    assert!(ok, "{out}");
}

/// Issue 10 item 9: when the pushing client goes away during a `release:` that never ends,
/// the release is stopped and the app is free for the next push.
#[test]
fn a_release_ends_with_the_client_that_pushed() {
    use std::io::{BufRead, BufReader};
    let server = Server::start();
    let app = App::new(&server, "leaver");
    let pid_file = server.base.join("release.pid");
    app.write("server.py", WEB_APP)
        .write(
            "Procfile",
            &format!(
                "web: python3 -u server.py\nrelease: sh -c 'echo $$ > {}; exec sleep 1000'\n",
                pid_file.display()
            ),
        )
        .write("VERSION", "one");
    app.commit(&server, "endless release");
    let mut cmd = Command::new("git");
    cmd.current_dir(&app.dir)
        .args(["push", "piku@host:leaver", "HEAD:main"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    server.env(&mut cmd);
    let mut push = cmd.spawn().unwrap();
    let mut stderr = BufReader::new(push.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Running release command") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the push ended early"
        );
    }
    let release: i32 = wait_for(
        || std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok(),
        "the release's pid",
    );
    // The client goes away: git push and its end of the connection.
    push.kill().unwrap();
    push.wait().unwrap();
    drop(stderr);
    let gone = || {
        let stat = std::fs::read_to_string(format!("/proc/{release}/stat")).ok();
        stat.is_none_or(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    };
    let started = Instant::now();
    while !gone() && started.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !gone() {
        // Leave nothing behind for the next test, then fail.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(release),
            nix::sys::signal::Signal::SIGKILL,
        );
        panic!("the release was not stopped once its client left");
    }
    app.write("Procfile", "web: python3 -u server.py\nrelease: true\n");
    app.commit(&server, "release ends");
    let (ok, out) = server.push(&app.dir, "leaver");
    assert!(ok, "{out}");
}
