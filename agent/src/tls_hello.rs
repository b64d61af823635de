//! The TLS ClientHello: whether the first bytes of a TCP stream start one, and what it asks
//! for (SNI, ALPN). Pure functions over bytes, used by `trace` (which connections carry TLS,
//! the summary's SNI column) and by the proxies' TLS interception (`mitm`: whether to
//! intercept a connection, the name and protocols to ask the real server for).
//!
//! The ClientHello is read with the `tls-parser` crate (the record, the handshake message and
//! the SNI and ALPN extension contents). The walk over the extension list is done here: the
//! crate's list parser gives up on the whole list when one extension it knows is malformed or
//! newer than it (a key share of a post-quantum group, say), and only two of them matter.

use tls_parser::{
    TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_extension_alpn_content,
    parse_tls_extension_sni_content, parse_tls_plaintext,
};

/// The handshake record type, and the ClientHello handshake message type.
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Largest TLS record body: 2^14 bytes of plaintext plus the expansion TLS 1.2 allows.
const MAX_RECORD_LEN: u16 = (1 << 14) + 2048;
/// Extension types (RFC 6066, RFC 7301).
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// What a ClientHello tells about the connection it opens.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The server name the client asked for (SNI), when the ClientHello carried one and was
    /// captured whole.
    pub sni: Option<String>,
    /// The application protocols the client offered (ALPN: `h2`, `http/1.1`, ...), in its
    /// order.
    pub alpn: Vec<String>,
}

/// Whether `bytes`, the first bytes of a TCP stream, start a TLS handshake: a handshake
/// record (SSL 3.0 to TLS 1.3 all carry version 3.x there) of a plausible length whose first
/// message is a ClientHello. Six bytes are enough to tell, so a payload cut by the snaplen
/// still does.
pub fn is_client_hello(bytes: &[u8]) -> bool {
    match bytes {
        [
            CONTENT_HANDSHAKE,
            3,
            minor,
            hi,
            lo,
            HANDSHAKE_CLIENT_HELLO,
            ..,
        ] => {
            let len = u16::from_be_bytes([*hi, *lo]);
            *minor <= 4 && (4..=MAX_RECORD_LEN).contains(&len)
        }
        _ => false,
    }
}

/// The ClientHello `bytes` start with (see [`is_client_hello`]), with its SNI and ALPN when
/// its record was captured whole; `None` when `bytes` do not start with one.
pub fn client_hello(bytes: &[u8]) -> Option<ClientHello> {
    if !is_client_hello(bytes) {
        return None;
    }
    let mut hello = ClientHello::default();
    let Ok((_, record)) = parse_tls_plaintext(bytes) else {
        // Cut short (snaplen) or malformed past the header: a ClientHello all the same.
        return Some(hello);
    };
    let ext = record.msg.iter().find_map(|m| match m {
        TlsMessage::Handshake(TlsMessageHandshake::ClientHello(ch)) => ch.ext,
        _ => None,
    });
    let mut rest = ext.unwrap_or_default();
    // struct { ExtensionType type; opaque data<0..2^16-1>; } Extension, one after another.
    while let [t0, t1, l0, l1, tail @ ..] = rest {
        let (ty, len) = (
            u16::from_be_bytes([*t0, *t1]),
            usize::from(u16::from_be_bytes([*l0, *l1])),
        );
        let Some(data) = tail.get(..len) else { break };
        rest = &tail[len..];
        match ty {
            EXT_SERVER_NAME => {
                if let Ok((_, TlsExtension::SNI(names))) = parse_tls_extension_sni_content(data) {
                    hello.sni = names
                        .iter()
                        .find(|(t, _)| t.0 == 0)
                        .map(|(_, name)| String::from_utf8_lossy(name).into_owned());
                }
            }
            EXT_ALPN => {
                if let Ok((_, TlsExtension::ALPN(protos))) = parse_tls_extension_alpn_content(data)
                {
                    hello.alpn = protos
                        .iter()
                        .map(|p| String::from_utf8_lossy(p).into_owned())
                        .collect();
                }
            }
            _ => {}
        }
    }
    Some(hello)
}

/// Whether `record`, one whole TLS record (its header and body, [`record_len`] bytes),
/// parses as a handshake record holding a ClientHello: stricter than [`is_client_hello`]'s
/// six bytes, for a relay that starts intercepting TLS mid-stream and must not take a binary
/// protocol's bytes for one. (A ClientHello spread over several records does not pass.)
pub fn is_whole_client_hello(record: &[u8]) -> bool {
    if !is_client_hello(record) {
        return false;
    }
    match parse_tls_plaintext(record) {
        Ok((rest, r)) => {
            rest.is_empty()
                && matches!(
                    r.msg.as_slice(),
                    [TlsMessage::Handshake(TlsMessageHandshake::ClientHello(_))]
                )
        }
        Err(_) => false,
    }
}

/// Whether `bytes`, the first bytes of a TCP stream gathered so far, may still be the start
/// of a ClientHello: [`is_client_hello`] once six bytes are in, else the bytes there are
/// those a ClientHello has there (none: true).
pub fn may_start_client_hello(bytes: &[u8]) -> bool {
    if bytes.len() >= 6 {
        return is_client_hello(bytes);
    }
    let at = |i: usize, ok: &dyn Fn(u8) -> bool| bytes.get(i).is_none_or(|b| ok(*b));
    at(0, &|b| b == CONTENT_HANDSHAKE)
        && at(1, &|b| b == 3)
        && at(2, &|b| b <= 4)
        && (bytes.len() < 5
            || (4..=MAX_RECORD_LEN).contains(&u16::from_be_bytes([bytes[3], bytes[4]])))
}

