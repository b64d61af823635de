//! What a relay runs one direction's bytes through: the `--replace` rules
//! ([`super::stream::Rewriter`]), then the HTTP rules ([`super::http::HttpRewriter`]), either
//! of them possibly absent.
//!
//! Pure: bytes in, bytes out, no I/O.

use super::http::HttpRewriter;
use super::stream::{Edit, Rewriter};

/// The rules of one direction of one connection.
pub struct Chain {
    raw: Rewriter,
    http: Option<HttpRewriter>,
}

impl Chain {
    pub fn new(raw: Rewriter, http: Option<HttpRewriter>) -> Chain {
        Chain { raw, http }
    }

    /// Bytes the `--replace` rules hold back (a match may continue in the next read): the
    /// stall flush passes them on. (What the HTTP rules hold, a head or body not complete
    /// yet, waits for its bytes.)
    pub fn pending(&self) -> usize {
        self.raw.pending()
    }

    /// Rewrites `chunk`: appends to `out` what can be passed on now, to `edits` the changes.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        self.run(out, edits, false, |raw, o, e| raw.push(chunk, o, e));
    }

    /// The stall flush: what the `--replace` rules hold goes on (through the HTTP rules).
    pub fn flush(&mut self, out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        self.run(out, edits, false, |raw, o, e| raw.flush(o, e));
    }

    /// The end of the direction (or a point nothing may be held past): everything held
    /// goes on.
    pub fn finish(&mut self, out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        self.run(out, edits, true, |raw, o, e| raw.flush(o, e));
    }

    /// `raw` (a step of the `--replace` rules), its output through the HTTP rules (finished
    /// at the `end`).
    fn run(
        &mut self,
        out: &mut Vec<u8>,
        edits: &mut Vec<Edit>,
        end: bool,
        raw: impl FnOnce(&mut Rewriter, &mut Vec<u8>, &mut Vec<Edit>),
    ) {
        let Some(h) = &mut self.http else {
            return raw(&mut self.raw, out, edits);
        };
        let mut mid = Vec::new();
        raw(&mut self.raw, &mut mid, edits);
        h.push(&mid, out, edits);
        if end {
            h.finish(out, edits);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rewrite::http::Methods;
    use crate::rewrite::http_rule::{HttpOptions, parse_replace, parse_set};
    use crate::rewrite::rule::parse;
    use crate::rewrite::stream::DEFAULT_WINDOW;

    /// `--replace` rules first, the HTTP rules on their output; a close-delimited body is
    /// whole at the finish; edits of both kinds, the HTTP ones numbered after the raw rules.
    #[test]
    fn raw_rules_then_http_rules() {
        let raw = Rewriter::new(
            &[(0, Arc::new(parse("s2c:/Boo!/Boo!!/").unwrap()))],
            DEFAULT_WINDOW,
        );
        let opts = Arc::new(HttpOptions {
            rules: vec![
                parse_set("s2c:X: 1").unwrap(),
                parse_replace("s2c:body:/!!/?/").unwrap(),
            ],
            ..HttpOptions::default()
        });
        let http = HttpRewriter::new(opts, false, 1, Methods::default());
        let mut c = Chain::new(raw, Some(http));
        let (mut out, mut edits) = (Vec::new(), Vec::new());
        c.push(b"HTTP/1.0 200 OK\r\n\r\nBo", &mut out, &mut edits);
        assert_eq!(
            (out.as_slice(), c.pending()),
            (&b""[..], 2),
            "the body is held"
        );
        c.flush(&mut out, &mut edits);
        c.push(b"o! x", &mut out, &mut edits);
        assert!(out.is_empty(), "the body is held to the end");
        c.finish(&mut out, &mut edits);
        // "Bo" was flushed before "o!" came: the raw rule saw no "Boo!".
        assert_eq!(out, b"HTTP/1.0 200 OK\r\nX: 1\r\n\r\nBoo! x");
        assert_eq!(edits.iter().map(|e| e.rule).collect::<Vec<_>>(), [1]);
        let mut c = Chain::new(
            Rewriter::new(
                &[(0, Arc::new(parse("s2c:/Boo!/Boo!!/").unwrap()))],
                DEFAULT_WINDOW,
            ),
            Some(HttpRewriter::new(
                Arc::new(HttpOptions {
                    rules: vec![parse_replace("s2c:body:/!!/?/").unwrap()],
                    ..HttpOptions::default()
                }),
                false,
                1,
                Methods::default(),
            )),
        );
        let (mut out, mut edits) = (Vec::new(), Vec::new());
        c.push(b"HTTP/1.0 200 OK\r\n\r\nBoo! x", &mut out, &mut edits);
        c.finish(&mut out, &mut edits);
        assert_eq!(out, b"HTTP/1.0 200 OK\r\n\r\nBoo? x");
        assert_eq!(edits.iter().map(|e| e.rule).collect::<Vec<_>>(), [0, 1]);
    }
}
