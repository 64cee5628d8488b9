//! `piku logs <app> [process]`: the last lines of each process log, then new lines as they
//! come, streamed by the supervisor. Lines read `<process padded> | <line>`, as in piku.
//!
//! The command ends when the reader goes away: a failed write (`EPIPE`; Rust ignores SIGPIPE)
//! ends it with status 0, and while following, a watcher thread notices a closed stdout even
//! when no line arrives to fail on, so a quiet app does not leave a `piku logs` behind every
//! ssh session that ever looked at it. With `ssh -t` the pty's hangup (SIGHUP) ends it.

use std::io::{self, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use anyhow::{anyhow, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use piku_model::{InstanceId, is_valid_kind};
use piku_proto::{LogsRequest, ProtoError, Request, Response};

use super::Ctx;
use super::args::Args;
use crate::daemon::{self, instance_id};
use crate::output;

/// How many past lines of each file piku showed before following.
const DEFAULT_LINES: usize = 20;

pub fn logs(ctx: &Ctx, words: &[String]) -> anyhow::Result<i32> {
    let mut args = Args::new("logs", words);
    let follow = !args.flag("--no-follow");
    let lines = match args.option("-n")? {
        Some(n) => n.parse::<usize>().map_err(|_| {
            args.usage_error(&format!("-n needs a number, not '{}'", n.escape_debug()))
        })?,
        None => DEFAULT_LINES,
    };
    let app = args.existing_app(ctx)?;
    let process = args.next();
    args.finish()?;
    let wanted = match &process {
        None => None,
        Some(p) => Some(
            Wanted::parse(p)
                .ok_or_else(|| anyhow!("invalid process name '{}'", p.escape_debug()))?,
        ),
    };

    // Pad to the longest instance name up front, as piku padded to the longest file name.
    let mut width = daemon::status_of(&ctx.root, &app)?
        .map(|s| {
            s.instances
                .iter()
                .map(instance_id)
                .filter(|id| wanted.as_ref().is_none_or(|w| w.matches(id)))
                .map(|id| id.to_string().len())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);

    let mut client = daemon::connect(&ctx.root)?;
    client.send(&Request::Logs(LogsRequest {
        app: app.to_string(),
        process,
        lines,
        follow,
    }))?;
    if follow {
        watch_for_hangup();
    }
    let mut out = io::stdout().lock();
    let mut printed = 0usize;
    loop {
        let frame = match client.recv() {
            Ok(frame) => frame,
            Err(ProtoError::Closed) if !follow => break,
            Err(ProtoError::Closed) => bail!("the supervisor closed the log stream"),
            Err(err) => return Err(err.into()),
        };
        match frame {
            Response::LogLine { process, line } => {
                width = width.max(process.len());
                let line = line.trim_end_matches(['\n', '\r']);
                if writeln!(out, "{process:<width$} | {line}")
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    // The ssh client is gone: nothing left to do, and nothing went wrong.
                    return Ok(0);
                }
                printed += 1;
            }
            Response::Progress { message } => output::step(message),
            Response::Error { message } => bail!("{message}"),
            // Any other final frame ends a non-following request.
            _ => break,
        }
    }
    if printed == 0 {
        output::say(format_args!("No logs found for app '{app}'."));
    }
    Ok(0)
}

/// The process `piku logs <app> <process>` asks for: a kind (`web`, `cron1`) or one instance
/// (`web.2`).
enum Wanted {
    Kind(String),
    Instance(InstanceId),
}

impl Wanted {
    fn parse(name: &str) -> Option<Wanted> {
        if name.contains('.') {
            name.parse().ok().map(Wanted::Instance)
        } else {
            is_valid_kind(name).then(|| Wanted::Kind(name.to_owned()))
        }
    }

    fn matches(&self, id: &InstanceId) -> bool {
        match self {
            Wanted::Kind(kind) => id.kind == *kind,
            Wanted::Instance(wanted) => id == wanted,
        }
    }
}

/// Exits the process (status 0) once stdout's reader has gone away: a pipe whose read end is
/// closed polls as POLLERR, a closed socket as POLLHUP.
fn watch_for_hangup() {
    std::thread::spawn(|| {
        let stdout = io::stdout();
        loop {
            let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
            match poll(&mut fds, PollTimeout::from(1000u16)) {
                Ok(n) if n > 0 => {
                    let gone = fds[0].revents().is_some_and(|r| {
                        r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP | PollFlags::POLLNVAL)
                    });
                    if gone {
                        std::process::exit(0);
                    }
                    // Some other readiness we did not ask for; do not spin on it.
                    std::thread::sleep(Duration::from_secs(1));
                }
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                // stdout cannot be polled (unusual); a failed write still ends the command.
                Err(_) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_names() {
        for good in ["web", "web.2", "cron_1"] {
            assert!(Wanted::parse(good).is_some(), "{good}");
        }
        for bad in ["web.", "../web", "*", "web.0"] {
            assert!(Wanted::parse(bad).is_none(), "{bad}");
        }
        let id = |s: &str| s.parse::<InstanceId>().unwrap();
        let wanted = |s: &str| Wanted::parse(s).unwrap();
        assert!(wanted("web").matches(&id("web.1")));
        assert!(wanted("web.1").matches(&id("web.1")));
        assert!(!wanted("web.1").matches(&id("web.2")));
        assert!(!wanted("web").matches(&id("webhook.1")));
    }
}
