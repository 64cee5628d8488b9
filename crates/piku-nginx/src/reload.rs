//! Making nginx load its configuration, and knowing whether it did.
//!
//! Every reload piku asks for ends in [`test_and_reload`], run as nginx's own user: root for the
//! system nginx (through the `piku-nginx.path` watcher or `sudo`, see [`crate::watch`]), the
//! piku user for an nginx of its own (the tests, the demo). It
//! 1. runs `nginx -T`: the test of the *whole* configuration exactly as the master will load
//!    it, by the user who will load it, so what it refuses is what the reload would refuse;
//!    the dump also names the master's pid file;
//! 2. sends SIGHUP to the master (all `nginx -s reload` and Debian's `systemctl reload nginx`
//!    do);
//! 3. waits until the master has started a new worker. A master that cannot load the new
//!    configuration logs why and keeps its old workers, while `nginx -s reload` and
//!    `systemctl reload` report success either way; new workers are the one sign, visible
//!    from outside, that the new configuration is the one serving.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::install::nginx_problem;

/// How long [`test_and_reload`] waits for the master's new workers unless told otherwise.
pub const DEFAULT_CONFIRM: Duration = Duration::from_secs(5);

/// How to run one nginx: its binary and the `-c` / `-p` it was started with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub binary: PathBuf,
    pub conf: Option<PathBuf>,
    pub prefix: Option<PathBuf>,
}

impl Invocation {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        if let Some(p) = &self.prefix {
            c.arg("-p").arg(p);
        }
        if let Some(conf) = &self.conf {
            c.arg("-c").arg(conf);
        }
        c
    }
}

/// What a reload came to. Serialized into the watcher's status file and `sudo`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Outcome {
    /// The whole configuration passed `nginx -T` and the master `pid` started new workers.
    Reloaded { pid: u32 },
    /// `nginx -T` refused the configuration; `message` is nginx's line. nginx still runs the
    /// configuration it had.
    Rejected { message: String },
    /// The configuration passed but nginx did not (visibly) load it: not running, not ours
    /// to signal, or it kept its old workers. One line.
    Failed { message: String },
}

