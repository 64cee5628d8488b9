//! Reading a command's arguments: the app name (validated, and required to exist where piku
//! requires it), flags such as `--json`, and usage errors that show the right usage line.

use std::collections::VecDeque;
use std::path::Path;

use anyhow::{anyhow, bail};
use piku_model::{AppName, PikuRoot};

use super::{COMMANDS, Ctx};

/// The words after the command name, consumed front to back.
pub struct Args {
    command: &'static str,
    words: VecDeque<String>,
}

impl Args {
    pub fn new(command: &'static str, words: &[String]) -> Args {
        Args {
            command,
            words: words.iter().cloned().collect(),
        }
    }

    /// Removes every occurrence of `flag` (e.g. `--json`) and says whether there was one.
    pub fn flag(&mut self, flag: &str) -> bool {
        let before = self.words.len();
        self.words.retain(|w| w != flag);
        self.words.len() != before
    }

    /// Removes `option VALUE` (e.g. `-n 50`) wherever it is and returns the value.
    pub fn option(&mut self, option: &str) -> anyhow::Result<Option<String>> {
        let Some(at) = self.words.iter().position(|w| w == option) else {
            return Ok(None);
        };
        self.words.remove(at);
        match self.words.remove(at) {
            Some(value) => Ok(Some(value)),
            None => Err(self.usage_error(&format!("{option} needs a value"))),
        }
    }

    /// The next word, if any.
    pub fn next(&mut self) -> Option<String> {
        self.words.pop_front()
    }

    /// The next word; a usage error naming `what` if there is none.
    pub fn required(&mut self, what: &str) -> anyhow::Result<String> {
        self.next()
            .ok_or_else(|| self.usage_error(&format!("missing {what}")))
    }

    /// The next word as an app name. The name is validated, never rewritten.
    pub fn app(&mut self) -> anyhow::Result<AppName> {
        let word = self.required("app name")?;
        Ok(word.parse::<AppName>()?)
    }

    /// The next word as the name of an app that exists (`Error: app '<app>' not found.`).
    pub fn existing_app(&mut self, ctx: &Ctx) -> anyhow::Result<AppName> {
        let app = self.app()?;
        if !app_exists(&ctx.root, &app) {
            bail!("app '{app}' not found.");
        }
        Ok(app)
    }

    /// Everything not consumed yet.
    pub fn rest(self) -> Vec<String> {
        self.words.into()
    }

    /// Everything not consumed yet, which must be at least one word (`what` names it).
    pub fn at_least_one(self, what: &str) -> anyhow::Result<Vec<String>> {
        if self.words.is_empty() {
            return Err(self.usage_error(&format!("missing {what}")));
        }
        Ok(self.rest())
    }

    /// Fails if words are left over, so a typo is not silently ignored.
    pub fn finish(self) -> anyhow::Result<()> {
        match self.words.front() {
            None => Ok(()),
            Some(extra) => {
                Err(self.usage_error(&format!("unexpected argument '{}'", extra.escape_debug())))
            }
        }
    }

    pub fn usage_error(&self, problem: &str) -> anyhow::Error {
        let usage = COMMANDS
            .iter()
            .find(|c| c.name == self.command)
            .map(|c| c.usage_line())
            .unwrap_or_else(|| format!("piku {}", self.command));
        anyhow!("{problem}; usage: {usage}")
    }
}

/// An app exists once it has been pushed to: piku required `apps/<app>`; we also accept the
/// bare repository alone, so an app whose first build failed can still be configured and
/// destroyed.
pub fn app_exists(root: &PikuRoot, app: &AppName) -> bool {
    present(&root.app_dir(app)) || present(&root.repo_dir(app))
}

/// Whether `apps/<app>` is there, i.e. the app has a live release.
pub fn is_deployed(root: &PikuRoot, app: &AppName) -> bool {
    present(&root.app_dir(app))
}

/// Exists, without following a symlink (a dangling `apps/<app>` link still counts).
pub fn present(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
