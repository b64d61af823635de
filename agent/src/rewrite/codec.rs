//! HTTP content codings (`Content-Encoding`): gzip, deflate, br and zstd decoded (bounded) and
//! encoded again, for the HTTP body rules ([`super::http`]) and `--decode-bodies`.
//!
//! Crates, not hand-written codecs: flate2 (gzip, zlib and raw deflate, over miniz_oxide),
//! brotli (pure Rust, encoder and decoder) and zstd (the reference C library; no pure-Rust
//! encoder is as widely used).
//!
//! Pure: bytes in, bytes out.

use std::io::{self, Read as _, Write as _};

/// One content coding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    /// `deflate`: the zlib format (RFC 9110 8.4.1.2); raw deflate, which some servers send,
    /// is read too.
    Deflate,
    Br,
    Zstd,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
            Coding::Zstd => "zstd",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown content coding {0:?}")]
    Unknown(String),
    #[error("decoded body larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}: {1}")]
    Bad(&'static str, io::Error),
}

/// The codings of `Content-Encoding` values, in the order they were applied (`identity`
/// left out); an unknown one is an error.
pub fn codings<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<Coding>, CodecError> {
    let mut out = Vec::new();
    for v in values {
        for t in v.split(|&b| b == b',') {
            let t = String::from_utf8_lossy(t).trim().to_ascii_lowercase();
            out.push(match t.as_str() {
                "" | "identity" => continue,
                "gzip" | "x-gzip" => Coding::Gzip,
                "deflate" => Coding::Deflate,
                "br" => Coding::Br,
                "zstd" => Coding::Zstd,
                _ => return Err(CodecError::Unknown(t)),
            });
        }
    }
    Ok(out)
}

/// Reads `r` to its end, at most `max` bytes (`cut`: the first `max` bytes, and what a
/// cut-short input gave, are the result rather than an error).
fn read_max(
    r: impl io::Read,
    max: usize,
    what: &'static str,
    cut: bool,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    let read = r.take(max as u64 + 1).read_to_end(&mut out);
    if out.len() > max {
        if cut {
            out.truncate(max);
            return Ok(out);
        }
        return Err(CodecError::TooLarge(max));
    }
    match read {
        Err(_) if cut && !out.is_empty() => Ok(out),
        Err(e) => Err(CodecError::Bad(what, e)),
        Ok(_) => Ok(out),
    }
}

/// Undoes `codings` (the last applied first); the result is at most `max` bytes.
pub fn decode(codings: &[Coding], data: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    decode_with(codings, data, max, false)
}

/// [`decode`], the result cut at `max` bytes rather than refused (for records).
pub fn decode_prefix(codings: &[Coding], data: &[u8], max: usize) -> Result<Vec<u8>, CodecError> {
    decode_with(codings, data, max, true)
}

fn decode_with(
    codings: &[Coding],
    data: &[u8],
    max: usize,
    cut: bool,
) -> Result<Vec<u8>, CodecError> {
    let mut cur = data.to_vec();
    for c in codings.iter().rev() {
        let input = &cur[..];
        cur = match c {
            Coding::Gzip => read_max(flate2::read::MultiGzDecoder::new(input), max, "gzip", cut)?,
            Coding::Deflate => {
                match read_max(flate2::read::ZlibDecoder::new(input), max, "deflate", cut) {
                    Err(CodecError::Bad(..)) => read_max(
                        flate2::read::DeflateDecoder::new(input),
                        max,
                        "deflate",
                        cut,
                    )?,
                    other => other?,
                }
            }
            Coding::Br => read_max(brotli::Decompressor::new(input, 4096), max, "br", cut)?,
            Coding::Zstd => {
                let d = zstd::stream::read::Decoder::new(input)
                    .map_err(|e| CodecError::Bad("zstd", e))?;
                read_max(d, max, "zstd", cut)?
            }
        };
    }
    Ok(cur)
}

/// Applies `codings` in order.
pub fn encode(codings: &[Coding], data: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut cur = data.to_vec();
    for c in codings {
        let bad = |e| CodecError::Bad(c.name(), e);
        cur = match c {
            Coding::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&cur).map_err(bad)?;
                e.finish().map_err(bad)?
            }
            Coding::Deflate => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&cur).map_err(bad)?;
                e.finish().map_err(bad)?
            }
            Coding::Br => {
                let mut out = Vec::new();
                {
                    let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    e.write_all(&cur).map_err(bad)?;
                    e.flush().map_err(bad)?;
                }
                out
            }
            Coding::Zstd => zstd::stream::encode_all(&cur[..], 3).map_err(bad)?,
        };
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_limits() {
        let text = b"hello hello hello hello, a body to squeeze".repeat(20);
        for c in [Coding::Gzip, Coding::Deflate, Coding::Br, Coding::Zstd] {
            let enc = encode(&[c], &text).unwrap();
            assert_ne!(enc, text, "{c:?}");
            assert_eq!(decode(&[c], &enc, 1 << 20).unwrap(), text, "{c:?}");
            assert!(matches!(
                decode(&[c], &enc, 100),
                Err(CodecError::TooLarge(100))
            ));
        }
        let both = encode(&[Coding::Gzip, Coding::Br], &text).unwrap();
        assert_eq!(
            decode(&[Coding::Gzip, Coding::Br], &both, 1 << 20).unwrap(),
            text
        );
        // Raw deflate, as some servers send it.
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&text).unwrap();
        let raw = e.finish().unwrap();
        assert_eq!(decode(&[Coding::Deflate], &raw, 1 << 20).unwrap(), text);
        assert!(decode(&[Coding::Gzip], b"not gzip", 100).is_err());
        let enc = encode(&[Coding::Gzip], &text).unwrap();
        assert_eq!(
            decode_prefix(&[Coding::Gzip], &enc, 10).unwrap(),
            &text[..10]
        );
    }

    #[test]
    fn coding_lists() {
        let v: [&[u8]; 2] = [b"gzip, identity", b" BR"];
        assert_eq!(codings(v).unwrap(), [Coding::Gzip, Coding::Br]);
        assert!(matches!(
            codings([&b"compress"[..]]),
            Err(CodecError::Unknown(c)) if c == "compress"
        ));
    }
}
