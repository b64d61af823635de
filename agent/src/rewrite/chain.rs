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
        match &mut self.http {
            None => self.raw.push(chunk, out, edits),
            Some(h) => {
                let mut mid = Vec::new();
                self.raw.push(chunk, &mut mid, edits);
                h.push(&mid, out, edits);
            }
        }
    }

    /// The stall flush: what the `--replace` rules hold goes on (through the HTTP rules).
    pub fn flush(&mut self, out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        match &mut self.http {
            None => self.raw.flush(out, edits),
            Some(h) => {
                let mut mid = Vec::new();
                self.raw.flush(&mut mid, edits);
                h.push(&mid, out, edits);
            }
        }
    }

    /// The end of the direction (or a point nothing may be held past): everything held
    /// goes on.
    pub fn finish(&mut self, out: &mut Vec<u8>, edits: &mut Vec<Edit>) {
        match &mut self.http {
            None => self.raw.flush(out, edits),
            Some(h) => {
                let mut mid = Vec::new();
                self.raw.flush(&mut mid, edits);
                h.push(&mid, out, edits);
                h.finish(out, edits);
            }
        }
    }
}
