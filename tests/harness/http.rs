//! A tiny HTTP/1.0 GET over a std `TcpStream`, with short timeouts: enough to ask an app on
//! 127.0.0.1 what it serves, without a client library.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// `GET path` on 127.0.0.1:`port`; returns the status code and the body.
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let host = format!("127.0.0.1:{port}");
    get(port, &host, path, "HTTP/1.0", Duration::from_secs(5)).map(|a| (a.status, a.body))
}

/// The body of a `200` answer, or `None` for anything else (refused, other status, timeout).
pub fn get_ok(port: u16, path: &str) -> Option<String> {
    match http_get(port, path) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// An answer with its header block, from [`http_get_host`].
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The status line and headers, as sent.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// `GET path` on 127.0.0.1:`port` with `Host: host` (how nginx picks the app). A server that
/// closes without answering (nginx's 444) is an `Err`.
pub fn http_get_host(port: u16, host: &str, path: &str) -> std::io::Result<Answer> {
    get(port, host, path, "HTTP/1.1", Duration::from_secs(10))
}

/// One `GET` with `Connection: close`, read to the end and split into status, head and body.
fn get(
    port: u16,
    host: &str,
    path: &str,
    version: &str,
    read_timeout: Duration,
) -> std::io::Result<Answer> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(read_timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} {version}\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no answer (got {text:?})")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}
