//! Reloads by a watcher running as root, and how a deploy learns their outcome.
//!
//! On a systemd host the root-owned `piku-nginx.path` unit watches `~piku/.piku/nginx` and
//! starts `piku-nginx.service`, which runs `piku-nginx-reload --watch`: [`serve`] here, which
//! calls [`crate::reload::test_and_reload`] as root. The deploy (as piku) and the watcher
//! (as root) share two files:
//!
//! - the **request**, `nginx/.reload-request`, written by the deploy after it changed a config:
//!   a token `<unix-nanoseconds>-<pid>` taken *after* the change. Writing it is what wakes the
//!   path unit.
//! - the **status**, `/run/piku-nginx/status.json` (root's, world-readable), written by the
//!   watcher after each run: a sequence number, the request token it read *before* testing,
//!   start and end times, and the [`Outcome`] (nginx's line when it refused).
//!
//! A status whose request is the deploy's token, or a later one, was produced by a run that
//! read the nginx directory after the deploy's change, so its outcome is the deploy's
//! ([`Token::is_answered_by`]). The deploy waits for such a status ([`await_answer`]) and
//! reports its outcome: a refused or failed reload shows in the push output. Issue 12's "wait
//! until nginx routes the host name" starts from the same answer (`Outcome::Reloaded` names
//! the master whose new workers serve the new config).
//!
//! systemd drops a path trigger that fires while the service is still running, so [`serve`]
//! reads the request again after each run and goes round once more if it changed, and the
//! deploy rewrites its request every [`RETRIGGER`] while it waits.
//!
//! Without systemd, `sudo -n piku-nginx-reload` (no arguments, allowed by one sudoers line)
//! runs the same test and reload once and prints the status on stdout.
//!
//! The watcher reads a file in a directory the piku user owns, as root: it opens it without
//! following a symlink, without blocking on a FIFO, only if it is a regular file, reads at most
//! [`TOKEN_MAX`] bytes and accepts only a well-formed token, so nothing of another file can
//! reach the world-readable status.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::reload::{Invocation, Outcome, test_and_reload};

/// The request file's name inside the watched `nginx/` directory (not `*.conf`: never included).
pub const REQUEST_FILE: &str = ".reload-request";
/// Where the packaged units keep the watcher's status.
pub const DEFAULT_STATUS: &str = "/run/piku-nginx/status.json";
/// How often a waiting deploy rewrites its request (a trigger systemd dropped is repeated).
pub const RETRIGGER: Duration = Duration::from_secs(2);
/// The longest request token accepted.
pub const TOKEN_MAX: usize = 64;
/// Runs of [`serve`] in one start, so a flood of requests cannot keep the service busy forever.
const MAX_ROUNDS: usize = 20;

/// One reload request: when it was made (after the change it is for) and by whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    nanos: u128,
    pid: u32,
}

impl Token {
    pub fn now() -> Token {
        Token {
            nanos: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            pid: std::process::id(),
        }
    }

    pub fn parse(text: &str) -> Option<Token> {
        let (nanos, pid) = text.trim().split_once('-')?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 39 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(nanos) || !digits(pid) {
            return None;
        }
        Some(Token {
            nanos: nanos.parse().ok()?,
            pid: pid.parse().ok()?,
        })
    }

    /// Whether a run that read `seen` as the request had this token's change on disk: `seen`
    /// is this token, or one taken later (by another deploy, after this one's change).
    pub fn is_answered_by(&self, seen: &Token) -> bool {
        seen == self || seen.nanos > self.nanos
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.nanos, self.pid)
    }
}

/// The watcher's record of its last run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Counts the runs since the status file was created (it lives in `/run`: since boot).
    pub seq: u64,
    /// The request token read before the run (`None`: no request file).
    pub request: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub finished_ms: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Writes a new request token into `nginx_dir` (atomically: a temp file renamed over it).
pub fn request(nginx_dir: &Path) -> std::io::Result<Token> {
    let token = Token::now();
    write_request(nginx_dir, &token)?;
    Ok(token)
}

fn write_request(nginx_dir: &Path, token: &Token) -> std::io::Result<()> {
    // A random temporary name, never a predictable one a symlink could be planted at.
    piku_fs::write_atomic(
        &nginx_dir.join(REQUEST_FILE),
        token.to_string().as_bytes(),
        piku_fs::MODE_PUBLIC,
    )
}

/// The request token in `nginx_dir`, read safely as root (see the module docs).
pub fn read_request(nginx_dir: &Path) -> Option<Token> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(nginx_dir.join(REQUEST_FILE))
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = String::new();
    file.take(TOKEN_MAX as u64).read_to_string(&mut text).ok()?;
    Token::parse(&text)
}

fn libc_flags() -> i32 {
    nix::fcntl::OFlag::O_NOFOLLOW.bits() | nix::fcntl::OFlag::O_NONBLOCK.bits()
}

/// The watcher's last status, if there is a readable one.
pub fn read_status(path: &Path) -> Option<Status> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".status.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    let mut text = serde_json::to_string(status).map_err(std::io::Error::other)?;
    text.push('\n');
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One start of the watcher service: test and reload, record the status, and again while the
/// request changed meanwhile. Returns the last status.
pub fn serve(
    nginx_dir: &Path,
    status_path: &Path,
    nginx: &Invocation,
    confirm: Duration,
) -> std::io::Result<Status> {
    let mut seq = read_status(status_path).map_or(0, |s| s.seq);
    let mut rounds = 0;
    loop {
        let seen = read_request(nginx_dir);
        let status = run_once(seq + 1, seen, nginx, confirm);
        write_status(status_path, &status)?;
        seq = status.seq;
        rounds += 1;
        if read_request(nginx_dir) == seen || rounds >= MAX_ROUNDS {
            return Ok(status);
        }
    }
}

