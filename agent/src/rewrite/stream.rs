//! Applying `--replace` rules to one direction of a relayed stream, as its bytes arrive.
//!
//! A match may be split across reads: bytes at the end of what arrived that may start a match
//! more bytes would complete (the rule's DFA, run anchored from there, is not dead at the end)
//! are held back, at most `window` bytes, until the next read, the end of the stream, or
//! [`Rewriter::flush`] (the relay's stall timer: a held prompt must not wait forever). Bytes
//! no match can reach pass at once. Each rule's output feeds the next rule.
//!
//! Pure: bytes in, bytes out, no I/O.

use std::sync::Arc;

use regex_automata::Input;
use regex_automata::hybrid::dfa::Cache;

use super::rule::Rule;

/// Default bound on the bytes held back for a match that may continue in the next read.
pub const DEFAULT_WINDOW: usize = 4096;

/// One change a rule made (or, with `decoded`, a note that changed nothing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    /// The rule (its index among the rules given to [`Rewriter::new`]).
    pub rule: usize,
    /// Where the replacement starts in the bytes this rule passed on (after the rules before
    /// it), counted from the start of the stream.
    pub offset: u64,
    pub before: Vec<u8>,
    pub after: Vec<u8>,
    /// Not a change: `--decode-bodies` showing a compressed HTTP body decoded (`before` and
    /// `after` empty; `offset`: where the body's data start). Recorded as a `decoded` record,
    /// not an `edit`.
    pub decoded: Option<Box<Decoded>>,
}

/// A compressed HTTP body, decoded (`--decode-bodies`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The content codings undone, as `Content-Encoding` lists them (`gzip`, `br, gzip`).
    pub encoding: String,
    /// The decoded body, at most `--decode-bodies-max` bytes.
    pub text: Vec<u8>,
    /// Whether the decoded body is longer than `text` (cut at the cap).
    pub truncated: bool,
}

struct Stage {
    index: usize,
    rule: Arc<Rule>,
    cache: Cache,
    /// Bytes held back: they may start a match.
    pending: Vec<u8>,
    /// Bytes passed on so far.
    emitted: u64,
    /// Replacements made so far.
    done: u64,
}

/// The rules of one direction of one connection.
pub struct Rewriter {
    stages: Vec<Stage>,
    window: usize,
}

impl Rewriter {
    /// `rules`: (index, rule) for the rules that apply to this direction, in order.
    pub fn new(rules: &[(usize, Arc<Rule>)], window: usize) -> Rewriter {
        Rewriter {
            stages: rules
                .iter()
                .map(|(index, rule)| Stage {
                    index: *index,
                    cache: rule.dfa.create_cache(),
                    rule: rule.clone(),
                    pending: Vec::new(),
                    emitted: 0,
                    done: 0,
                })
                .collect(),
            window: window.max(1),
        }
    }

    /// Whether there are no rules (the bytes pass as they are).
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// Bytes held back, all rules together.
    pub fn pending(&self) -> usize {
        self.stages.iter().map(|s| s.pending.len()).sum()
    }

    /// Rewrites `chunk`: appends to `out` what can be passed on now, to `edits` the changes.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        self.run(chunk, false, out, edits)
    }

    /// Passes on every byte held back (matches in them applied as if the stream ended
    /// there): at the end of the stream, or when the relay decides nothing more is coming
    /// soon.
    pub fn flush(&mut self, out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        self.run(&[], true, out, edits)
    }

    fn run(&mut self, chunk: &[u8], flush: bool, out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        if self.stages.is_empty() {
            out.extend_from_slice(chunk);
            return;
        }
        let mut input = chunk.to_vec();
        let last = self.stages.len() - 1;
        for (i, stage) in self.stages.iter_mut().enumerate() {
            let mut next = Vec::with_capacity(input.len() + 16);
            stage.run(&input, flush, self.window, &mut next, edits);
            if i == last {
                out.extend_from_slice(&next);
            } else {
                input = next;
            }
        }
    }
}

