//! piku-compatible `ENV` files: `KEY=value` lines with `$VAR` / `${VAR}` expansion.
//!
//! Rules (piku's `parse_settings`, minus its silent failure):
//! - Blank lines and lines whose first non-space character is `#` are skipped.
//! - Each line is split on the first `=`; key and value are trimmed.
//! - Quotes are **not** removed: `A="x"` sets `A` to `"x"` with the quotes, as in piku.
//! - The value expands `$VAR` and `${VAR}` (`VAR` = word characters) against the map as it is
//!   being built, which starts as the caller's map; unknown variables stay literally. There is
//!   no escape for `$` and the process environment is never read.
//! - A line without `=` is an error (piku printed one and silently discarded the whole file).
//! - Keys must match `[A-Za-z_][A-Za-z0-9_]*`; anything else is an error naming the key.
//!
//! - A leading UTF-8 byte-order mark is ignored.
//!
//! [`render_env`] writes `K=V` lines sorted by key, as piku's `write_config` did (comments are
//! not preserved). Values are written as they are: a value holding a newline cannot round-trip,
//! and a value holding `$NAME` is expanded again when read back (piku behaves the same).

use crate::EnvMap;

/// Why an ENV file, or one key, was refused.
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

/// Parses ENV `text` into `env`, expanding values against `env` as it grows. Returns the keys
/// the file set, in the order they first appear. On error `env` may hold the lines before it.
pub fn parse_env(text: &str, env: &mut EnvMap) -> Result<Vec<String>, EnvError> {
    let mut keys_set: Vec<String> = Vec::new();
    // Editors on Windows may save a byte-order mark; it is not part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err(EnvError::Malformed {
                line: line_no,
                text: line.to_owned(),
            });
        };
        let key = key.trim();
        check_env_key(key).map_err(|problem| EnvError::BadKey {
            line: line_no,
            problem,
        })?;
        let value = expand_vars(value.trim(), env);
        env.insert(key.to_owned(), value);
        if !keys_set.iter().any(|k| k == key) {
            keys_set.push(key.to_owned());
        }
    }
    Ok(keys_set)
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
