//! piku-compatible `ENV` files: `KEY=value` lines, read with `$VAR` / `${VAR}` expansion
//! ([`parse_env`], the app's own `ENV` and the `config:set` overrides as a deploy merges them)
//! or literally ([`parse_env_literal`], files that hold final values: `LIVE_ENV`, and the
//! overrides file when `config:set` rewrites it).
//!
//! Rules (piku's `parse_settings`, minus its silent failure):
//! - Blank lines and lines whose first non-space character is `#` are skipped.
//! - Each line is split on the first `=`; key and value are trimmed.
//! - Quotes are **not** removed: `A="x"` sets `A` to `"x"` with the quotes, as in piku.
//! - [`parse_env`] expands `$VAR` and `${VAR}` (`VAR` = word characters) in the value against
//!   the map as it is being built, which starts as the caller's map; unknown variables stay
//!   literally. There is no escape for `$` and the process environment is never read.
//! - A line without `=` is an error (piku printed one and silently discarded the whole file).
//! - Keys must match `[A-Za-z_][A-Za-z0-9_]*`; anything else is an error naming the key.
//! - Parsing goes on past a bad line: every bad line is reported at once ([`Problems`]).
//! - A leading UTF-8 byte-order mark is ignored.
//!
//! [`render_env`] writes `K=V` lines sorted by key, as piku's `write_config` did (comments are
//! not preserved). Values are written as they are: a value holding a newline cannot round-trip.
//! A value holding `$NAME` is only kept as written by [`parse_env_literal`]; [`parse_env`] would
//! expand it again, which is why a file of final values must never be read with it.

use crate::EnvMap;
use crate::problems::Problems;

/// One reason an ENV file was refused; the parsers return all of them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("ENV line {line}: malformed setting '{}'", .text.escape_debug())]
    Malformed { line: usize, text: String },
    #[error("ENV line {line}: {problem}")]
    BadKey { line: usize, problem: EnvKeyError },
}

/// A key that cannot be an environment variable name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid key '{}': keys must match [A-Za-z_][A-Za-z0-9_]*{hint}", .key.escape_debug())]
pub struct EnvKeyError {
    pub key: String,
    hint: &'static str,
}

/// Checks that `key` is a usable variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn check_env_key(key: &str) -> Result<(), EnvKeyError> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Ok(());
    }
    let hint = if key.starts_with("export ") || key.starts_with("export\t") {
        " (remove 'export')"
    } else {
        ""
    };
    Err(EnvKeyError {
        key: key.to_owned(),
        hint,
    })
}

/// Every problem of an ENV file, in line order.
pub type EnvErrors = Problems<EnvError>;

/// The `(key, value)` settings of `text` in file order (values trimmed, not expanded), or
/// every line that is not one.
fn settings(text: &str) -> Result<Vec<(&str, &str)>, EnvErrors> {
    let mut settings = Vec::new();
    let mut problems = Vec::new();
    // Editors on Windows may save a byte-order mark; it is not part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            problems.push(EnvError::Malformed {
                line: line_no,
                text: line.to_owned(),
            });
            continue;
        };
        let key = key.trim();
        match check_env_key(key) {
            Ok(()) => settings.push((key, value.trim())),
            Err(problem) => problems.push(EnvError::BadKey {
                line: line_no,
                problem,
            }),
        }
    }
    Problems::check(settings, problems)
}

/// Parses ENV `text` into `env`, expanding values against `env` as it grows. Returns the keys
/// the file set, in the order they first appear. An error lists every bad line and leaves `env`
/// as it was.
pub fn parse_env(text: &str, env: &mut EnvMap) -> Result<Vec<String>, EnvErrors> {
    let mut keys_set: Vec<String> = Vec::new();
    for (key, value) in settings(text)? {
        let value = expand_vars(value, env);
        env.insert(key.to_owned(), value);
        if !keys_set.iter().any(|k| k == key) {
            keys_set.push(key.to_owned());
        }
    }
    Ok(keys_set)
}

/// Parses ENV `text` keeping every value exactly as written (no `$VAR` expansion): for files
/// that hold final values, such as `LIVE_ENV`. A key set twice keeps its last value.
pub fn parse_env_literal(text: &str) -> Result<EnvMap, EnvErrors> {
    Ok(settings(text)?
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect())
}

/// Replaces `$NAME` and `${NAME}` in `text` with their values in `env`, like piku's
/// `expandvars` (regex `\$(\w+|\{([^}]*)\})`). Unknown names, `$` followed by neither a word
/// character nor a closed brace, and `${}` are left as written.
pub fn expand_vars(text: &str, env: &EnvMap) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(close) => (&inner[..close], close + 2),
                None => ("", 0),
            }
        } else {
            let end = after.find(|c: char| !is_word(c)).unwrap_or(after.len());
            (&after[..end], end)
        };
        let whole = &rest[dollar..dollar + 1 + consumed];
        match env.get(name) {
            Some(value) if !name.is_empty() => out.push_str(value),
            _ => out.push_str(whole),
        }
        rest = &rest[dollar + 1 + consumed..];
    }
    out.push_str(rest);
    out
}

