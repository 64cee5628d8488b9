//! Whether the app answers where the push is about to say it does.
//!
//! The supervisor's `Apply` returns once its front routes to ready instances, but what users
//! reach is one step further: behind nginx, the host name is routed only once nginx has
//! reloaded the app's config, which through the root-owned path unit happens after the push
//! asked for it (measured: nginx answered its default server for 0.15 s after a push
//! returned). So before the deploy prints `'app' answers …`, it asks that address itself:
//!
//! - behind nginx: `GET <path>` with the app's first host name as `Host`, on nginx's HTTP port,
//!   until the answer comes from the app's server block — its `X-Deployed-By: Piku` header (on
//!   2xx/3xx), its HTTPS-only redirect, or an error of the app's own (a 4xx/5xx that is not
//!   nginx's own error page) — and not from nginx's default server (444, Debian's welcome page)
//!   or a gateway error while the front has no instance (502/503/504);
//! - on piku's public TCP port: until anything but a gateway error answers.
//!
//! `<path>` is `PIKU_HEALTHCHECK` when set, else `/`. The wait is bounded by the health check
//! deadline; past it the deploy says what it last saw instead of claiming the app answers (the
//! release is live by then, so this is a warning, not a failed push).
//!
//! The GET is hand-written over `std::net`: one request with a `Host` header to a loopback
//! port, where a client crate would bring an async runtime and TLS for nothing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Between two attempts.
const POLL: Duration = Duration::from_millis(50);
/// For one attempt: connecting, writing, reading the answer.
const ATTEMPT: Duration = Duration::from_secs(2);
/// Enough of an answer to see its status, headers and the start of the body.
const READ_MAX: usize = 16 * 1024;

/// Where to ask, and what counts as the app's answer.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Where to connect.
    pub addr: String,
    /// The `Host` header.
    pub host: String,
    /// The request path.
    pub path: String,
    /// Behind nginx: the answer must come from the app's server block.
    pub via_nginx: bool,
}

/// One answer, as far as the probe cares.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Probe {
    /// Asks until the app answers or `deadline` passes; `Err` says what was seen last.
    pub fn wait(&self, deadline: Duration) -> Result<(), String> {
        let end = Instant::now() + deadline;
        loop {
            let seen = match self.ask() {
                Ok(answer) if self.is_the_apps(&answer) => return Ok(()),
                Ok(answer) => describe(&answer),
                Err(e) => e,
            };
            if Instant::now() >= end {
                return Err(seen);
            }
            std::thread::sleep(POLL);
        }
    }

    fn is_the_apps(&self, answer: &Answer) -> bool {
        if matches!(answer.status, 502..=504) {
            return false;
        }
        if !self.via_nginx {
            return true;
        }
        if header(&answer.head, "x-deployed-by").is_some_and(|v| v.eq_ignore_ascii_case("piku")) {
            return true;
        }
        // NGINX_HTTPS_ONLY: the app's port-80 server redirects to its HTTPS server.
        if matches!(answer.status, 301 | 308)
            && header(&answer.head, "location").is_some_and(|l| {
                l.strip_prefix("https://")
                    .is_some_and(|rest| rest.starts_with(&self.host))
            })
        {
            return true;
        }
        // The app's own error: nginx's pages (and its default server's) name nginx.
        answer.status >= 400 && !answer.body.contains("<center>nginx")
    }

    fn ask(&self) -> Result<Answer, String> {
        let addr: SocketAddr = self
            .addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("{} is not an address", self.addr))?;
        let mut stream = TcpStream::connect_timeout(&addr, ATTEMPT)
            .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
        let _ = stream.set_read_timeout(Some(ATTEMPT));
        let _ = stream.set_write_timeout(Some(ATTEMPT));
        let request = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: piku-deploy\r\nConnection: close\r\n\r\n",
            self.path, self.host
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| format!("cannot send a request to {addr}: {e}"))?;
        let mut raw = Vec::new();
        let _ = stream.take(READ_MAX as u64).read_to_end(&mut raw);
        parse(&raw).ok_or_else(|| {
            if raw.is_empty() {
                format!("{addr} closed the connection without answering")
            } else {
                format!("{addr} sent no HTTP answer")
            }
        })
    }
}

