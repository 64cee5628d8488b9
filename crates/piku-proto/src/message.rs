//! The messages: what the CLI may ask, and what the daemon answers.
//!
//! Every enum is internally tagged with `"type"` so a frame reads as
//! `{"type":"status","app":"blog"}` on the wire.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A request from a client. The first one on a connection must be [`Request::Hello`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Opens the conversation; the daemon refuses a different protocol version.
    Hello { protocol: u32 },
    /// Makes the app's processes match the desired state: the daemon diffs against what runs
    /// and starts or stops only what differs. Used by deploy, rollback and `config:set`.
    Apply(Box<AppSpec>),
    /// Changes the count of some kinds (`ps:scale`); kinds not named keep their count.
    Scale {
        app: String,
        formation: BTreeMap<String, u32>,
    },
    /// Restarts every instance of the app, or of one kind; bypasses crash back-off.
    Restart { app: String, kind: Option<String> },
    /// Stops every process of the app and remembers that it is stopped.
    Stop { app: String },
    /// Starts a stopped app again at its formation.
    Start { app: String },
    /// Stops the app and forgets it (`destroy`).
    Remove { app: String },
    /// Status of one app, or of every app.
    Status { app: Option<String> },
    /// The last lines of the app's process logs, then (with `follow`) new ones as they come.
    Logs(LogsRequest),
}

/// What a `Logs` request wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsRequest {
    pub app: String,
    /// A kind (`web`) or one instance (`web.1`); `None` for all.
    pub process: Option<String>,
    /// How many past lines to send from each log file first.
    pub lines: usize,
    pub follow: bool,
}

/// The desired state of one app.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    pub app: String,
    /// Release identifier shown by `ps` and `releases` (e.g. `v3`).
    pub release: String,
    /// Working directory of every process: the release's checkout.
    pub workdir: PathBuf,
    /// The whole environment of the app's processes (the daemon adds only `PORT`, `PROC_TYPE`
    /// and `PIKU_INSTANCE` per instance). Nothing is inherited from the daemon.
    pub env: BTreeMap<String, String>,
    pub processes: Vec<ProcessSpec>,
    #[serde(default)]
    pub settings: AppSettings,
}

// Environments hold secrets: show the keys, never the values.
impl fmt::Debug for AppSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSpec")
            .field("app", &self.app)
            .field("release", &self.release)
            .field("workdir", &self.workdir)
            .field("env_keys", &self.env.keys().collect::<Vec<_>>())
            .field("processes", &self.processes)
            .field("settings", &self.settings)
            .finish()
    }
}

/// One Procfile entry as the daemon runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// The Procfile name: `web`, `worker`, `cron1`, …
    pub kind: String,
    /// The command line, run as is: directly when it is plain words, else via `sh -c 'exec …'`.
    pub command: String,
    pub role: Role,
    /// How many instances (the formation). A cron entry with 0 is disabled.
    pub count: u32,
}

/// How the daemon treats a process kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case", deny_unknown_fields)]
pub enum Role {
    /// Serves HTTP on its `$PORT`; gets a distinct port per instance.
    Web,
    /// A long-running background process.
    Worker,
    /// Runs on a five-field cron schedule (`*/5 * * * *`); a run still going is never stacked.
    Cron { schedule: String },
}

/// The longest stop grace an app may ask for: a stop must end, and a shutdown (bounded by the
/// longest grace) must not abandon processes that outlive the daemon.
pub const MAX_STOP_GRACE_MS: u64 = 300_000;

/// The longest a front waits for new instances to become healthy, or for old ones to
/// drain: a switch, and so a deploy or a shutdown, must end.
pub const MAX_FRONT_WAIT_MS: u64 = 3_600_000;

/// Per-app knobs, all with defaults so older requests stay valid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppSettings {
    /// Time between SIGTERM and SIGKILL when stopping an instance.
    pub stop_grace_ms: u64,
    /// Size at which a process log rotates (piku's `UWSGI_LOG_MAXSIZE`).
    pub log_max_bytes: u64,
    /// Rotated files kept (`<kind>.<n>.log.old` for the first).
    pub log_backups: u32,
    /// The app's HTTP front (hyper-proxy-glue inside the daemon). `None`: web instances are
    /// reached on their own ports only, and a deploy restarts them in place.
    pub front: Option<FrontSpec>,
    /// Resource limits of each instance (`PIKU_MEMORY_MAX`, `PIKU_CPU_QUOTA`,
    /// `PIKU_TASKS_MAX`), applied in its cgroup.
    pub limits: ResourceLimits,
}

/// What one instance (all of its processes) may use, as systemd's `MemoryMax=`, `CPUQuota=`
/// and `TasksMax=` set it. `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResourceLimits {
    /// Memory of the instance's cgroup, in bytes: the kernel's OOM killer acts beyond it,
    /// and the daemon restarts the instance gracefully when its working set crosses 90 % of it.
    pub memory_max_bytes: Option<u64>,
    /// CPU time per wall time, in percent of one CPU (`200` = two CPUs).
    pub cpu_quota_percent: Option<u32>,
    /// Processes and threads.
    pub tasks_max: Option<u64>,
}

