//! Arbitrary bytes as a chunked (or Content-Length) body fed in pieces of every size the
//! first byte picks: the decoder never panics, never takes more than it is given, finds the
//! same data and end however the bytes are split, and re-chunking what it found decodes to
//! the same data.
#![no_main]

use capagent::proxy::http::body::{self, Decoder, Framing};
use libfuzzer_sys::fuzz_target;

fn run(
    framing: Framing,
    input: &[u8],
    piece: usize,
) -> (Result<(), body::BodyError>, Vec<u8>, usize, bool) {
    let mut d = Decoder::new(framing);
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut used = 0;
    for part in input.chunks(piece.max(1)) {
        buf.extend_from_slice(part);
        while !d.is_done() {
            let s = match d.decode(&buf) {
                Ok(s) => s,
                Err(e) => return (Err(e), out, used, false),
            };
            assert!(s.consumed <= buf.len());
            assert!(s.data.len() <= s.consumed);
            out.extend_from_slice(s.data);
            let n = s.consumed;
            used += n;
            buf.drain(..n);
            if n == 0 {
                break;
            }
        }
    }
    (Ok(()), out, used, d.is_done())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let framing = match sel & 3 {
        0 | 1 => Framing::Chunked,
        2 => Framing::Length(u64::from(sel >> 2)),
        _ => Framing::Close,
    };
    let whole = run(framing, rest, rest.len());
    let pieces = run(framing, rest, usize::from(sel >> 2) + 1);
    assert_eq!(whole.0.is_ok(), pieces.0.is_ok());
    if whole.0.is_ok() {
        assert_eq!(whole.1, pieces.1);
        assert_eq!(whole.2, pieces.2);
        assert_eq!(whole.3, pieces.3);
    }
    if whole.0.is_ok() && whole.3 && framing == Framing::Chunked {
        let mut enc = body::chunk(&whole.1);
        enc.extend(body::last_chunk(b""));
        let again = run(Framing::Chunked, &enc, 7);
        assert!(again.0.is_ok() && again.3);
        assert_eq!(again.1, whole.1);
        assert_eq!(again.2, enc.len());
    }
});
