//! Static: a Procfile with only a `static:` entry and nothing recognised to build. Nothing is
//! built or run; nginx serves the files (see [`crate::front`]).

use piku_model::{ProcessClass, Procfile};

pub const NAME: &str = "static";
pub const LABEL: &str = "Static";

/// Detected after every other runtime and after [`super::generic`].
pub fn detect(procfile: &Procfile) -> bool {
    procfile
        .entries
        .iter()
        .any(|e| e.class == ProcessClass::Static)
}
