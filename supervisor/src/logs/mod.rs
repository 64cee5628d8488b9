//! The logs of app processes: capture, files, journald, tail and live follow.
//!
//! Every instance ("web.1", "cron1.1") of an app writes into `<logs_root>/<app>/<process>.log`,
//! piku's file names, so `piku logs` and anything that tails those files keep working. The path
//! of a line:
//!
//! ```text
//! child pipe ─▶ capture thread ─▶ sink queue ─▶ write ─┬─▶ <process>.log (rotate.rs)
//!               (capture.rs,      (sink.rs)   │        └─▶ journald       (journal.rs)
//!                pace.rs, lines.rs)           └─▶ followers (broadcast)
//! ```
//!
//! One thread (per hub: one in the daemon) owns every pipe's read end and writes what it reads
//! in the same wake-up; a sink whose disk is slow gets a writer thread of its own, and while
//! that writer is behind by `queue_bytes` the thread stops reading that instance's pipes, so
//! the child waits in write(2): **no line is dropped to keep up**, and no other instance, nor
//! the async runtime (control socket, cron, HTTP front), waits for it. Only lines that cannot
//! be written at all (an I/O error) are lost, counted and noted in the file.
//!
//! - Wake-ups: a pipe is read the moment it has data while its process writes now and then;
//!   one silent for 2 s is checked on a one-second tick with all the others, and one that
//!   floods every 2 ms (see `pace`). An idle daemon wakes once a second.
//! - Rotation at `max_bytes` (piku: 1 MiB, one `<process>.log.old` backup); see `rotate`.
//! - journald: when a journal socket exists every line is also sent there, with the app name as
//!   `SYSLOG_IDENTIFIER`, so `journalctl -t <app>` shows an app's output (add
//!   `PIKU_PROCESS=web.1` to pick one process); a journald that does not keep up loses part
//!   of its copy, never the file's; see `journal`.
//! - [`LogHub::tail`] returns the last lines of each file the way piku's `logs` prints them;
//!   see `tail`.
//! - Lines are written as the program wrote them, without timestamps (like piku's uWSGI
//!   `logto`); the supervisor's own lines start with `[piku] `.

mod capture;
pub use capture::HandedPipe;
pub use sink::Stream;
mod journal;
mod lines;
mod pace;
mod rotate;
mod sink;
mod tail;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;

pub use sink::LogSink;

/// Where and how big a process log may grow (piku: 1 MiB, one `.old` backup).
///
/// `max_bytes == 0` means "never rotate". `backups == 0` means the full file is deleted at
/// rotation; `backups == 1` keeps `<p>.log.old` (piku's name); `backups == N > 1` keeps
/// `<p>.log.1` (newest) .. `<p>.log.N` (oldest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub backups: u32,
}

impl Rotation {
    /// piku's defaults (uWSGI `log-maxsize = 1048576`, `log-backupname = <p>.log.old`).
    pub const PIKU: Rotation = Rotation {
        max_bytes: 1024 * 1024,
        backups: 1,
    };
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation::PIKU
    }
}

/// One captured line, for `Logs` requests and followers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The instance that wrote it, e.g. "web.1".
    pub process: String,
    pub line: String,
}

/// Tunables of a [`LogHub`]. `Default` is what the daemon uses.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// journald native socket; `None` = files only.
    pub journal: Option<PathBuf>,
    /// Most bytes (line text plus a few dozen bytes per pipe read) a sink whose disk is slow
    /// may have waiting for its writer before the capture thread stops reading its pipes.
    pub queue_bytes: usize,
    /// Most bytes of journal entries kept while journald does not keep up; beyond them the
    /// journal copy of further lines is given up (counted, and noted to journald).
    pub journal_backlog_bytes: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            journal: None,
            // Keeps a slow disk busy between two batches (a writer takes the whole queue, so
            // at most twice this per slow sink is in memory) without holding much.
            queue_bytes: 1024 * 1024,
            journal_backlog_bytes: journal::BACKLOG_BYTES,
        }
    }
}

/// Capacity of an app's live-line channel; a follower that lags further skips lines (it can
/// read them from the files) instead of slowing the capture.
const LIVE_CAPACITY: usize = 1024;

