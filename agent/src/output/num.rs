//! Allocation-free, `core::fmt`-free formatting of the numbers and addresses every event line
//! carries: decimal and hex integers, socket addresses, time stamps.

use std::io::Write as _;
use std::net::{SocketAddr, SocketAddrV4};

const DIGITS2: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// The decimal digits of an integer, in a stack buffer.
pub struct Dec {
    buf: [u8; 20],
    start: u8,
}

impl Dec {
    pub fn u64(mut n: u64) -> Dec {
        let mut buf = [0u8; 20];
        let mut i = 20;
        while n >= 100 {
            let r = (n % 100) as usize * 2;
            n /= 100;
            i -= 2;
            buf[i..i + 2].copy_from_slice(&DIGITS2[r..r + 2]);
        }
        if n >= 10 {
            let r = n as usize * 2;
            i -= 2;
            buf[i..i + 2].copy_from_slice(&DIGITS2[r..r + 2]);
        } else {
            i -= 1;
            buf[i] = b'0' + n as u8;
        }
        Dec {
            buf,
            start: i as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[usize::from(self.start)..]
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: only ASCII digits were written from `start` on.
        unsafe { std::str::from_utf8_unchecked(self.as_bytes()) }
    }
}

pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(Dec::u64(n).as_bytes());
}

pub fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// `n` in decimal with at least `width` digits (zero-padded).
pub fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let d = Dec::u64(n);
    let digits = d.as_bytes();
    for _ in digits.len()..width {
        out.push(b'0');
    }
    out.extend_from_slice(digits);
}

/// `{n:#x}`: `0x` and lowercase hex digits without leading zeros.
pub fn push_hex(out: &mut Vec<u8>, n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = 16;
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = HEX[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(b"0x");
    out.extend_from_slice(&buf[i..]);
}

/// A socket address as `Display` writes it, in a stack buffer.
pub struct AddrStr {
    buf: [u8; 64],
    len: u8,
}

impl AddrStr {
    pub fn new(a: &SocketAddr) -> AddrStr {
        let mut s = AddrStr {
            buf: [0; 64],
            len: 0,
        };
        match a {
            SocketAddr::V4(v4) => s.len = v4_into(&mut s.buf, v4) as u8,
            SocketAddr::V6(_) => {
                // At most `[` 39 + `%` 10 `]:` 5 = 58 bytes.
                let mut cur = std::io::Cursor::new(&mut s.buf[..]);
                let _ = write!(cur, "{a}");
                s.len = cur.position() as u8;
            }
        }
        s
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: socket addresses are written as ASCII.
        unsafe { std::str::from_utf8_unchecked(self.as_bytes()) }
    }
}

/// `a.b.c.d:port` into `buf`; returns the length.
fn v4_into(buf: &mut [u8; 64], a: &SocketAddrV4) -> usize {
    let mut n = 0;
    for (i, o) in a.ip().octets().into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let d = Dec::u64(u64::from(o));
        let d = d.as_bytes();
        buf[n..n + d.len()].copy_from_slice(d);
        n += d.len();
    }
    buf[n] = b':';
    n += 1;
    let d = Dec::u64(u64::from(a.port()));
    let d = d.as_bytes();
    buf[n..n + d.len()].copy_from_slice(d);
    n + d.len()
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `HH:MM:SS` of a second of the day.
pub fn push_hms(out: &mut Vec<u8>, sod: u64) {
    push_padded(out, sod / 3600, 2);
    out.push(b':');
    push_padded(out, sod / 60 % 60, 2);
    out.push(b':');
    push_padded(out, sod % 60, 2);
}

/// `78 B`, `1.5 KiB`, `12.0 MiB`, `3.2 GiB` (for summaries and the status line: this one
/// allocates).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal() {
        for n in [
            0,
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            12345,
            u64::MAX,
            u64::MAX - 1,
        ]
        .into_iter()
        .chain((0..64).map(|s| 1u64 << s))
        .chain((0..20).map(|p| 10u64.pow(p)))
        .chain((1..20).map(|p| 10u64.pow(p) - 1))
        {
            assert_eq!(Dec::u64(n).as_str(), n.to_string());
            let mut v = Vec::new();
            push_hex(&mut v, n);
            assert_eq!(v, format!("{n:#x}").into_bytes());
        }
        for n in [0i64, -1, 5, -300, i64::MIN, i64::MAX] {
            let mut v = Vec::new();
            push_i64(&mut v, n);
            assert_eq!(v, n.to_string().into_bytes());
        }
        let mut v = Vec::new();
        push_padded(&mut v, 7, 3);
        push_padded(&mut v, 1234, 2);
        assert_eq!(v, b"0071234");
    }

    #[test]
    fn addresses() {
        for a in [
            "0.0.0.0:0",
            "127.0.0.1:40112",
            "255.255.255.255:65535",
            "[::]:0",
            "[::1]:8080",
            "[2001:db8::1]:443",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
            "[::ffff:10.1.2.3]:1",
            "[fe80::1%4294967295]:65535",
        ] {
            let sa: SocketAddr = a.parse().unwrap();
            assert_eq!(AddrStr::new(&sa).as_str(), sa.to_string(), "{a}");
        }
    }

    #[test]
    fn human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12 << 20), "12.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16777216.0 TiB");
    }
}
