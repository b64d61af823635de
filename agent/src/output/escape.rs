//! strace-like escaping of payload bytes and names.
//!
//! Printable ASCII (0x20..=0x7e) stays as it is except `"` and `\`, which become `\"` and
//! `\\`; newline, carriage return and tab become `\n`, `\r`, `\t`; every other byte becomes
//! `\xNN` (two lowercase hex digits). The result is always ASCII and unambiguous: the bytes
//! can be recovered from it.
//!
//! Payloads are escaped in one pass with a 256-entry table (and whole 8-byte words of plain
//! characters copied at once); [`escape_json_into`] produces the escaped form already escaped
//! again as the inside of a JSON string, as the JSON output needs it.

use std::ptr;

/// One table entry: the escape sequence in the first bytes, its length in the last byte.
/// Eight bytes so that an entry is copied with one unaligned store.
type Entry = [u8; 8];

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The strace escape of byte `b`: (bytes, length).
const fn strace_seq(b: u8) -> ([u8; 4], usize) {
    match b {
        b'\n' => ([b'\\', b'n', 0, 0], 2),
        b'\r' => ([b'\\', b'r', 0, 0], 2),
        b'\t' => ([b'\\', b't', 0, 0], 2),
        b'"' => ([b'\\', b'"', 0, 0], 2),
        b'\\' => ([b'\\', b'\\', 0, 0], 2),
        0x20..=0x7e => ([b, 0, 0, 0], 1),
        _ => (
            [b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]],
            4,
        ),
    }
}

/// `json`: the strace escape escaped again for the inside of a JSON string (`\` and `"`
/// get a backslash; the strace escape is printable ASCII, so nothing else changes).
const fn make_table(json: bool) -> [Entry; 256] {
    let mut table = [[0u8; 8]; 256];
    let mut i = 0;
    while i < 256 {
        let (seq, len) = strace_seq(i as u8);
        let mut e = [0u8; 8];
        let mut n = 0;
        let mut k = 0;
        while k < len {
            let c = seq[k];
            if json && (c == b'\\' || c == b'"') {
                e[n] = b'\\';
                n += 1;
            }
            e[n] = c;
            n += 1;
            k += 1;
        }
        e[7] = n as u8;
        table[i] = e;
        i += 1;
    }
    table
}

static STRACE: [Entry; 256] = make_table(false);
static JSON: [Entry; 256] = make_table(true);
/// Longest entry of [`STRACE`] and of [`JSON`].
const STRACE_MAX: usize = 4;
const JSON_MAX: usize = 5;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether `b` stays as it is: 0x20..=0x7e except `"` and `\`.
fn is_plain(b: u8) -> bool {
    (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\'
}

/// Whether all 8 bytes of `w` are "plain": 0x20..=0x7e except `"` and `\` (the bytes both
/// tables map to themselves).
#[inline(always)]
fn all_plain(w: u64) -> bool {
    // Bit-twiddling hacks: hasless(w, 0x20), hasmore(w, 0x7e), haszero(w ^ c). Each is exact
    // as a yes/no answer.
    let below = w.wrapping_sub(ONES * 0x20) & !w;
    // hasmore(w, n) adds 127 - n to every byte: 1 for 0x7e.
    let above = w.wrapping_add(ONES) | w;
    let q = w ^ (ONES * u64::from(b'"'));
    let quote = q.wrapping_sub(ONES) & !q;
    let s = w ^ (ONES * u64::from(b'\\'));
    let slash = s.wrapping_sub(ONES) & !s;
    (below | above | quote | slash) & HIGHS == 0
}