fn parse(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn describe(answer: &Answer) -> String {
    let status_line = answer.head.lines().next().unwrap_or_default();
    if answer.body.contains("<center>nginx") {
        format!("nginx answered '{status_line}' itself")
    } else {
        format!("the answer was '{status_line}', not the app's")
    }
}

/// Where to reach a listener bound to `bind`: a wildcard address is asked on loopback.
pub fn reachable(bind: &str, port: u16) -> String {
    match bind.trim_matches(|c| c == '[' || c == ']') {
        "" | "0.0.0.0" | "*" => format!("127.0.0.1:{port}"),
        "::" => format!("[::1]:{port}"),
        v6 if v6.contains(':') => format!("[{v6}]:{port}"),
        v4 => format!("{v4}:{port}"),
    }
}

/// A host name nginx routes to the app, from its `server_name`s: the first plain one, or a
/// wildcard's `www.` form; `None` when every name is a regex.
pub fn host_for(server_names: &[String]) -> Option<String> {
    server_names.iter().find_map(|name| {
        if name.starts_with('~') {
            None
        } else if let Some(rest) = name.strip_prefix("*.") {
            Some(format!("www.{rest}"))
        } else if let Some(rest) = name.strip_prefix('.') {
            Some(rest.to_owned())
        } else if let Some(rest) = name.strip_suffix(".*") {
            Some(format!("{rest}.com"))
        } else {
            Some(name.clone())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server answering each connection with the next of `answers`; the probe's target.
    fn serve(answers: Vec<&'static str>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            for answer in answers {
                let Ok((mut s, _)) = listener.accept() else {
                    return;
                };
                // The whole request first: closing on unread bytes would reset the connection.
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.ends_with(b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(answer.as_bytes());
            }
        });
        addr
    }

    fn probe(addr: String, via_nginx: bool) -> Probe {
        Probe {
            addr,
            host: "blog.example.com".into(),
            path: "/".into(),
            via_nginx,
        }
    }

    #[test]
    fn behind_nginx_only_the_apps_server_block_counts() {
        let addr = serve(vec![
            // nginx's default server closing without an answer (444), its welcome page, a
            // gateway error while the front has no instance, then the app's page.
            "",
            "HTTP/1.1 200 OK\r\nServer: nginx\r\n\r\n<h1>Welcome to nginx!</h1>",
            "HTTP/1.1 502 Bad Gateway\r\n\r\n502 Bad Gateway: no instance of this app is running\n",
            "HTTP/1.1 200 OK\r\nX-Deployed-By: Piku\r\n\r\nhello",
        ]);
        assert_eq!(probe(addr, true).wait(Duration::from_secs(10)), Ok(()));
    }

    #[test]
    fn the_apps_own_errors_and_https_redirects_count_nginx_pages_do_not() {
        let p = probe(String::new(), true);
        let answer = |raw: &str| parse(raw.as_bytes()).unwrap();
        assert!(p.is_the_apps(&answer("HTTP/1.1 404 Not Found\r\n\r\nno such page")));
        assert!(p.is_the_apps(&answer(
            "HTTP/1.1 301 Moved\r\nLocation: https://blog.example.com:8443/\r\n\r\n"
        )));
        assert!(!p.is_the_apps(&answer(
            "HTTP/1.1 404 Not Found\r\n\r\n<hr><center>nginx/1.22.1</center>"
        )));
        assert!(!p.is_the_apps(&answer(
            "HTTP/1.1 301 Moved\r\nLocation: https://other.example.com/\r\n\r\n"
        )));
        assert!(!probe(String::new(), false).is_the_apps(&answer("HTTP/1.1 503 x\r\n\r\n")));
    }

    #[test]
    fn a_deadline_past_says_what_was_seen_last() {
        let addr = serve(vec![
            "HTTP/1.1 404 Not Found\r\n\r\n<center>nginx</center>";
            100
        ]);
        let err = probe(addr, true)
            .wait(Duration::from_millis(300))
            .unwrap_err();
        assert_eq!(err, "nginx answered 'HTTP/1.1 404 Not Found' itself");
    }

    #[test]
    fn addresses_and_host_names_to_ask() {
        assert_eq!(reachable("0.0.0.0", 80), "127.0.0.1:80");
        assert_eq!(reachable("[::]", 80), "[::1]:80");
        assert_eq!(reachable("10.0.0.5", 8080), "10.0.0.5:8080");
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            host_for(&names(&["~^re$", "*.example.com"])).as_deref(),
            Some("www.example.com")
        );
        assert_eq!(host_for(&names(&["~^re$"])), None);
        assert_eq!(
            host_for(&names(&["blog.example.com"])).as_deref(),
            Some("blog.example.com")
        );
    }
}
