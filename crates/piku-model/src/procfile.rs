//! Procfiles: which processes an app has, and what class of process each one is.
//!
//! Rules (piku's `parse_procfile`, minus its silent drops):
//! - Blank lines and lines starting with `#` (after leading spaces) are ignored.
//! - Each line is `kind: command`, split on the **first** `:`; both sides are trimmed.
//! - Kind names must match `[A-Za-z0-9_-]+`: they become file names (`<kind>.<n>.log`).
//! - Classes: `wsgi`, `rwsgi`, `php`, `web`, `static`, `release`, `preflight`; any kind
//!   starting with `cron` is a [`ProcessClass::Cron`] whose value is `<schedule> <command>`
//!   (see [`crate::cron`]); everything else is a worker. `jwsgi` (Java in uWSGI's JVM plugin)
//!   is refused as not supported.
//! - A duplicate kind is a warning and the last one wins (keeping the first one's position).
//! - `wsgi` or `rwsgi` with `web`: `web` is dropped with a warning, as in piku.
//! - A line without `:`, an empty kind or command, or a Procfile without entries is an error.
//!   Parsing goes on past a bad line: every bad line is reported at once ([`Problems`]).
//! - A leading UTF-8 byte-order mark is ignored.
//!
//! Warnings are plain sentences without piku's `Warning: ` prefix; the caller adds its own.

use serde::{Deserialize, Serialize};

use crate::cron::{CronError, CronSchedule, split_cron_line};
use crate::kind::is_valid_kind;
use crate::problems::Problems;

/// What a Procfile entry is, which decides how (and whether) it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessClass {
    /// A Python WSGI (or, with `UWSGI_ASYNCIO`, ASGI) `module:callable`, run through the WSGI
    /// server the build installs (`PIKU_WSGI_SERVER`) as a web process.
    Wsgi,
    /// `rwsgi`: a Rack app's rackup file (`config.ru`), run through a Rack server as a web
    /// process.
    Rack,
    /// `php`: a docroot served by php-fpm behind the instance's own nginx, as a web process.
    Php,
    /// Any command that listens on `$PORT`.
    Web,
    /// A static-files path or `/url:path,…` mapping served by the front; no process.
    Static,
    /// A command run on a schedule.
    Cron(CronSchedule),
    /// Runs after the build, once per deploy; not a long-running process.
    Release,
    /// Runs before the build, once per deploy; not a long-running process.
    Preflight,
    /// A background process.
    Worker,
}

/// One Procfile line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcfileEntry {
    pub kind: String,
    /// For `Cron` entries: the text after the schedule, verbatim.
    pub command: String,
    pub class: ProcessClass,
    /// 1-based line number in the Procfile.
    pub line: usize,
}

/// A parsed Procfile: its entries in file order, and the warnings parsing produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Procfile {
    pub entries: Vec<ProcfileEntry>,
    pub warnings: Vec<String>,
}

/// What is wrong with one Procfile line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileProblem {
    #[error("expected 'kind: command', found '{}'", .0.escape_debug())]
    NoColon(String),
    #[error("empty process kind")]
    EmptyKind,
    #[error("invalid process kind '{}': kinds may contain only letters, digits, '_' and '-'", .0.escape_debug())]
    BadKind(String),
    #[error("process kind '{0}' has an empty command")]
    EmptyCommand(String),
    #[error(
        "process kind '{0}' is not supported yet; run it as a 'web:' command that listens on $PORT"
    )]
    Unsupported(String),
    #[error("{0}")]
    Cron(CronError),
}

/// One reason a Procfile was refused; [`parse_procfile`] returns all of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProcfileError {
    #[error("Procfile line {line}: {problem}")]
    Line {
        line: usize,
        problem: ProcfileProblem,
    },
    #[error("Procfile has no entries")]
    Empty,
}

/// Kinds piku ran through uWSGI plugins that we do not run.
const UNSUPPORTED_KINDS: [&str; 1] = ["jwsgi"];

fn classify(kind: &str, command: &str) -> Result<(ProcessClass, String), ProcfileProblem> {
    let class = match kind {
        "wsgi" => ProcessClass::Wsgi,
        "rwsgi" => ProcessClass::Rack,
        "php" => ProcessClass::Php,
        "web" => ProcessClass::Web,
        "static" => ProcessClass::Static,
        "release" => ProcessClass::Release,
        "preflight" => ProcessClass::Preflight,
        k if UNSUPPORTED_KINDS.contains(&k) => {
            return Err(ProcfileProblem::Unsupported(k.to_owned()));
        }
        k if k.starts_with("cron") => {
            let (schedule, command) = split_cron_line(command).map_err(ProcfileProblem::Cron)?;
            return Ok((ProcessClass::Cron(schedule), command));
        }
        _ => ProcessClass::Worker,
    };
    Ok((class, command.to_owned()))
}

/// Every problem of a Procfile, in line order.
pub type ProcfileErrors = Problems<ProcfileError>;