/// One test and reload, as a status (what `sudo piku-nginx-reload` prints).
pub fn run_once(seq: u64, seen: Option<Token>, nginx: &Invocation, confirm: Duration) -> Status {
    let started_ms = unix_ms();
    let outcome = test_and_reload(nginx, confirm);
    Status {
        seq,
        request: seen.map(|t| t.to_string()),
        started_ms,
        finished_ms: unix_ms(),
        outcome,
    }
}

/// Why [`await_answer`] has no answer.
#[derive(Debug)]
pub enum NoAnswer {
    Request(std::io::Error),
    Timeout,
}

/// Asks the watcher to reload for a change just made in `nginx_dir` and waits up to `timeout`
/// for the status that answers it.
pub fn await_answer(
    nginx_dir: &Path,
    status_path: &Path,
    timeout: Duration,
) -> Result<Status, NoAnswer> {
    let token = request(nginx_dir).map_err(NoAnswer::Request)?;
    let start = Instant::now();
    let mut next_trigger = start + RETRIGGER;
    loop {
        if let Some(status) = read_status(status_path)
            && status
                .request
                .as_deref()
                .and_then(Token::parse)
                .is_some_and(|seen| token.is_answered_by(&seen))
        {
            return Ok(status);
        }
        let now = Instant::now();
        if now >= start + timeout {
            return Err(NoAnswer::Timeout);
        }
        if now >= next_trigger {
            // Best effort: a failure here shows up as the timeout.
            let _ = write_request(nginx_dir, &token);
            next_trigger = now + RETRIGGER;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn tokens_round_trip_and_order() {
        let t = Token::now();
        assert_eq!(Token::parse(&t.to_string()), Some(t));
        let earlier = Token { nanos: 10, pid: 5 };
        let later = Token { nanos: 11, pid: 4 };
        let same_time = Token { nanos: 10, pid: 6 };
        assert!(earlier.is_answered_by(&earlier));
        assert!(earlier.is_answered_by(&later));
        assert!(!later.is_answered_by(&earlier));
        // Same nanosecond, another deploy: which change the run saw is unknown; wait on.
        assert!(!earlier.is_answered_by(&same_time));
        for bad in ["", "1", "-1", "1-", "a-1", "1-2-3", "1 -2", &"9".repeat(50)] {
            assert_eq!(Token::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_request_is_read_only_from_a_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_request(dir.path()), None);
        let t = request(dir.path()).unwrap();
        assert_eq!(read_request(dir.path()), Some(t));
        // A symlink planted in place of the request is not followed.
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "123-4").unwrap();
        std::fs::remove_file(dir.path().join(REQUEST_FILE)).unwrap();
        symlink(&secret, dir.path().join(REQUEST_FILE)).unwrap();
        assert_eq!(read_request(dir.path()), None);
        // A FIFO does not block the reader.
        std::fs::remove_file(dir.path().join(REQUEST_FILE)).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join(REQUEST_FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert_eq!(read_request(dir.path()), None);
        // Garbage is not a token.
        std::fs::remove_file(dir.path().join(REQUEST_FILE)).unwrap();
        std::fs::write(dir.path().join(REQUEST_FILE), "root:x:0:0::/root:/bin/sh\n").unwrap();
        assert_eq!(read_request(dir.path()), None);
    }

    #[test]
    fn a_status_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/status.json");
        let status = Status {
            seq: 3,
            request: Some("1-2".into()),
            started_ms: 1,
            finished_ms: 2,
            outcome: Outcome::Failed {
                message: "nginx is not running".into(),
            },
        };
        write_status(&path, &status).unwrap();
        assert_eq!(read_status(&path), Some(status));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(
                r#"{"seq":3,"request":"1-2","started_ms":1,"finished_ms":2,"result":"failed""#
            ),
            "{text}"
        );
    }

    #[test]
    fn a_deploy_gets_the_answer_to_its_own_request() {
        let dir = tempfile::tempdir().unwrap();
        let nginx_dir = dir.path().join("nginx");
        std::fs::create_dir(&nginx_dir).unwrap();
        let status_path = dir.path().join("status.json");
        // A stale answer (an older request) must not be taken for this deploy's.
        write_status(
            &status_path,
            &Status {
                seq: 1,
                request: Some("1-1".into()),
                started_ms: 0,
                finished_ms: 0,
                outcome: Outcome::Reloaded { pid: 1 },
            },
        )
        .unwrap();
        let err = await_answer(&nginx_dir, &status_path, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, NoAnswer::Timeout), "{err:?}");
        std::fs::remove_file(nginx_dir.join(REQUEST_FILE)).unwrap();

        // A watcher (a thread standing in for the root service) answers what it reads.
        let watcher = {
            let (nginx_dir, status_path) = (nginx_dir.clone(), status_path.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    let seen = read_request(&nginx_dir);
                    if seen.is_some() {
                        let status = Status {
                            seq: 2,
                            request: seen.map(|t| t.to_string()),
                            started_ms: 0,
                            finished_ms: 0,
                            outcome: Outcome::Rejected {
                                message: "[emerg] no".into(),
                            },
                        };
                        write_status(&status_path, &status).unwrap();
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        let answer = await_answer(&nginx_dir, &status_path, Duration::from_secs(10)).unwrap();
        watcher.join().unwrap();
        assert_eq!(answer.seq, 2);
        assert_eq!(
            answer.outcome,
            Outcome::Rejected {
                message: "[emerg] no".into()
            }
        );
    }
}