impl Stage {
    fn run(
        &mut self,
        chunk: &[u8],
        flush: bool,
        window: usize,
        out: &mut Vec<u8>,
        edits: &mut Vec<Edit>,
    ) {
        let mut buf = std::mem::take(&mut self.pending);
        buf.extend_from_slice(chunk);
        let held_from = |stage: &mut Stage, from: usize| -> bool {
            !flush && from + window >= buf.len() && stage.may_continue(&buf, from)
        };
        let mut pos = 0;
        let mut hold = None;
        let mut at = 0;
        while at < buf.len() && self.rule.limit.is_none_or(|l| self.done < l) {
            let Some(m) = self.rule.regex.find_at(&buf, at) else {
                break;
            };
            // More bytes could make this match longer (or another one at its start).
            if held_from(self, m.start()) {
                hold = Some(m.start());
                break;
            }
            let mut after = Vec::new();
            if let Some(caps) = self.rule.regex.captures_at(&buf, m.start()) {
                caps.expand(&self.rule.replacement, &mut after);
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            self.emitted += (m.start() - pos) as u64;
            edits.push(Edit {
                rule: self.index,
                offset: self.emitted,
                before: buf[m.range()].to_vec(),
                after: after.clone(),
                decoded: None,
            });
            out.extend_from_slice(&after);
            self.emitted += after.len() as u64;
            self.done += 1;
            pos = m.end();
            at = m.end();
        }
        let limit_reached = self.rule.limit.is_some_and(|l| self.done >= l);
        let hold = match hold {
            Some(h) => h,
            None if flush || limit_reached => buf.len(),
            // The earliest position in the window where a match may start.
            None => {
                let first = pos.max(buf.len().saturating_sub(window));
                (first..buf.len())
                    .find(|&p| self.may_continue(&buf, p))
                    .unwrap_or(buf.len())
            }
        };
        out.extend_from_slice(&buf[pos..hold]);
        self.emitted += (hold - pos) as u64;
        buf.drain(..hold);
        self.pending = buf;
    }

    /// Whether a match of the rule may start at `from` in `buf` and end after `buf`: the
    /// DFA run anchored from `from` to the end of `buf` is not dead, and some next byte keeps
    /// it going (the DFA reports a match one byte late: a state whose every next byte only
    /// reports the match that ended at the end of `buf`, then dies, cannot go on).
    fn may_continue(&mut self, buf: &[u8], from: usize) -> bool {
        let dfa = &self.rule.dfa;
        let cache = &mut self.cache;
        let input = Input::new(buf)
            .range(from..)
            .anchored(regex_automata::Anchored::Yes);
        let Ok(mut sid) = dfa.start_state_forward(cache, &input) else {
            return true;
        };
        for &b in &buf[from..] {
            sid = match dfa.next_state(cache, sid, b) {
                Ok(s) => s,
                // The cache gave up: assume it may.
                Err(_) => return true,
            };
            if sid.is_dead() {
                return false;
            }
            if sid.is_quit() {
                return true;
            }
        }
        // Does some next byte keep it alive (past a match reported late)?
        let mut after_match = Vec::new();
        for b in 0..=255u8 {
            let Ok(t) = dfa.next_state(cache, sid, b) else {
                return true;
            };
            if t.is_dead() {
                continue;
            }
            if t.is_quit() || !t.is_match() {
                return true;
            }
            if !after_match.contains(&t) {
                after_match.push(t);
            }
        }
        for t in after_match {
            for b in 0..=255u8 {
                match dfa.next_state(cache, t, b) {
                    Ok(u) if u.is_dead() => {}
                    _ => return true,
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rewrite::rule::parse;

    fn rewriter(rules: &[&str], window: usize) -> Rewriter {
        let rules: Vec<_> = rules
            .iter()
            .enumerate()
            .map(|(i, r)| (i, Arc::new(parse(r).unwrap())))
            .collect();
        Rewriter::new(&rules, window)
    }

    /// Pushes `chunks` one by one, then flushes; returns what came out after each push
    /// (the flush last) and the edits.
    fn feed(rw: &mut Rewriter, chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Vec<Edit>) {
        let mut outs = Vec::new();
        let mut edits = Vec::new();
        for c in chunks {
            let mut out = Vec::new();
            rw.push(c, &mut out, &mut edits);
            outs.push(out);
        }
        let mut out = Vec::new();
        rw.flush(&mut out, &mut edits);
        outs.push(out);
        (outs, edits)
    }

    #[test]
    fn a_match_split_across_reads_is_replaced() {
        let mut rw = rewriter(&["s2c:/Boo!/Yay!/"], DEFAULT_WINDOW);
        let (outs, edits) = feed(&mut rw, &[b"say Bo", b"o! now", b" Boo!"]);
        // "Bo" may start a match: held; " now" passes; the last match is complete.
        assert_eq!(outs, [&b"say "[..], b"Yay! now", b" Yay!", b""]);
        assert_eq!(
            edits,
            [
                Edit {
                    rule: 0,
                    offset: 4,
                    before: b"Boo!".to_vec(),
                    after: b"Yay!".to_vec(),
                    decoded: None
                },
                Edit {
                    rule: 0,
                    offset: 13,
                    before: b"Boo!".to_vec(),
                    after: b"Yay!".to_vec(),
                    decoded: None
                }
            ]
        );
    }

    #[test]
    fn bytes_no_match_can_reach_pass_at_once() {
        let mut rw = rewriter(&["c2s:/password=\\w+/password=xxx/"], DEFAULT_WINDOW);
        let (outs, _) = feed(&mut rw, &[b"user=bob&pass", b"word=hunter2", b"&x=1"]);
        assert_eq!(
            outs,
            [&b"user=bob&"[..], b"", b"password=xxx&x=1", b""],
            "a word match may continue until a non-word byte arrives"
        );
    }

    #[test]
    fn held_bytes_come_out_on_flush_and_the_window_bounds_them() {
        let mut rw = rewriter(&["s2c:/Boo!/Yay!/"], DEFAULT_WINDOW);
        let (outs, edits) = feed(&mut rw, &[b"prompt> B"]);
        assert_eq!(outs, [&b"prompt> "[..], b"B"]);
        assert!(edits.is_empty());
        // A match that may continue is held while it fits the window: once its start falls
        // out of the window, its bytes pass unchanged.
        let mut rw = rewriter(&["s2c:/<.*>/[]/"], 8);
        let mut out = Vec::new();
        let mut edits = Vec::new();
        rw.push(b"xy<abc", &mut out, &mut edits);
        assert_eq!((out.as_slice(), rw.pending()), (&b"xy"[..], 4));
        rw.push(b"defghijk", &mut out, &mut edits);
        assert_eq!((out.as_slice(), rw.pending()), (&b"xy<abcdefghijk"[..], 0));
        rw.push(b"<a>b", &mut out, &mut edits);
        rw.flush(&mut out, &mut edits);
        assert_eq!(out, b"xy<abcdefghijk[]b");
        assert_eq!(edits.len(), 1);
    }

    #[test]
    fn count_limit_groups_case_and_chained_rules() {
        let mut rw = rewriter(&["s2c:/(a)(b)/$2$1/i2"], DEFAULT_WINDOW);
        let (outs, edits) = feed(&mut rw, &[b"ab AB ab ab"]);
        assert_eq!(outs.concat(), b"ba BA ab ab");
        assert_eq!(edits.len(), 2);
        // Rule 1 sees rule 0's output; each edit's offset is in its rule's output.
        let mut rw = rewriter(&["both:/cat/dog/", "both:/dog/wolf/"], DEFAULT_WINDOW);
        let (outs, edits) = feed(&mut rw, &[b"a cat and a dog"]);
        assert_eq!(outs.concat(), b"a wolf and a wolf");
        assert_eq!(
            edits.iter().map(|e| (e.rule, e.offset)).collect::<Vec<_>>(),
            [(0, 2), (1, 2), (1, 13)]
        );
    }

    #[test]
    fn binary_bytes_and_no_rules() {
        let mut rw = rewriter(&[r"c2s:/\x00\x01\xff/\xfe/"], DEFAULT_WINDOW);
        let (outs, _) = feed(&mut rw, &[b"\x10\x00", b"\x01\xff\x20"]);
        assert_eq!(outs.concat(), b"\x10\xfe\x20");
        let mut rw = Rewriter::new(&[], DEFAULT_WINDOW);
        assert!(rw.is_empty());
        let (outs, edits) = feed(&mut rw, &[b"abc"]);
        assert_eq!((outs.concat(), edits.len()), (b"abc".to_vec(), 0));
    }

    /// However the stream is cut into reads, the output is the same as in one read.
    #[test]
    fn any_split_gives_the_one_read_result() {
        let rules = ["both:/Boo!/Yay!!/", "both:/a+b/X/", r"both:/\r\n\r\n/|/"];
        let input: &[u8] = b"Boo! aaab\r\n\r\nBoBoo! aab ab Boo!\r\n\r\n";
        let whole = feed(&mut rewriter(&rules, DEFAULT_WINDOW), &[input])
            .0
            .concat();
        assert_eq!(whole, b"Yay!! X|BoYay!! X X Yay!!|");
        for cut in 0..=input.len() {
            let (a, b) = input.split_at(cut);
            let got = feed(&mut rewriter(&rules, DEFAULT_WINDOW), &[a, b])
                .0
                .concat();
            assert_eq!(got, whole, "cut at {cut}");
        }
    }
}
