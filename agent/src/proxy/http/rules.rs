//! The HTTP rules (`--replace-http`, `--set-header`, `--drop-header`, `--anticomp`,
//! `--decode-bodies`) on a server connection of the HTTP proxies: the request bytes the
//! proxy sends and the response bytes it reads go through the same
//! [`crate::rewrite::http::HttpRewriter`] the relays use; its edits become `edit` records.

use crate::model::Direction;
use crate::proxy::record::Conn;
use crate::rewrite::http::HttpRewriter;

/// One direction.
pub struct Side {
    rw: HttpRewriter,
    dir: Direction,
}

impl Side {
    /// `bytes` through the rules (`end`: the direction ended after them); returns what goes
    /// on, its edits recorded first.
    pub async fn pass(&mut self, rec: &Conn, bytes: &[u8], end: bool) -> Vec<u8> {
        let (mut out, mut edits) = (Vec::new(), Vec::new());
        self.rw.push(bytes, &mut out, &mut edits);
        if end {
            self.rw.finish(&mut out, &mut edits);
        }
        for e in edits {
            rec.edit(self.dir, e).await;
        }
        out
    }
}

/// Both directions of a server connection.
pub struct Rules {
    pub c2s: Side,
    pub s2c: Side,
}

impl Rules {
    /// The rules of `rec`'s connection; None without HTTP rules.
    pub fn of(rec: &Conn) -> Option<Rules> {
        let side = |dir| rec.http_rewriter(dir).map(|rw| Side { rw, dir });
        Some(Rules {
            c2s: side(Direction::Send)?,
            s2c: side(Direction::Recv)?,
        })
    }
}
