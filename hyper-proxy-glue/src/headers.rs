//! Header rewriting at the proxy boundary: hop-by-hop fields removed (RFC 9110 §7.6.1), the
//! client's address fields set from who the client really is, the `Upgrade` handshake kept when
//! a protocol switch is asked, and the `Host` rules of RFC 9112 §3.2 checked.
//!
//! Trust: on the Unix socket the client is nginx, which sets `X-Forwarded-*`,
//! `X-Remote-Address` (and the rest of piku's proxy headers) itself, so they pass as nginx sent
//! them. On the public TCP port anyone can connect, so every client-address field a client
//! sent is dropped and the front sets its own from the peer address.

use std::net::IpAddr;

use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{HeaderMap, Version};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static X_REMOTE_ADDRESS: HeaderName = HeaderName::from_static("x-remote-address");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Who is on the other end of a client connection, and whether their client-address fields
/// can be believed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Peer {
    /// The client's address (TCP); `None` on the Unix socket, where nginx already set it.
    pub(crate) ip: Option<IpAddr>,
    /// The port the client connected to (TCP).
    pub(crate) local_port: Option<u16>,
    /// True on the Unix socket: only nginx can reach it (the socket is 0660, group www-data).
    pub(crate) trusted: bool,
}

/// Why a request (whose fields are `seen`) is refused with 400 before it reaches an instance.
pub(crate) fn host_problem(version: Version, seen: &Seen) -> Option<&'static str> {
    match seen.hosts {
        0 if version == Version::HTTP_11 => Some("HTTP/1.1 request without a Host field"),
        0 | 1 => None,
        _ => Some("more than one Host field"),
    }
}

/// True when the client asks to switch protocols (websocket and friends): an `Upgrade` field
/// and `upgrade` among the `Connection` options.
pub(crate) fn wants_upgrade(headers: &HeaderMap, seen: &Seen) -> bool {
    seen.upgrade
        && headers
            .get(header::UPGRADE)
            .is_some_and(|value| !value.is_empty())
        && connection_options(headers).any(|option| option.eq_ignore_ascii_case("upgrade"))
}

/// What one pass over a message's field names found. Most messages carry no hop-by-hop field
/// at all; a pass over their few names costs far less than looking each rule's name up in the
/// map (a hash per name: about a tenth of the glue's instructions per request went there). A
/// request's is taken once and serves every check and rewrite of it.
#[derive(Default)]
pub(crate) struct Seen {
    /// `Host` fields (counted up to 2).
    hosts: u8,
    upgrade: bool,
    /// A field [`remove_hop_by_hop`] (or, in a request, [`rewrite_request`]) removes.
    hop_by_hop: bool,
    forwarded_proto: bool,
    forwarded_host: bool,
}

impl Seen {
    /// A request's fields (as the instance would get them: after the absolute form's authority
    /// became its `Host`).
    pub(crate) fn request(headers: &HeaderMap) -> Seen {
        Seen::scan(headers, true)
    }

    fn scan(headers: &HeaderMap, request: bool) -> Seen {
        let mut seen = Seen::default();
        // Every value, not every name: a repeated `Host` counts.
        for (name, _) in headers {
            if name == header::HOST {
                seen.hosts = seen.hosts.saturating_add(1).min(2);
            } else if *name == X_FORWARDED_PROTO {
                seen.forwarded_proto = true;
            } else if *name == X_FORWARDED_HOST {
                seen.forwarded_host = true;
            } else if is_hop_by_hop(name)
                || request && (name == header::TE || name == header::EXPECT)
            {
                seen.hop_by_hop = true;
                seen.upgrade |= name == header::UPGRADE;
            }
        }
        seen
    }
}

/// `Connection` and the fields every hop removes whatever `Connection` names (`Upgrade` too,
/// unless an upgrade keeps it).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION || name == header::UPGRADE || HOP_BY_HOP.contains(&name)
}

