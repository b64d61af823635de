//! HTTP/1.x message framing (RFC 9112 section 6): how long a body is (none, Content-Length,
//! chunked, until close) and an incremental decoder that finds its end in bytes arriving in
//! any pieces, yielding the body data and the trailer section.
//!
//! Pure: the decoder never reads or writes; the caller feeds it what it has and relays what
//! it yields.

use super::head::{Header, RequestHead, ResponseHead, tokens, values};

/// Longest chunk-size line (size, extensions and CRLF) accepted.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Longest trailer section accepted.
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid Content-Length")]
    BadLength,
    #[error("both Transfer-Encoding and Content-Length")]
    Ambiguous,
    #[error("Transfer-Encoding whose final coding is not chunked")]
    NotChunked,
    #[error("invalid chunk size line")]
    BadChunkSize,
    #[error("chunk size line too long")]
    ChunkLineTooLong,
    #[error("chunk data not followed by CRLF")]
    BadChunkEnd,
    #[error("trailer section too long or malformed")]
    BadTrailers,
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// `Content-Length` of a head: one value (or several identical ones), digits only.
fn content_length(headers: &[Header]) -> Result<Option<u64>, BodyError> {
    let mut found: Option<u64> = None;
    for h in values(headers, "content-length") {
        for part in h.text().split(',') {
            let part = part.trim();
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BodyError::BadLength);
            }
            let n: u64 = part.parse().map_err(|_| BodyError::BadLength)?;
            match found {
                Some(m) if m != n => return Err(BodyError::BadLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Transfer codings of a head, lowercased; `None` without the field.
fn transfer_codings(headers: &[Header]) -> Option<Vec<String>> {
    values(headers, "transfer-encoding")
        .next()
        .map(|_| tokens(headers, "transfer-encoding"))
}

/// Framing of a request body. Transfer-Encoding with Content-Length, and a Transfer-Encoding
/// not ending in chunked, are refused (RFC 9112 6.1/6.3: 400 and close), since a proxy that
/// guessed would open the door to request smuggling.
pub fn request_framing(head: &RequestHead) -> Result<Framing, BodyError> {
    let cl = content_length(&head.headers)?;
    match transfer_codings(&head.headers) {
        Some(_) if cl.is_some() => Err(BodyError::Ambiguous),
        Some(c) if c.last().map(String::as_str) == Some("chunked") => {
            if head.minor == 0 {
                // HTTP/1.0 has no chunked coding.
                Err(BodyError::NotChunked)
            } else {
                Ok(Framing::Chunked)
            }
        }
        Some(_) => Err(BodyError::NotChunked),
        None => Ok(match cl {
            Some(0) | None => Framing::Empty,
            Some(n) => Framing::Length(n),
        }),
    }
}

/// Framing of a response to a request with `method`.
pub fn response_framing(method: &str, head: &ResponseHead) -> Result<Framing, BodyError> {
    if method.eq_ignore_ascii_case("HEAD")
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304
    {
        return Ok(Framing::Empty);
    }
    if method.eq_ignore_ascii_case("CONNECT") && (200..300).contains(&head.status) {
        return Ok(Framing::Close);
    }
    match transfer_codings(&head.headers) {
        Some(c) if c.last().map(String::as_str) == Some("chunked") => Ok(Framing::Chunked),
        Some(_) => Ok(Framing::Close),
        None => Ok(match content_length(&head.headers)? {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => Framing::Close,
        }),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the chunk-size line.
    Size,
    /// In chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: expecting CR then LF.
    DataCr,
    DataLf,
    /// In the trailer section (after the last chunk).
    Trailers,
    /// Plain bodies: this many bytes left (Length) or unbounded (Close).
    Plain(Option<u64>),
    Done,
}

/// What one [`Decoder::decode`] step did.
#[derive(Debug, PartialEq, Eq)]
pub struct Step<'a> {
    /// Input bytes used (the caller drops them from its buffer).
    pub consumed: usize,
    /// Body data found in those bytes (a slice of the input; may be empty).
    pub data: &'a [u8],
}

/// Finds the end of a body and its data, fed in any pieces.
#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// Partial chunk-size line or trailer section.
    line: Vec<u8>,
    /// The complete trailer section (chunked, without the final empty line).
    trailers: Vec<u8>,
    chunked: bool,
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Plain(Some(n)),
            Framing::Chunked => State::Size,
            Framing::Close => State::Plain(None),
        };
        Decoder {
            state,
            line: Vec::new(),
            trailers: Vec::new(),
            chunked: framing == Framing::Chunked,
        }
    }

    /// The body is complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether this decodes the chunked coding.
    pub fn is_chunked(&self) -> bool {
        self.chunked
    }

    /// The trailer fields of a finished chunked body, as raw lines (`Name: value\r\n`...).
    pub fn trailers(&self) -> &[u8] {
        &self.trailers
    }

    /// The connection closed: a close-delimited body ends there; any other unfinished body
    /// was cut short (returns false).
    pub fn eof(&mut self) -> bool {
        if self.state == State::Plain(None) {
            self.state = State::Done;
        }
        self.state == State::Done
    }

    /// Decodes from `input`. Call again with the rest while `consumed > 0` and the body is not
    /// done; `consumed == 0` means more input is needed.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<Step<'a>, BodyError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => break,
                State::Plain(None) => {
                    return Ok(Step {
                        consumed: input.len(),
                        data: input,
                    });
                }
                State::Plain(Some(left)) => {
                    let n = (input.len() as u64).min(left) as usize;
                    self.state = if left == n as u64 {
                        State::Done
                    } else {
                        State::Plain(Some(left - n as u64))
                    };
                    return Ok(Step {
                        consumed: n,
                        data: &input[..n],
                    });
                }
                State::Data(left) => {
                    let n = ((input.len() - i) as u64).min(left) as usize;
                    self.state = if left == n as u64 {
                        State::DataCr
                    } else {
                        State::Data(left - n as u64)
                    };
                    return Ok(Step {
                        consumed: i + n,
                        data: &input[i..i + n],
                    });
                }
                State::DataCr => {
                    if input[i] != b'\r' {
                        return Err(BodyError::BadChunkEnd);
                    }
                    i += 1;
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if input[i] != b'\n' {
                        return Err(BodyError::BadChunkEnd);
                    }
                    i += 1;
                    self.state = State::Size;
                }
                State::Size => {
                    let rest = &input[i..];
                    match rest.iter().position(|&b| b == b'\n') {
                        None => {
                            if self.line.len() + rest.len() > MAX_CHUNK_LINE {
                                return Err(BodyError::ChunkLineTooLong);
                            }
                            self.line.extend_from_slice(rest);
                            i = input.len();
                        }
                        Some(p) => {
                            if self.line.len() + p + 1 > MAX_CHUNK_LINE {
                                return Err(BodyError::ChunkLineTooLong);
                            }
                            self.line.extend_from_slice(&rest[..=p]);
                            i += p + 1;
                            let size = chunk_size(&self.line)?;
                            self.line.clear();
                            self.state = if size == 0 {
                                State::Trailers
                            } else {
                                State::Data(size)
                            };
                        }
                    }
                }
                State::Trailers => {
                    // Collect lines until an empty one.
                    let rest = &input[i..];
                    match rest.iter().position(|&b| b == b'\n') {
                        None => {
                            if self.line.len() + rest.len() > MAX_TRAILERS {
                                return Err(BodyError::BadTrailers);
                            }
                            self.line.extend_from_slice(rest);
                            i = input.len();
                        }
                        Some(p) => {
                            self.line.extend_from_slice(&rest[..=p]);
                            i += p + 1;
                            if self.line == b"\r\n" {
                                self.line.clear();
                                self.state = State::Done;
                            } else {
                                if !self.line.ends_with(b"\r\n")
                                    || self.trailers.len() + self.line.len() > MAX_TRAILERS
                                    || !trailer_line_ok(&self.line)
                                {
                                    return Err(BodyError::BadTrailers);
                                }
                                self.trailers.extend_from_slice(&self.line);
                                self.line.clear();
                            }
                        }
                    }
                }
            }
        }
        Ok(Step {
            consumed: i,
            data: &[],
        })
    }
}