/// One line's entry, or what is wrong with it; `None` for blank and comment lines.
fn parse_line(raw: &str, line: usize) -> Option<Result<ProcfileEntry, ProcfileProblem>> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let Some((kind, command)) = trimmed.split_once(':') else {
        return Some(Err(ProcfileProblem::NoColon(trimmed.to_owned())));
    };
    let (kind, command) = (kind.trim(), command.trim());
    if kind.is_empty() {
        return Some(Err(ProcfileProblem::EmptyKind));
    }
    if !is_valid_kind(kind) {
        return Some(Err(ProcfileProblem::BadKind(kind.to_owned())));
    }
    if command.is_empty() {
        return Some(Err(ProcfileProblem::EmptyCommand(kind.to_owned())));
    }
    Some(
        classify(kind, command).map(|(class, command)| ProcfileEntry {
            kind: kind.to_owned(),
            command,
            class,
            line,
        }),
    )
}

/// Parses Procfile `text` (see the module docs for the rules); an error lists every bad line.
pub fn parse_procfile(text: &str) -> Result<Procfile, ProcfileErrors> {
    let mut procfile = Procfile::default();
    let mut problems = Vec::new();
    // Editors on Windows may save a byte-order mark; it is not part of the first kind name.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let entry = match parse_line(raw, line) {
            None => continue,
            Some(Ok(entry)) => entry,
            Some(Err(problem)) => {
                problems.push(ProcfileError::Line { line, problem });
                continue;
            }
        };
        match procfile.entries.iter_mut().find(|e| e.kind == entry.kind) {
            Some(earlier) => {
                procfile.warnings.push(format!(
                    "found multiple {} workers, only the last one will be used.",
                    entry.kind
                ));
                *earlier = entry;
            }
            None => procfile.entries.push(entry),
        }
    }
    for server in ["wsgi", "rwsgi"] {
        if procfile.get(server).is_some() && procfile.get("web").is_some() {
            procfile.entries.retain(|e| e.kind != "web");
            procfile.warnings.push(format!(
                "found both '{server}' and 'web' workers, disabling 'web'"
            ));
        }
    }
    if procfile.entries.is_empty() && problems.is_empty() {
        problems.push(ProcfileError::Empty);
    }
    Problems::check(procfile, problems)
}

impl Procfile {
    /// The entry of kind `kind`, if any.
    pub fn get(&self, kind: &str) -> Option<&ProcfileEntry> {
        self.entries.iter().find(|e| e.kind == kind)
    }

    /// The entries that run as supervised processes: wsgi, web, cron and workers.
    pub fn workers(&self) -> impl Iterator<Item = &ProcfileEntry> {
        self.entries.iter().filter(|e| e.class.is_process())
    }
}

impl ProcessClass {
    /// True for classes that become supervised processes (not static, release or preflight).
    pub fn is_process(&self) -> bool {
        match self {
            ProcessClass::Wsgi
            | ProcessClass::Rack
            | ProcessClass::Php
            | ProcessClass::Web
            | ProcessClass::Cron(_)
            | ProcessClass::Worker => true,
            ProcessClass::Static | ProcessClass::Release | ProcessClass::Preflight => false,
        }
    }

