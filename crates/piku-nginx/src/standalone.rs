//! A complete main nginx config around piku's shipped snippet (`nginx/piku.conf`), for running
//! an unprivileged nginx in a directory of its own: the tests, and the demo on a machine where
//! the system nginx is not ours to change.
//!
//! The snippet is moved to the given loopback address and ports (IPv6 lines dropped) and its
//! include pointed at the piku root's `nginx/` directory; every path nginx writes is under
//! `prefix`.

use std::path::Path;

/// Where the standalone nginx lives and listens.
#[derive(Clone, Debug)]
pub struct Standalone<'a> {
    /// nginx's prefix (`-p`): pid file, logs and temp dirs go here.
    pub prefix: &'a Path,
    /// The piku root's `nginx/` directory, whose `*.conf` are included.
    pub apps_dir: &'a Path,
    /// IPv4 address of the default servers (the apps' `NGINX_IPV4_ADDRESS`).
    pub address: &'a str,
    pub http_port: u16,
    pub https_port: u16,
    /// `user` directive (needed when started as root); `None` leaves it out.
    pub user: Option<&'a str>,
    /// `mime.types` to include, if any.
    pub mime_types: Option<&'a Path>,
}

/// The shipped snippet with its listen lines and include moved as [`Standalone`] says.
pub fn adapt_snippet(snippet: &str, at: &Standalone) -> String {
    snippet
        .lines()
        .filter(|l| !l.contains("[::]"))
        .map(|l| {
            l.replace(
                "listen 80 ",
                &format!("listen {}:{} ", at.address, at.http_port),
            )
            .replace(
                "listen 443 ",
                &format!("listen {}:{} ", at.address, at.https_port),
            )
            .replace("/home/piku/.piku/nginx", &at.apps_dir.display().to_string())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The main config: `events`, an `http` block with temp paths under the prefix and the
/// adapted snippet. One worker of 1024 connections: Debian's nginx has 768 per worker and a
/// worker per core, and the robustness tests hold 500 slow clients open beside the others
/// (each proxied request takes two connections of a worker).
pub fn main_conf(snippet: &str, at: &Standalone) -> String {
    let d = at.prefix.display();
    let user = at.user.map(|u| format!("user {u};\n")).unwrap_or_default();
    let mime = at
        .mime_types
        .map(|m| format!("  include {};\n", m.display()))
        .unwrap_or_default();
    format!(
        "{user}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\nhttp {{\n{mime}  access_log off;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{snippet}\n}}\n",
        snippet = adapt_snippet(snippet, at)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snippet_moves_to_the_given_ports_and_root() {
        let at = Standalone {
            prefix: Path::new("/tmp/run"),
            apps_dir: Path::new("/srv/piku/nginx"),
            address: "127.0.0.1",
            http_port: 8080,
            https_port: 8443,
            user: None,
            mime_types: None,
        };
        let snippet = include_str!("../../../nginx/piku.conf");
        let conf = main_conf(snippet, &at);
        assert!(
            conf.contains("listen 127.0.0.1:8080 default_server;"),
            "{conf}"
        );
        assert!(
            conf.contains("listen 127.0.0.1:8443 ssl default_server;"),
            "{conf}"
        );
        assert!(conf.contains("include /srv/piku/nginx/*.conf;"), "{conf}");
        assert!(!conf.contains("[::]"), "{conf}");
        assert!(conf.contains("pid /tmp/run/nginx.pid;"), "{conf}");
        assert!(!conf.lines().any(|l| l.starts_with("user ")), "{conf}");
    }
}