/// A trailer line: `token ":" value CRLF`.
fn trailer_line_ok(line: &[u8]) -> bool {
    let line = &line[..line.len() - 2];
    match line.iter().position(|&b| b == b':') {
        Some(0) | None => false,
        Some(c) => {
            line[..c].iter().all(|&b| is_tchar(b))
                && line[c + 1..]
                    .iter()
                    .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
        }
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The size of a chunk-size line (`HEX [; ext] CRLF`); extensions are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let line = line.strip_suffix(b"\r\n").ok_or(BodyError::BadChunkSize)?;
    let digits = line
        .iter()
        .position(|&b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 15 {
        return Err(BodyError::BadChunkSize);
    }
    let rest = &line[digits..];
    // Only extensions may follow (optionally after spaces).
    let rest_trim = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .map_or(&[][..], |p| &rest[p..]);
    if !rest_trim.is_empty() && rest_trim[0] != b';' {
        return Err(BodyError::BadChunkSize);
    }
    if rest_trim
        .iter()
        .any(|&b| b < b' ' && b != b'\t' || b == 0x7f)
    {
        return Err(BodyError::BadChunkSize);
    }
    let s = std::str::from_utf8(&line[..digits]).map_err(|_| BodyError::BadChunkSize)?;
    u64::from_str_radix(s, 16).map_err(|_| BodyError::BadChunkSize)
}

/// The chunked encoding of one piece of data (`size CRLF data CRLF`); empty data gives
/// nothing (an empty chunk would end the body).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 20);
    if data.is_empty() {
        return out;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The end of a chunked body with these trailer lines.
pub fn last_chunk(trailers: &[u8]) -> Vec<u8> {
    let mut out = b"0\r\n".to_vec();
    out.extend_from_slice(trailers);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::head::parse_request;

    /// Feeds `input` in pieces of `piece` bytes; returns the data and whether it finished.
    fn run(
        framing: Framing,
        input: &[u8],
        piece: usize,
    ) -> Result<(Vec<u8>, usize, Decoder), BodyError> {
        let mut d = Decoder::new(framing);
        let mut buf: Vec<u8> = Vec::new();
        let mut out = Vec::new();
        let mut used = 0;
        for part in input.chunks(piece.max(1)) {
            buf.extend_from_slice(part);
            loop {
                if d.is_done() {
                    break;
                }
                let s = d.decode(&buf)?;
                out.extend_from_slice(s.data);
                let consumed = s.consumed;
                used += consumed;
                buf.drain(..consumed);
                if consumed == 0 {
                    break;
                }
            }
        }
        Ok((out, used, d))
    }

    #[test]
    fn chunked_any_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for piece in [1, 2, 3, 7, 100] {
            let (data, used, d) = run(Framing::Chunked, body, piece).unwrap();
            assert_eq!(data, b"hello world", "piece {piece}");
            assert_eq!(used, body.len() - 4);
            assert!(d.is_done());
            assert_eq!(d.trailers(), b"X-T: 1\r\n");
        }
    }

    #[test]
    fn length_and_close() {
        let (data, used, d) = run(Framing::Length(3), b"abcdef", 2).unwrap();
        assert_eq!((data.as_slice(), used, d.is_done()), (&b"abc"[..], 3, true));
        let (data, _, mut d) = run(Framing::Close, b"abcdef", 4).unwrap();
        assert_eq!(data, b"abcdef");
        assert!(!d.is_done());
        assert!(d.eof());
        let mut cut = Decoder::new(Framing::Length(10));
        assert!(!cut.eof());
    }

    #[test]
    fn bad_chunks() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"-1\r\n",
            b"ffffffffffffffff\r\n",
            b"5 x\r\n",
            b"5\n",
            b"0\r\nno colon\r\n\r\n",
        ] {
            assert!(run(Framing::Chunked, bad, 1).is_err(), "{bad:?}");
        }
        let long = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert_eq!(
            run(Framing::Chunked, &long, 5).unwrap_err(),
            BodyError::ChunkLineTooLong
        );
    }

    #[test]
    fn framing_rules() {
        let req = |s: &str| parse_request(s.as_bytes()).unwrap().unwrap().0;
        assert_eq!(
            request_framing(&req(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"
            )),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            request_framing(&req(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n"
            )),
            Ok(Framing::Length(5))
        );
        assert_eq!(
            request_framing(&req(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"
            )),
            Err(BodyError::BadLength)
        );
        assert_eq!(
            request_framing(&req(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"
            )),
            Err(BodyError::BadLength)
        );
        assert_eq!(
            request_framing(&req(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            )),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            request_framing(&req(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            )),
            Err(BodyError::Ambiguous)
        );
        assert_eq!(
            request_framing(&req(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"
            )),
            Err(BodyError::NotChunked)
        );
        assert_eq!(
            request_framing(&req("GET / HTTP/1.1\r\nHost: a\r\n\r\n")),
            Ok(Framing::Empty)
        );
        let resp = |s: &str| {
            super::super::head::parse_response(s.as_bytes())
                .unwrap()
                .unwrap()
                .0
        };
        let ok = resp("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n");
        assert_eq!(response_framing("GET", &ok), Ok(Framing::Length(4)));
        assert_eq!(response_framing("HEAD", &ok), Ok(Framing::Empty));
        assert_eq!(
            response_framing(
                "GET",
                &resp("HTTP/1.1 304 Not Modified\r\nContent-Length: 4\r\n\r\n")
            ),
            Ok(Framing::Empty)
        );
        assert_eq!(
            response_framing("GET", &resp("HTTP/1.0 200 OK\r\n\r\n")),
            Ok(Framing::Close)
        );
        assert_eq!(
            response_framing(
                "GET",
                &resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            ),
            Ok(Framing::Chunked)
        );
    }

    #[test]
    fn encode_roundtrip() {
        let mut enc = chunk(b"hello");
        enc.extend(chunk(b""));
        enc.extend(last_chunk(b"A: b\r\n"));
        let (data, used, d) = run(Framing::Chunked, &enc, 3).unwrap();
        assert_eq!((data.as_slice(), used), (&b"hello"[..], enc.len()));
        assert_eq!(d.trailers(), b"A: b\r\n");
    }
}
