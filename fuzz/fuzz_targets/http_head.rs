//! Arbitrary bytes (after a first byte choosing a split point) as an HTTP request head and
//! as a response head, fed whole and in two pieces: parsing never panics, the limits hold
//! whatever the split, a complete head parses the same however it arrived, and everything a
//! proxy then does with a parsed head (target, framing, hop-by-hop fields, upgrades, auth,
//! serializing) never panics and re-parses. A request head that parses has one Host field
//! (at most one in HTTP/1.0: RFC 9112 3.2), and so has what a proxy sends on.
#![no_main]

use capagent::proxy::http::{body, head, message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the head is split; the rest is the head.
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(data.len());
    let whole = head::parse_request(data);
    // A prefix is never complete when the whole is an error of a later byte, and never
    // an error when the whole is complete (limits are monotonic).
    if let Ok(Some((h, n))) = &whole {
        assert!(*n <= data.len());
        let hosts = head::values(&h.headers, "host").count();
        assert!(
            hosts == 1 || (hosts == 0 && h.minor == 0),
            "{hosts} Host fields"
        );
        if split < *n {
            assert!(matches!(head::parse_request(&data[..split]), Ok(None)));
        }
        let _ = message::parse_target(&h.method, &h.target);
        let _ = message::check_basic(&h.headers, "user:pass");
        let _ = message::request_keep_alive(h);
        if let Ok(framing) = body::request_framing(h) {
            let up = message::upstream_request(
                h,
                "/",
                Some("example.com"),
                framing == body::Framing::Chunked,
            );
            if let Some(protocols) = message::upgrade_of(h) {
                // An upgrade goes on with its protocols.
                assert!(
                    up.headers
                        .iter()
                        .any(|f| f.is("upgrade") && f.value == protocols)
                );
            }
            assert_eq!(head::values(&up.headers, "host").count(), 1);
            let bytes = head::write_request(&up);
            // Fields added to what was received may pass a limit the original was just under.
            if up.headers.len() < head::MAX_HEADER_COUNT && bytes.len() < head::MAX_HEADERS {
                let (again, m) = head::parse_request(&bytes)
                    .expect("a forwarded head parses")
                    .expect("a forwarded head is complete");
                assert_eq!(m, bytes.len());
                assert_eq!(again.headers.len(), up.headers.len());
            }
        }
    }
    if let Ok(Some((h, n))) = head::parse_response(data) {
        assert!(n <= data.len());
        let _ = body::response_framing("GET", &h);
        let _ = message::response_keep_alive(&h);
        let c = message::client_response(&h, true, true);
        let out = head::write_response(&c);
        if c.headers.len() < head::MAX_HEADER_COUNT && out.len() < head::MAX_HEADERS {
            assert!(matches!(head::parse_response(&out), Ok(Some(_))));
        }
        let s = message::switching_response(&h);
        let out = head::write_response(&s);
        if s.headers.len() < head::MAX_HEADER_COUNT && out.len() < head::MAX_HEADERS {
            assert!(matches!(head::parse_response(&out), Ok(Some((r, _))) if r.status == 101));
        }
    }
    if let Err(e) = &whole {
        assert!(matches!(e.status(), 400 | 414 | 431 | 505));
    }
});