impl ResourceLimits {
    pub fn is_empty(&self) -> bool {
        *self == ResourceLimits::default()
    }
}

/// Where the daemon listens for an app's HTTP traffic, and how it knows an instance is ready.
/// With a front, web instances are replaced blue/green: new ones start on fresh ports, must
/// become healthy, then traffic switches and the old ones drain and stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrontSpec {
    /// Unix socket nginx proxies to (`$PIKU_ROOT/nginx/<app>.sock`), for apps with a server name.
    pub unix_socket: Option<PathBuf>,
    /// Public TCP listener (`$BIND_ADDRESS:$PORT`), as piku gives apps without a server name.
    pub tcp: Option<TcpFront>,
    /// `GET` this path must answer 2xx/3xx (`PIKU_HEALTHCHECK`); `None`: the port must accept.
    pub health_path: Option<String>,
    /// How long new instances may take to become healthy before a deploy is abandoned.
    pub health_deadline_ms: u64,
    /// How long old instances may keep finishing in-flight requests after a switch.
    pub drain_ms: u64,
    /// How long an instance may take to send its response head before the front answers 504
    /// (`PIKU_RESPONSE_TIMEOUT`); an instance whose requests all time out is recycled.
    pub response_timeout_ms: u64,
    /// How long a client may take to send a request head (`PIKU_HEADER_TIMEOUT`).
    pub header_timeout_ms: u64,
    /// How long an idle client connection is kept open (`PIKU_KEEPALIVE_TIMEOUT`).
    pub keepalive_timeout_ms: u64,
    /// Larger request bodies get 413 (`NGINX_CLIENT_MAX_BODY_SIZE`); `None`: no limit.
    pub max_request_body: Option<u64>,
    /// The front's stall rule (`PIKU_STALL_TIMEOUT`): an instance holding 8 requests that
    /// finishes none for this long gets no more and is replaced; `None`: the rule is off.
    pub stall_after_ms: Option<u64>,
    /// At most this many requests in flight on one instance; the rest wait in the front, oldest
    /// first. Set for servers that pin a thread to each open connection (uWSGI with keep-alive:
    /// its processes × threads); `None`: the front's own cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight_per_instance: Option<u32>,
}

impl Default for FrontSpec {
    fn default() -> Self {
        FrontSpec {
            unix_socket: None,
            tcp: None,
            health_path: None,
            health_deadline_ms: 30_000,
            drain_ms: 10_000,
            response_timeout_ms: 30_000,
            header_timeout_ms: 10_000,
            keepalive_timeout_ms: 75_000,
            max_request_body: None,
            stall_after_ms: Some(500),
            max_in_flight_per_instance: None,
        }
    }
}

/// A public TCP listener of the front.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpFront {
    /// Address to bind (`BIND_ADDRESS`, default `127.0.0.1`).
    pub bind: String,
    /// `PORT` when the app pins it; `None`: the daemon picks one once and keeps it in its state.
    #[serde(default)]
    pub port: Option<u16>,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            stop_grace_ms: 10_000,
            log_max_bytes: 1024 * 1024,
            log_backups: 1,
            front: None,
            limits: ResourceLimits::default(),
        }
    }
}

/// An answer from the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// Reply to `Hello`.
    Welcome {
        protocol: u32,
        daemon_version: String,
    },
    /// A step of a longer request, for the user's terminal; more frames follow.
    Progress { message: String },
    /// One log line of a `Logs` request; more frames follow.
    LogLine { process: String, line: String },
    /// Final frame of a request that only needs an acknowledgement.
    Done { message: String },
    /// Final frame of `Apply`.
    Applied(ApplyReport),
    /// Final frame of `Status`.
    Status { apps: Vec<AppStatus> },
    /// Final frame of a request that failed; nothing was changed unless it says so.
    Error { message: String },
}

impl Response {
    /// Whether more frames follow this one for the same request.
    pub fn is_interim(&self) -> bool {
        matches!(self, Response::Progress { .. } | Response::LogLine { .. })
    }
}

/// What an `Apply` changed, as `kind.n` names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub app: String,
    pub release: String,
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub unchanged: Vec<String>,
    /// What the daemon could not do as asked, for the user's terminal (`PIKU_MEMORY_MAX`
    /// on a host without a memory cgroup controller).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The state of one app as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: String,
    pub release: String,
    /// Set by `Stop`; cleared by `Start`, `Restart` and `Apply`.
    pub stopped: bool,
    pub formation: BTreeMap<String, u32>,
    pub instances: Vec<InstanceStatus>,
    /// The HTTP front, when the app has one.
    #[serde(default)]
    pub front: Option<FrontStatus>,
    /// The limits each instance runs under.
    #[serde(default)]
    pub limits: ResourceLimits,
}

/// What the app's HTTP front is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontStatus {
    pub unix_socket: Option<PathBuf>,
    /// `address:port` of the public TCP listener.
    pub tcp: Option<String>,
    /// Instances receiving traffic now (`web.1`, …).
    pub backends: Vec<String>,
}

