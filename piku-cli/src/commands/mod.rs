//! Every `piku <command>`: the dispatch table, and the argument helpers the commands share.
//!
//! Commands take piku's argument order, `<command> <app> [args…]`. Each one is a plain
//! function `fn(&Ctx, &[String]) -> anyhow::Result<i32>` returning the exit status; errors
//! become one `Error: …` line in `main`. The help text is generated from [`COMMANDS`], so a
//! command cannot exist without being listed (and internal ones are marked `INTERNAL`, which
//! piku's client script filters out).

mod apps;
mod args;
mod config;
mod destroy;
mod git;
mod help;
mod logs;
mod processes;
mod releases;
mod run;
mod setup;

use anyhow::bail;
use piku_model::PikuRoot;

/// What every command gets: where the piku installation lives, and the ssh command as sshd
/// passed it (`SSH_ORIGINAL_COMMAND`), if it came over ssh.
pub struct Ctx {
    pub root: PikuRoot,
    pub ssh_command: Option<String>,
}

/// One entry of the dispatch table.
pub struct Command {
    pub name: &'static str,
    /// The arguments after the command name, for usage errors and `help`.
    pub usage: &'static str,
    /// One line for `help`; starts with `INTERNAL:` for the git plumbing.
    pub summary: &'static str,
    pub run: fn(&Ctx, &[String]) -> anyhow::Result<i32>,
}

impl Command {
    /// `piku config:set <app> KEY=VALUE…`
    pub fn usage_line(&self) -> String {
        format!("piku {} {}", self.name, self.usage)
            .trim_end()
            .to_owned()
    }
}

/// Every command, sorted by name as `help` lists them.
pub const COMMANDS: &[Command] = &[
    Command {
        name: "acme:renew",
        usage: "<app>",
        summary: "INTERNAL: Renew the app's ACME certificate when due (run daily by the supervisor)",
        run: releases::acme_renew,
    },
    Command {
        name: "apps",
        usage: "[--json]",
        summary: "List apps, e.g.: piku apps",
        run: apps::apps,
    },
    Command {
        name: "config",
        usage: "<app>",
        summary: "Show config, e.g.: piku config <app>",
        run: config::show,
    },
    Command {
        name: "config:get",
        usage: "<app> KEY",
        summary: "e.g.: piku config:get <app> FOO",
        run: config::get,
    },
    Command {
        name: "config:live",
        usage: "<app>",
        summary: "e.g.: piku config:live <app>",
        run: config::live,
    },
    Command {
        name: "config:set",
        usage: "<app> KEY=VALUE…",
        summary: "e.g.: piku config:set <app> FOO=bar BAZ=quux",
        run: config::set,
    },
    Command {
        name: "config:unset",
        usage: "<app> KEY…",
        summary: "e.g.: piku config:unset <app> FOO",
        run: config::unset,
    },
    Command {
        name: "deploy",
        usage: "<app>",
        summary: "e.g.: piku deploy <app>",
        run: releases::deploy,
    },
    Command {
        name: "destroy",
        usage: "<app>",
        summary: "e.g.: piku destroy <app>",
        run: destroy::destroy,
    },
    Command {
        name: "git-hook",
        usage: "<app>",
        summary: "INTERNAL: Post-receive git hook",
        run: git::hook,
    },
    Command {
        name: "git-receive-pack",
        usage: "<app>",
        summary: "INTERNAL: Handle git pushes for an app",
        run: git::receive_pack,
    },
    Command {
        name: "git-upload-pack",
        usage: "<app>",
        summary: "INTERNAL: Handle git upload pack for an app",
        run: git::upload_pack,
    },
    Command {
        name: "help",
        usage: "",
        summary: "display help for piku",
        run: help::help,
    },
    Command {
        name: "logs",
        usage: "<app> [<process>] [-n LINES] [--no-follow]",
        summary: "Tail running logs, e.g: piku logs <app> [<process>]",
        run: logs::logs,
    },
    Command {
        name: "ps",
        usage: "<app> [--json]",
        summary: "Show processes, e.g: piku ps <app>",
        run: processes::ps,
    },
    Command {
        name: "ps:scale",
        usage: "<app> <proc>=<count>…",
        summary: "e.g.: piku ps:scale <app> <proc>=<count>",
        run: processes::scale,
    },
    Command {
        name: "releases",
        usage: "<app> [--json]",
        summary: "List releases, e.g.: piku releases <app>",
        run: releases::releases,
    },
    Command {
        name: "restart",
        usage: "<app> [<process>]",
        summary: "Restart an app: piku restart <app> [<process>]",
        run: processes::restart,
    },
    Command {
        name: "rollback",
        usage: "<app> [<release>]",
        summary: "Go back to a release, e.g.: piku rollback <app> [<release>]",
        run: releases::rollback,
    },
    Command {
        name: "run",
        usage: "<app> <command> [args…]",
        summary: "e.g.: piku run <app> ls -al",
        run: run::run,
    },
    Command {
        name: "setup",
        usage: "",
        summary: "Initialize environment",
        run: setup::setup,
    },
    Command {
        name: "setup:ssh",
        usage: "<public-key-file|->",
        summary: "Set up a new SSH key (use - for stdin)",
        run: setup::setup_ssh,
    },
    Command {
        name: "start",
        usage: "<app>",
        summary: "Start a stopped app, e.g: piku start <app>",
        run: processes::start,
    },
    Command {
        name: "stop",
        usage: "<app>",
        summary: "Stop an app, e.g: piku stop <app>",
        run: processes::stop,
    },
];

/// piku commands we deliberately do not provide, with what to do instead.
const RETIRED: &[(&str, &str)] = &[
    (
        "update",
        "'update' is not supported: piku is a compiled binary; install the new release and restart piku-supervisor",
    ),
    (
        "scp",
        "'scp' is not supported: use the client's `piku download REMOTE-FILE [LOCAL-PATH]`",
    ),
];

/// Runs the command named by the first word; returns its exit status.
pub fn dispatch(words: Vec<String>, ssh_command: Option<String>) -> anyhow::Result<i32> {
    let Some((name, rest)) = words.split_first() else {
        help::print();
        return Ok(0);
    };
    // Help needs no PIKU_ROOT: it must work on a half-configured account.
    if matches!(name.as_str(), "--help" | "-h" | "help") {
        help::print();
        return Ok(0);
    }
    let Some(command) = COMMANDS.iter().find(|c| c.name == name) else {
        if let Some((_, why)) = RETIRED.iter().find(|(retired, _)| retired == name) {
            bail!("{why}");
        }
        bail!(
            "unknown command '{}'; run 'piku help' for the list",
            name.escape_debug()
        );
    };
    if matches!(rest.first().map(String::as_str), Some("--help" | "-h")) {
        output_usage(command);
        return Ok(0);
    }
    let ctx = Ctx {
        root: PikuRoot::from_env()?,
        ssh_command,
    };
    (command.run)(&ctx, rest)
}

fn output_usage(command: &Command) {
    crate::output::say(format_args!("Usage: {}", command.usage_line()));
    crate::output::say(format_args!("  {}", command.summary));
}
