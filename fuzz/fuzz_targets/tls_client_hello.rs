//! Arbitrary bytes as the first bytes of a TCP stream: the ClientHello detector and parser
//! never panic, agree with each other, and a ClientHello stays one when cut short (a payload
//! cut by the snaplen) as long as its first six bytes are there. What they find (SNI, ALPN)
//! is made of bytes of the input. The mid-stream (STARTTLS) checks agree too: a record that
//! passes `is_whole_client_hello` passes the six-byte check, and each of its prefixes may
//! still start a ClientHello.
#![no_main]

use capagent::tls_hello::{
    client_hello, is_client_hello, is_whole_client_hello, may_start_client_hello,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hello = client_hello(data);
    assert_eq!(hello.is_some(), is_client_hello(data));
    if is_whole_client_hello(data) {
        assert!(hello.is_some());
        for cut in 0..=data.len().min(64) {
            assert!(
                may_start_client_hello(&data[..cut]),
                "prefix of {cut} bytes"
            );
        }
    }
    let Some(hello) = hello else {
        return;
    };
    for cut in [6, data.len() / 2, data.len().saturating_sub(1)] {
        if cut >= 6 {
            assert!(client_hello(&data[..cut]).is_some(), "cut at {cut}");
        }
    }
    let found = hello.sni.iter().chain(&hello.alpn);
    let bytes: usize = found.map(|s| s.len()).sum();
    // Lossy UTF-8 may triple a byte (U+FFFD); never more.
    assert!(bytes <= 3 * data.len());
});
