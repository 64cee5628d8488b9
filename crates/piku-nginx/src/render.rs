//! Renders [`NginxSettings`] into the text of `nginx/<app>.conf`.
//!
//! The shape follows piku's template (an HTTP + HTTPS server, or a redirect server plus an
//! HTTPS server with `NGINX_HTTPS_ONLY`), with these differences:
//! - `location /` proxies over HTTP to the glue's Unix socket `nginx/<app>.sock` (no
//!   `uwsgi_pass`), through an `upstream` with keep-alive; caching is `proxy_cache`.
//! - WebSocket upgrades use a per-app `map $http_upgrade` that yields `upgrade` or an empty
//!   `Connection` header. piku sent `Connection: upgrade` on every request, which asks the
//!   backend to switch protocols on plain requests and defeats upstream keep-alive. The map
//!   lives in the app's own file (not the main snippet), so a host whose main config only
//!   `include`s `*.conf` still gets a valid config.
//! - Every name that is global in nginx (upstream, map variable, cache zone) carries an id
//!   hashed from the root path and the app name, so two apps — or two piku users sharing one
//!   nginx (piku#188) — never collide.
//! - The HTTPS redirect goes to `$host` (piku used `$server_name`, the first name only).
//! - The Cloudflare ACL sits at server level, so static and cached locations are covered too;
//!   the ACME challenge location keeps `allow all`.

use std::fmt::Write as _;

use crate::cloudflare::{CLOUDFLARE_IPV4, CLOUDFLARE_IPV6};
use crate::settings::NginxSettings;
use crate::version::Http2Style;

/// The per-app id used for every nginx-global name: `piku_<16 hex digits>`.
pub fn conf_id(settings: &NginxSettings) -> String {
    // FNV-1a, 64 bit: stable across Rust versions (unlike DefaultHasher) and needs no crate.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let root = settings.root.path().as_os_str().as_encoded_bytes();
    for byte in root
        .iter()
        .chain(&[0u8])
        .chain(settings.app.as_str().as_bytes())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("piku_{hash:016x}")
}

