//! The HTTP rules (`rewrite::http`): arbitrary bytes in both directions of a connection never
//! panic the transformer; any cut of each direction into two reads gives the bytes and edits
//! one read gives; and rules that change nothing (`--decode-bodies` only) pass every byte as
//! it came, HTTP or not.
//! Input: the cut (one byte), then the client's stream, a NUL, the server's stream.
#![no_main]

use std::sync::Arc;

use capagent::rewrite::http::{HttpRewriter, Methods};
use capagent::rewrite::http_rule::{HttpOptions, parse_drop, parse_replace, parse_set};
use capagent::rewrite::stream::Edit;
use libfuzzer_sys::fuzz_target;

type Out = (Vec<u8>, Vec<Edit>);

/// Both directions through `opts`, each cut at `cut` (client first, as a server answers
/// requests it got).
fn run(opts: &Arc<HttpOptions>, req: &[u8], resp: &[u8], cut: usize) -> (Out, Out) {
    let methods = Methods::default();
    let side = |to_server, input: &[u8]| {
        let mut rw = HttpRewriter::new(opts.clone(), to_server, 0, methods.clone());
        let (mut out, mut edits) = (Vec::new(), Vec::new());
        let (a, b) = input.split_at(cut.min(input.len()));
        rw.push(a, &mut out, &mut edits);
        rw.push(b, &mut out, &mut edits);
        rw.finish(&mut out, &mut edits);
        (out, edits)
    };
    let c = side(true, req);
    let s = side(false, resp);
    (c, s)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let (req, resp) = match rest.iter().position(|&b| b == 0) {
        Some(p) => (&rest[..p], &rest[p + 1..]),
        None => (rest, &[][..]),
    };
    let changing = Arc::new(HttpOptions {
        rules: vec![
            parse_replace("both:body:/a+/bb/").unwrap(),
            parse_replace("both:line:/1/2/").unwrap(),
            parse_replace("both:header:X:/x/yy/").unwrap(),
            parse_set("both:Y: z").unwrap(),
            parse_drop("both:Z").unwrap(),
        ],
        anticomp: true,
        decode_bodies: Some(16),
        // Small: bodies over it pass unchanged.
        body_max: 64,
    });
    let whole = run(&changing, req, resp, usize::MAX);
    assert_eq!(run(&changing, req, resp, cut as usize), whole, "cut at {cut}");
    let watching = Arc::new(HttpOptions {
        rules: Vec::new(),
        anticomp: false,
        decode_bodies: Some(16),
        body_max: 64,
    });
    let ((c, _), (s, _)) = run(&watching, req, resp, cut as usize);
    assert_eq!((c.as_slice(), s.as_slice()), (req, resp));
});
