//! `--hook` answers (lines an external program writes): any line never panics the parser;
//! an answer that parses, written back as the protocol says, parses to the same thing; and
//! the edit recorded for a replacement turns the bytes before into the bytes after.
//! Input: the answer line; its first byte also cuts it into the (before, after) of an edit.
#![no_main]

use base64::Engine as _;
use capagent::rewrite::hook::{Verdict, edit_between, parse_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((id, verdict)) = parse_answer(data) {
        let line = match &verdict {
            Verdict::Pass => format!(r#"{{"id":{id},"action":"pass"}}"#),
            Verdict::Drop => format!(r#"{{"id":{id},"action":"drop"}}"#),
            Verdict::Close => format!(r#"{{"id":{id},"action":"close"}}"#),
            Verdict::Replace(b) => format!(
                r#"{{"id":{id},"action":"replace","data":"{}"}}"#,
                base64::engine::general_purpose::STANDARD.encode(b)
            ),
        };
        assert_eq!(parse_answer(line.as_bytes()), Ok((id, verdict)));
    }
    let cut = usize::from(data.first().copied().unwrap_or(0)) % (data.len() + 1);
    let (before, after) = data.split_at(cut);
    let e = edit_between(7, before, after);
    let at = (e.offset - 7) as usize;
    let mut rebuilt = before[..at].to_vec();
    rebuilt.extend_from_slice(&e.after);
    rebuilt.extend_from_slice(&before[at + e.before.len()..]);
    assert_eq!(rebuilt, after);
});