/// How long `tail` waits for queued lines to be written before it reads the files.
const TAIL_FLUSH_WAIT: Duration = Duration::from_secs(2);

/// One per daemon. Cheap to clone (Arc inside).
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    logs_root: PathBuf,
    config: LogConfig,
    journal: Option<Arc<journal::Journal>>,
    capture: capture::Capture,
    apps: Mutex<HashMap<String, AppLogs>>,
}

/// The live-line channel of one app, shared by its sinks. Created by the first `subscribe`: a
/// broadcast channel allocates all its slots up front (~80 KiB), which apps nobody follows
/// should not pay.
pub(super) type LiveLines = Arc<OnceLock<broadcast::Sender<LogLine>>>;

/// The sinks and the live channel of one app.
struct AppLogs {
    live: LiveLines,
    sinks: HashMap<String, LogSink>,
}

impl AppLogs {
    fn new() -> AppLogs {
        AppLogs {
            live: LiveLines::default(),
            sinks: HashMap::new(),
        }
    }
}

impl LogHub {
    /// `logs_root` is `$PIKU_ROOT/logs`. The journal socket is `$PIKU_JOURNAL_SOCKET` when set
    /// (an empty value disables the journal), else `/run/systemd/journal/socket` when it exists;
    /// none → files only. Starts the capture thread.
    pub fn new(logs_root: PathBuf) -> io::Result<LogHub> {
        LogHub::with_config(
            logs_root,
            LogConfig {
                journal: journal::default_socket(),
                ..LogConfig::default()
            },
        )
    }

    /// For tests: a hub with an explicit journal socket (`None` = files only), so they don't
    /// depend on the process environment. Panics if the capture thread cannot start.
    #[cfg(test)]
    pub fn with_journal(logs_root: PathBuf, journal: Option<PathBuf>) -> LogHub {
        LogHub::with_config(
            logs_root,
            LogConfig {
                journal,
                ..LogConfig::default()
            },
        )
        .expect("the log capture thread starts")
    }

