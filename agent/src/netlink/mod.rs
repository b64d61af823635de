//! Netlink for every capability: messages built and parsed as plain bytes, and a blocking
//! netlink socket (request, acknowledgement, dump).
//!
//! - [`Socket`] (over `netlink-sys`) is the only part that talks to the kernel: one request
//!   and its acknowledgements ([`Socket::transact`]), or a dump ([`Socket::dump`]).
//! - Replies are read by pure functions over bytes, fuzzed together by the `netlink` fuzz
//!   target: the framing ([`messages`], [`attrs`]), acknowledgements ([`take_acks`]), dump
//!   answers ([`dump_part`]), and one function per message kind. An `NLMSG_ERROR` code
//!   becomes an errno through [`errno_of`] only.
//! - rtnetlink and sock_diag messages are the `netlink-packet-route` and
//!   `netlink-packet-sock-diag` crates' ([`serialize`], [`decode`]): tc filters and the
//!   clsact qdisc ([`tc`]), sockets ([`sock_diag`]), and `intercept::route`'s rules and
//!   routes. nftables messages are written with [`Builder`] (`intercept::nft`): no crate
//!   creates a table with `NFT_TABLE_F_OWNER` on a socket the agent keeps open.
//!
//! Layout reminders: every message starts with a 16-byte `nlmsghdr` (length, type, flags,
//! sequence number, port id, host byte order); attributes are `nlattr` (u16 length, u16
//! type) followed by their payload, each padded to 4 bytes. Nested attributes carry
//! `NLA_F_NESTED` in their type.

use std::io;

pub mod sock_diag;
mod socket;
pub mod tc;

pub use socket::Socket;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLA_HDRLEN: usize = 4;
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;

/// Rounds up to the 4-byte netlink alignment.
pub const fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A buffer of netlink messages being built. Each message is begun with
/// [`Builder::begin`] and ended with [`Builder::end`], which writes its length.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    buf: Vec<u8>,
    /// Start of the message being built.
    msg: Option<usize>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Starts a message with its header (length filled in by [`Builder::end`]).
    pub fn begin(&mut self, ty: u16, flags: u16, seq: u32) -> &mut Self {
        assert!(self.msg.is_none(), "netlink message not ended");
        self.msg = Some(self.buf.len());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        self
    }

    /// Raw bytes right after the header (a family header such as `nfgenmsg` or `rtmsg`),
    /// padded to 4 bytes.
    pub fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    /// One attribute.
    pub fn attr(&mut self, ty: u16, payload: &[u8]) -> &mut Self {
        let len = NLA_HDRLEN + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    /// A big-endian u32 (nftables' integers).
    pub fn attr_be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }

    /// A host-endian u32 (rtnetlink's integers).
    pub fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    pub fn attr_u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.attr(ty, &[v])
    }

    /// A nested attribute whose content `f` writes.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Builder)) -> &mut Self {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    /// Ends the current message: writes its length.
    pub fn end(&mut self) -> &mut Self {
        let start = self.msg.take().expect("netlink message begun");
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        self
    }

    pub fn bytes(&self) -> &[u8] {
        assert!(self.msg.is_none(), "netlink message not ended");
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        assert!(self.msg.is_none(), "netlink message not ended");
        self.buf
    }
}

/// One message of a buffer received from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub pid: u32,
    /// Everything after the 16-byte header.
    pub payload: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed netlink data: {0}")]
pub struct Malformed(pub &'static str);

/// The messages of `buf`, in order; an error for a message whose length does not fit.
pub fn messages(buf: &[u8]) -> impl Iterator<Item = Result<Msg<'_>, Malformed>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < NLMSG_HDRLEN {
            rest = &[];
            return Some(Err(Malformed("truncated message header")));
        }
        let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(Malformed("message length out of bounds")));
        }
        let msg = Msg {
            ty: u16::from_ne_bytes([rest[4], rest[5]]),
            flags: u16::from_ne_bytes([rest[6], rest[7]]),
            seq: u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes")),
            pid: u32::from_ne_bytes(rest[12..16].try_into().expect("4 bytes")),
            payload: &rest[NLMSG_HDRLEN..len],
        };
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok(msg))
    })
}

