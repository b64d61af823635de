//! HTTP/1.x message heads: request and response start lines and header sections, parsed
//! with `httparse` from a buffer that may hold a partial head, with size limits that hold
//! however the bytes arrived (the limits look at the accumulated buffer, not at one read).
//!
//! Pure functions over bytes: no I/O.

use std::fmt::Write as _;

/// Longest request line (method, target, version) accepted: longer gets 414.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Longest header section (after the start line) accepted: longer gets 431.
pub const MAX_HEADERS: usize = 64 * 1024;
/// Most header fields in one head (more gets 431).
pub const MAX_HEADER_COUNT: usize = 256;
/// Longest status line of a response.
pub const MAX_STATUS_LINE: usize = 8 * 1024;

/// Why a head was refused; each maps to the status code a proxy answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request line longer than {MAX_REQUEST_LINE} bytes")]
    LineTooLong,
    #[error("header section longer than {MAX_HEADERS} bytes or over {MAX_HEADER_COUNT} fields")]
    HeadersTooLarge,
    #[error("malformed message head: {0}")]
    Malformed(&'static str),
    #[error("unsupported HTTP version")]
    Version,
}

impl HeadError {
    /// The status code that answers this error (requests).
    pub fn status(&self) -> u16 {
        match self {
            HeadError::LineTooLong => 414,
            HeadError::HeadersTooLarge => 431,
            HeadError::Malformed(_) => 400,
            HeadError::Version => 505,
        }
    }
}

/// One header field as received (name case preserved, value bytes as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: &str, value: impl Into<Vec<u8>>) -> Header {
        Header {
            name: name.to_string(),
            value: value.into(),
        }
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }

    /// The value as text (lossy for non-UTF-8 bytes), trimmed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.value).trim().to_string()
    }
}

/// A request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The request-target as sent (absolute-form, origin-form, authority-form or `*`).
    pub target: String,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    pub headers: Vec<Header>,
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub minor: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
}

/// Values of all fields named `name`, in order.
pub fn values<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a Header> {
    headers.iter().filter(move |h| h.is(name))
}

