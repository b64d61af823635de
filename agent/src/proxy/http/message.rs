//! What a proxy does to HTTP messages between parsing and relaying: request targets,
//! hop-by-hop fields (RFC 9110 7.6.1), Basic proxy authentication, keep-alive decisions and
//! the error responses it generates.
//!
//! Pure functions over parsed heads and bytes: no I/O.

use base64::Engine as _;

use super::head::{Header, RequestHead, ResponseHead, tokens, values};

/// A request-target (RFC 9112 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `http://host[:port]/path?query`: what a forward proxy gets.
    Absolute {
        host: String,
        port: u16,
        /// The origin-form to send on (`/` when the URI had no path).
        path: String,
    },
    /// `host:port`: CONNECT.
    Authority { host: String, port: u16 },
    /// `/path?query`: what an origin server (and the reverse proxy) gets.
    Origin(String),
    /// `*` (OPTIONS).
    Asterisk,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("invalid request target")]
    Invalid,
    #[error("unsupported URI scheme (only http:// is proxied; use CONNECT for https)")]
    Scheme,
    #[error("invalid port in request target")]
    Port,
}

/// Splits `host[:port]` (IPv6 literals in brackets) into a host and a port.
pub fn split_authority(
    auth: &str,
    default_port: Option<u16>,
) -> Result<(String, u16), TargetError> {
    if auth.is_empty() || auth.contains('@') || auth.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(TargetError::Invalid);
    }
    let (host, port) = if let Some(rest) = auth.strip_prefix('[') {
        let end = rest.find(']').ok_or(TargetError::Invalid)?;
        let host = &rest[..end];
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| TargetError::Invalid)?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(TargetError::Invalid),
        };
        (host.to_string(), port)
    } else {
        match auth.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (auth.to_string(), None),
        }
    };
    if host.is_empty()
        || !host.contains(':')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err(TargetError::Invalid);
    }
    let port = match port {
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TargetError::Port);
            }
            match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(TargetError::Port),
                Ok(n) => n,
            }
        }
        None => default_port.ok_or(TargetError::Port)?,
    };
    Ok((host, port))
}

/// `host:port` for a Host field or a record (`[v6]:port` for IPv6 literals), with the port
/// left out when it is `default`.
pub fn authority(host: &str, port: u16, default: Option<u16>) -> String {
    let h = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if Some(port) == default {
        h
    } else {
        format!("{h}:{port}")
    }
}

/// Parses a request-target for `method`.
pub fn parse_target(method: &str, target: &str) -> Result<Target, TargetError> {
    if method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(target, None)?;
        return Ok(Target::Authority { host, port });
    }
    if target == "*" {
        return Ok(Target::Asterisk);
    }
    if target.starts_with('/') {
        return Ok(Target::Origin(target.to_string()));
    }
    let (scheme, rest) = target.split_once("://").ok_or(TargetError::Invalid)?;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(TargetError::Scheme);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (auth, path) = rest.split_at(end);
    let (host, port) = split_authority(auth, Some(80))?;
    // The fragment is never sent (RFC 9110 4.2.5).
    let path = path.split('#').next().unwrap_or("");
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(Target::Absolute { host, port, path })
}

/// Fields that apply to one connection only and never go on (RFC 9110 7.6.1), plus the proxy
/// credentials meant for capagent.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// The header fields of `headers` that may be forwarded: without hop-by-hop fields and
/// without the fields the Connection field names.
pub fn end_to_end(headers: &[Header]) -> Vec<Header> {
    let mut listed = tokens(headers, "connection");
    listed.extend(tokens(headers, "proxy-connection"));
    headers
        .iter()
        .filter(|h| {
            let n = h.name.to_ascii_lowercase();
            !HOP_BY_HOP.contains(&n.as_str()) && !listed.contains(&n)
        })
        .cloned()
        .collect()
}

