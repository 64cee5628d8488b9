//! The control protocol spoken over `$PIKU_ROOT/supervisor.sock`.
//!
//! One place defines every message so that the CLI (`piku`) and the daemon
//! (`piku-supervisor`) cannot drift apart:
//! - [`message`]: the typed [`Request`] / [`Response`] enums and the app's desired state;
//! - [`frame`]: how messages travel (a 4-byte big-endian length, then JSON), with a size cap;
//! - [`client`]: the small blocking client the CLI uses.
//!
//! A connection starts with [`Request::Hello`] carrying [`PROTOCOL_VERSION`]; the daemon answers
//! [`Response::Welcome`] or [`Response::Error`] and closes. After that the client sends
//! requests; each gets zero or more [`Response::Progress`] / [`Response::LogLine`] frames and
//! then exactly one final frame (anything else), except a following `Logs` request which streams
//! until the client hangs up.

pub mod client;
pub mod error;
pub mod frame;
pub mod message;

pub use client::Client;
pub use error::ProtoError;
pub use frame::{MAX_FRAME_BYTES, read_frame, write_frame};
pub use message::*;

/// Bumped whenever a message changes in a way an older peer would misread.
pub const PROTOCOL_VERSION: u32 = 1;
