//! How the daemon shows an error (to a client, in its own log): the error's message, then
//! each of its causes once, joined by `: `. Error types here therefore never repeat their
//! `#[source]` in their own message.

use std::error::Error;

/// `front of shop: cannot listen on 127.0.0.1:80: Address already in use (os error 98)`.
pub fn chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write {path}")]
    struct Outer {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn every_cause_is_shown_once() {
        let e = Outer {
            path: "state.json".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(chain(&e), "cannot write state.json: disk full");
    }
}
