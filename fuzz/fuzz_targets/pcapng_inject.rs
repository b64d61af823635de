//! Arbitrary bytes as the pcapng file `capture/trace --tls-keylog` rewrites with a Decryption
//! Secrets Block (`output::pcapng::secrets::inject`): no panic; when it accepts the input,
//! the output is the input with exactly that block inserted once, at a block boundary.
#![no_main]

use capagent::output::pcapng::secrets::{decryption_secrets_block, inject};
use libfuzzer_sys::fuzz_target;
use pcap_file::Endianness;

const KEY_LOG: &[u8] = b"CLIENT_RANDOM 0011 2233\n";

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    if inject(data, &mut out, KEY_LOG).is_err() {
        return;
    }
    let e = match data[8..12] {
        [0x1A, 0x2B, 0x3C, 0x4D] => Endianness::Big,
        _ => Endianness::Little,
    };
    let dsb = decryption_secrets_block(e, KEY_LOG).unwrap();
    assert_eq!(out.len(), data.len() + dsb.len());
    let found = (0..=data.len()).any(|k| {
        out[..k] == data[..k]
            && out[k..k + dsb.len()] == dsb[..]
            && out[k + dsb.len()..] == data[k..]
    });
    assert!(
        found,
        "the input with one Decryption Secrets Block inserted"
    );
});
