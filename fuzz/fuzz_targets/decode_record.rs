//! Arbitrary bytes through the decoder, the assembler and every output.
//!
//! The input is a sequence of records, each `[selector: u8][len: u16 LE][len bytes]` (the last
//! one may be cut short). When the selector's high bit is set, the record's `kind` field is
//! overwritten with `selector & 7` so that many records get past the kind check (1 to 4:
//! SOCK, DATA, PROC, TLS); its bit 6 sets FIRST|LAST|SOCK_VALID in `flags` so that complete
//! calls are common. Every event must render as one text line and one valid JSON object
//! whose base64 payload round-trips.
#![no_main]

use std::io;

use base64::Engine as _;
use capagent::model::{Detail, Event};
use capagent::output::escape;
use capagent::output::json::{JsonWriter, to_json};
use capagent::output::text::{TextConfig, TextWriter, format_event};
use capagent::trace::assemble::{Assembler, lost_event};
use capagent::trace::decode;
use capagent::trace::sockaddr::parse_sockaddr;
use capagent::trace::summary::Summary;
use libfuzzer_sys::fuzz_target;

const MAX_CALL: usize = 64;

fn check(
    ev: &Event,
    text: &mut TextWriter<io::Sink>,
    json: &mut JsonWriter<io::Sink>,
    summary: &mut Summary,
) {
    if let Detail::Data { payload, .. } = &ev.detail {
        assert!(payload.len() <= MAX_CALL, "payload over the cap");
    }
    let cfg = TextConfig {
        timestamps: false,
        utc: true,
        max_preview: 16,
    };
    let line = format_event(ev, &cfg);
    assert!(
        !line.contains('\n') && !line.contains('\r'),
        "text line breaks: {line:?}"
    );
    let obj = to_json(ev);
    assert!(!obj.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&obj).expect("valid JSON");
    if let Detail::Data { payload, .. } = &ev.detail {
        let b64 = v["payload_b64"].as_str().expect("payload_b64");
        let back = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64");
        assert_eq!(back, payload.as_ref());
    }
    text.write_event(ev).unwrap();
    json.write_event(ev).unwrap();
    summary.add(ev);
}

fuzz_target!(|data: &[u8]| {
    // The whole input as one record, as a sockaddr, as a payload.
    let _ = decode::decode(data);
    let _ = parse_sockaddr(data);
    let _ = escape::preview(data, 8);
    let _ = escape::escape_name(data);

    let offset = data
        .get(..8)
        .map_or(0, |b| i64::from_le_bytes(b.try_into().unwrap()));
    let mut asm = Assembler::new(offset, |pid: u32| {
        (pid % 3 == 0).then(|| format!("p\n{pid}"))
    })
    .with_max_call_bytes(MAX_CALL);
    let mut text = TextWriter::new(io::sink(), TextConfig::default());
    let mut json = JsonWriter::new(io::sink());
    let mut summary = Summary::new();

    let mut rest = data;
    while rest.len() >= 3 {
        let sel = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
        rest = &rest[3..];
        let n = len.min(rest.len());
        let mut rec = rest[..n].to_vec();
        rest = &rest[n..];
        if sel & 0x80 != 0 && rec.len() >= 10 {
            rec[8..10].copy_from_slice(&u16::from(sel & 7).to_ne_bytes());
        }
        if sel & 0x40 != 0 && rec.len() >= 14 {
            let f = u16::from_ne_bytes([rec[12], rec[13]]) | 1 | 2 | 8;
            rec[12..14].copy_from_slice(&f.to_ne_bytes());
        }
        if let Ok(events) = asm.push_bytes(&rec) {
            for ev in &events {
                check(ev, &mut text, &mut json, &mut summary);
            }
        }
        if sel == 0x3f {
            let ev = lost_event(offset as u64, u64::from(sel), len as u64);
            check(&ev, &mut text, &mut json, &mut summary);
        }
    }
    for ev in &asm.flush() {
        check(ev, &mut text, &mut json, &mut summary);
    }
    assert_eq!(asm.pending_calls(), 0);
    let _ = summary.render();
    let _ = summary.totals();
});
