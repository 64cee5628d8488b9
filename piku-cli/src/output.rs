//! What the user sees: piku's `-----> ` step lines, aligned tables and human-readable sizes.
//!
//! Output goes to the ssh channel or a `git push` "remote:" stream. A client that went away
//! must not turn into a panic (as `println!` would on `EPIPE`), so every writer here ignores
//! write errors except where the caller asks for them ([`line`]).

use std::fmt::Display;
use std::io::{self, Write};

/// Prints `-----> {msg}` to stdout (piku style) and flushes, so progress shows up at once
/// even through `git push`.
pub fn step(msg: impl Display) {
    let mut out = io::stdout().lock();
    // A vanished client must not abort a deploy half-way: the build log keeps the record.
    let _ = writeln!(out, "-----> {msg}");
    let _ = out.flush();
}
