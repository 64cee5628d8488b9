//! App names, and the single rule that decides which names are allowed.
//!
//! An app name becomes a path component under every top-level directory of `$PIKU_ROOT`
//! (`apps/<app>`, `repos/<app>`, `logs/<app>`, …), a git remote path and a log prefix.
//! piku *sanitised* names by dropping characters, which let `.` and `..` through (so
//! `destroy ..` could remove `~/.piku`) and silently turned `app; rm -rf /` into `apprm-rf`.
//! We never rewrite a name: a name either passes this rule or is refused with the reason.
//!
//! The rule: 1 to 64 ASCII characters from `[A-Za-z0-9._-]`, the first one a letter or a
//! digit, and no `..` anywhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest app name accepted, in characters.
pub const MAX_APP_NAME_LEN: usize = 64;

/// A validated app name. Holding one proves the name is safe as a single path component.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppName(String);

/// Which part of the app-name rule a name broke.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AppNameRule {
    Empty,
    TooLong { chars: usize },
    DotDot,
    BadChar(char),
    BadFirstChar(char),
}

impl fmt::Display for AppNameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppNameRule::Empty => write!(f, "must not be empty"),
            AppNameRule::TooLong { chars } => write!(
                f,
                "must be at most {MAX_APP_NAME_LEN} characters long (it has {chars})"
            ),
            AppNameRule::DotDot => write!(f, "must not contain '..'"),
            AppNameRule::BadChar(c) => write!(
                f,
                "must contain only ASCII letters, digits, '.', '_' and '-' (found '{}')",
                c.escape_debug()
            ),
            AppNameRule::BadFirstChar(c) => write!(
                f,
                "must start with an ASCII letter or digit (not '{}')",
                c.escape_debug()
            ),
        }
    }
}

/// A name that is not a valid app name, with the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid app name '{}': {rule}", .name.escape_debug())]
pub struct InvalidAppName {
    pub name: String,
    pub rule: AppNameRule,
}

impl AppName {
    /// Checks `name` against the rule without allocating.
    pub fn check(name: &str) -> Result<(), AppNameRule> {
        let Some(first) = name.chars().next() else {
            return Err(AppNameRule::Empty);
        };
        let chars = name.chars().count();
        if chars > MAX_APP_NAME_LEN {
            return Err(AppNameRule::TooLong { chars });
        }
        // Checked before the character rules so `../x` is reported for what it is: a path escape.
        if name.contains("..") {
            return Err(AppNameRule::DotDot);
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(AppNameRule::BadChar(bad));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(AppNameRule::BadFirstChar(first));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for AppName {
    type Err = InvalidAppName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match AppName::check(s) {
            Ok(()) => Ok(AppName(s.to_owned())),
            Err(rule) => Err(InvalidAppName {
                name: s.to_owned(),
                rule,
            }),
        }
    }
}

impl TryFrom<String> for AppName {
    type Error = InvalidAppName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        match AppName::check(&s) {
            Ok(()) => Ok(AppName(s)),
            Err(rule) => Err(InvalidAppName { name: s, rule }),
        }
    }
}

impl TryFrom<&str> for AppName {
    type Error = InvalidAppName;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<AppName> for String {
    fn from(name: AppName) -> String {
        name.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AppName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for AppName {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(name: &str) -> String {
        name.parse::<AppName>().unwrap_err().to_string()
    }

    #[test]
    fn good_names_are_accepted_unchanged() {
        for name in [
            "blog",
            "my-app_2",
            "app.example.com",
            "A",
            "9lives",
            "app.git",
        ] {
            let parsed: AppName = name.parse().unwrap();
            assert_eq!(parsed.as_str(), name);
            assert_eq!(parsed.to_string(), name);
        }
        let longest = "a".repeat(64);
        assert_eq!(longest.parse::<AppName>().unwrap().as_str(), longest);
    }

    #[test]
    fn path_escapes_are_refused() {
        assert_eq!(
            err("../x"),
            "invalid app name '../x': must not contain '..'"
        );
        assert_eq!(err(".."), "invalid app name '..': must not contain '..'");
        assert_eq!(
            err("a..b"),
            "invalid app name 'a..b': must not contain '..'"
        );
        assert_eq!(
            err("a/b"),
            "invalid app name 'a/b': must contain only ASCII letters, digits, '.', '_' and '-' (found '/')"
        );
        assert_eq!(
            err("."),
            "invalid app name '.': must start with an ASCII letter or digit (not '.')"
        );
    }

    #[test]
    fn leading_punctuation_is_refused() {
        assert_eq!(
            err("-rf"),
            "invalid app name '-rf': must start with an ASCII letter or digit (not '-')"
        );
        assert_eq!(
            err(".hidden"),
            "invalid app name '.hidden': must start with an ASCII letter or digit (not '.')"
        );
        assert!(err("_x").contains("must start with"));
    }

    #[test]
    fn empty_and_long_names_are_refused() {
        assert_eq!(err(""), "invalid app name '': must not be empty");
        assert_eq!(
            err(&"a".repeat(65)),
            format!(
                "invalid app name '{}': must be at most 64 characters long (it has 65)",
                "a".repeat(65)
            )
        );
    }

    #[test]
    fn unicode_and_shell_metacharacters_are_refused_not_stripped() {
        assert!(err("café").ends_with("(found 'é')"), "{}", err("café"));
        assert!(err("app; rm -rf /").ends_with("(found ';')"));
        assert!(err("app name").ends_with("(found ' ')"));
        assert!(err("$(reboot)").contains("(found '$')"));
    }

    #[test]
    fn control_characters_keep_the_error_on_one_line() {
        let message = err("app\nname");
        assert!(!message.contains('\n'), "{message}");
        assert!(message.contains("app\\nname"), "{message}");
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let name: AppName = "blog".parse().unwrap();
        let json = serde_json::to_string(&name).unwrap();
        assert_eq!(json, "\"blog\"");
        assert_eq!(serde_json::from_str::<AppName>(&json).unwrap(), name);
        let bad = serde_json::from_str::<AppName>("\"../etc\"").unwrap_err();
        assert!(bad.to_string().contains("must not contain '..'"), "{bad}");
    }
}
