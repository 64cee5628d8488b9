//! Header rewriting at the proxy boundary: hop-by-hop fields removed (RFC 9110 §7.6.1),
//! `X-Forwarded-*` added, and the `Upgrade` handshake fields kept when a protocol switch is asked.

use std::net::IpAddr;

use hyper::HeaderMap;
use hyper::header::{self, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Who is on the other end of a client connection, and whether their `X-Forwarded-*` can be believed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer {
    /// The client's address (TCP); `None` on the Unix socket, where nginx already added it.
    pub(crate) ip: Option<IpAddr>,
    /// The port the client connected to (TCP).
    pub(crate) local_port: Option<u16>,
    /// True on the Unix socket: only nginx can reach it, so its `X-Forwarded-Proto/Host/Port`
    /// are kept. On the public TCP listener they are overwritten, since any client could forge them.
    pub(crate) trusted: bool,
}

/// True when the client asks to switch protocols (websocket and friends): an `Upgrade` field
/// and `upgrade` among the `Connection` options.
pub(crate) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .is_some_and(|value| !value.is_empty())
        && connection_options(headers).any(|option| option.eq_ignore_ascii_case("upgrade"))
}

/// Readies a client request for the backend.
pub(crate) fn rewrite_request(headers: &mut HeaderMap, upgrade: bool, peer: &Peer) {
    remove_hop_by_hop(headers, upgrade);
    // TE is hop-by-hop as well; only requests carry it. `Expect: 100-continue` is answered by
    // this hop (hyper sends the 100 when the body is first read), so the app must not see it.
    headers.remove(header::TE);
    headers.remove(header::EXPECT);

    if let Some(ip) = peer.ip {
        let appended = match joined(headers, &X_FORWARDED_FOR) {
            Some(earlier) => format!("{earlier}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&appended) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    }

    if !peer.trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if !peer.trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match headers.get(header::HOST).cloned() {
            Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    if !peer.trusted || !headers.contains_key(&X_FORWARDED_PORT) {
        match peer.local_port {
            Some(port) => headers.insert(X_FORWARDED_PORT.clone(), HeaderValue::from(port)),
            None => headers.remove(&X_FORWARDED_PORT),
        };
    }
}

/// Readies a backend response for the client (`upgrade`: a 101 answering an upgrade request).
pub(crate) fn rewrite_response(headers: &mut HeaderMap, upgrade: bool) {
    remove_hop_by_hop(headers, upgrade);
}

/// Removes the fields that describe one connection rather than the message: those named in
/// `Connection`, and the fixed list. With `keep_upgrade`, `Upgrade` stays and `Connection` is
/// reduced to `upgrade`, so the next hop sees the handshake.
fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let options: Vec<HeaderName> = connection_options(headers)
            .filter_map(|option| HeaderName::from_bytes(option.as_bytes()).ok())
            .collect();
        for name in options {
            if !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The comma-separated options of every `Connection` field, trimmed.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|option| !option.is_empty())
}

/// All values of `name` joined with ", " (a list field may arrive split over several lines).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for value in headers.get_all(name) {
        let Ok(text) = value.to_str() else { continue };
        match &mut out {
            Some(list) => {
                list.push_str(", ");
                list.push_str(text);
            }
            None => out = Some(text.to_owned()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const TCP_PEER: Peer = Peer {
        ip: Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7))),
        local_port: Some(5000),
        trusted: false,
    };

    #[test]
    fn connection_named_fields_and_fixed_list_are_removed() {
        let mut map = headers(&[
            ("connection", "close, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("expect", "100-continue"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-app", "kept"),
        ]);
        rewrite_request(&mut map, false, &TCP_PEER);
        for gone in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!map.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(map["x-app"], "kept");
    }

    #[test]
    fn upgrade_handshake_survives_when_asked() {
        let mut map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(wants_upgrade(&map));
        rewrite_request(&mut map, true, &TCP_PEER);
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
    }

    #[test]
    fn nginx_style_connection_upgrade_without_upgrade_field_is_no_upgrade() {
        let map = headers(&[("connection", "upgrade")]);
        assert!(!wants_upgrade(&map));
    }

    #[test]
    fn forwarded_for_is_appended_over_split_fields() {
        let mut map = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        rewrite_request(&mut map, false, &TCP_PEER);
        assert_eq!(map["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.7");
    }

    #[test]
    fn untrusted_peer_cannot_forge_proto_host_or_port() {
        let mut map = headers(&[
            ("host", "app.example:5000"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "443"),
        ]);
        rewrite_request(&mut map, false, &TCP_PEER);
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "app.example:5000");
        assert_eq!(map["x-forwarded-port"], "5000");
    }

    #[test]
    fn trusted_peer_keeps_what_nginx_set_and_fills_the_rest() {
        let nginx = Peer {
            ip: None,
            local_port: None,
            trusted: true,
        };
        let mut map = headers(&[
            ("host", "app.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-port", "443"),
        ]);
        rewrite_request(&mut map, false, &nginx);
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-for"], "203.0.113.9");
        assert_eq!(map["x-forwarded-host"], "app.example");
        assert_eq!(map["x-forwarded-port"], "443");
    }
}
