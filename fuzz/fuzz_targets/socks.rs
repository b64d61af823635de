//! Arbitrary bytes through every SOCKS parser (SOCKS4/4a request, SOCKS5 greeting, RFC 1929
//! credentials, request, reply, UDP header), whole and as every prefix: parsing never
//! panics; a message never takes more bytes than it was given; a prefix of a complete
//! message is incomplete (the end of a message is where its last byte arrives); "incomplete"
//! only happens below the message's size limit, so a client cannot make the proxy buffer
//! more however it splits its writes; and replies capagent encodes parse back.
#![no_main]

use capagent::proxy::socks::{Parse, SocksError, v4, v5};
use capagent::proxy::target::Target;
use libfuzzer_sys::fuzz_target;

fn check<T: PartialEq + std::fmt::Debug>(
    data: &[u8],
    max: usize,
    parse: impl Fn(&[u8]) -> Result<Parse<T>, SocksError>,
) {
    let whole = parse(data);
    match &whole {
        Ok(Parse::Done(_, n)) => {
            assert!(
                *n <= data.len() && *n <= max,
                "took {n} of {} bytes",
                data.len()
            );
            // Every shorter prefix is incomplete; the message itself parses the same.
            for end in 0..*n {
                assert_eq!(
                    parse(&data[..end]),
                    Ok(Parse::Incomplete),
                    "prefix {end} of {n}"
                );
            }
            assert_eq!(parse(&data[..*n]), whole);
        }
        Ok(Parse::Incomplete) => {
            assert!(
                data.len() < max,
                "incomplete after {} bytes (limit {max})",
                data.len()
            );
        }
        Err(_) => {
            // An error stays an error with more bytes (limits are monotonic).
            let mut more = data.to_vec();
            more.extend_from_slice(&[0u8; 8]);
            assert!(parse(&more).is_err(), "error went away with more bytes");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, v4::REQUEST_MAX, v4::parse_request);
    check(data, v5::GREETING_MAX, v5::parse_greeting);
    check(data, v5::AUTH_MAX, v5::parse_auth);
    check(data, v5::REQUEST_MAX, v5::parse_request);
    check(data, v5::REPLY_MAX, v5::parse_reply);
    if let Ok(h) = v5::parse_udp(data) {
        assert!(h.len <= data.len());
        // The header capagent writes for an IP source parses back to it.
        if let Some(a) = h.target.addr() {
            let back = v5::parse_udp(&v5::udp_header(a)).unwrap();
            assert_eq!(back.target, Target::ip(a));
        }
    }
    // Requests capagent builds (as an upstream client) parse back; names too.
    if let Ok(Parse::Done(r, _)) = v5::parse_request(data) {
        let bytes = v5::encode_request(r.command, &r.target);
        assert_eq!(v5::parse_request(&bytes), Ok(Parse::Done(r, bytes.len())));
    }
    if let Ok(Parse::Done(r, _)) = v5::parse_reply(data)
        && let Some(a) = r.bound.addr()
    {
        let bytes = v5::reply(r.code, Some(a));
        let Ok(Parse::Done(back, n)) = v5::parse_reply(&bytes) else {
            panic!("own reply does not parse")
        };
        assert_eq!(
            (back.code, back.bound, n),
            (r.code, Target::ip(a), bytes.len())
        );
    }
});