/// Appends the escape of `bytes` by `table` (entries at most `max` long) to `out`.
#[inline(always)]
fn escape_table(out: &mut Vec<u8>, bytes: &[u8], table: &[Entry; 256], max: usize) {
    // Room for the longest result plus the 8-byte store of the last entry.
    out.reserve(bytes.len() * max + 8);
    let start = out.len();
    let src = bytes.as_ptr();
    let n = bytes.len();
    // SAFETY: `out` has room for `n * max + 8` bytes past `start`. Every byte of input adds at
    // most `max` bytes, and each store writes 8 bytes at a position at most `(n - 1) * max`
    // past `start` (or 8 plain bytes at most `n - 8` past it), so no write leaves the reserved
    // room. Reads of `bytes` stay below `n`. Every byte up to the final length was written.
    unsafe {
        let base = out.as_mut_ptr().add(start);
        let mut dst = base;
        let mut i = 0;
        while i + 8 <= n {
            let w = ptr::read_unaligned(src.add(i).cast::<u64>());
            if all_plain(w) {
                ptr::write_unaligned(dst.cast::<u64>(), w);
                dst = dst.add(8);
            } else {
                for k in 0..8 {
                    let e = table.get_unchecked(usize::from(*src.add(i + k)));
                    ptr::copy_nonoverlapping(e.as_ptr(), dst, 8);
                    dst = dst.add(usize::from(e[7]));
                }
            }
            i += 8;
        }
        while i < n {
            let e = table.get_unchecked(usize::from(*src.add(i)));
            ptr::copy_nonoverlapping(e.as_ptr(), dst, 8);
            dst = dst.add(usize::from(e[7]));
            i += 1;
        }
        out.set_len(start + dst.offset_from(base) as usize);
    }
}

/// Appends the escaped form of `bytes` (no quotes) to `out`.
pub fn escape_bytes_into(out: &mut Vec<u8>, bytes: &[u8]) {
    escape_table(out, bytes, &STRACE, STRACE_MAX);
}

/// Appends the escaped form of `bytes`, escaped again as the inside of a JSON string (no
/// quotes), to `out`: what `serde_json` makes of `escape(bytes)`, in one pass.
///
/// Payloads of [`PAIRS_MIN`] bytes or more go two bytes per table entry ([`json_pairs`]):
/// half the stores and half the length additions (each depending on the previous one) of
/// the byte-wise table, for the binary payloads that are mostly escapes.
pub fn escape_json_into(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.len() >= PAIRS_MIN {
        escape_pairs(out, bytes, json_pairs());
    } else {
        escape_table(out, bytes, &JSON, JSON_MAX);
    }
}

/// [`escape_json_into`] with the byte table only (the micro-benchmark compares them).
#[cfg(test)]
pub(crate) fn escape_json_bytewise(out: &mut Vec<u8>, bytes: &[u8]) {
    escape_table(out, bytes, &JSON, JSON_MAX);
}

/// Payload size from which [`escape_json_into`] uses the pair table (below, building or
/// touching its 1 MiB costs more than it saves).
const PAIRS_MIN: usize = 4096;

/// One entry of the pair table: the JSON escapes of two bytes one after the other (at most
/// `2 * JSON_MAX` = 10 bytes), their total length in the last byte. Sixteen bytes, copied
/// with one unaligned store.
type PairEntry = [u8; 16];

/// The JSON escape of every pair of bytes, indexed by the pair read as a little-endian u16
/// (1 MiB, built at first use).
fn json_pairs() -> &'static [PairEntry] {
    static PAIRS: std::sync::OnceLock<Box<[PairEntry]>> = std::sync::OnceLock::new();
    PAIRS.get_or_init(|| {
        let mut t = vec![[0u8; 16]; 1 << 16].into_boxed_slice();
        for (i, e) in t.iter_mut().enumerate() {
            let (a, b) = (&JSON[i & 0xff], &JSON[i >> 8]);
            let (la, lb) = (usize::from(a[7]), usize::from(b[7]));
            e[..la].copy_from_slice(&a[..la]);
            e[la..la + lb].copy_from_slice(&b[..lb]);
            e[15] = (la + lb) as u8;
        }
        t
    })
}

