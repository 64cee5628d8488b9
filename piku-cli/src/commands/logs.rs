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

use anyhow::bail;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use piku_proto::{LogsRequest, ProtoError, Request, Response};

use super::Ctx;
use super::args::Args;
use crate::{daemon, output};

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
    if let Some(p) = &process
        && !is_process_name(p)
    {
        bail!("invalid process name '{}'", p.escape_debug());
    }

    // Pad to the longest instance name up front, as piku padded to the longest file name.
    let mut width = daemon::status_of(&ctx.root, &app)?
        .map(|s| {
            s.instances
                .iter()
                .map(|i| i.name())
                .filter(|name| process.as_deref().is_none_or(|p| matches_process(name, p)))
                .map(|name| name.len())
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

/// A kind (`web`, `cron1`) or one instance (`web.2`).
fn is_process_name(name: &str) -> bool {
    let (kind, index) = match name.split_once('.') {
        Some((kind, index)) => (kind, Some(index)),
        None => (name, None),
    };
    piku_model::is_valid_kind(kind)
        && index.is_none_or(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

fn matches_process(instance: &str, wanted: &str) -> bool {
    instance == wanted
        || instance
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with('.'))
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
        assert!(is_process_name("web"));
        assert!(is_process_name("web.2"));
        assert!(is_process_name("cron_1"));
        assert!(!is_process_name("web."));
        assert!(!is_process_name("../web"));
        assert!(!is_process_name("*"));
        assert!(matches_process("web.1", "web"));
        assert!(matches_process("web.1", "web.1"));
        assert!(!matches_process("webhook.1", "web"));
    }
}