/// The state of one instance (`web.2`) or cron entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub kind: String,
    pub index: u32,
    pub state: InstanceState,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    /// Seconds since the current process started.
    pub uptime_secs: Option<u64>,
    /// Restarts after the process exited on its own (crashes), since the last apply.
    pub restarts: u32,
    /// How the previous process ended: `exit 1`, `SIGKILL`, `SIGSEGV (core dumped)`,
    /// `oom-killed`, `memory-soft-limit restart`, or why it could not start.
    pub last_exit: Option<String>,
    /// Resident memory of the instance's main process alone.
    pub rss_bytes: Option<u64>,
    /// Memory of all of the instance's processes: its cgroup's working set (usage less
    /// inactive file cache), else the PSS summed over its process group.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU time (user + system) used by the current process, in seconds.
    pub cpu_secs: Option<f64>,
    /// For cron entries: the next run, RFC 3339 in local time.
    pub next_run: Option<String>,
    /// Log lines that could not be written to the instance's log file (I/O errors such as a
    /// full disk). No line is dropped for speed: a child that writes faster than its log is
    /// written waits. (The name is kept for protocol compatibility.)
    pub log_lines_dropped: u64,
    /// Web instances behind a front: requests (and upgraded connections) on it now.
    #[serde(default)]
    pub in_flight: Option<u64>,
    /// Web instances behind a front: requests the front answered 504 because it did not
    /// answer within the response timeout.
    #[serde(default)]
    pub timed_out: Option<u64>,
}

impl InstanceStatus {
    /// The instance, `web.1`.
    pub fn id(&self) -> piku_model::InstanceId {
        piku_model::InstanceId::new(self.kind.clone(), self.index)
    }

    /// `web.1`, the name piku uses for the instance and its log file.
    pub fn name(&self) -> String {
        self.id().to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceState {
    /// Spawned, not yet known to be up (web: port not accepting yet).
    Starting,
    Running,
    /// Exited; waiting out the back-off delay before the next start.
    Backoff,
    /// Crashed repeatedly; still retried with the capped delay, and shown loudly.
    CrashLooping,
    Stopping,
    Stopped,
    /// A cron entry between runs.
    Waiting,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Backoff => "backoff",
            InstanceState::CrashLooping => "crash-looping",
            InstanceState::Stopping => "stopping",
            InstanceState::Stopped => "stopped",
            InstanceState::Waiting => "waiting",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AppSpec {
        AppSpec {
            app: "blog".into(),
            release: "v1".into(),
            workdir: "/tmp/blog".into(),
            env: BTreeMap::from([("SECRET_KEY".to_string(), "hunter2".to_string())]),
            processes: vec![ProcessSpec {
                kind: "cron1".into(),
                command: "python3 job.py".into(),
                role: Role::Cron {
                    schedule: "*/5 * * * *".into(),
                },
                count: 1,
            }],
            settings: AppSettings::default(),
        }
    }

    #[test]
    fn wire_shape_is_tagged() {
        let json = serde_json::to_string(&Request::Status {
            app: Some("blog".into()),
        })
        .unwrap();
        assert_eq!(json, r#"{"type":"status","app":"blog"}"#);
    }

    #[test]
    fn apply_round_trips() {
        let req = Request::Apply(Box::new(spec()));
        let json = serde_json::to_string(&req).unwrap();
        assert!(json.contains(r#""role":"cron""#), "{json}");
        let back: Request = serde_json::from_str(&json).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn settings_default_when_absent() {
        let json =
            r#"{"type":"apply","app":"a","release":"v1","workdir":"/x","env":{},"processes":[]}"#;
        let Request::Apply(spec) = serde_json::from_str(json).unwrap() else {
            panic!("not an apply")
        };
        assert_eq!(spec.settings, AppSettings::default());
    }

    #[test]
    fn limits_default_to_none_in_older_state_and_round_trip() {
        let old = r#"{"stop_grace_ms":1000,"log_max_bytes":5,"log_backups":1,"front":null}"#;
        let settings: AppSettings = serde_json::from_str(old).unwrap();
        assert!(settings.limits.is_empty());
        let limits = ResourceLimits {
            memory_max_bytes: Some(256 << 20),
            cpu_quota_percent: Some(50),
            tasks_max: Some(64),
        };
        let json = serde_json::to_string(&limits).unwrap();
        assert_eq!(
            serde_json::from_str::<ResourceLimits>(&json).unwrap(),
            limits
        );
        let report: ApplyReport = serde_json::from_str(
            r#"{"app":"a","release":"v1","started":[],"stopped":[],"restarted":[],"unchanged":[]}"#,
        )
        .unwrap();
        assert!(report.warnings.is_empty());
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        assert!(serde_json::from_str::<Request>(r#"{"type":"status","app":null,"x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"type":"format_disk"}"#).is_err());
    }

    #[test]
    fn debug_hides_env_values() {
        let shown = format!("{:?}", spec());
        assert!(shown.contains("SECRET_KEY"));
        assert!(!shown.contains("hunter2"));
    }
}