/// [`escape_table`] with [`JSON`], two bytes at a time through `pairs`.
#[inline(always)]
fn escape_pairs(out: &mut Vec<u8>, bytes: &[u8], pairs: &[PairEntry]) {
    assert_eq!(pairs.len(), 1 << 16);
    // Room for the longest result plus the 16-byte store of the last entry.
    out.reserve(bytes.len() * JSON_MAX + 16);
    let start = out.len();
    let src = bytes.as_ptr();
    let n = bytes.len();
    // SAFETY: as in `escape_table`: `out` has room for `n * JSON_MAX + 16` bytes past
    // `start`; a pair adds at most `2 * JSON_MAX` bytes and its 16-byte store starts at most
    // `(n - 2) * JSON_MAX` past `start`; plain words write 8 bytes at most `n - 8` past it;
    // the last odd byte goes through `escape_table`'s 8-byte store at most
    // `(n - 1) * JSON_MAX` past it. Reads of `bytes` stay below `n`, and of `pairs` below
    // 65536 (a u16 index).
    unsafe {
        let base = out.as_mut_ptr().add(start);
        let mut dst = base;
        let mut i = 0;
        while i + 8 <= n {
            let w = ptr::read_unaligned(src.add(i).cast::<u64>());
            if all_plain(w) {
                ptr::write_unaligned(dst.cast::<u64>(), w);
                dst = dst.add(8);
            } else {
                for k in 0..4 {
                    let idx = (w >> (16 * k)) as u16;
                    let e = pairs.get_unchecked(usize::from(idx));
                    ptr::copy_nonoverlapping(e.as_ptr(), dst, 16);
                    dst = dst.add(usize::from(e[15]));
                }
            }
            i += 8;
        }
        while i < n {
            let e = JSON.get_unchecked(usize::from(*src.add(i)));
            ptr::copy_nonoverlapping(e.as_ptr(), dst, 8);
            dst = dst.add(usize::from(e[7]));
            i += 1;
        }
        out.set_len(start + dst.offset_from(base) as usize);
    }
}

/// Appends the escaped form of `bytes` to `out` (no surrounding quotes).
pub fn escape_into(out: &mut String, bytes: &[u8]) {
    // SAFETY: the escaped form is ASCII: `out` stays valid UTF-8.
    escape_bytes_into(unsafe { out.as_mut_vec() }, bytes);
}

/// The escaped form of `bytes` (no surrounding quotes).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    escape_into(&mut out, bytes);
    out
}

/// Appends [`preview`] of `bytes` to `out`.
pub fn preview_into(out: &mut String, bytes: &[u8], max: usize) {
    let cut = bytes.len() > max;
    let shown = &bytes[..bytes.len().min(max)];
    out.push('"');
    escape_into(out, shown);
    out.push('"');
    if cut {
        out.push_str("...");
    }
}

/// A quoted preview of at most `max` bytes of `bytes`, as strace prints buffers:
/// `"GET / HTTP/1.1\r\n"`; when `bytes` is longer than `max`, `...` follows the closing
/// quote: `"GET /"...`.
pub fn preview(bytes: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(bytes.len().min(max) + 5);
    preview_into(&mut out, bytes, max);
    out
}

/// Escapes a name (Unix socket path, process name) for display: like [`escape`], except that
/// valid UTF-8 text that is not a control character is kept as it is.
pub fn escape_name(bytes: &[u8]) -> String {
    if bytes.iter().all(|&b| is_plain(b)) {
        // Nothing to escape (the common case): ASCII as it is.
        return String::from_utf8(bytes.to_vec()).expect("plain bytes are ASCII");
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                escape_into(&mut out, &[c as u8]);
            } else if c.is_control() {
                let mut buf = [0u8; 4];
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    hex_byte(&mut out, b);
                }
            } else {
                out.push(c);
            }
        }
        for &b in chunk.invalid() {
            hex_byte(&mut out, b);
        }
    }
    out
}

