//! Arbitrary classic BPF programs and packets through the filter module: validation and the
//! interpreter must never panic, and on every program `validate` accepts, the interpreter
//! must return what libpcap's own `bpf_filter` returns.
//!
//! Input: `[n: u8][wirelen extra: u8][n instructions of 8 bytes: code u16 LE, jt, jf, k u32
//! LE][packet bytes]` (a short input just has fewer instructions).
#![no_main]

use agent_common::FilterInsn;
use capagent::capture::filter::{cbpf, libpcap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [n, extra, rest @ ..] = data else {
        return;
    };
    let n = (*n as usize).min(rest.len() / 8);
    let (code, packet) = rest.split_at(n * 8);
    let prog: Vec<FilterInsn> = code
        .chunks_exact(8)
        .map(|c| FilterInsn {
            code: u16::from_le_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let wirelen = packet.len() as u32 + u32::from(*extra);
    let ours = cbpf::run(&prog, packet, wirelen);
    if cbpf::validate(&prog).is_ok() {
        let theirs = libpcap::reference_run(&prog, packet, wirelen).expect("validated");
        assert_eq!(ours, theirs, "{prog:?}");
    }
});
