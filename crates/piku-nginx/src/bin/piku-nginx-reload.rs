//! `piku-nginx-reload`: the root side of piku's nginx reloads ([`piku_nginx::watch`]).
//!
//! ```text
//! piku-nginx-reload                                    # once: test, reload, print the status
//! piku-nginx-reload --watch DIR [--status FILE]        # piku-nginx.service: answer DIR's request
//!                   [--nginx BIN] [--conf FILE] [--confirm SECONDS]
//! ```
//!
//! Without arguments it is what `sudo -n` runs on hosts without systemd: the sudoers line then
//! allows exactly this command and nothing else (`piku ALL=(root) NOPASSWD:
//! /usr/lib/piku/piku-nginx-reload ""`). Exit status: 0 reloaded, 1 refused by `nginx -T`,
//! 2 not reloaded, 64 bad usage.
//!
//! The five options are parsed by hand: clap would become a dependency of every user of the
//! piku-nginx library for one small root tool.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use piku_nginx::reload::{DEFAULT_CONFIRM, Invocation, Outcome};
use piku_nginx::watch;

struct Options {
    watch: Option<PathBuf>,
    status: PathBuf,
    nginx: Invocation,
    confirm: Duration,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut o = Options {
        watch: None,
        status: PathBuf::from(watch::DEFAULT_STATUS),
        nginx: Invocation {
            binary: PathBuf::from("/usr/sbin/nginx"),
            conf: None,
            prefix: None,
        },
        confirm: DEFAULT_CONFIRM,
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--watch" => o.watch = Some(PathBuf::from(value()?)),
            "--status" => o.status = PathBuf::from(value()?),
            "--nginx" => o.nginx.binary = PathBuf::from(value()?),
            "--conf" => o.nginx.conf = Some(PathBuf::from(value()?)),
            "--confirm" => {
                let v = value()?;
                o.confirm = v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| format!("--confirm: '{v}' is not a number of seconds"))?;
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("piku-nginx-reload: {e}");
            eprintln!(
                "usage: piku-nginx-reload [--watch DIR] [--status FILE] [--nginx BIN] [--conf FILE] [--confirm SECONDS]"
            );
            return ExitCode::from(64);
        }
    };
    let status = match &options.watch {
        Some(dir) => match watch::serve(dir, &options.status, &options.nginx, options.confirm) {
            Ok(status) => status,
            Err(e) => {
                eprintln!(
                    "piku-nginx-reload: cannot write {}: {e}",
                    options.status.display()
                );
                return ExitCode::from(2);
            }
        },
        None => watch::run_once(1, None, &options.nginx, options.confirm),
    };
    // One line for the journal (the service's log) or for sudo's caller.
    match serde_json::to_string(&status) {
        Ok(line) => println!("{line}"),
        Err(e) => eprintln!("piku-nginx-reload: {e}"),
    }
    match status.outcome {
        Outcome::Reloaded { .. } => ExitCode::SUCCESS,
        Outcome::Rejected { .. } => ExitCode::from(1),
        Outcome::Failed { .. } => ExitCode::from(2),
    }
}