/// The fixed list of RFC 9110 §7.6.1 (and the old `Proxy-Connection`).
static HOP_BY_HOP: [&HeaderName; 6] = [
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
];

/// Readies a client request (whose fields are `seen`) for the backend.
pub(crate) fn rewrite_request(headers: &mut HeaderMap, upgrade: bool, peer: &Peer, seen: &Seen) {
    if seen.hop_by_hop || upgrade {
        remove_hop_by_hop(headers, upgrade);
        // TE is hop-by-hop as well; only requests carry it. `Expect: 100-continue` is answered
        // by this hop (hyper sends the 100 when the body is first read), so the app must not
        // see it.
        headers.remove(header::TE);
        headers.remove(header::EXPECT);
    }

    if peer.trusted {
        // nginx sets these; fill in what a hand-written nginx config may have left out.
        if !seen.forwarded_proto {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if !seen.forwarded_host
            && let Some(host) = headers.get(header::HOST).cloned()
        {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        return;
    }

    remove_client_address_fields(headers);
    if let Some(ip) = peer.ip {
        let ip = HeaderValue::from_maybe_shared(bytes::Bytes::from(ip.to_string()))
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        headers.insert(X_FORWARDED_FOR.clone(), ip.clone());
        headers.insert(X_REAL_IP.clone(), ip.clone());
        headers.insert(X_REMOTE_ADDRESS.clone(), ip);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    if let Some(port) = peer.local_port {
        headers.insert(X_FORWARDED_PORT.clone(), HeaderValue::from(port));
    }
}

/// Drops every field an untrusted client could use to claim another address, scheme, host or
/// port: `Forwarded`, `X-Real-IP`, `X-Remote-Address` and the whole `X-Forwarded-*` family
/// (`-For`, `-Proto`, `-Host`, `-Port`, `-Ssl`, `-Prefix`, ...), however many times each occurs.
fn remove_client_address_fields(headers: &mut HeaderMap) {
    headers.remove(&FORWARDED);
    headers.remove(&X_REAL_IP);
    headers.remove(&X_REMOTE_ADDRESS);
    let forwarded: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("x-forwarded-"))
        .cloned()
        .collect();
    for name in forwarded {
        headers.remove(name);
    }
}

/// Readies a backend response for the client (`upgrade`: a 101 answering an upgrade request).
pub(crate) fn rewrite_response(headers: &mut HeaderMap, upgrade: bool) {
    if upgrade || Seen::scan(headers, false).hop_by_hop {
        remove_hop_by_hop(headers, upgrade);
    }
}

/// Removes the fields that describe one connection rather than the message: those named in
/// `Connection`, and the fixed list. With `keep_upgrade`, `Upgrade` stays and `Connection` is
/// reduced to `upgrade`, so the next hop sees the handshake.
///
/// `Host` is never removed, whatever `Connection` names: it is the request's target, not a
/// property of the connection, and `Connection: close, Host` would otherwise deliver a
/// request without one.
fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    if headers.contains_key(header::CONNECTION) {
        let options: Vec<HeaderName> = connection_options(headers)
            .filter_map(|option| HeaderName::from_bytes(option.as_bytes()).ok())
            .collect();
        for name in options {
            if name != header::HOST && !(keep_upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
        headers.remove(header::CONNECTION);
    }
    for name in HOP_BY_HOP {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(map: &mut HeaderMap, upgrade: bool, peer: &Peer) {
        let seen = Seen::request(map);
        rewrite_request(map, upgrade, peer, &seen);
    }

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
        rewrite(&mut map, false, &TCP_PEER);
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
    fn each_hop_by_hop_field_is_removed_when_alone() {
        let fixed = [
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "proxy-authorization",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ];
        for gone in fixed.iter().chain(&["te", "expect"]) {
            let mut map = headers(&[("host", "a"), (gone, "x"), ("x-app", "kept")]);
            rewrite(&mut map, false, &TCP_PEER);
            assert!(!map.contains_key(*gone), "{gone} should leave a request");
            assert_eq!(map["x-app"], "kept");
        }
        for gone in fixed {
            let mut map = headers(&[(gone, "x"), ("content-length", "3")]);
            rewrite_response(&mut map, false);
            assert!(!map.contains_key(gone), "{gone} should leave a response");
            assert_eq!(map["content-length"], "3");
        }
        // Only requests lose these.
        let mut map = headers(&[("te", "trailers"), ("expect", "x")]);
        rewrite_response(&mut map, false);
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn a_response_without_hop_by_hop_fields_is_left_alone() {
        let mut map = headers(&[("content-type", "text/plain"), ("x-app", "kept")]);
        let before = map.clone();
        rewrite_response(&mut map, false);
        assert_eq!(map, before);
    }

    #[test]
    fn upgrade_handshake_survives_when_asked() {
        let mut map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert!(wants_upgrade(&map, &Seen::request(&map)));
        rewrite(&mut map, true, &TCP_PEER);
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
    }

    #[test]
    fn nginx_style_connection_upgrade_without_upgrade_field_is_no_upgrade() {
        let map = headers(&[("connection", "upgrade")]);
        assert!(!wants_upgrade(&map, &Seen::request(&map)));
    }

    #[test]
    fn untrusted_peer_cannot_forge_any_client_address_field() {
        let mut map = headers(&[
            ("host", "app.example:5000"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-real-ip", "1.1.1.1"),
            ("x-remote-address", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-prefix", "/admin"),
            ("forwarded", "for=1.1.1.1;proto=https"),
        ]);
        rewrite(&mut map, false, &TCP_PEER);
        for (name, value) in [
            ("x-forwarded-for", "10.0.0.7"),
            ("x-real-ip", "10.0.0.7"),
            ("x-remote-address", "10.0.0.7"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "app.example:5000"),
            ("x-forwarded-port", "5000"),
        ] {
            let values: Vec<_> = map.get_all(name).iter().collect();
            assert_eq!(values, [value], "{name}");
        }
        for gone in ["x-forwarded-ssl", "x-forwarded-prefix", "forwarded"] {
            assert!(!map.contains_key(gone), "{gone} should be removed");
        }
    }

    #[test]
    fn connection_cannot_strip_host() {
        let mut map = headers(&[("connection", "close, Host"), ("host", "app.example")]);
        rewrite(&mut map, false, &TCP_PEER);
        assert_eq!(map["host"], "app.example");
        assert!(!map.contains_key("connection"));
    }

    #[test]
    fn host_is_required_once_in_http_1_1() {
        assert_eq!(
            host_problem(Version::HTTP_11, &Seen::request(&headers(&[("host", "a")]))),
            None
        );
        assert!(host_problem(Version::HTTP_11, &Seen::request(&headers(&[]))).is_some());
        assert!(
            host_problem(
                Version::HTTP_11,
                &Seen::request(&headers(&[("host", "a"), ("host", "b")]))
            )
            .is_some()
        );
        assert_eq!(
            host_problem(Version::HTTP_10, &Seen::request(&headers(&[]))),
            None
        );
        assert!(
            host_problem(
                Version::HTTP_10,
                &Seen::request(&headers(&[("host", "a"), ("host", "b")]))
            )
            .is_some()
        );
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
            ("x-remote-address", "203.0.113.9"),
            ("x-forwarded-port", "443"),
        ]);
        rewrite(&mut map, false, &nginx);
        assert_eq!(map["x-forwarded-proto"], "https");
        assert_eq!(map["x-forwarded-for"], "203.0.113.9");
        assert_eq!(map["x-remote-address"], "203.0.113.9");
        assert_eq!(map["x-forwarded-host"], "app.example");
        assert_eq!(map["x-forwarded-port"], "443");
    }
}