/// The length of the TLS record `bytes` start with (its 5-byte header and body), once the
/// header is in; the bytes to wait for before [`client_hello`] can read the whole first
/// record. (A ClientHello larger than one record, rare, is read from its first record.)
pub fn record_len(bytes: &[u8]) -> Option<usize> {
    match bytes {
        [_, _, _, hi, lo, ..] => Some(5 + usize::from(u16::from_be_bytes([*hi, *lo]))),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The ClientHello curl 7.88.1 (OpenSSL 3.0, Debian 12) sent for `https://localhost:PORT/`
    /// (the first bytes a listener received; 517 bytes).
    pub(crate) const CURL_HELLO: &[u8] = include_bytes!("trace/tls/testdata/curl_client_hello.bin");
    /// The ClientHello of Python 3.11's `urllib.request.urlopen("https://localhost:PORT/")`
    /// (its `ssl` module, OpenSSL 3.0).
    pub(crate) const PYTHON_HELLO: &[u8] =
        include_bytes!("trace/tls/testdata/python_client_hello.bin");

    #[test]
    fn real_client_hellos() {
        assert!(is_client_hello(CURL_HELLO));
        assert_eq!(
            client_hello(CURL_HELLO),
            Some(ClientHello {
                sni: Some("localhost".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            })
        );
        assert_eq!(
            client_hello(PYTHON_HELLO),
            Some(ClientHello {
                sni: Some("localhost".into()),
                alpn: vec!["http/1.1".into()],
            })
        );
        // Cut by the snaplen: still a ClientHello, nothing more known.
        assert_eq!(client_hello(&CURL_HELLO[..6]), Some(ClientHello::default()));
        assert_eq!(
            client_hello(&CURL_HELLO[..300]),
            Some(ClientHello::default())
        );
        assert_eq!(client_hello(&CURL_HELLO[..5]), None);
    }

    #[test]
    fn not_client_hellos() {
        for b in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"",
            // A ServerHello (type 2), application data (23), an SSLv2-style hello.
            &[22, 3, 3, 0, 90, 2, 0, 0, 86],
            &[23, 3, 3, 0, 32, 1],
            &[0x80, 0x2e, 1, 3, 1, 0],
            // Zero-length or oversized record.
            &[22, 3, 1, 0, 0, 1],
            &[22, 3, 1, 0xff, 0xff, 1],
            // Version 3.9.
            &[22, 3, 9, 0, 90, 1],
        ] {
            assert!(!is_client_hello(b), "{b:?}");
            assert_eq!(client_hello(b), None);
        }
    }

    /// A ClientHello made here: every extension list shape the walk must survive.
    fn hello_with(exts: &[(u16, &[u8])]) -> Vec<u8> {
        let mut ext = Vec::new();
        for (t, d) in exts {
            ext.extend_from_slice(&t.to_be_bytes());
            ext.extend_from_slice(&(d.len() as u16).to_be_bytes());
            ext.extend_from_slice(d);
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]); // random
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut msg = vec![HANDSHAKE_CLIENT_HELLO];
        msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend_from_slice(&body);
        let mut rec = vec![CONTENT_HANDSHAKE, 3, 1];
        rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
        rec.extend_from_slice(&msg);
        rec
    }

    #[test]
    fn extensions_walked_one_by_one() {
        let sni = b"\x00\x0e\x00\x00\x0bexample.org";
        let alpn = b"\x00\x0c\x02h2\x08http/1.1";
        // A malformed key share (51) and a GREASE extension before them do not hide them.
        let h = hello_with(&[(0x0a0a, b""), (51, b"\x00"), (0, sni), (16, alpn)]);
        assert_eq!(
            client_hello(&h),
            Some(ClientHello {
                sni: Some("example.org".into()),
                alpn: vec!["h2".into(), "http/1.1".into()],
            })
        );
        // No extensions at all; an extension whose length runs past the end.
        assert_eq!(client_hello(&hello_with(&[])), Some(ClientHello::default()));
        let mut h = hello_with(&[(0, sni)]);
        let n = h.len();
        h[n - sni.len() - 1] = 0xff;
        assert_eq!(client_hello(&h).unwrap().sni, None);
    }

    #[test]
    fn record_lengths_and_prefixes() {
        assert_eq!(record_len(CURL_HELLO), Some(CURL_HELLO.len()));
        assert_eq!(record_len(&CURL_HELLO[..4]), None);
        assert!(may_start_client_hello(b""));
        assert!(may_start_client_hello(&CURL_HELLO[..3]));
        assert!(!may_start_client_hello(b"GE"));
        assert!(!may_start_client_hello(&[22, 3, 3, 0, 0]));
    }

    #[test]
    fn whole_client_hellos() {
        assert!(is_whole_client_hello(CURL_HELLO));
        assert!(is_whole_client_hello(PYTHON_HELLO));
        assert!(is_whole_client_hello(&hello_with(&[])));
        // Cut short, or with bytes past the record.
        assert!(!is_whole_client_hello(&CURL_HELLO[..300]));
        let mut longer = CURL_HELLO.to_vec();
        longer.push(0);
        assert!(!is_whole_client_hello(&longer));
        // Six bytes that look like one, then a body that is no ClientHello (a binary
        // protocol's message that happens to start so).
        let mut fake = CURL_HELLO[..6].to_vec();
        fake.resize(CURL_HELLO.len(), 0xab);
        assert!(is_client_hello(&fake));
        assert!(!is_whole_client_hello(&fake));
    }
}