/// The attributes in `buf` as (type without flags, payload); an error for one whose length
/// does not fit.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < NLA_HDRLEN {
            // Trailing padding shorter than a header is allowed.
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > rest.len() {
            rest = &[];
            return Some(Err(Malformed("attribute length out of bounds")));
        }
        let payload = &rest[NLA_HDRLEN..len];
        rest = rest.get(align(len)..).unwrap_or(&[]);
        Some(Ok((ty, payload)))
    })
}

/// The payload of the first attribute of type `ty` in `buf`.
pub fn find_attr(buf: &[u8], ty: u16) -> Result<Option<&[u8]>, Malformed> {
    for a in attrs(buf) {
        let (t, p) = a?;
        if t == ty {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// A NUL-terminated (or unterminated) string attribute's text.
pub fn attr_string(p: &[u8]) -> String {
    let end = p.iter().position(|&b| b == 0).unwrap_or(p.len());
    String::from_utf8_lossy(&p[..end]).into_owned()
}

pub fn attr_be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.get(..4)?.try_into().ok()?))
}

pub fn attr_u32(p: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(p.get(..4)?.try_into().ok()?))
}

/// The error code of an `NLMSG_ERROR` payload (0 = acknowledgement) and the sequence
/// number of the request it answers.
pub fn error_of(payload: &[u8]) -> Result<(i32, u32), Malformed> {
    if payload.len() < 4 + NLMSG_HDRLEN {
        return Err(Malformed("short error message"));
    }
    let code = i32::from_ne_bytes(payload[0..4].try_into().expect("4 bytes"));
    let seq = u32::from_ne_bytes(payload[12..16].try_into().expect("4 bytes"));
    Ok((code, seq))
}

/// Largest errno the kernel returns (`MAX_ERRNO`).
pub const MAX_ERRNO: i32 = 4095;

/// The positive errno of a non-zero `nlmsgerr.error`, which the kernel sends as a negative
/// errno. Any other value (positive, or below `-MAX_ERRNO`, such as `i32::MIN`, whose
/// absolute value is no `i32`) is a malformed reply: `EPROTO`.
pub fn errno_of(code: i32) -> i32 {
    match code.checked_neg() {
        Some(e) if (1..=MAX_ERRNO).contains(&e) => e,
        _ => libc::EPROTO,
    }
}

/// The bytes of one message built with the `netlink-packet-*` crates.
pub fn serialize<I: netlink_packet_core::NetlinkSerializable>(
    msg: I,
    flags: u16,
    seq: u32,
) -> Vec<u8> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// The first message of `msg` (header included) decoded by a `netlink-packet-*` crate when
/// it is of type `ty`; `Ok(None)` for another type.
pub fn decode<I>(msg: &[u8], ty: u16) -> Result<Option<I>, Malformed>
where
    I: netlink_packet_core::NetlinkDeserializable,
{
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
    let Some(m) = messages(msg).next().transpose()? else {
        return Ok(None);
    };
    if m.ty != ty {
        return Ok(None);
    }
    let whole = &msg[..NLMSG_HDRLEN + m.payload.len()];
    match NetlinkMessage::<I>::deserialize(whole) {
        Ok(NetlinkMessage {
            payload: NetlinkPayload::InnerMessage(inner),
            ..
        }) => Ok(Some(inner)),
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::debug!("undecodable netlink message of type {ty}: {e}");
            Err(Malformed("undecodable message"))
        }
    }
}

