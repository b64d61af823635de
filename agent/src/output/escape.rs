//! strace-like escaping of payload bytes and names.
//!
//! Printable ASCII (0x20..=0x7e) stays as it is except `"` and `\`, which become `\"` and
//! `\\`; newline, carriage return and tab become `\n`, `\r`, `\t`; every other byte becomes
//! `\xNN` (two lowercase hex digits). The result is always ASCII and unambiguous: the bytes
//! can be recovered from it.

use std::fmt::Write as _;

/// Appends the escaped form of `bytes` to `out` (no surrounding quotes).
pub fn escape_into(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len());
    for &b in bytes {
        escape_byte(out, b);
    }
}

/// The escaped form of `bytes` (no surrounding quotes).
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    escape_into(&mut out, bytes);
    out
}

/// A quoted preview of at most `max` bytes of `bytes`, as strace prints buffers:
/// `"GET / HTTP/1.1\r\n"`; when `bytes` is longer than `max`, `...` follows the closing
/// quote: `"GET /"...`.
pub fn preview(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() > max;
    let shown = &bytes[..bytes.len().min(max)];
    let mut out = String::with_capacity(shown.len() + 5);
    out.push('"');
    escape_into(&mut out, shown);
    out.push('"');
    if cut {
        out.push_str("...");
    }
    out
}

/// Escapes a name (Unix socket path, process name) for display: like [`escape`], except that
/// valid UTF-8 text that is not a control character is kept as it is.
pub fn escape_name(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_ascii() {
                escape_byte(&mut out, c as u8);
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

fn escape_byte(out: &mut String, b: u8) {
    match b {
        b'\n' => out.push_str("\\n"),
        b'\r' => out.push_str("\\r"),
        b'\t' => out.push_str("\\t"),
        b'"' => out.push_str("\\\""),
        b'\\' => out.push_str("\\\\"),
        0x20..=0x7e => out.push(b as char),
        _ => hex_byte(out, b),
    }
}

fn hex_byte(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\x{b:02x}");
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
}
