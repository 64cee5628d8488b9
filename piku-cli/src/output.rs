//! What the user sees: piku's `-----> ` step lines, one-line errors, aligned tables and
//! human-readable sizes and durations.
//!
//! Output goes to an ssh channel or a `git push` "remote:" stream. A client that went away
//! must not turn into a panic (as `println!` does on `EPIPE`), so the printers here ignore
//! write errors; the one command that must notice a vanished reader (`logs`) writes itself.

use std::fmt::Display;
use std::io::{self, Write};

use piku_deploy::DeployError;

/// Prints `-----> {msg}` to stdout (piku style) and flushes, so progress shows up at once
/// even through `git push`.
pub fn step(msg: impl Display) {
    say(format_args!("-----> {msg}"));
}

/// Prints one line to stdout and flushes; a vanished reader is ignored.
pub fn say(msg: impl Display) {
    let mut out = io::stdout().lock();
    // A vanished client must not abort a deploy half-way: the build log keeps the record.
    let _ = writeln!(out, "{msg}");
    let _ = out.flush();
}

/// Prints `text` as is (adding a final newline if it lacks one) to stdout.
pub fn print_text(text: &str) {
    if text.is_empty() {
        return;
    }
    let mut out = io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Prints a one-line `Warning: …` to stderr.
pub fn warn(msg: impl Display) {
    let _ = writeln!(
        io::stderr().lock(),
        "Warning: {}",
        one_line(&msg.to_string())
    );
}

/// Prints `Error: …` to stderr: the whole context chain joined by `: ` on one line, or one
/// such line per problem when a file or the app's settings had several.
pub fn error(err: &anyhow::Error) {
    let mut stderr = io::stderr().lock();
    for line in error_lines(err) {
        let _ = writeln!(stderr, "Error: {}", one_line(&line));
    }
}

/// The lines [`error`] prints: one per problem of a [`DeployError`] in the chain, each after
/// the contexts above it.
fn error_lines(err: &anyhow::Error) -> Vec<String> {
    let mut contexts = String::new();
    for cause in err.chain() {
        if let Some(deploy) = cause.downcast_ref::<DeployError>() {
            return deploy
                .lines()
                .into_iter()
                .map(|line| format!("{contexts}{line}"))
                .collect();
        }
        contexts.push_str(&format!("{cause}: "));
    }
    vec![format!("{err:#}")]
}

/// Prints `value` as pretty JSON on stdout (the `--json` outputs).
pub fn json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    print_text(&text);
    Ok(())
}

/// Collapses line breaks so an error stays on one line whatever a lower layer put in it.
fn one_line(text: &str) -> String {
    text.trim_end()
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A left-aligned text table: a header row and data rows, columns two spaces apart.
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one `\n`-terminated line per row, without trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `512B`, `12.3K`, `21.0M`, `1.5G` (powers of 1024, like `ps`/`top` users expect).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `45s`, `3m12s`, `2h05m`, `4d03h`: two units at most, enough to read at a glance.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// CPU seconds: `0.42s` under a minute, else as a duration.
pub fn human_cpu(secs: f64) -> String {
    if secs < 60.0 {
        format!("{secs:.2}s")
    } else {
        human_duration(secs as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_trims() {
        let mut t = Table::new(&["process", "state", "pid"]);
        t.row(vec!["web.1".into(), "running".into(), "42".into()]);
        t.row(vec!["worker.10".into(), "backoff".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "process    state    pid\nweb.1      running  42\nworker.10  backoff  -\n"
        );
    }

    #[test]
    fn sizes_and_durations_read_well() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(1536), "1.5K");
        assert_eq!(human_bytes(21 * 1024 * 1024), "21.0M");
        assert_eq!(human_duration(45), "45s");
        assert_eq!(human_duration(192), "3m12s");
        assert_eq!(human_duration(7_500), "2h05m");
        assert_eq!(human_duration(4 * 86_400 + 3 * 3_600), "4d03h");
        assert_eq!(human_cpu(0.421), "0.42s");
        assert_eq!(human_cpu(61.0), "1m01s");
    }

    #[test]
    fn errors_collapse_to_one_line() {
        assert_eq!(one_line("a\nb\r\n  c\n"), "a b c");
    }

    #[test]
    fn a_file_with_several_problems_gives_one_error_line_each() {
        use anyhow::Context as _;
        let problems = piku_model::parse_procfile("web: x\nnope\n: y\n").unwrap_err();
        let err = Err::<(), _>(DeployError::from(problems))
            .context("the config is saved but the running app was not updated")
            .unwrap_err();
        assert_eq!(
            error_lines(&err),
            [
                "the config is saved but the running app was not updated: Procfile line 2: expected 'kind: command', found 'nope'",
                "the config is saved but the running app was not updated: Procfile line 3: empty process kind",
            ]
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_lines(&plain), ["outer: inner"]);
    }
}
