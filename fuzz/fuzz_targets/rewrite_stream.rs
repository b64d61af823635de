//! `--replace` rules: arbitrary rule text never panics the parser; for a rule that parses,
//! any cut of the stream into two reads gives the bytes and edits that one read gives (a match
//! split across reads is still replaced), and the edits account for every changed byte.
//! Input: the rule text, a NUL, then the stream (its first byte picks the cut).
#![no_main]

use std::sync::Arc;

use capagent::rewrite::rule;
use capagent::rewrite::stream::{Edit, Rewriter};
use libfuzzer_sys::fuzz_target;

fn run(r: &Arc<rule::Rule>, chunks: &[&[u8]]) -> (Vec<u8>, Vec<Edit>) {
    let mut rw = Rewriter::new(&[(0, r.clone())], 1 << 20);
    let (mut out, mut edits) = (Vec::new(), Vec::new());
    for c in chunks {
        rw.push(c, &mut out, &mut edits);
    }
    rw.flush(&mut out, &mut edits);
    assert_eq!(rw.pending(), 0);
    (out, edits)
}

fuzz_target!(|data: &[u8]| {
    let Some(nul) = data.iter().position(|&b| b == 0) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(&data[..nul]) else {
        return;
    };
    let Ok(r) = rule::parse(text) else {
        return;
    };
    let stream = &data[nul + 1..];
    let Some((&cut, stream)) = stream.split_first() else {
        return;
    };
    let r = Arc::new(r);
    let whole = run(&r, &[stream]);
    let cut = (cut as usize).min(stream.len());
    let (a, b) = stream.split_at(cut);
    assert_eq!(run(&r, &[a, b]), whole, "cut at {cut}");
    // Undoing the edits gives the input back.
    let (out, edits) = whole;
    let mut undone = Vec::new();
    let mut at = 0usize;
    for e in &edits {
        let off = e.offset as usize;
        undone.extend_from_slice(&out[at..off]);
        assert_eq!(&out[off..off + e.after.len()], e.after.as_slice());
        undone.extend_from_slice(&e.before);
        at = off + e.after.len();
    }
    undone.extend_from_slice(&out[at..]);
    assert_eq!(undone, stream);
});