/// The protocols an HTTP/1.1 request without a body asks to switch to (RFC 9110 7.8: its
/// `Upgrade` field, with `upgrade` listed in `Connection`), e.g. `websocket`. The proxies
/// pass such a request on with both fields, and after a `101 Switching Protocols` relay
/// the bytes both ways. None for anything else (an HTTP/1.0 request's Upgrade is ignored,
/// as RFC 9110 wants).
pub fn upgrade_of(head: &RequestHead) -> Option<&[u8]> {
    if head.minor == 0
        || !tokens(&head.headers, "connection")
            .iter()
            .any(|t| t == "upgrade")
        || !matches!(
            super::body::request_framing(head),
            Ok(super::body::Framing::Empty)
        )
    {
        return None;
    }
    let mut upgrades = head.headers.iter().filter(|h| h.is("upgrade"));
    let value = upgrades.next()?.value.as_slice();
    // One non-empty field; several would have to be merged, which no client does.
    (upgrades.next().is_none() && value.iter().any(|b| !b.is_ascii_whitespace())).then_some(value)
}

/// The head of a `101 Switching Protocols` from a server, as relayed to the client:
/// end-to-end fields plus the server's `Upgrade` and `Connection: upgrade`.
pub fn switching_response(resp: &ResponseHead) -> ResponseHead {
    let mut headers = end_to_end(&resp.headers);
    if let Some(u) = resp.headers.iter().find(|h| h.is("upgrade")) {
        headers.push(Header::new("Upgrade", u.value.clone()));
    }
    headers.push(Header::new("Connection", "upgrade"));
    ResponseHead {
        minor: 1,
        status: 101,
        reason: resp.reason.clone(),
        headers,
    }
}

/// Whether the client wants the connection kept open after this request.
pub fn request_keep_alive(head: &RequestHead) -> bool {
    connection_keep_alive(head.minor, &head.headers, true)
}

/// Whether the server keeps the connection open after this response.
pub fn response_keep_alive(head: &ResponseHead) -> bool {
    connection_keep_alive(head.minor, &head.headers, false)
}

fn connection_keep_alive(minor: u8, headers: &[Header], proxy_connection: bool) -> bool {
    let mut t = tokens(headers, "connection");
    if proxy_connection {
        t.extend(tokens(headers, "proxy-connection"));
    }
    if t.iter().any(|t| t == "close") {
        return false;
    }
    minor >= 1 || t.iter().any(|t| t == "keep-alive")
}

/// The request head sent on to the server: origin-form target `path`, Host set to `host`
/// (RFC 9112 3.2.2: a proxy replaces Host with the authority of an absolute-form target),
/// end-to-end fields only, the framing fields for `chunked` (re-chunked) or the
/// Content-Length kept, and `Connection: close` when the client closes after this request.
/// Always HTTP/1.1.
pub fn upstream_request(
    head: &RequestHead,
    path: &str,
    host: Option<&str>,
    chunked: bool,
) -> RequestHead {
    let mut headers: Vec<Header> = end_to_end(&head.headers);
    if let Some(host) = host {
        match headers.iter_mut().find(|h| h.is("host")) {
            Some(h) => h.value = host.as_bytes().to_vec(),
            None => headers.insert(0, Header::new("Host", host)),
        }
        // Only one Host.
        let mut seen = false;
        headers.retain(|h| {
            if h.is("host") {
                let keep = !seen;
                seen = true;
                keep
            } else {
                true
            }
        });
    }
    if chunked {
        headers.retain(|h| !h.is("content-length"));
        headers.push(Header::new("Transfer-Encoding", "chunked"));
    }
    if let Some(protocols) = upgrade_of(head) {
        // Hop-by-hop, so removed above; passed on for the server to switch (WebSocket).
        headers.push(Header::new("Upgrade", protocols.to_vec()));
        headers.push(Header::new("Connection", "upgrade"));
    }
    if !request_keep_alive(head) {
        // The server connection ends with the client's: let the server close first (its
        // side then keeps the TIME_WAIT, not capagent's ports).
        headers.push(Header::new("Connection", "close"));
    }
    RequestHead {
        method: head.method.clone(),
        target: path.to_string(),
        minor: 1,
        headers,
    }
}

/// The response head relayed to a client: end-to-end fields, the framing it will get
/// (`chunked` re-chunked for HTTP/1.1 clients; none for close-delimited bodies) and
/// `Connection: close` when the proxy closes after it.
pub fn client_response(resp: &ResponseHead, chunked: bool, close: bool) -> ResponseHead {
    let mut headers = end_to_end(&resp.headers);
    if chunked {
        headers.retain(|h| !h.is("content-length"));
        headers.push(Header::new("Transfer-Encoding", "chunked"));
    }
    if close {
        headers.push(Header::new("Connection", "close"));
    }
    ResponseHead {
        minor: 1,
        status: resp.status,
        reason: resp.reason.clone(),
        headers,
    }
}