fn hex_byte(out: &mut String, b: u8) {
    out.push('\\');
    out.push('x');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_as_is() {
        assert_eq!(escape(b"Hello World! ~{}"), "Hello World! ~{}");
    }

    #[test]
    fn special_characters() {
        assert_eq!(escape(b"a\nb\rc\td\"e\\f"), "a\\nb\\rc\\td\\\"e\\\\f");
    }

    #[test]
    fn other_bytes_as_hex() {
        assert_eq!(
            escape(&[0x00, 0x1b, 0x7f, 0x80, 0xff]),
            "\\x00\\x1b\\x7f\\x80\\xff"
        );
        // UTF-8 text is not printable ASCII: escaped byte by byte.
        assert_eq!(escape("é".as_bytes()), "\\xc3\\xa9");
    }

    #[test]
    fn empty() {
        assert_eq!(escape(b""), "");
        assert_eq!(preview(b"", 10), "\"\"");
        assert_eq!(preview(b"", 0), "\"\"");
    }

    #[test]
    fn preview_fits() {
        assert_eq!(preview(b"Hello World!", 12), "\"Hello World!\"");
        assert_eq!(preview(b"Boo!", 64), "\"Boo!\"");
    }

    #[test]
    fn preview_cut() {
        assert_eq!(preview(b"Hello World!", 5), "\"Hello\"...");
        assert_eq!(preview(b"\r\n\r\n", 2), "\"\\r\\n\"...");
        assert_eq!(preview(b"abc", 0), "\"\"...");
    }

    #[test]
    fn names() {
        assert_eq!(escape_name(b"/run/x.sock"), "/run/x.sock");
        assert_eq!(escape_name("/tmp/été".as_bytes()), "/tmp/été");
        assert_eq!(escape_name(b"a\0b\xffc\n"), "a\\x00b\\xffc\\n");
        assert_eq!(escape_name("\u{85}".as_bytes()), "\\xc2\\x85");
        assert_eq!(escape_name(b"back\\slash"), "back\\\\slash");
    }

    /// The escape of one byte as the original per-byte code wrote it.
    fn reference_byte(out: &mut String, b: u8) {
        use std::fmt::Write as _;
        match b {
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }

    fn reference(bytes: &[u8]) -> String {
        let mut s = String::new();
        for &b in bytes {
            reference_byte(&mut s, b);
        }
        s
    }

    /// Deterministic pseudo-random bytes (xorshift), biased towards printable ones so that
    /// both the word and the byte paths run.
    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if x.is_multiple_of(4) {
                    (x >> 8) as u8
                } else {
                    0x20 + ((x >> 8) % 95) as u8
                }
            })
            .collect()
    }

    #[test]
    fn every_byte_like_the_reference() {
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(escape(&all), reference(&all));
        for b in 0..=255u8 {
            // Each byte in each position of a word, among plain ones.
            for pos in 0..16 {
                let mut v = vec![b'a'; 17];
                v[pos] = b;
                assert_eq!(escape(&v), reference(&v), "byte {b:#x} at {pos}");
            }
        }
    }

    #[test]
    fn random_like_the_reference() {
        for seed in 0..300u64 {
            let v = random_bytes(seed, (seed as usize * 7) % 300);
            let r = reference(&v);
            assert_eq!(escape(&v), r);
            // The JSON form is exactly what serde_json makes of the escaped string.
            let mut j = b"x".to_vec();
            escape_json_into(&mut j, &v);
            let want = serde_json::to_string(&r).unwrap();
            assert_eq!(&j[1..], &want.as_bytes()[1..want.len() - 1]);
        }
    }

    #[test]
    fn json_pairs_like_the_byte_table() {
        let byte_table = |v: &[u8]| {
            let mut out = b"x".to_vec();
            escape_table(&mut out, v, &JSON, JSON_MAX);
            out
        };
        let pairs = |v: &[u8]| {
            let mut out = b"x".to_vec();
            escape_json_into(&mut out, v);
            out
        };
        // Every pair of bytes, at every even offset of a word.
        let all: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        assert!(pairs(&all) == byte_table(&all));
        // Mixed plain and escaped, odd lengths, around the threshold.
        for seed in 0..60u64 {
            let len = PAIRS_MIN - 3 + (seed as usize * 37) % 300;
            let v = random_bytes(seed, len);
            assert!(pairs(&v) == byte_table(&v), "seed {seed}");
        }
        let v = random_bytes(7, 70_001);
        let mut j = Vec::new();
        escape_json_into(&mut j, &v);
        let want = serde_json::to_string(&reference(&v)).unwrap();
        assert_eq!(j, &want.as_bytes()[1..want.len() - 1]);
    }

    #[test]
    fn plain_words() {
        let plain = |b: u8| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\';
        for seed in 0..20_000u64 {
            let v = random_bytes(seed, 8);
            let w = u64::from_le_bytes(v[..8].try_into().unwrap());
            assert_eq!(all_plain(w), v.iter().all(|&b| plain(b)), "{v:?}");
        }
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut v = [b'a'; 8];
                v[pos] = b;
                assert_eq!(all_plain(u64::from_le_bytes(v)), plain(b), "{b:#x}");
            }
        }
    }
}
