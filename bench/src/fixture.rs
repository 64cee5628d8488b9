//! The fixture formation every supervisor runs: the app scripts (stdlib Python and `sh` only)
//! and the description of apps and their processes that each driver translates into its own
//! configuration.
//!
//! Every process started from the fixture carries `PIKU_APP` and `PROC_TYPE` in its
//! environment (uWSGI and supervisord also get `PIKU_INSTANCE` and `PORT` from us; our daemon
//! sets those itself), which is how the suite finds an instance's process in `/proc` the same
//! way under every supervisor.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const PYTHON: &str = "/usr/bin/python3";

/// A tiny HTTP server on `$PORT` (127.0.0.1), answering every GET with 200.
const WEB_PY: &str = r#"import os, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("ok %s.%s\n" % (os.environ.get("PROC_TYPE"), os.environ.get("PIKU_INSTANCE"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// A background worker: one line every few seconds.
const WORKER_PY: &str = r#"import os, time
n = 0
while True:
    print("worker tick %d pid=%d" % (n, os.getpid()), flush=True)
    n += 1
    time.sleep(5)
"#;

/// Crashes at once while `<state>/fault` exists, else becomes a normal worker. Every start and
/// every healthy start is appended to `<state>/starts` with a timestamp.
const CRASH_SH: &str = r#"state="$1"
now=$(date +%s.%N)
echo "start $now $$" >> "$state/starts"
if [ -e "$state/fault" ]; then
    echo "crashing at $now"
    exit 1
fi
echo "ok $now $$" >> "$state/starts"
exec /usr/bin/python3 -u "$(dirname "$0")/worker.py"
"#;

/// A leader whose child starts a grandchild that ignores SIGTERM; all three sleep.
const TREE_PY: &str = r#"import os, signal, subprocess, sys, time
depth = int(sys.argv[1]) if len(sys.argv) > 1 else 0
if depth == 2:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if depth < 2:
    subprocess.Popen([sys.executable, __file__, str(depth + 1)])
print("tree level %d pid=%d" % (depth, os.getpid()), flush=True)
while True:
    time.sleep(3600)
"#;

/// Writes numbered lines as fast as it can for `$1` seconds, records how many in `$2`, then idles
/// (so no supervisor restarts it while the logs are read).
const SPEW_PY: &str = r#"import os, sys, time
secs, count_file = float(sys.argv[1]), sys.argv[2]
out = sys.stdout.buffer
pad = b"x" * 40
n = 0
end = time.monotonic() + secs
while True:
    for _ in range(1000):
        out.write(b"line %d %s\n" % (n, pad))
        n += 1
    if time.monotonic() >= end:
        break
out.flush()
with open(count_file + ".tmp", "w") as f:
    f.write("%d\n" % n)
os.rename(count_file + ".tmp", count_file)
while True:
    time.sleep(3600)
"#;

/// The directory holding the scripts; also every app's working directory.
#[derive(Debug, Clone)]
pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    pub fn write(dir: &Path) -> Result<Fixture> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (name, text) in [
            ("web.py", WEB_PY),
            ("worker.py", WORKER_PY),
            ("crash.sh", CRASH_SH),
            ("tree.py", TREE_PY),
            ("spew.py", SPEW_PY),
        ] {
            let path = dir.join(name);
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        Ok(Fixture {
            dir: dir.to_path_buf(),
        })
    }

    pub fn script(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn py(&self, script: &str) -> String {
        format!("{PYTHON} -u {}", self.script(script))
    }

    /// web + worker + cron, the formation of rows 1–3.
    pub fn standard_app(&self, name: &str) -> AppDef {
        AppDef::new(name, &self.dir)
            .with(ProcDef::new("web", &self.py("web.py"), Role::Web))
            .with(ProcDef::new("worker", &self.py("worker.py"), Role::Worker))
            .with(ProcDef::new(
                "cron",
                "/bin/echo cron tick",
                Role::Cron("* * * * *".into()),
            ))
    }

    /// One worker that crash-loops while `<state>/fault` exists.
    pub fn crash_app(&self, name: &str, state: &Path) -> AppDef {
        let cmd = format!("/bin/sh {} {}", self.script("crash.sh"), state.display());
        AppDef::new(name, &self.dir).with(ProcDef::new("worker", &cmd, Role::Worker))
    }

    pub fn web_app(&self, name: &str) -> AppDef {
        AppDef::new(name, &self.dir).with(ProcDef::new("web", &self.py("web.py"), Role::Web))
    }

    pub fn tree_app(&self, name: &str) -> AppDef {
        AppDef::new(name, &self.dir).with(ProcDef::new("worker", &self.py("tree.py"), Role::Worker))
    }

    pub fn spew_app(&self, name: &str, secs: f64, count_file: &Path) -> AppDef {
        let cmd = format!("{} {secs} {}", self.py("spew.py"), count_file.display());
        AppDef::new(name, &self.dir).with(ProcDef::new("worker", &cmd, Role::Worker))
    }

    /// `count` instances of `sleep`, for the scale row.
    pub fn sleepers(&self, name: &str, count: u32) -> AppDef {
        let mut p = ProcDef::new("worker", "/bin/sleep 3600", Role::Worker);
        p.count = count;
        AppDef::new(name, &self.dir).with(p)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Web,
    Worker,
    /// A five-field schedule.
    Cron(String),
}

#[derive(Debug, Clone)]
pub struct ProcDef {
    pub kind: String,
    pub command: String,
    pub role: Role,
    pub count: u32,
}

impl ProcDef {
    pub fn new(kind: &str, command: &str, role: Role) -> ProcDef {
        ProcDef {
            kind: kind.into(),
            command: command.into(),
            role,
            count: 1,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AppDef {
    pub name: String,
    pub workdir: PathBuf,
    /// The app's environment; `PIKU_APP` tags its processes.
    pub env: BTreeMap<String, String>,
    pub processes: Vec<ProcDef>,
}

impl AppDef {
    pub fn new(name: &str, workdir: &Path) -> AppDef {
        let env = BTreeMap::from([
            ("PIKU_APP".to_string(), name.to_string()),
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
        ]);
        AppDef {
            name: name.into(),
            workdir: workdir.to_path_buf(),
            env,
            processes: Vec::new(),
        }
    }

    pub fn with(mut self, p: ProcDef) -> AppDef {
        self.processes.push(p);
        self
    }

    pub fn process(&self, kind: &str) -> Option<&ProcDef> {
        self.processes.iter().find(|p| p.kind == kind)
    }

    /// The processes that should be running continuously (cron runs come and go).
    pub fn long_running(&self) -> impl Iterator<Item = &ProcDef> {
        self.processes
            .iter()
            .filter(|p| !matches!(p.role, Role::Cron(_)))
    }
}