/// Outcome of checking Basic proxy credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    Ok,
    /// No Proxy-Authorization field.
    Missing,
    /// Present but wrong or malformed.
    Wrong,
}

/// Checks `Proxy-Authorization: Basic base64(user:pass)` against `user:pass`.
pub fn check_basic(headers: &[Header], user_pass: &str) -> Auth {
    let Some(h) = values(headers, "proxy-authorization").next() else {
        return Auth::Missing;
    };
    let text = h.text();
    let Some((scheme, cred)) = text.split_once(' ') else {
        return Auth::Wrong;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Auth::Wrong;
    }
    match base64::engine::general_purpose::STANDARD.decode(cred.trim()) {
        Ok(decoded) if constant_time_eq(&decoded, user_pass.as_bytes()) => Auth::Ok,
        _ => Auth::Wrong,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The reason phrase of the status codes the proxy generates.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        411 => "Length Required",
        414 => "URI Too Long",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A complete response the proxy generates itself: `status`, a one-line text body saying
/// `why`, the extra fields, and `Connection: close` when `close`.
pub fn error_response(status: u16, why: &str, extra: &[Header], close: bool) -> Vec<u8> {
    let body = format!("capagent: {status} {}: {why}\n", reason(status));
    let mut headers = vec![
        Header::new("Content-Type", "text/plain; charset=utf-8"),
        Header::new("Content-Length", body.len().to_string()),
    ];
    headers.extend_from_slice(extra);
    if close {
        headers.push(Header::new("Connection", "close"));
    }
    let head = ResponseHead {
        minor: 1,
        status,
        reason: reason(status).to_string(),
        headers,
    };
    let mut out = super::head::write_response(&head);
    out.extend_from_slice(body.as_bytes());
    out
}

/// The 407 answer to missing or wrong proxy credentials.
pub fn proxy_auth_required(close: bool) -> Vec<u8> {
    error_response(
        407,
        "proxy authentication required",
        &[Header::new(
            "Proxy-Authenticate",
            "Basic realm=\"capagent\"",
        )],
        close,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::http::head::{parse_request, parse_response};

    fn req(s: &str) -> RequestHead {
        parse_request(s.as_bytes()).unwrap().unwrap().0
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("GET", "http://Example.com:8080/a/b?c#frag"),
            Ok(Target::Absolute {
                host: "Example.com".into(),
                port: 8080,
                path: "/a/b?c".into()
            })
        );
        assert_eq!(
            parse_target("GET", "http://[::1]?q"),
            Ok(Target::Absolute {
                host: "::1".into(),
                port: 80,
                path: "/?q".into()
            })
        );
        assert_eq!(
            parse_target("CONNECT", "example.com:443"),
            Ok(Target::Authority {
                host: "example.com".into(),
                port: 443
            })
        );
        assert_eq!(
            parse_target("CONNECT", "example.com"),
            Err(TargetError::Port)
        );
        assert_eq!(parse_target("GET", "/x"), Ok(Target::Origin("/x".into())));
        assert_eq!(parse_target("OPTIONS", "*"), Ok(Target::Asterisk));
        assert_eq!(parse_target("GET", "https://a/"), Err(TargetError::Scheme));
        assert_eq!(
            parse_target("GET", "http://u:p@a/"),
            Err(TargetError::Invalid)
        );
        assert_eq!(
            parse_target("GET", "http://a:99999/"),
            Err(TargetError::Port)
        );
        assert_eq!(parse_target("GET", "http://a:0/"), Err(TargetError::Port));
        assert_eq!(parse_target("GET", "http:///x"), Err(TargetError::Invalid));
        assert_eq!(parse_target("GET", "foo"), Err(TargetError::Invalid));
        assert_eq!(authority("::1", 80, Some(80)), "[::1]");
        assert_eq!(authority("a", 81, Some(80)), "a:81");
    }

    #[test]
    fn hop_by_hop_removed() {
        let r = req(
            "GET http://a/ HTTP/1.1\r\nHost: wrong\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nProxy-Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eDp5\r\nX-Keep: yes\r\n\r\n",
        );
        // (The parser refuses a second Host; a head made otherwise still gets only one.)
        let mut r = r;
        r.headers.push(Header::new("Host", "again"));
        let up = upstream_request(&r, "/", Some("a"), false);
        assert_eq!(
            String::from_utf8(crate::proxy::http::head::write_request(&up)).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nX-Keep: yes\r\n\r\n"
        );
        let r = req("POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
        let up = upstream_request(&r, "/", Some("a:8080"), true);
        assert_eq!(
            String::from_utf8(crate::proxy::http::head::write_request(&up)).unwrap(),
            "POST / HTTP/1.1\r\nHost: a:8080\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn response_fields() {
        let r = parse_response(b"HTTP/1.0 200 OK\r\nConnection: close, X-A\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nServer: s\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(!response_keep_alive(&r));
        let c = client_response(&r, true, true);
        assert_eq!(
            String::from_utf8(crate::proxy::http::head::write_response(&c)).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: s\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn keep_alive_rules() {
        assert!(request_keep_alive(&req(
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        )));
        assert!(!request_keep_alive(&req(
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )));
        assert!(!request_keep_alive(&req(
            "GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n"
        )));
        assert!(!request_keep_alive(&req("GET / HTTP/1.0\r\n\r\n")));
        let close = req("GET http://a/ HTTP/1.0\r\nProxy-Connection: close\r\n\r\n");
        let up = upstream_request(&close, "/", Some("a"), false);
        assert_eq!(
            String::from_utf8(crate::proxy::http::head::write_request(&up)).unwrap(),
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        );
        assert!(request_keep_alive(&req(
            "GET / HTTP/1.0\r\nProxy-Connection: Keep-Alive\r\n\r\n"
        )));
    }

    #[test]
    fn basic_auth() {
        let ok =
            req("GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n");
        assert_eq!(check_basic(&ok.headers, "user:pass"), Auth::Ok);
        assert_eq!(check_basic(&ok.headers, "user:other"), Auth::Wrong);
        let bad = req("GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Basic !!!\r\n\r\n");
        assert_eq!(check_basic(&bad.headers, "user:pass"), Auth::Wrong);
        let bearer =
            req("GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: Bearer dXNlcjpwYXNz\r\n\r\n");
        assert_eq!(check_basic(&bearer.headers, "user:pass"), Auth::Wrong);
        assert_eq!(
            check_basic(&req("GET / HTTP/1.1\r\nHost: a\r\n\r\n").headers, "u:p"),
            Auth::Missing
        );
    }

    #[test]
    fn generated_responses() {
        let r = proxy_auth_required(false);
        let (h, n) = parse_response(&r).unwrap().unwrap();
        assert_eq!(h.status, 407);
        assert_eq!(
            values(&h.headers, "proxy-authenticate")
                .next()
                .unwrap()
                .text(),
            "Basic realm=\"capagent\""
        );
        let len: usize = values(&h.headers, "content-length")
            .next()
            .unwrap()
            .text()
            .parse()
            .unwrap();
        assert_eq!(n + len, r.len());
        let e = error_response(502, "connection refused", &[], true);
        assert!(e.starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(
            String::from_utf8(e)
                .unwrap()
                .contains("Connection: close\r\n")
        );
    }

    #[test]
    fn upgrade_requests() {
        let req = |text: &str| parse_request(text.as_bytes()).unwrap().unwrap().0;
        let ws = req(
            "GET http://a/chat HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
        );
        assert_eq!(upgrade_of(&ws), Some(&b"websocket"[..]));
        let up = upstream_request(&ws, "/chat", Some("a"), false);
        let text = String::from_utf8(crate::proxy::http::head::write_request(&up)).unwrap();
        assert_eq!(
            text,
            "GET /chat HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: k\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        );
        // Not an upgrade: HTTP/1.0 (RFC 9110 says to ignore it), Upgrade not listed in
        // Connection, no Upgrade field, a body, two Upgrade fields.
        for text in [
            "GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 3\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: a\r\nUpgrade: b\r\n\r\n",
        ] {
            let r = req(text);
            assert_eq!(upgrade_of(&r), None, "{text}");
            let up = upstream_request(&r, "/", Some("a"), false);
            assert!(
                !up.headers.iter().any(|h| h.is("upgrade")),
                "{text}: {:?}",
                up.headers
            );
        }
        let resp = parse_response(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n",
        )
        .unwrap()
        .unwrap()
        .0;
        let text = String::from_utf8(crate::proxy::http::head::write_response(
            &switching_response(&resp),
        ))
        .unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
        );
    }
}