    /// A hub with explicit tunables.
    pub fn with_config(logs_root: PathBuf, config: LogConfig) -> io::Result<LogHub> {
        let journal = config
            .journal
            .as_ref()
            .and_then(|path| match journal::Journal::connect(path.clone(), config.journal_backlog_bytes) {
                Ok(journal) => Some(Arc::new(journal)),
                Err(err) => {
                    tracing::warn!(path = %path.display(), %err, "journald socket unusable; logging to files only");
                    None
                }
            });
        let capture = capture::Capture::start(journal.clone())?;
        Ok(LogHub {
            inner: Arc::new(HubInner {
                logs_root,
                config,
                journal,
                capture,
                apps: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The sink of instance `process` ("web.1", "cron1.1") of `app`: created on first use (file
    /// `<logs_root>/<app>/<process>.log`, dirs created when the first line is written), then
    /// reused across restarts of that instance (with `rotation` applied).
    pub fn sink(&self, app: &str, process: &str, rotation: Rotation) -> LogSink {
        let mut apps = lock(&self.inner.apps);
        let app_logs = apps.entry(app.to_owned()).or_insert_with(AppLogs::new);
        if let Some(sink) = app_logs.sinks.get(process) {
            sink.set_rotation(rotation);
            return sink.clone();
        }
        let path = self
            .inner
            .logs_root
            .join(path_component(app))
            .join(format!("{}.log", path_component(process)));
        let sink = LogSink::new(sink::SinkSetup {
            app: app.to_owned(),
            process: process.to_owned(),
            path,
            rotation,
            config: self.inner.config.clone(),
            journal: self.inner.journal.clone(),
            live: app_logs.live.clone(),
            capture: self.inner.capture.clone(),
        });
        app_logs.sinks.insert(process.to_owned(), sink.clone());
        sink
    }

    /// Live lines of every process of `app`, from now on (for `logs --follow`). A receiver that
    /// falls more than ~1000 lines behind gets `RecvError::Lagged` and continues from there.
    pub fn subscribe(&self, app: &str) -> broadcast::Receiver<LogLine> {
        let mut apps = lock(&self.inner.apps);
        apps.entry(app.to_owned())
            .or_insert_with(AppLogs::new)
            .live
            .get_or_init(|| broadcast::channel(LIVE_CAPACITY).0)
            .subscribe()
    }

    /// The last `lines` lines of each of the app's log files whose process matches `filter`
    /// (None = all; "web" = every web.N; "web.2" = that one), file by file in name order,
    /// as piku's `logs` prints them. Reads `.log` (and the newest backup when `.log` has fewer
    /// lines). What the app's pipes hold and its sinks have queued is written first.
    pub async fn tail(
        &self,
        app: &str,
        filter: Option<&str>,
        lines: usize,
    ) -> io::Result<Vec<LogLine>> {
        // Bounded: a hung disk must not hang `piku logs`; what is still queued then is simply
        // not shown yet.
        let flushed = async {
            for sink in self.app_sinks(app) {
                sink.flush().await;
            }
        };
        let _ = tokio::time::timeout(TAIL_FLUSH_WAIT, flushed).await;
        let dir = self.inner.logs_root.join(path_component(app));
        let filter = filter.map(str::to_owned);
        tokio::task::spawn_blocking(move || tail::tail_dir(&dir, filter.as_deref(), lines))
            .await
            .map_err(io::Error::other)?
    }

    /// Flushes and closes the app's sinks (on app removal); files stay on disk. Lines that a
    /// still-running process writes afterwards reopen the file and are not lost.
    pub fn forget_app(&self, app: &str) {
        let removed = lock(&self.inner.apps).remove(app);
        for sink in removed
            .into_iter()
            .flat_map(|logs| logs.sinks.into_values())
        {
            sink.close_when_idle();
        }
    }

    /// Closes the sink of one instance that is gone (scaled down) once its queue is written,
    /// so its log file does not stay open; lines its stopping process still writes reopen
    /// the file. An instance of that name started later gets a fresh sink.
    pub fn forget_process(&self, app: &str, process: &str) {
        let removed = lock(&self.inner.apps)
            .get_mut(app)
            .and_then(|logs| logs.sinks.remove(process));
        if let Some(sink) = removed {
            sink.close_when_idle();
        }
    }

    /// Flushes everything (daemon shutdown): returns when every line the pipes held and the
    /// sinks had queued at the call is written. Wrap it in a timeout where a hung disk must
    /// not delay shutdown.
    pub async fn flush_all(&self) {
        let sinks: Vec<LogSink> = lock(&self.inner.apps)
            .values()
            .flat_map(|logs| logs.sinks.values().cloned())
            .collect();
        for sink in sinks {
            sink.flush().await;
        }
    }

    /// Takes every pipe back from the capture thread for the next image (upgrade): each
    /// read end with its process, stream and unfinished line. Nothing is read from them
    /// after this; what they hold is the next image's to read.
    pub async fn hand_over(&self) -> Vec<HandedPipe> {
        let (reply, handed) = tokio::sync::oneshot::channel();
        self.inner.capture.hand_over(reply);
        handed.await.unwrap_or_default()
    }

    fn app_sinks(&self, app: &str) -> Vec<LogSink> {
        lock(&self.inner.apps)
            .get(app)
            .map(|logs| logs.sinks.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// Whether the process named `process` is what `filter` asks for: "web" matches "web.1" and
/// "web.12" (not "webhook.1", not "web.x"); "web.2" matches only "web.2". For `logs` both from
/// the files and live.
pub fn process_matches(process: &str, filter: &str) -> bool {
    process == filter
        || process
            .parse::<piku_model::InstanceId>()
            .is_ok_and(|id| id.kind == filter)
}

/// Keeps a name inside its directory even if a caller passes something odd: `/` and a leading
/// `.` cannot escape `<logs_root>/<app>/`. Valid app and process names pass unchanged.
fn path_component(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a few field updates), so poisoning is ignored rather than spread.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `<dir>/<name>` + `suffix`, e.g. `web.1.log` + `.old`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut os = path.as_os_str().to_owned();
    os.push(suffix);
    PathBuf::from(os)
}