/// The comma-separated tokens of all fields named `name`, lowercased.
pub fn tokens(headers: &[Header], name: &str) -> Vec<String> {
    values(headers, name)
        .flat_map(|h| {
            h.text()
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Position just past the first line end (`\n`) in `buf`, if any.
fn line_end(buf: &[u8]) -> Option<usize> {
    memchr(b'\n', buf).map(|i| i + 1)
}

fn memchr(b: u8, buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&c| c == b)
}

/// Skips the empty lines a client may send before a request line (RFC 9112 2.2).
fn leading_empty(buf: &[u8]) -> usize {
    let mut i = 0;
    loop {
        if buf[i..].starts_with(b"\r\n") {
            i += 2;
        } else if buf[i..].starts_with(b"\n") {
            i += 1;
        } else {
            return i;
        }
    }
}

/// Checks the start-line and header-section limits on a buffer that does not (yet) hold a
/// complete head, or whose head was found complete at `head_len`.
fn check_limits(buf: &[u8], line_max: usize) -> Result<(), HeadError> {
    let skip = leading_empty(buf);
    let rest = &buf[skip..];
    match line_end(rest) {
        None if rest.len() > line_max => Err(HeadError::LineTooLong),
        None => Ok(()),
        Some(n) if n > line_max + 1 => Err(HeadError::LineTooLong),
        Some(n) => {
            let headers = &rest[n..];
            let end = find_head_end(headers).unwrap_or(headers.len());
            if end > MAX_HEADERS {
                Err(HeadError::HeadersTooLarge)
            } else {
                Ok(())
            }
        }
    }
}

/// Length of the header section including its final empty line, when complete.
fn find_head_end(headers: &[u8]) -> Option<usize> {
    if headers.starts_with(b"\r\n") {
        return Some(2);
    }
    if headers.starts_with(b"\n") {
        return Some(1);
    }
    let mut i = 0;
    while let Some(p) = memchr(b'\n', &headers[i..]) {
        let after = i + p + 1;
        if headers[after..].starts_with(b"\r\n") {
            return Some(after + 2);
        }
        if headers[after..].starts_with(b"\n") {
            return Some(after + 1);
        }
        i = after;
    }
    None
}

fn map_err(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::HeadersTooLarge,
        httparse::Error::Version => HeadError::Version,
        httparse::Error::HeaderName => HeadError::Malformed("invalid header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("invalid header value"),
        httparse::Error::NewLine => HeadError::Malformed("invalid line ending"),
        httparse::Error::Status => HeadError::Malformed("invalid status line"),
        httparse::Error::Token => HeadError::Malformed("invalid token in start line"),
    }
}

fn own_headers(hs: &[httparse::Header<'_>]) -> Result<Vec<Header>, HeadError> {
    hs.iter()
        .map(|h| {
            if h.value.contains(&b'\r') || h.value.contains(&b'\n') {
                return Err(HeadError::Malformed("line break in header value"));
            }
            Ok(Header {
                name: h.name.to_string(),
                value: h.value.to_vec(),
            })
        })
        .collect()
}

/// RFC 9112 3.2: a server answers 400 to an HTTP/1.1 request without a Host field and to any
/// request with more than one, whatever the form of its target (an absolute-form target's
/// authority then stands for the Host, but the field must be there all the same) and
/// whatever its method (CONNECT included: RFC 9110 7.2 wants Host in every HTTP/1.1
/// request). Two Host fields are the classic way to make a proxy and a server (or a cache)
/// disagree on the host.
fn check_host(head: &RequestHead) -> Result<(), HeadError> {
    match values(&head.headers, "host").count() {
        0 if head.minor >= 1 => Err(HeadError::Malformed("HTTP/1.1 request without Host")),
        0 | 1 => Ok(()),
        _ => Err(HeadError::Malformed("more than one Host field")),
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)`: not complete yet (read more);
/// `Ok(Some((head, n)))`: the head took `n` bytes (the body or the next request follows).
/// A complete head that breaks the Host rule ([`check_host`]) is an error (400).
pub fn parse_request(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    check_limits(buf, MAX_REQUEST_LINE)?;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADER_COUNT];
    let mut req = httparse::Request::new(&mut hs);
    // No obsolete line folding, no spaces before colons: stricter is safer for a proxy.
    match req.parse(buf).map_err(map_err)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(n) => {
            let head = RequestHead {
                method: req.method.unwrap_or_default().to_string(),
                target: req.path.unwrap_or_default().to_string(),
                minor: req.version.unwrap_or(1),
                headers: own_headers(req.headers)?,
            };
            if head.target.is_empty() {
                return Err(HeadError::Malformed("empty request target"));
            }
            check_host(&head)?;
            Ok(Some((head, n)))
        }
    }
}

/// Parses a response head from the start of `buf` (same contract as [`parse_request`]).
pub fn parse_response(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, HeadError> {
    check_limits(buf, MAX_STATUS_LINE)?;
    let mut hs = [httparse::EMPTY_HEADER; MAX_HEADER_COUNT];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(buf).map_err(map_err)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(n) => Ok(Some((
            ResponseHead {
                minor: resp.version.unwrap_or(1),
                status: resp.code.unwrap_or(0),
                reason: resp.reason.unwrap_or_default().to_string(),
                headers: own_headers(resp.headers)?,
            },
            n,
        ))),
    }
}

/// Serializes a request head (start line, fields, empty line).
pub fn write_request(head: &RequestHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.target.as_bytes());
    out.extend_from_slice(if head.minor == 0 {
        b" HTTP/1.0\r\n"
    } else {
        b" HTTP/1.1\r\n"
    });
    write_fields(&mut out, &head.headers);
    out
}

/// Serializes a response head.
pub fn write_response(head: &ResponseHead) -> Vec<u8> {
    let mut line = String::with_capacity(64);
    let _ = write!(
        line,
        "HTTP/1.{} {:03} {}\r\n",
        head.minor.min(1),
        head.status,
        head.reason
    );
    let mut out = line.into_bytes();
    write_fields(&mut out, &head.headers);
    out
}

fn write_fields(out: &mut Vec<u8>, headers: &[Header]) {
    for h in headers {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_request() {
        let buf =
            b"GET http://example.com/a?b HTTP/1.1\r\nHost: example.com\r\nX-A:  v \r\n\r\nBODY";
        let (h, n) = parse_request(buf).unwrap().unwrap();
        assert_eq!(n, buf.len() - 4);
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "http://example.com/a?b");
        assert_eq!(h.minor, 1);
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[1].name, "X-A");
        assert_eq!(h.headers[1].text(), "v");
    }

    #[test]
    fn partial_in_tiny_pieces() {
        let buf = b"POST / HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc";
        for i in 0..buf.len() - 3 {
            assert_eq!(parse_request(&buf[..i]).unwrap(), None, "prefix {i}");
        }
        let (h, n) = parse_request(buf).unwrap().unwrap();
        assert_eq!((h.minor, n), (0, buf.len() - 3));
    }

    /// RFC 9112 3.2: Host once in every HTTP/1.1 request, at most once in HTTP/1.0 ones,
    /// whatever the target's form and the method; 400 otherwise, and only once the head is
    /// complete (a prefix is still "read more").
    #[test]
    fn host_rule() {
        for bad in [
            &b"GET http://a/ HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\nHOST: a\r\n\r\n",
            b"GET http://a/ HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nHost: b:443\r\n\r\n",
        ] {
            let err = parse_request(bad).unwrap_err();
            assert_eq!(err, HeadError::Malformed("more than one Host field"));
            assert_eq!(err.status(), 400);
            assert_eq!(parse_request(&bad[..bad.len() - 2]), Ok(None));
        }
        for bad in [
            &b"GET http://a/ HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nX-Host: a\r\n\r\n",
            b"CONNECT a:443 HTTP/1.1\r\n\r\n",
        ] {
            let err = parse_request(bad).unwrap_err();
            assert_eq!(err, HeadError::Malformed("HTTP/1.1 request without Host"));
            assert_eq!(err.status(), 400);
        }
        for good in [
            &b"GET http://a/ HTTP/1.0\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT a:443 HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
            b"GET http://a/ HTTP/1.1\r\nhost: a\r\n\r\n",
            // An empty Host is what a target without an authority sends (RFC 9110 7.2).
            b"OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n",
        ] {
            assert!(matches!(parse_request(good), Ok(Some(_))), "{good:?}");
        }
    }

    #[test]
    fn leading_empty_lines_skipped() {
        let (h, _) = parse_request(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.target, "/");
    }

    #[test]
    fn long_request_line_414_even_when_incomplete() {
        let mut buf = b"GET /".to_vec();
        buf.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LINE));
        assert_eq!(parse_request(&buf), Err(HeadError::LineTooLong));
        assert_eq!(HeadError::LineTooLong.status(), 414);
        // At the limit exactly it is still waiting for more.
        let ok = vec![b'a'; MAX_REQUEST_LINE];
        assert_eq!(parse_request(&ok), Ok(None));
    }

    #[test]
    fn large_headers_431_even_when_incomplete() {
        let mut buf = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        while buf.len() < MAX_HEADERS + 100 {
            buf.extend_from_slice(
                b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
            );
        }
        // Fields past MAX_HEADER_COUNT or bytes past MAX_HEADERS: both 431.
        assert_eq!(parse_request(&buf), Err(HeadError::HeadersTooLarge));
        let mut one = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        one.extend(std::iter::repeat_n(b'b', MAX_HEADERS + 1));
        assert_eq!(parse_request(&one), Err(HeadError::HeadersTooLarge));
        assert_eq!(HeadError::HeadersTooLarge.status(), 431);
    }

    #[test]
    fn malformed() {
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse_request(b"G\x01T / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert_eq!(
            parse_request(b"GET / HTTP/2.0\r\n\r\n"),
            Err(HeadError::Version)
        );
        assert_eq!(HeadError::Version.status(), 505);
    }

    #[test]
    fn response_roundtrip() {
        let buf = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
        let (h, n) = parse_response(buf).unwrap().unwrap();
        assert_eq!((h.status, h.reason.as_str(), n), (200, "OK", buf.len() - 2));
        assert_eq!(write_response(&h), buf[..n].to_vec());
        assert_eq!(tokens(&h.headers, "connection"), vec!["close"]);
    }

    #[test]
    fn request_write() {
        let h = RequestHead {
            method: "GET".into(),
            target: "/x".into(),
            minor: 1,
            headers: vec![Header::new("Host", "a:1")],
        };
        assert_eq!(
            write_request(&h),
            b"GET /x HTTP/1.1\r\nHost: a:1\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn tokens_split_and_lowercase() {
        let hs = vec![
            Header::new("Connection", "Keep-Alive, X-Foo"),
            Header::new("connection", " close "),
        ];
        assert_eq!(
            tokens(&hs, "Connection"),
            vec!["keep-alive", "x-foo", "close"]
        );
    }
}
