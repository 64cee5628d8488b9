//! Generic: processes in the Procfile and no recognised runtime. Nothing is built; the
//! Procfile's commands run as they are (piku also asked for a `release:` line; we do not).

use piku_model::Procfile;

pub const NAME: &str = "generic";
pub const LABEL: &str = "Generic";

/// Detected after every language runtime: the Procfile has something to run.
pub fn detect(procfile: &Procfile) -> bool {
    procfile.workers().next().is_some()
}
