//! `SCALING` files (`kind:count` lines in `envs/<app>/SCALING`) and `ps:scale` arguments.
//!
//! The file uses the Procfile line rules (blank and `#` lines skipped, split on the first `:`,
//! both sides trimmed); counts are whole numbers; every bad line is reported at once. `ps:scale`
//! arguments are `kind=count`, as in
//! piku, which refused the whole command on the first bad one; so do we, with the reason.

use std::collections::BTreeMap;

use crate::kind::is_valid_kind;
use crate::problems::Problems;

/// Why a SCALING file or a `ps:scale` argument was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScalingError {
    #[error("SCALING line {line}: expected 'kind:count', found '{}'", .text.escape_debug())]
    NoColon { line: usize, text: String },
    #[error("SCALING line {line}: invalid process kind '{}'", .kind.escape_debug())]
    BadKindLine { line: usize, kind: String },
    #[error("SCALING line {line}: count '{}' for '{kind}' is not a whole number", .count.escape_debug())]
    BadCountLine {
        line: usize,
        kind: String,
        count: String,
    },
    #[error("malformed setting '{}'", .0.escape_debug())]
    MalformedArg(String),
    #[error("invalid process kind '{}' in '{}': kinds may contain only letters, digits, '_' and '-'", .kind.escape_debug(), .arg.escape_debug())]
    BadKindArg { arg: String, kind: String },
    #[error("cannot scale type '{kind}' below 0")]
    Negative { kind: String },
    #[error("malformed setting '{}': count must be a whole number", .0.escape_debug())]
    BadCountArg(String),
}

/// Every problem of a SCALING file, in line order.
pub type ScalingErrors = Problems<ScalingError>;

/// Parses a SCALING file. A kind listed twice keeps its last count.
pub fn parse_scaling(text: &str) -> Result<BTreeMap<String, u32>, ScalingErrors> {
    let mut counts = BTreeMap::new();
    let mut problems = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        match parse_scaling_line(raw, index + 1) {
            None => {}
            Some(Ok((kind, count))) => {
                counts.insert(kind.to_owned(), count);
            }
            Some(Err(problem)) => problems.push(problem),
        }
    }
    Problems::check(counts, problems)
}

/// One line's `(kind, count)`, or what is wrong with it; `None` for blank and comment lines.
fn parse_scaling_line(raw: &str, line: usize) -> Option<Result<(&str, u32), ScalingError>> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let Some((kind, count)) = trimmed.split_once(':') else {
        return Some(Err(ScalingError::NoColon {
            line,
            text: trimmed.to_owned(),
        }));
    };
    let (kind, count) = (kind.trim(), count.trim());
    if !is_valid_kind(kind) {
        return Some(Err(ScalingError::BadKindLine {
            line,
            kind: kind.to_owned(),
        }));
    }
    Some(
        count
            .parse()
            .map(|count| (kind, count))
            .map_err(|_| ScalingError::BadCountLine {
                line,
                kind: kind.to_owned(),
                count: count.to_owned(),
            }),
    )
}

/// Renders counts as `kind:count\n` lines, sorted by kind.
pub fn render_scaling(counts: &BTreeMap<String, u32>) -> String {
    counts
        .iter()
        .map(|(kind, count)| format!("{kind}:{count}\n"))
        .collect()
}

/// Parses `ps:scale` arguments such as `["web=3", "worker=0"]`.
pub fn parse_scale_args(args: &[String]) -> Result<BTreeMap<String, u32>, ScalingError> {
    let mut counts = BTreeMap::new();
    for arg in args {
        let Some((kind, count)) = arg.split_once('=') else {
            return Err(ScalingError::MalformedArg(arg.clone()));
        };
        let (kind, count) = (kind.trim(), count.trim());
        if !is_valid_kind(kind) {
            return Err(ScalingError::BadKindArg {
                arg: arg.clone(),
                kind: kind.to_owned(),
            });
        }
        // A negative number gets piku's message; anything else unparsable is malformed.
        if count
            .strip_prefix('-')
            .is_some_and(|n| n.parse::<u64>().is_ok())
        {
            return Err(ScalingError::Negative {
                kind: kind.to_owned(),
            });
        }
        let count: u32 = count
            .parse()
            .map_err(|_| ScalingError::BadCountArg(arg.clone()))?;
        counts.insert(kind.to_owned(), count);
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn counts(pairs: &[(&str, u32)]) -> BTreeMap<String, u32> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn parses_and_renders() {
        let parsed = parse_scaling("# c\n\nweb : 2\nworker:0\ncron1: 1\nweb:3\n").unwrap();
        assert_eq!(parsed, counts(&[("web", 3), ("worker", 0), ("cron1", 1)]));
        let text = render_scaling(&parsed);
        assert_eq!(text, "cron1:1\nweb:3\nworker:0\n");
        assert_eq!(parse_scaling(&text).unwrap(), parsed);
        assert!(parse_scaling("").unwrap().is_empty());
    }

    #[test]
    fn file_errors_have_line_numbers() {
        assert_eq!(
            parse_scaling("web:1\nworker 2").unwrap_err().to_string(),
            "SCALING line 2: expected 'kind:count', found 'worker 2'"
        );
        assert_eq!(
            parse_scaling("web:two").unwrap_err().to_string(),
            "SCALING line 1: count 'two' for 'web' is not a whole number"
        );
        assert_eq!(
            parse_scaling("\nweb:-1").unwrap_err().to_string(),
            "SCALING line 2: count '-1' for 'web' is not a whole number"
        );
        assert!(parse_scaling("web:99999999999").is_err());
        assert_eq!(
            parse_scaling("a/b:1").unwrap_err().to_string(),
            "SCALING line 1: invalid process kind 'a/b'"
        );
        assert!(parse_scaling(":1").is_err());
        assert_eq!(
            parse_scaling("web:x\nok:1\nworker 2\n")
                .unwrap_err()
                .to_string(),
            "SCALING line 1: count 'x' for 'web' is not a whole number; \
             SCALING line 3: expected 'kind:count', found 'worker 2'"
        );
    }

    #[test]
    fn scale_args() {
        assert_eq!(
            parse_scale_args(&args(&["web=3", "worker = 0"])).unwrap(),
            counts(&[("web", 3), ("worker", 0)])
        );
        assert!(parse_scale_args(&[]).unwrap().is_empty());
    }

    #[test]
    fn scale_arg_errors() {
        let e = |list: &[&str]| parse_scale_args(&args(list)).unwrap_err().to_string();
        assert_eq!(e(&["x"]), "malformed setting 'x'");
        assert_eq!(e(&["web:3"]), "malformed setting 'web:3'");
        assert_eq!(e(&["web=-1"]), "cannot scale type 'web' below 0");
        assert_eq!(
            e(&["web=abc"]),
            "malformed setting 'web=abc': count must be a whole number"
        );
        assert_eq!(
            e(&["web="]),
            "malformed setting 'web=': count must be a whole number"
        );
        assert_eq!(
            e(&["web=1.5"]),
            "malformed setting 'web=1.5': count must be a whole number"
        );
        assert_eq!(
            e(&["../x=1"]),
            "invalid process kind '../x' in '../x=1': kinds may contain only letters, digits, '_' and '-'"
        );
        assert!(e(&["=1"]).contains("invalid process kind ''"));
        // The first bad argument refuses the whole command.
        assert_eq!(e(&["web=1", "bad"]), "malformed setting 'bad'");
    }
}
