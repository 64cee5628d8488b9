//! Test scaffolding: a real nginx on loopback ports with a temporary main config built from the
//! shipped `nginx/piku.conf`, a tiny HTTP backend on the app's Unix socket, raw HTTP requests.
//! Every process started here is stopped by PID when its guard drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use piku_model::{AppName, EnvMap, PikuRoot};
use piku_nginx::standalone::{Standalone, main_conf};
use piku_nginx::{NginxCommand, NginxSettings, ReloadMode};

pub const NGINX: &str = "/usr/sbin/nginx";

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub fn env(pairs: &[(&str, &str)]) -> EnvMap {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A piku root in a temp dir with its layout created.
pub struct Site {
    pub tmp: tempfile::TempDir,
    pub root: PikuRoot,
    pub http_port: u16,
    pub https_port: u16,
}

impl Site {
    pub fn new() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        let root = PikuRoot::new(tmp.path().join("piku"));
        root.create_layout().unwrap();
        Site {
            tmp,
            root,
            http_port: free_port(),
            https_port: free_port(),
        }
    }

    /// The app env every test starts from: loopback listeners on this site's ports.
    pub fn env(&self, name: &str, extra: &[(&str, &str)]) -> EnvMap {
        let mut e = env(extra);
        e.insert("NGINX_SERVER_NAME".into(), name.into());
        e.insert("NGINX_IPV4_ADDRESS".into(), "127.0.0.1".into());
        e.insert("DISABLE_IPV6".into(), "true".into());
        e.insert("NGINX_HTTP_PORT".into(), self.http_port.to_string());
        e.insert("NGINX_HTTPS_PORT".into(), self.https_port.to_string());
        e
    }

    pub fn app(&self, name: &str) -> AppName {
        let app: AppName = name.parse().unwrap();
        std::fs::create_dir_all(self.root.app_dir(&app)).unwrap();
        app
    }

    pub fn settings(&self, app: &AppName, env: &EnvMap) -> NginxSettings {
        NginxSettings::from_env(app, &self.root, env, true, None)
            .unwrap()
            .unwrap()
    }

    pub fn nginx_dir(&self) -> PathBuf {
        self.tmp.path().join("nginx-run")
    }

    /// The command the code under test uses to check and reload this site's nginx.
    pub fn command(&self) -> NginxCommand {
        NginxCommand::new(
            NGINX,
            ReloadMode::Signal {
                conf: Some(self.nginx_dir().join("nginx.conf")),
                prefix: Some(self.nginx_dir()),
            },
        )
    }

    /// Starts nginx with the shipped snippet, moved to this site's loopback ports and root.
    pub fn start_nginx(&self) -> RunningNginx {
        let dir = self.nginx_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let snippet = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nginx/piku.conf"),
        )
        .unwrap();
        let user = Command::new("id").arg("-un").output().unwrap();
        let user = String::from_utf8(user.stdout).unwrap();
        let mime = Path::new("/etc/nginx/mime.types");
        let apps_dir = self.root.nginx();
        let at = Standalone {
            prefix: &dir,
            apps_dir: &apps_dir,
            address: "127.0.0.1",
            http_port: self.http_port,
            https_port: self.https_port,
            user: Some(user.trim()),
            mime_types: mime.exists().then_some(mime),
        };
        let main = main_conf(&snippet, &at);
        assert!(main.contains(&format!("127.0.0.1:{}", self.https_port)));
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new(NGINX)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let nginx = RunningNginx {
            child,
            error_log: dir.join("error.log"),
        };
        wait_for(&format!("nginx on :{}", self.http_port), || {
            TcpStream::connect(("127.0.0.1", self.http_port)).is_ok()
        });
        nginx
    }
}

/// nginx in the foreground; SIGTERM to its master by PID on drop (the master stops its workers).
pub struct RunningNginx {
    child: Child,
    pub error_log: PathBuf,
}

impl RunningNginx {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The master's child processes (workers, cache helpers).
    pub fn workers(&self) -> Vec<u32> {
        let pid = self.child.id();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Runs `change` (which reloads nginx) and waits until every worker that existed before
    /// has exited, so no request can reach a worker with the old configuration.
    pub fn reloaded<T>(&self, change: impl FnOnce() -> T) -> T {
        let old = self.workers();
        let out = change();
        wait_for("the old nginx workers to exit", || {
            let now = self.workers();
            old.iter().all(|p| !now.contains(p)) && !now.is_empty()
        });
        out
    }
}

impl Drop for RunningNginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it holds; panics after 10 s.
pub fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A backend on a Unix socket (what the glue will be): answers every request with
/// `backend <Host> <path> upgrade=<Upgrade> connection=<Connection>`; a request carrying
/// `Upgrade:` gets `101` and then an echo of whatever the client sends.
pub fn start_backend(socket: &Path) {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or("")
                        .to_owned();
                    let (mut host, mut upgrade, mut connection) =
                        (String::new(), String::new(), String::new());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let line = line.trim_end();
                        if line.is_empty() {
                            break;
                        }
                        if let Some((k, v)) = line.split_once(':') {
                            match k.to_ascii_lowercase().as_str() {
                                "host" => host = v.trim().to_owned(),
                                "upgrade" => upgrade = v.trim().to_owned(),
                                "connection" => connection = v.trim().to_owned(),
                                _ => {}
                            }
                        }
                    }
                    let mut stream = reader.get_ref().try_clone().unwrap();
                    if !upgrade.is_empty() {
                        let _ = stream.write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n",
                        );
                        let mut buf = [0u8; 1024];
                        loop {
                            match reader.read(&mut buf) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).is_err() {
                                        return;
                                    }
                                }
                            }
                        }
                    }
                    let body = format!(
                        "backend {host} {path} upgrade={upgrade} connection={connection}\n"
                    );
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// A parsed HTTP response; `raw` is empty when the server closed without answering.
pub struct Response {
    pub raw: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// `GET path` with `Host: host` over plain HTTP, `Connection: close`.
pub fn get(port: u16, host: &str, path: &str) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // A 444 is a reset or a plain close; both read as "no answer".
    let _ = stream.read_to_end(&mut raw);
    parse_response(&String::from_utf8_lossy(&raw))
}

pub fn parse_response(raw: &str) -> Response {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Response {
        raw: raw.to_owned(),
        status,
        headers,
        body: body.to_owned(),
    }
}

/// `curl` over HTTPS to `name:port` resolved to 127.0.0.1. `ca`: verify against it (else `-k`).
/// Returns (success, body, stderr).
pub fn curl_https(name: &str, port: u16, path: &str, ca: Option<&Path>) -> (bool, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--resolve"])
        .arg(format!("{name}:{port}:127.0.0.1"));
    match ca {
        Some(ca) => {
            cmd.arg("--cacert").arg(ca);
        }
        None => {
            cmd.arg("-k");
        }
    }
    let out = cmd
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The subject of the certificate nginx presents for `name` (via `openssl s_client`).
pub fn served_certificate(name: &str, port: u16) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null | openssl x509 -noout -subject -issuer"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}