/// The whole `nginx/<app>.conf`.
pub fn render(settings: &NginxSettings) -> String {
    let id = conf_id(settings);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# nginx config of piku app '{}' (written by piku on every deploy; edits are lost).",
        settings.app
    );

    if let Some(cache) = &settings.cache {
        let _ = writeln!(
            out,
            "proxy_cache_path {} levels=1:2 keys_zone={id}:20m inactive={}s max_size={}g use_temp_path=off;",
            cache.path.display(),
            cache.time_expiry,
            cache.size_gb
        );
    }
    if settings.proxy {
        let _ = writeln!(
            out,
            "map $http_upgrade ${id}_connection {{\n  default upgrade;\n  \"\" \"\";\n}}"
        );
        let _ = writeln!(
            out,
            "upstream {id} {{\n  server unix:{};\n  keepalive 16;",
            settings.socket_path().display()
        );
        // Below the front's keep-alive timeout, so nginx closes an idle connection first and
        // never sends a request on one the front is closing (`upstream` takes it since 1.15.3).
        if settings.features.version.is_some_and(|v| v >= (1, 15, 3)) {
            let _ = writeln!(
                out,
                "  keepalive_timeout {}s;",
                settings.front.nginx_upstream_keepalive_secs()
            );
        }
        out.push_str("}\n");
    }

    let names = settings.server_names.join(" ");
    if settings.https_only {
        out.push_str("server {\n");
        listen_http(&mut out, settings);
        let _ = writeln!(out, "  server_name {names};");
        acme_location(&mut out, settings);
        let port = match settings.listen.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        let _ = writeln!(
            out,
            "  location / {{\n    return 301 https://$host{port}$request_uri;\n  }}"
        );
        out.push_str("}\n");
    }

    out.push_str("server {\n");
    if !settings.https_only {
        listen_http(&mut out, settings);
    }
    listen_https(&mut out, settings);
    let _ = writeln!(out, "  ssl_certificate {};", settings.crt_path().display());
    let _ = writeln!(
        out,
        "  ssl_certificate_key {};",
        settings.key_path().display()
    );
    let _ = writeln!(out, "  server_name {names};");
    if !settings.https_only {
        acme_location(&mut out, settings);
    }
    out.push_str(GZIP_AND_HEADER);
    if let Some(allowed) = &settings.cloudflare_acl {
        out.push_str("  # NGINX_CLOUDFLARE_ACL: Cloudflare's edges, the deployer, loopback.\n");
        for range in CLOUDFLARE_IPV4.iter().chain(CLOUDFLARE_IPV6) {
            let _ = writeln!(out, "  allow {range};");
        }
        for ip in allowed {
            let _ = writeln!(out, "  allow {ip};");
        }
        out.push_str("  deny all;\n");
    }
    if let Some(include) = &settings.include {
        out.push_str("  # NGINX_INCLUDE_FILE\n");
        out.push_str(include);
        if !include.ends_with('\n') {
            out.push('\n');
        }
    }
    static_locations(&mut out, settings);
    if let Some(cache) = &settings.cache {
        let _ = writeln!(out, "  location ~* ^/({}) {{", cache.prefixes.join("|"));
        let _ = writeln!(out, "    proxy_cache {id};");
        out.push_str("    proxy_cache_min_uses 1;\n");
        out.push_str("    proxy_cache_key $host$request_uri;\n");
        let _ = writeln!(
            out,
            "    proxy_cache_valid 200 304 {}s;",
            cache.time_content
        );
        let _ = writeln!(
            out,
            "    proxy_cache_valid 301 307 {}s;",
            cache.time_redirects
        );
        out.push_str("    proxy_cache_valid 500 502 503 504 0s;\n");
        let _ = writeln!(out, "    proxy_cache_valid any {}s;", cache.time_any);
        out.push_str("    proxy_hide_header Cache-Control;\n");
        let _ = writeln!(
            out,
            "    add_header Cache-Control \"public, max-age={}\";",
            cache.time_control
        );
        out.push_str("    add_header X-Cache $upstream_cache_status;\n");
        proxy_directives(&mut out, settings, &id);
        out.push_str("  }\n");
    }
    if !settings.allow_git_folders {
        out.push_str("  location ~ /\\.git {\n    deny all;\n  }\n");
    }
    if settings.proxy {
        out.push_str("  location / {\n");
        proxy_directives(&mut out, settings, &id);
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

const GZIP_AND_HEADER: &str = r#"  gzip on;
  gzip_proxied any;
  gzip_types text/plain text/xml text/css text/javascript text/js application/x-javascript application/javascript application/json application/xml+rss application/atom+xml image/svg+xml;
  gzip_comp_level 7;
  gzip_min_length 2048;
  gzip_vary on;
  gzip_disable "MSIE [1-6]\.(?!.*SV1)";
  add_header X-Deployed-By Piku;
"#;

fn listen_http(out: &mut String, s: &NginxSettings) {
    let l = &s.listen;
    if let Some(v6) = &l.ipv6 {
        let _ = writeln!(out, "  listen {v6}:{};", l.http_port);
    }
    let _ = writeln!(out, "  listen {}:{};", l.ipv4, l.http_port);
}

fn listen_https(out: &mut String, s: &NginxSettings) {
    let l = &s.listen;
    let style = s.features.http2();
    let flags = if style == Http2Style::ListenFlag {
        " ssl http2"
    } else {
        " ssl"
    };
    if let Some(v6) = &l.ipv6 {
        let _ = writeln!(out, "  listen {v6}:{}{flags};", l.https_port);
    }
    let _ = writeln!(out, "  listen {}:{}{flags};", l.ipv4, l.https_port);
    if style == Http2Style::Directive {
        out.push_str("  http2 on;\n");
    }
}

fn acme_location(out: &mut String, s: &NginxSettings) {
    let _ = writeln!(
        out,
        "  location ^~ /.well-known/acme-challenge {{\n    allow all;\n    root {};\n  }}",
        s.root.acme().display()
    );
}

fn static_locations(out: &mut String, s: &NginxSettings) {
    for path in &s.static_paths {
        let _ = writeln!(out, "  location {} {{", path.url);
        out.push_str(
            "    sendfile on;\n    sendfile_max_chunk 1m;\n    tcp_nopush on;\n    directio 8m;\n",
        );
        if s.features.threads {
            out.push_str("    aio threads;\n");
        }
        let _ = writeln!(out, "    alias {};", path.dir);
        let catch_all = s
            .catch_all
            .as_deref()
            .map(|c| format!("{c} "))
            .unwrap_or_default();
        let _ = writeln!(out, "    try_files $uri $uri.html $uri/ {catch_all}=404;");
        out.push_str("  }\n");
    }
}

fn proxy_directives(out: &mut String, s: &NginxSettings, id: &str) {
    let remote = if s.cloudflare_acl.is_some() {
        "$http_cf_connecting_ip"
    } else {
        "$remote_addr"
    };
    let _ = writeln!(out, "    proxy_pass http://{id};");
    out.push_str("    proxy_http_version 1.1;\n");
    out.push_str("    proxy_set_header Upgrade $http_upgrade;\n");
    let _ = writeln!(out, "    proxy_set_header Connection ${id}_connection;");
    out.push_str("    proxy_set_header Host $host;\n");
    out.push_str("    proxy_set_header X-Forwarded-Proto $scheme;\n");
    out.push_str("    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n");
    let _ = writeln!(out, "    proxy_set_header X-Remote-Address {remote};");
    out.push_str("    proxy_set_header X-Forwarded-Port $server_port;\n");
    out.push_str("    proxy_set_header X-Request-Start $msec;\n");
    // nginx outwaits the front, whose 504 names the instance and the path (piku-model's
    // `front` module says why).
    let wait = s.front.nginx_proxy_timeout_secs();
    let _ = writeln!(out, "    proxy_read_timeout {wait}s;");
    let _ = writeln!(out, "    proxy_send_timeout {wait}s;");
    if let Some(bytes) = s.front.client_max_body_size {
        let _ = writeln!(out, "    client_max_body_size {bytes};");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::NginxFeatures;
    use piku_model::{AppName, EnvMap, PikuRoot};

    fn settings(pairs: &[(&str, &str)]) -> NginxSettings {
        let env: EnvMap = pairs
            .iter()
            .chain(&[("NGINX_SERVER_NAME", "blog.example.com www.blog.example.com")])
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let app: AppName = "blog".parse().unwrap();
        NginxSettings::from_env(&app, &PikuRoot::new("/r"), &env, true, None)
            .unwrap()
            .unwrap()
    }

    fn has(conf: &str, line: &str) -> bool {
        conf.lines().any(|l| l.trim() == line)
    }

    #[test]
    fn default_config_has_piku_parts() {
        let s = settings(&[]);
        let id = conf_id(&s);
        let conf = render(&s);
        for line in [
            "listen [::]:80;",
            "listen 0.0.0.0:80;",
            "listen [::]:443 ssl;",
            "listen 0.0.0.0:443 ssl;",
            "ssl_certificate /r/nginx/blog.crt;",
            "ssl_certificate_key /r/nginx/blog.key;",
            "server_name blog.example.com www.blog.example.com;",
            "location ^~ /.well-known/acme-challenge {",
            "root /r/acme;",
            "gzip_comp_level 7;",
            "add_header X-Deployed-By Piku;",
            "location ~ /\\.git {",
            "server unix:/r/nginx/blog.sock;",
            &format!("upstream {id} {{"),
            &format!("proxy_pass http://{id};"),
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            &format!("proxy_set_header Connection ${id}_connection;"),
            "proxy_set_header Host $host;",
            "proxy_set_header X-Forwarded-Proto $scheme;",
            "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
            "proxy_set_header X-Remote-Address $remote_addr;",
            "proxy_set_header X-Forwarded-Port $server_port;",
            "proxy_set_header X-Request-Start $msec;",
        ] {
            assert!(has(&conf, line), "missing {line:?} in\n{conf}");
        }
        assert_eq!(conf.matches("server {").count(), 1);
        assert!(!conf.contains("uwsgi"));
        assert!(!conf.contains("http2"));
        assert!(!conf.contains("proxy_cache"));
        assert!(!conf.contains("deny all;\n}") && !conf.contains("allow 173."));
        // Braces balance: nginx would say so too, but this catches it without nginx.
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    #[test]
    fn ids_differ_per_app_and_per_root() {
        let a = settings(&[]);
        let mut b = a.clone();
        b.app = "blog2".parse().unwrap();
        let mut c = a.clone();
        c.root = PikuRoot::new("/home/other/.piku");
        assert_ne!(conf_id(&a), conf_id(&b));
        assert_ne!(conf_id(&a), conf_id(&c));
        assert_eq!(conf_id(&a), conf_id(&a.clone()));
        assert!(conf_id(&a).starts_with("piku_") && conf_id(&a).len() == 21);
    }

    #[test]
    fn nginx_outwaits_the_front_and_takes_the_body_limit() {
        let conf = render(&settings(&[]));
        assert!(has(&conf, "proxy_read_timeout 60s;"), "{conf}");
        assert!(has(&conf, "proxy_send_timeout 60s;"));
        assert!(!conf.contains("client_max_body_size"));
        // Unknown nginx version: no upstream keepalive_timeout (older than 1.15.3 refuse it).
        assert!(!conf.contains("keepalive_timeout"));

        let mut s = settings(&[
            ("PIKU_RESPONSE_TIMEOUT", "300"),
            ("PIKU_KEEPALIVE_TIMEOUT", "30"),
            ("NGINX_CLIENT_MAX_BODY_SIZE", "100m"),
        ]);
        s.features.version = Some((1, 22, 1));
        s.cache = Some(crate::settings::CacheSettings {
            prefixes: vec!["assets".into()],
            path: "/r/cache/blog".into(),
            size_gb: 1,
            time_content: 3600,
            time_redirects: 3600,
            time_any: 3600,
            time_control: 3600,
            time_expiry: 86400,
        });
        let conf = render(&s);
        // Both proxied locations (the cached one and `/`) get every directive.
        assert_eq!(
            conf.matches("proxy_read_timeout 310s;").count(),
            2,
            "{conf}"
        );
        assert_eq!(conf.matches("proxy_send_timeout 310s;").count(), 2);
        assert_eq!(conf.matches("client_max_body_size 104857600;").count(), 2);
        let upstream = &conf[conf.find("upstream").unwrap()..];
        let upstream = &upstream[..upstream.find('}').unwrap()];
        assert!(upstream.contains("keepalive_timeout 29s;"), "{upstream}");
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    #[test]
    fn bad_front_settings_are_refused_by_name() {
        let env: EnvMap = [
            ("NGINX_SERVER_NAME", "a.example"),
            ("PIKU_RESPONSE_TIMEOUT", "0"),
            ("NGINX_CLIENT_MAX_BODY_SIZE", "huge"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let app: AppName = "blog".parse().unwrap();
        let err = NginxSettings::from_env(&app, &PikuRoot::new("/r"), &env, true, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("PIKU_RESPONSE_TIMEOUT: '0' must be"), "{err}");
        assert!(
            err.contains("NGINX_CLIENT_MAX_BODY_SIZE: 'huge' must be"),
            "{err}"
        );
    }

    #[test]
    fn http2_follows_the_nginx_version() {
        let mut s = settings(&[]);
        s.features = NginxFeatures {
            version: Some((1, 22, 1)),
            http2_module: true,
            threads: true,
        };
        let conf = render(&s);
        assert!(has(&conf, "listen 0.0.0.0:443 ssl http2;"));
        assert!(!conf.contains("http2 on;"));
        s.features.version = Some((1, 25, 1));
        let conf = render(&s);
        assert!(has(&conf, "listen 0.0.0.0:443 ssl;"));
        assert!(has(&conf, "http2 on;"));
    }

    #[test]
    fn https_only_redirects_from_a_separate_server() {
        let conf = render(&settings(&[("NGINX_HTTPS_ONLY", "true")]));
        assert_eq!(conf.matches("server {").count(), 2);
        assert!(has(&conf, "return 301 https://$host$request_uri;"));
        let (redirect, tls) = conf.rsplit_once("}\nserver {").unwrap();
        assert!(redirect.contains("listen 0.0.0.0:80;") && redirect.contains("acme-challenge"));
        assert!(!tls.contains(":80;") && !tls.contains("acme-challenge"));
        let conf = render(&settings(&[
            ("NGINX_HTTPS_ONLY", "1"),
            ("NGINX_HTTPS_PORT", "8443"),
        ]));
        assert!(has(&conf, "return 301 https://$host:8443$request_uri;"));
    }

    #[test]
    fn ipv6_can_be_disabled_and_addresses_set() {
        let conf = render(&settings(&[
            ("DISABLE_IPV6", "1"),
            ("NGINX_IPV4_ADDRESS", "127.0.0.1"),
            ("NGINX_HTTP_PORT", "8080"),
        ]));
        assert!(!conf.contains("[::]"));
        assert!(has(&conf, "listen 127.0.0.1:8080;"));
        assert!(has(&conf, "listen 127.0.0.1:443 ssl;"));
    }

    #[test]
    fn static_locations_with_catch_all() {
        let mut s = settings(&[
            ("NGINX_STATIC_PATHS", "/static/:public"),
            ("NGINX_CATCH_ALL", "/index.html"),
        ]);
        let conf = render(&s);
        assert!(has(&conf, "location /static/ {"));
        assert!(has(&conf, "alias /r/apps/blog/public/;"));
        assert!(has(
            &conf,
            "try_files $uri $uri.html $uri/ /index.html =404;"
        ));
        assert!(!conf.contains("aio threads"));
        s.features.threads = true;
        assert!(has(&render(&s), "aio threads;"));
        // Static locations come before `location /`, as in piku.
        let conf = render(&s);
        assert!(conf.find("location /static/").unwrap() < conf.find("location / {").unwrap());
    }

    #[test]
    fn no_web_process_no_proxy() {
        let mut s = settings(&[("NGINX_STATIC_PATHS", "/static/:public")]);
        s.proxy = false;
        let conf = render(&s);
        assert!(
            !conf.contains("upstream")
                && !conf.contains("proxy_pass")
                && !conf.contains("map $http_upgrade")
        );
        assert!(!has(&conf, "location / {"));
    }

    #[test]
    fn git_folders_can_be_allowed() {
        assert!(!render(&settings(&[("NGINX_ALLOW_GIT_FOLDERS", "yes")])).contains("\\.git"));
    }

    #[test]
    fn include_goes_in_the_tls_server() {
        let mut s = settings(&[]);
        s.include = Some("client_max_body_size 20m;".into());
        let conf = render(&s);
        assert!(has(&conf, "client_max_body_size 20m;"));
        assert!(conf.find("client_max_body_size").unwrap() < conf.find("location / {").unwrap());
    }

    #[test]
    fn cache_uses_proxy_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = settings(&[]);
        s.cache = Some(crate::settings::CacheSettings {
            prefixes: vec!["api".into(), "img".into()],
            path: tmp.path().to_path_buf(),
            size_gb: 2,
            time_content: 60,
            time_redirects: 30,
            time_any: 10,
            time_control: 120,
            time_expiry: 600,
        });
        let id = conf_id(&s);
        let conf = render(&s);
        assert!(conf.starts_with("# nginx config"));
        assert!(conf.contains(&format!(
            "proxy_cache_path {} levels=1:2 keys_zone={id}:20m inactive=600s max_size=2g use_temp_path=off;",
            tmp.path().display()
        )));
        for line in [
            "location ~* ^/(api|img) {",
            &format!("proxy_cache {id};"),
            "proxy_cache_valid 200 304 60s;",
            "proxy_cache_valid 301 307 30s;",
            "proxy_cache_valid any 10s;",
            "add_header Cache-Control \"public, max-age=120\";",
            "add_header X-Cache $upstream_cache_status;",
        ] {
            assert!(has(&conf, line), "missing {line:?}");
        }
        assert_eq!(conf.matches(&format!("proxy_pass http://{id};")).count(), 2);
    }

    #[test]
    fn cloudflare_acl_allows_both_families_then_denies() {
        let conf = render(&settings(&[
            ("NGINX_CLOUDFLARE_ACL", "true"),
            ("SSH_CLIENT", "198.51.100.7 1 22"),
        ]));
        assert!(has(&conf, "allow 173.245.48.0/20;"));
        assert!(has(&conf, "allow 2606:4700::/32;"));
        assert!(has(&conf, "allow 127.0.0.1;"));
        assert!(has(&conf, "allow 198.51.100.7;"));
        assert!(conf.find("allow 198.51.100.7;").unwrap() < conf.find("deny all;\n").unwrap());
        assert!(has(
            &conf,
            "proxy_set_header X-Remote-Address $http_cf_connecting_ip;"
        ));
        // With IPv6 disabled the v6 ranges are still allowed (piku had this inverted).
        let conf = render(&settings(&[
            ("NGINX_CLOUDFLARE_ACL", "true"),
            ("DISABLE_IPV6", "true"),
        ]));
        assert!(has(&conf, "allow 2400:cb00::/32;"));
    }
}