/// Renders `env` as `K=V\n` lines, sorted by key.
pub fn render_env(env: &EnvMap) -> String {
    let mut out = String::new();
    for (key, value) in env {
        out.push_str(key);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> EnvMap {
        let mut env = EnvMap::new();
        parse_env(text, &mut env).unwrap();
        env
    }

    fn map(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn basic_lines_comments_and_blanks() {
        let env = parse("# comment\n\n  A = 1 \n   # indented comment\nB=two words\r\nC=\n");
        assert_eq!(env, map(&[("A", "1"), ("B", "two words"), ("C", "")]));
    }

    #[test]
    fn splits_on_the_first_equals_and_keeps_quotes() {
        let env = parse("URL=postgres://u:p@h/db?x=1\nQ=\"quoted\"\nS='single'");
        assert_eq!(env["URL"], "postgres://u:p@h/db?x=1");
        assert_eq!(env["Q"], "\"quoted\"");
        assert_eq!(env["S"], "'single'");
    }

    #[test]
    fn expands_against_the_map_as_it_grows() {
        let mut env = map(&[("HOME", "/home/piku")]);
        let keys = parse_env(
            "DATA=$HOME/data\nLOGS=${DATA}/logs\nNEXT=$LATER\nLATER=x\nMIX=$HOME-${HOME}_$HOME_x",
            &mut env,
        )
        .unwrap();
        assert_eq!(keys, ["DATA", "LOGS", "NEXT", "LATER", "MIX"]);
        assert_eq!(env["DATA"], "/home/piku/data");
        assert_eq!(env["LOGS"], "/home/piku/data/logs");
        // Defined later: left literally, as in piku.
        assert_eq!(env["NEXT"], "$LATER");
        // `$HOME_x` is one (unknown) word.
        assert_eq!(env["MIX"], "/home/piku-/home/piku_$HOME_x");
    }

    #[test]
    fn expansion_edge_cases() {
        let env = map(&[("A", "1"), ("{}", "brace")]);
        assert_eq!(expand_vars("$", &env), "$");
        assert_eq!(expand_vars("cost $5 and $", &env), "cost $5 and $");
        assert_eq!(expand_vars("${A", &env), "${A");
        assert_eq!(expand_vars("${}", &env), "${}");
        assert_eq!(expand_vars("$$A", &env), "$1");
        assert_eq!(expand_vars("${A}${A}$A.", &env), "111.");
        assert_eq!(expand_vars("$-A", &env), "$-A");
        assert_eq!(expand_vars("${UNKNOWN}", &env), "${UNKNOWN}");
        assert_eq!(expand_vars("héllo $A é", &env), "héllo 1 é");
    }

    #[test]
    fn later_lines_override_earlier_ones() {
        let mut env = map(&[("A", "seed")]);
        let keys = parse_env("A=1\nB=$A\nA=2", &mut env).unwrap();
        assert_eq!(keys, ["A", "B"]);
        assert_eq!(env, map(&[("A", "2"), ("B", "1")]));
    }

    #[test]
    fn a_line_without_equals_is_an_error_with_its_number() {
        let mut env = EnvMap::new();
        let err = parse_env("A=1\n\n  just words  \nB=2", &mut env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ENV line 3: malformed setting 'just words'"
        );
    }

    #[test]
    fn bad_keys_are_errors_naming_the_key() {
        let mut env = EnvMap::new();
        let err = parse_env("export FOO=1", &mut env).unwrap_err();
        assert_eq!(
            err.to_string(),
            "ENV line 1: invalid key 'export FOO': keys must match [A-Za-z_][A-Za-z0-9_]* (remove 'export')"
        );
        for (text, key) in [
            ("=x", ""),
            ("1A=x", "1A"),
            ("A-B=x", "A-B"),
            ("A.B=x", "A.B"),
            ("É=x", "É"),
        ] {
            let err = parse_env(text, &mut env).unwrap_err().to_string();
            assert_eq!(
                err,
                format!("ENV line 1: invalid key '{key}': keys must match [A-Za-z_][A-Za-z0-9_]*")
            );
        }
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        assert_eq!(parse("\u{feff}A=1\n"), map(&[("A", "1")]));
        assert_eq!(
            parse_env_literal("\u{feff}A=1\n").unwrap(),
            map(&[("A", "1")])
        );
    }

    #[test]
    fn every_bad_line_is_reported_at_once_and_nothing_is_set() {
        let mut env = map(&[("SEED", "1")]);
        let errors = parse_env("A=1\nnot a setting\nB=2\n1X=3\n", &mut env).unwrap_err();
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "ENV line 2: malformed setting 'not a setting'",
                "ENV line 4: invalid key '1X': keys must match [A-Za-z_][A-Za-z0-9_]*",
            ]
        );
        assert_eq!(env, map(&[("SEED", "1")]));
        assert_eq!(parse_env_literal("x\ny\n").unwrap_err().iter().count(), 2);
    }

    #[test]
    fn literal_values_are_kept_as_written() {
        // The merged env of a release, as render_env wrote it: ALPHA sorts before ZED, whose
        // `$ALPHA` stayed literal at merge time. Reading it back must not expand it now.
        let live = parse_env_literal("ALPHA=a\nQ=\"q\"\nZED=$ALPHA/${ALPHA}\n").unwrap();
        assert_eq!(
            live,
            map(&[("ALPHA", "a"), ("Q", "\"q\""), ("ZED", "$ALPHA/${ALPHA}")])
        );
        assert_eq!(parse_env_literal(&render_env(&live)).unwrap(), live);
        let mut expanded = EnvMap::new();
        parse_env(&render_env(&live), &mut expanded).unwrap();
        assert_eq!(
            expanded["ZED"], "a/a",
            "what the expanding reader would have made of it"
        );
    }

    #[test]
    fn good_keys() {
        for key in ["A", "_", "_A1", "NGINX_SERVER_NAME", "lower_case"] {
            check_env_key(key).unwrap();
        }
    }

    #[test]
    fn render_is_sorted_and_round_trips() {
        let env = map(&[("B", "2"), ("A", "x=y"), ("C", "")]);
        let text = render_env(&env);
        assert_eq!(text, "A=x=y\nB=2\nC=\n");
        assert_eq!(parse(&text), env);
        assert_eq!(render_env(&EnvMap::new()), "");
    }
}
