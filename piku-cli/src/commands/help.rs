//! `piku help`: piku's command list, generated from the dispatch table.
//!
//! The layout follows piku's click output (two-space indent, names in an 18-column field) so
//! piku's client, which appends its local commands in that layout and drops every line
//! containing `INTERNAL`, shows one consistent list.

use super::{COMMANDS, Ctx};
use crate::output;

pub fn help(_ctx: &Ctx, _words: &[String]) -> anyhow::Result<i32> {
    print();
    Ok(0)
}

/// Prints the help text.
pub fn print() {
    output::print_text(&text());
}

fn text() -> String {
    let mut text = String::from(
        "Usage: piku COMMAND [ARGS]...\n\n\
         Options:\n  --help  Show this message and exit.\n\n\
         Commands:\n",
    );
    for command in COMMANDS {
        text.push_str(&format!("  {:<18}{}\n", command.name, command.summary));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_listed_once_and_internal_ones_are_marked() {
        let text = text();
        for command in COMMANDS {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.split_whitespace().next() == Some(command.name))
                .collect();
            assert_eq!(lines.len(), 1, "{}", command.name);
            assert_eq!(
                lines[0].contains("INTERNAL"),
                command.name.starts_with("git-") || command.name == "acme:renew",
                "{}",
                lines[0]
            );
        }
        assert!(
            text.contains("  config:set        e.g.: piku config:set <app> FOO=bar BAZ=quux\n")
        );
    }

    #[test]
    fn commands_are_sorted() {
        let names: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}