/// Tests the whole configuration, signals the master and waits up to `confirm` for its new
/// workers.
pub fn test_and_reload(nginx: &Invocation, confirm: Duration) -> Outcome {
    let shown = nginx.binary.display();
    let output = match nginx.command().arg("-T").output() {
        Ok(o) => o,
        Err(e) => {
            return Outcome::Failed {
                message: format!("cannot run {shown}: {e}"),
            };
        }
    };
    if !output.status.success() {
        return Outcome::Rejected {
            message: nginx_problem(&String::from_utf8_lossy(&output.stderr)),
        };
    }
    let pid_file = pid_file(&String::from_utf8_lossy(&output.stdout), nginx);
    let pid = match read_pid(&pid_file) {
        Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => pid,
        _ => {
            return Outcome::Failed {
                message: format!(
                    "nginx is not running (no live pid in {}); start it, e.g. systemctl start nginx",
                    pid_file.display()
                ),
            };
        }
    };
    let before = children(pid);
    let master = nix::unistd::Pid::from_raw(pid as i32);
    if let Err(e) = nix::sys::signal::kill(master, nix::sys::signal::Signal::SIGHUP) {
        return Outcome::Failed {
            message: format!("cannot signal nginx's master (pid {pid}): {e}"),
        };
    }
    let deadline = Instant::now() + confirm;
    loop {
        if children(pid).iter().any(|c| !before.contains(c)) {
            return Outcome::Reloaded { pid };
        }
        if Instant::now() >= deadline {
            return Outcome::Failed {
                message: format!(
                    "nginx (pid {pid}) started no new workers within {} s of the reload signal: \
                     it kept its old configuration (its error log says why)",
                    confirm.as_secs_f32()
                ),
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The master's pid file: the main context's `pid` directive in the `nginx -T` dump, else the
/// compiled-in `--pid-path` (`nginx -V`), else nginx's own default `logs/nginx.pid`; a relative
/// path is under the prefix.
fn pid_file(dump: &str, nginx: &Invocation) -> PathBuf {
    let configured = dump.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix("pid")?;
        if !rest.starts_with([' ', '\t']) {
            return None;
        }
        let value = rest.split(';').next()?.trim();
        (!value.is_empty()).then(|| value.trim_matches(['"', '\'']).to_owned())
    });
    let compiled = || {
        let out = Command::new(&nginx.binary).arg("-V").output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr).into_owned();
        Some((
            configure_arg(&text, "--pid-path="),
            configure_arg(&text, "--prefix="),
        ))
    };
    let (compiled_pid, compiled_prefix) = compiled().unwrap_or((None, None));
    let path = PathBuf::from(
        configured
            .or(compiled_pid)
            .unwrap_or_else(|| "logs/nginx.pid".to_owned()),
    );
    if path.is_absolute() {
        return path;
    }
    let prefix = nginx
        .prefix
        .clone()
        .or(compiled_prefix.map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/usr/share/nginx"));
    prefix.join(path)
}

/// The value of one `--name=value` in `nginx -V`'s `configure arguments:`.
fn configure_arg(text: &str, name: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .map(str::to_owned)
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The pids whose parent is `pid`: from `/proc/<pid>/task/<pid>/children` when the kernel has
/// it, else by reading every `/proc/<n>/stat`.
fn children(pid: u32) -> Vec<u32> {
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        return text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|n| {
            std::fs::read_to_string(format!("/proc/{n}/stat"))
                .ok()
                .and_then(|stat| parent_of(&stat))
                == Some(pid)
        })
        .collect()
}

/// Field 4 of `/proc/<n>/stat`, read after the last `)` (the command name may hold anything).
fn parent_of(stat: &str) -> Option<u32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(prefix: Option<&str>) -> Invocation {
        Invocation {
            // A binary that does not exist: the compiled-in defaults are then unknown.
            binary: PathBuf::from("/nonexistent/nginx"),
            conf: None,
            prefix: prefix.map(PathBuf::from),
        }
    }

    #[test]
    fn the_pid_file_comes_from_the_dump_then_the_defaults() {
        let dump = "# configuration file /etc/nginx/nginx.conf:\nuser www-data;\n  pid /run/nginx.pid; # here\nevents {}\n";
        assert_eq!(pid_file(dump, &at(None)), Path::new("/run/nginx.pid"));
        let relative = "pid\tlogs/x.pid;\n";
        assert_eq!(
            pid_file(relative, &at(Some("/srv/n"))),
            Path::new("/srv/n/logs/x.pid")
        );
        // `pidfoo` is not `pid`; without a directive nginx's own default applies.
        assert_eq!(
            pid_file("pidfoo 1;\n", &at(Some("/p"))),
            Path::new("/p/logs/nginx.pid")
        );
    }

    #[test]
    fn configure_args_and_stat_fields_are_read() {
        let v = "nginx version: nginx/1.22.1\nconfigure arguments: --prefix=/usr/share/nginx --pid-path=/run/nginx.pid --with-threads";
        assert_eq!(
            configure_arg(v, "--pid-path=").as_deref(),
            Some("/run/nginx.pid")
        );
        assert_eq!(configure_arg(v, "--lock-path="), None);
        assert_eq!(parent_of("42 (a) b) c) S 7 42 42 0"), Some(7));
    }

    #[test]
    fn outcomes_serialize_with_a_result_tag() {
        let text = serde_json::to_string(&Outcome::Rejected {
            message: "[emerg] x".into(),
        })
        .unwrap();
        assert_eq!(text, r#"{"result":"rejected","message":"[emerg] x"}"#);
        let back: Outcome = serde_json::from_str(r#"{"result":"reloaded","pid":12}"#).unwrap();
        assert_eq!(back, Outcome::Reloaded { pid: 12 });
    }

    #[test]
    fn no_nginx_binary_is_a_failure_not_a_rejection() {
        let outcome = test_and_reload(&at(None), Duration::from_millis(10));
        assert!(
            matches!(&outcome, Outcome::Failed { message } if message.starts_with("cannot run /nonexistent/nginx")),
            "{outcome:?}"
        );
    }
}
