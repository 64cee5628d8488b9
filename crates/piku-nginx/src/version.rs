//! What the installed nginx can do, read from `nginx -V`: its version (for the HTTP/2
//! syntax) and whether it was built with the HTTP/2 module and thread pools (`aio threads`).

/// Capabilities of one nginx binary. The default assumes nothing (no HTTP/2, no threads),
/// which renders a config every nginx accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NginxFeatures {
    pub version: Option<(u32, u32, u32)>,
    pub http2_module: bool,
    pub threads: bool,
}

/// How a TLS server asks for HTTP/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http2Style {
    /// No HTTP/2 module: HTTP/1.1 only.
    Off,
    /// nginx < 1.25.1: `listen … ssl http2;`
    ListenFlag,
    /// nginx ≥ 1.25.1: `http2 on;` (the listen flag is deprecated there).
    Directive,
}

impl NginxFeatures {
    /// Parses the text `nginx -V` prints (on stderr): `nginx version: nginx/1.22.1` and the
    /// `configure arguments:` line.
    pub fn parse(text: &str) -> NginxFeatures {
        let version = text
            .split_whitespace()
            .find_map(|word| word.strip_prefix("nginx/"))
            .and_then(parse_version);
        NginxFeatures {
            version,
            http2_module: text.contains("--with-http_v2_module"),
            threads: text.contains("--with-threads"),
        }
    }

    pub fn http2(&self) -> Http2Style {
        match (self.http2_module, self.version) {
            (false, _) => Http2Style::Off,
            (true, Some(v)) if v >= (1, 25, 1) => Http2Style::Directive,
            (true, _) => Http2Style::ListenFlag,
        }
    }

    /// `-e <file>` (error log before the config is read) exists since nginx 1.19.5.
    pub fn has_error_log_flag(&self) -> bool {
        self.version.is_some_and(|v| v >= (1, 19, 5))
    }
}

fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let mut parts = text.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN_1_22: &str = "nginx version: nginx/1.22.1\nbuilt with OpenSSL 3.0.11\nTLS SNI support enabled\nconfigure arguments: --with-cc-opt='-g' --with-http_ssl_module --with-http_v2_module --with-threads";

    #[test]
    fn debian_bookworm_uses_the_listen_flag() {
        let f = NginxFeatures::parse(DEBIAN_1_22);
        assert_eq!(f.version, Some((1, 22, 1)));
        assert!(f.threads);
        assert_eq!(f.http2(), Http2Style::ListenFlag);
        assert!(f.has_error_log_flag());
    }

    #[test]
    fn new_nginx_uses_the_directive() {
        let f = NginxFeatures::parse("nginx version: nginx/1.25.1\n--with-http_v2_module");
        assert_eq!(f.http2(), Http2Style::Directive);
        let f = NginxFeatures::parse("nginx version: nginx/1.26.0 (Ubuntu)\n--with-http_v2_module");
        assert_eq!(f.http2(), Http2Style::Directive);
        let f = NginxFeatures::parse("nginx version: nginx/1.25.0\n--with-http_v2_module");
        assert_eq!(f.http2(), Http2Style::ListenFlag);
    }

    #[test]
    fn no_module_no_http2() {
        let f = NginxFeatures::parse("nginx version: nginx/1.27.0\nconfigure arguments:");
        assert_eq!(f.http2(), Http2Style::Off);
        assert!(!f.threads);
        assert_eq!(NginxFeatures::default().http2(), Http2Style::Off);
        assert!(!NginxFeatures::default().has_error_log_flag());
    }
}