/// The outcome of the acknowledgements in one datagram: `pending` loses the sequence
/// numbers acknowledged (or failed), `first_err` keeps the first error's errno. An error for
/// a message no acknowledgement was asked for (a batch header) ends the exchange: no further
/// answers will come.
pub fn take_acks(
    buf: &[u8],
    pending: &mut Vec<u32>,
    first_err: &mut Option<i32>,
) -> Result<(), Malformed> {
    for m in messages(buf) {
        let m = m?;
        if m.ty != NLMSG_ERROR {
            continue;
        }
        let (code, seq) = error_of(m.payload)?;
        if code != 0 && first_err.is_none() {
            *first_err = Some(errno_of(code));
        }
        if let Some(i) = pending.iter().position(|&s| s == seq) {
            pending.swap_remove(i);
        } else if code != 0 {
            pending.clear();
        }
    }
    Ok(())
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DumpError {
    #[error(transparent)]
    Malformed(#[from] Malformed),
    /// The kernel's `NLMSG_ERROR` (its errno).
    #[error("errno {0}")]
    Kernel(i32),
}

impl From<DumpError> for io::Error {
    fn from(e: DumpError) -> io::Error {
        match e {
            DumpError::Malformed(m) => io::Error::new(io::ErrorKind::InvalidData, m),
            DumpError::Kernel(errno) => io::Error::from_raw_os_error(errno),
        }
    }
}

/// One datagram of the answer to dump request `seq`: appends its messages (whole, header
/// included) to `out`, leaving out other requests' messages and `NLMSG_NOOP`; `Ok(true)`
/// once `NLMSG_DONE` (or the acknowledgement) ended the answer.
pub fn dump_part(buf: &[u8], seq: u32, out: &mut Vec<Vec<u8>>) -> Result<bool, DumpError> {
    let mut done = false;
    let mut off = 0;
    for m in messages(buf) {
        let m = m?;
        let len = NLMSG_HDRLEN + m.payload.len();
        let whole = &buf[off..off + len];
        off += align(len);
        if m.seq != seq {
            continue;
        }
        match m.ty {
            NLMSG_DONE => done = true,
            NLMSG_ERROR => {
                let (code, _) = error_of(m.payload)?;
                if code != 0 {
                    return Err(DumpError::Kernel(errno_of(code)));
                }
                done = true;
            }
            NLMSG_NOOP => {}
            _ => out.push(whole.to_vec()),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_messages_and_nested_attributes() {
        let mut b = Builder::new();
        b.begin(0x0a00, NLM_F_REQUEST, 7)
            .raw(&[2, 0, 0, 10])
            .attr_str(1, "t")
            .nest(4, |b| {
                b.attr_be32(1, 3).attr_be32(2, (-100i32) as u32);
            })
            .end();
        b.begin(NLMSG_DONE, 0, 8).end();
        let bytes = b.into_bytes();
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &48u32.to_ne_bytes()[..], &0x0a00u16.to_ne_bytes(), &1u16.to_ne_bytes(),
            &7u32.to_ne_bytes(), &0u32.to_ne_bytes(),
            &[2, 0, 0, 10],
            &6u16.to_ne_bytes(), &1u16.to_ne_bytes(), b"t\0", &[0, 0],
            &20u16.to_ne_bytes(), &(4u16 | NLA_F_NESTED).to_ne_bytes(),
            &8u16.to_ne_bytes(), &1u16.to_ne_bytes(), &[0, 0, 0, 3],
            &8u16.to_ne_bytes(), &2u16.to_ne_bytes(), &[0xff, 0xff, 0xff, 0x9c],
            &16u32.to_ne_bytes(), &NLMSG_DONE.to_ne_bytes(), &0u16.to_ne_bytes(),
            &8u32.to_ne_bytes(), &0u32.to_ne_bytes(),
        ].concat();
        assert_eq!(bytes, want);
        let msgs: Vec<_> = messages(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].ty, msgs[0].seq), (0x0a00, 7));
        let a: Vec<_> = attrs(&msgs[0].payload[4..])
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(a[0], (1, &b"t\0"[..]));
        assert_eq!(a[1].0, 4);
        let inner = find_attr(a[1].1, 2).unwrap().unwrap();
        assert_eq!(attr_be32(inner), Some((-100i32) as u32));
        assert_eq!(attr_string(a[0].1), "t");
        assert_eq!(msgs[1].ty, NLMSG_DONE);
    }

    #[test]
    fn malformed_lengths_are_errors_not_panics() {
        assert!(messages(&[1, 2, 3]).next().unwrap().is_err());
        let mut bad = 100u32.to_ne_bytes().to_vec();
        bad.extend_from_slice(&[0; 12]);
        assert!(messages(&bad).next().unwrap().is_err());
        assert!(attrs(&[50, 0, 1, 0, 0]).next().unwrap().is_err());
        assert!(attrs(&[2, 0, 1, 0]).next().unwrap().is_err());
        assert!(error_of(&[0; 8]).is_err());
    }

    #[test]
    fn error_messages() {
        let mut p = (-1i32).to_ne_bytes().to_vec();
        let mut hdr = [0u8; 16];
        hdr[8..12].copy_from_slice(&42u32.to_ne_bytes());
        p.extend_from_slice(&hdr);
        assert_eq!(error_of(&p).unwrap(), (-1, 42));
    }

    /// An `NLMSG_ERROR` message answering request `seq` with `code` (0: an acknowledgement).
    pub(crate) fn ack(code: i32, seq: u32) -> Vec<u8> {
        let mut req = [0u8; 16];
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        let mut b = Builder::new();
        b.begin(NLMSG_ERROR, 0, seq)
            .raw(&code.to_ne_bytes())
            .raw(&req)
            .end();
        b.into_bytes()
    }

    #[test]
    fn acks_and_dumps() {
        // Two acknowledgements, one failed: both answered, the failure kept as an errno.
        let mut pending = vec![5, 6];
        let mut first = None;
        let buf = [ack(0, 5), ack(-libc::EEXIST, 6)].concat();
        take_acks(&buf, &mut pending, &mut first).unwrap();
        assert_eq!((pending.len(), first), (0, Some(libc::EEXIST)));
        // An error for a message no ack was asked for (a batch header) ends the exchange;
        // a code no kernel sends is EPROTO, not its negation.
        let mut pending = vec![7, 8];
        let mut first = None;
        take_acks(&ack(i32::MIN, 1), &mut pending, &mut first).unwrap();
        assert_eq!((pending.len(), first), (0, Some(libc::EPROTO)));

        // A dump: messages of this request kept whole, others and NOOP left out, DONE ends.
        let mut b = Builder::new();
        b.begin(0x10, 2, 3).raw(&[1, 2, 3, 4]).end();
        b.begin(0x10, 2, 4).raw(&[9; 4]).end();
        b.begin(NLMSG_NOOP, 0, 3).end();
        let part = b.into_bytes();
        let mut out = Vec::new();
        assert_eq!(dump_part(&part, 3, &mut out), Ok(false));
        assert_eq!(out, [part[..20].to_vec()]);
        let mut b = Builder::new();
        b.begin(NLMSG_DONE, 2, 3).raw(&0i32.to_ne_bytes()).end();
        assert_eq!(dump_part(b.bytes(), 3, &mut out), Ok(true));
        assert_eq!(out.len(), 1);
        assert_eq!(
            dump_part(&ack(-libc::EPERM, 3), 3, &mut out),
            Err(DumpError::Kernel(libc::EPERM))
        );
        assert_eq!(
            dump_part(&ack(-MAX_ERRNO - 1, 3), 3, &mut out),
            Err(DumpError::Kernel(libc::EPROTO))
        );
    }

    #[test]
    fn error_codes_become_errnos() {
        assert_eq!(errno_of(-libc::EINVAL), libc::EINVAL);
        assert_eq!(errno_of(-MAX_ERRNO), MAX_ERRNO);
        // Codes no kernel sends are a protocol error, never a negative or zero errno
        // (i32::MIN came from the fuzzer: its absolute value is no i32).
        for bad in [i32::MIN, -MAX_ERRNO - 1, 0, 1, libc::EINVAL, i32::MAX] {
            assert_eq!(errno_of(bad), libc::EPROTO, "{bad}");
        }
    }
}