    /// True for classes that serve HTTP on `$PORT` (wsgi, rwsgi, php and web).
    pub fn is_web(&self) -> bool {
        matches!(
            self,
            ProcessClass::Wsgi | ProcessClass::Rack | ProcessClass::Php | ProcessClass::Web
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        parse_procfile(text).unwrap_err().to_string()
    }

    #[test]
    fn classifies_every_kind() {
        let p = parse_procfile(
            "# a comment\n\
             \n\
             web: ./server --port $PORT\n\
             static: public\n\
             worker: python worker.py\n\
             clock: ./clock\n\
             cron1: */5 * * * * ./tick.sh\n\
             release: ./migrate\n\
             preflight: ./check\n",
        )
        .unwrap();
        let classes: Vec<(&str, &ProcessClass, usize)> = p
            .entries
            .iter()
            .map(|e| (e.kind.as_str(), &e.class, e.line))
            .collect();
        let cron = CronSchedule::parse("*/5 * * * *").unwrap();
        assert_eq!(
            classes,
            [
                ("web", &ProcessClass::Web, 3),
                ("static", &ProcessClass::Static, 4),
                ("worker", &ProcessClass::Worker, 5),
                ("clock", &ProcessClass::Worker, 6),
                ("cron1", &ProcessClass::Cron(cron), 7),
                ("release", &ProcessClass::Release, 8),
                ("preflight", &ProcessClass::Preflight, 9),
            ]
        );
        assert_eq!(p.get("web").unwrap().command, "./server --port $PORT");
        assert_eq!(p.get("cron1").unwrap().command, "./tick.sh");
        assert!(p.warnings.is_empty());
        let workers: Vec<&str> = p.workers().map(|e| e.kind.as_str()).collect();
        assert_eq!(workers, ["web", "worker", "clock", "cron1"]);
    }

    #[test]
    fn splits_on_the_first_colon_and_trims() {
        let p = parse_procfile("  wsgi :  app:application  \r\n").unwrap();
        let e = p.get("wsgi").unwrap();
        assert_eq!(e.command, "app:application");
        assert_eq!(e.class, ProcessClass::Wsgi);
        assert!(p.workers().any(|e| e.kind == "wsgi"));
    }

    #[test]
    fn cron_commands_are_kept_verbatim() {
        let p = parse_procfile("cron: 0 3 * * * rm /tmp/*.log && echo '*/5'").unwrap();
        let e = p.get("cron").unwrap();
        assert_eq!(e.command, "rm /tmp/*.log && echo '*/5'");
        match &e.class {
            ProcessClass::Cron(s) => assert_eq!(s.as_str(), "0 3 * * *"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cron_errors_carry_the_line_number() {
        assert_eq!(
            err("web: x\ncron: 0 24 * * * ./job"),
            "Procfile line 2: invalid cron hour field '24': 24 is out of range 0-23"
        );
        assert!(err("cronjob: * * * * *").starts_with("Procfile line 1: cron line"));
        assert!(err("cron2: @reboot ./x").contains("'@reboot' is not supported"));
    }

    #[test]
    fn duplicate_kinds_warn_and_the_last_wins() {
        let p = parse_procfile("worker: one\nweb: w\nworker: two\n").unwrap();
        assert_eq!(
            p.warnings,
            ["found multiple worker workers, only the last one will be used."]
        );
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.entries[0].kind, "worker");
        assert_eq!(p.entries[0].command, "two");
        assert_eq!(p.entries[0].line, 3);
    }

    #[test]
    fn wsgi_disables_web() {
        let p = parse_procfile("web: ./server\nwsgi: app:app\nworker: w").unwrap();
        assert!(p.get("web").is_none());
        assert!(p.get("wsgi").is_some());
        assert_eq!(
            p.warnings,
            ["found both 'wsgi' and 'web' workers, disabling 'web'"]
        );
    }

    #[test]
    fn rwsgi_is_a_rack_app_and_disables_web() {
        let p = parse_procfile("web: ./server\nrwsgi: config.ru\n").unwrap();
        assert!(p.get("web").is_none());
        assert_eq!(p.get("rwsgi").unwrap().class, ProcessClass::Rack);
        assert!(p.get("rwsgi").unwrap().class.is_web());
        assert_eq!(
            p.warnings,
            ["found both 'rwsgi' and 'web' workers, disabling 'web'"]
        );
    }

    #[test]
    fn unsupported_kinds_are_named() {
        assert_eq!(
            err("web: x\njwsgi: something"),
            "Procfile line 2: process kind 'jwsgi' is not supported yet; run it as a 'web:' command that listens on $PORT"
        );
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        assert_eq!(
            err("web: x\n\njust a command"),
            "Procfile line 3: expected 'kind: command', found 'just a command'"
        );
        assert_eq!(
            err("web:   "),
            "Procfile line 1: process kind 'web' has an empty command"
        );
        assert_eq!(err(": cmd"), "Procfile line 1: empty process kind");
        assert_eq!(
            err("my worker: cmd"),
            "Procfile line 1: invalid process kind 'my worker': kinds may contain only letters, digits, '_' and '-'"
        );
        assert!(err("../etc: cmd").contains("invalid process kind '../etc'"));
        assert!(err("wörker: cmd").contains("invalid process kind"));
    }

    #[test]
    fn every_bad_line_is_reported_at_once_in_line_order() {
        let errors =
            parse_procfile("web: ./serve\nno colon here\n: x\ncron1: 61 * * * * ./t\nworker:\n")
                .unwrap_err();
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "Procfile line 2: expected 'kind: command', found 'no colon here'",
                "Procfile line 3: empty process kind",
                "Procfile line 4: invalid cron minute field '61': 61 is out of range 0-59",
                "Procfile line 5: process kind 'worker' has an empty command",
            ]
        );
        assert_eq!(errors.to_string(), lines.join("; "));
        // Only bad lines: they are the problem, not the missing entries.
        assert_eq!(
            err("nope\n"),
            "Procfile line 1: expected 'kind: command', found 'nope'"
        );
    }

    #[test]
    fn empty_procfiles_are_errors() {
        assert_eq!(err(""), "Procfile has no entries");
        assert_eq!(err("# only\n\n   # comments\n"), "Procfile has no entries");
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let p = parse_procfile("\u{feff}web: ./x").unwrap();
        assert_eq!(p.get("web").unwrap().class, ProcessClass::Web);
    }

    #[test]
    fn kind_names_are_case_sensitive() {
        let p = parse_procfile("WEB: ./x").unwrap();
        assert_eq!(p.get("WEB").unwrap().class, ProcessClass::Worker);
    }

    #[test]
    fn release_and_preflight_alone_are_entries_but_not_workers() {
        let p = parse_procfile("release: ./migrate\npreflight: ./check").unwrap();
        assert_eq!(p.entries.len(), 2);
        assert_eq!(p.workers().count(), 0);
        assert!(p.get("static").is_none());
    }

    #[test]
    fn serde_round_trip() {
        let p = parse_procfile("web: x\ncron: */5 * * * * y").unwrap();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Procfile>(&json).unwrap(), p);
    }
}
