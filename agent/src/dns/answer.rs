//! The spoofing DNS server's decisions, as pure functions over message bytes: which queries
//! get the configured address, which go to the upstream server, and the bytes of every
//! answer capagent builds itself (messages parsed and built with `hickory-proto`).

use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};

/// Payload size capagent advertises in EDNS answers (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

/// A `--name` pattern: `example.com` (that name only), `*.example.com` (every name below
/// it, not the name itself) or `*` (every name). Case-insensitive; a trailing dot is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(String),
    Below(String),
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("invalid name pattern {0:?}: expected NAME, *.NAME or *")]
    Invalid(String),
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, PatternError> {
        let bad = || PatternError::Invalid(s.to_string());
        if s == "*" {
            return Ok(Pattern::Any);
        }
        let (below, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let name = normalize(name);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(if below {
            Pattern::Below(name)
        } else {
            Pattern::Exact(name)
        })
    }

    /// Whether `name` (as in a query, trailing dot or not) matches.
    pub fn matches(&self, name: &str) -> bool {
        let name = normalize(name);
        match self {
            Pattern::Any => true,
            Pattern::Exact(n) => name == *n,
            Pattern::Below(n) => {
                name.len() > n.len() + 1
                    && name.ends_with(n.as_str())
                    && name.as_bytes()[name.len() - n.len() - 1] == b'.'
            }
        }
    }
}

/// What unmatched names get when there is no upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Unmatched {
    /// NXDOMAIN: the name does not exist (applications give up at once).
    #[default]
    NxDomain,
    /// REFUSED: not served here (stub resolvers try their next server).
    Refused,
}

/// How queries are answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The address of A answers.
    pub v4: Ipv4Addr,
    /// The address of AAAA answers; without it, spoofed names have no AAAA (NOERROR, empty).
    pub v6: Option<Ipv6Addr>,
    pub ttl: u32,
    /// Names spoofed; empty = every name.
    pub names: Vec<Pattern>,
    /// Whether unmatched names go to an upstream server.
    pub upstream: bool,
    pub unmatched: Unmatched,
}

impl Policy {
    pub fn spoofs(&self, name: &str) -> bool {
        self.names.is_empty() || self.names.iter().any(|p| p.matches(name))
    }
}

/// What to do with a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send these bytes back; `what` says why, for the log.
    Reply { bytes: Vec<u8>, what: String },
    /// Send the query as it is to the upstream server and relay its answer; `what` names the
    /// question, for the log.
    Forward { what: String },
    /// Not a query capagent can answer at all (too short for a header, or a response): no
    /// reply.
    Drop { why: &'static str },
}

impl Decision {
    /// A reply to a query capagent could not take (FORMERR, NOTIMP), or no reply at all.
    pub fn is_error(&self) -> bool {
        match self {
            Decision::Reply { bytes, .. } => bytes.len() >= 4 && matches!(bytes[3] & 0x0f, 1 | 4),
            Decision::Forward { .. } => false,
            Decision::Drop { .. } => true,
        }
    }
}

/// Decides what a query gets.
pub fn decide(query: &[u8], policy: &Policy) -> Decision {
    if query.len() < 12 {
        return Decision::Drop {
            why: "shorter than a DNS header",
        };
    }
    let id = u16::from_be_bytes([query[0], query[1]]);
    if query[2] & 0x80 != 0 {
        return Decision::Drop {
            why: "a response, not a query",
        };
    }
    let raw_opcode = OpCode::from_u8((query[2] >> 3) & 0x0f);
    let msg = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            return Decision::Reply {
                bytes: error_reply(id, raw_opcode, ResponseCode::FormErr, None, None),
                what: "malformed query: FORMERR".to_string(),
            };
        }
    };
    let edns = msg.edns.is_some();
    if msg.metadata.op_code != OpCode::Query {
        return Decision::Reply {
            bytes: reply_to(&msg, ResponseCode::NotImp, Vec::new(), edns, policy),
            what: format!("opcode {:?}: NOTIMP", msg.metadata.op_code),
        };
    }
    if msg.queries.len() != 1 {
        return Decision::Reply {
            bytes: reply_to(&msg, ResponseCode::FormErr, Vec::new(), edns, policy),
            what: format!("{} questions: FORMERR", msg.queries.len()),
        };
    }
    let q = &msg.queries[0];
    let name = q.name.to_ascii();
    let what = format!("{} {}", q.query_type, name);
    if q.query_class == DNSClass::IN && policy.spoofs(&name) {
        let mut answers = Vec::new();
        let want_a = matches!(q.query_type, RecordType::A | RecordType::ANY);
        let want_aaaa = matches!(q.query_type, RecordType::AAAA | RecordType::ANY);
        if want_a {
            answers.push(Record::from_rdata(
                q.name.clone(),
                policy.ttl,
                RData::A(A(policy.v4)),
            ));
        }
        if want_aaaa && let Some(v6) = policy.v6 {
            answers.push(Record::from_rdata(
                q.name.clone(),
                policy.ttl,
                RData::AAAA(AAAA(v6)),
            ));
        }
        let said = if answers.is_empty() {
            "no data (NOERROR)".to_string()
        } else {
            answers
                .iter()
                .map(|r| r.data.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Decision::Reply {
            bytes: reply_to(&msg, ResponseCode::NoError, answers, edns, policy),
            what: format!("{what}: spoofed {said}"),
        };
    }
    if policy.upstream {
        return Decision::Forward { what };
    }
    let (code, text) = match policy.unmatched {
        Unmatched::NxDomain => (ResponseCode::NXDomain, "NXDOMAIN"),
        Unmatched::Refused => (ResponseCode::Refused, "REFUSED"),
    };
    Decision::Reply {
        bytes: reply_to(&msg, code, Vec::new(), edns, policy),
        what: format!("{what}: not spoofed, no upstream: {text}"),
    }
}

/// SERVFAIL for a query whose upstream server failed (None when the query cannot be parsed,
/// which [`decide`] answered already).
pub fn servfail(query: &[u8], policy: &Policy) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let edns = msg.edns.is_some();
    Some(reply_to(
        &msg,
        ResponseCode::ServFail,
        Vec::new(),
        edns,
        policy,
    ))
}

fn reply_to(
    req: &Message,
    code: ResponseCode,
    answers: Vec<Record>,
    edns: bool,
    policy: &Policy,
) -> Vec<u8> {
    let mut meta = Metadata::response_from_request(&req.metadata);
    meta.response_code = code;
    // capagent is the authority on the names it spoofs, and answers recursively otherwise
    // (through the upstream server) when there is one.
    meta.authoritative = code == ResponseCode::NoError;
    meta.recursion_available = policy.upstream || policy.names.is_empty();
    error_reply_with(meta, req.queries.first().cloned(), answers, edns)
}

fn error_reply(
    id: u16,
    op: OpCode,
    code: ResponseCode,
    query: Option<Query>,
    edns: Option<bool>,
) -> Vec<u8> {
    let mut meta = Metadata::new(id, MessageType::Response, op);
    meta.response_code = code;
    error_reply_with(meta, query, Vec::new(), edns.unwrap_or(false))
}

fn error_reply_with(
    meta: Metadata,
    query: Option<Query>,
    answers: Vec<Record>,
    edns: bool,
) -> Vec<u8> {
    let mut m = Message::new(meta.id, MessageType::Response, meta.op_code);
    m.metadata = meta;
    if let Some(q) = query {
        m.add_query(q);
    }
    m.add_answers(answers);
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        m.set_edns(e);
    }
    // A response of our own with at most a question, two address records and an OPT record
    // always encodes (names came from a parsed message).
    m.to_vec().unwrap_or_else(|_| {
        let mut h = vec![0u8; 12];
        h[..2].copy_from_slice(&meta.id.to_be_bytes());
        h[2] = 0x80;
        h[3] = 2; // SERVFAIL
        h
    })
}

/// One DNS message from a TCP stream (RFC 1035 4.2.2: two-byte length prefix): the message's
/// range in `buf` and the bytes it takes, or None while incomplete.
pub fn tcp_frame(buf: &[u8]) -> Option<(std::ops::Range<usize>, usize)> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    (buf.len() >= 2 + len).then_some((2..2 + len, 2 + len))
}

/// A message framed for TCP.
pub fn tcp_framed(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 2);
    out.extend_from_slice(&(msg.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    out.extend_from_slice(&msg[..msg.len().min(usize::from(u16::MAX))]);
    out
}

/// The ID of a DNS message, if it has a header.
pub fn message_id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;

    fn policy(names: &[&str], upstream: bool) -> Policy {
        Policy {
            v4: Ipv4Addr::new(10, 1, 2, 3),
            v6: Some("fd00::1".parse().unwrap()),
            ttl: 42,
            names: names.iter().map(|n| Pattern::parse(n).unwrap()).collect(),
            upstream,
            unmatched: Unmatched::NxDomain,
        }
    }

    fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().unwrap()
    }

    fn reply(d: Decision) -> Message {
        match d {
            Decision::Reply { bytes, .. } => Message::from_vec(&bytes).unwrap(),
            other => panic!("not a reply: {other:?}"),
        }
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("*.Example.com.").unwrap();
        assert!(p.matches("www.example.com."));
        assert!(p.matches("a.b.EXAMPLE.com"));
        assert!(!p.matches("example.com."));
        assert!(!p.matches("badexample.com"));
        let e = Pattern::parse("example.com").unwrap();
        assert!(e.matches("EXAMPLE.COM."));
        assert!(!e.matches("www.example.com"));
        assert!(Pattern::parse("*").unwrap().matches("anything."));
        for bad in ["", "*.", "a..b", "**.a", "a b", "*a.com", "a.*.com"] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spoof_a_and_aaaa() {
        let p = policy(&["*.example.com"], false);
        let m = reply(decide(&query("www.example.com.", RecordType::A, false), &p));
        assert_eq!(m.metadata.id, 0x1234);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired);
        assert_eq!(m.queries.len(), 1);
        assert_eq!(m.answers.len(), 1);
        assert_eq!(m.answers[0].ttl, 42);
        assert_eq!(m.answers[0].data, RData::A(A(Ipv4Addr::new(10, 1, 2, 3))));
        assert!(m.edns.is_none());
        let m = reply(decide(
            &query("www.example.com.", RecordType::AAAA, true),
            &p,
        ));
        assert_eq!(
            m.answers[0].data,
            RData::AAAA(AAAA("fd00::1".parse().unwrap()))
        );
        assert_eq!(m.edns.as_ref().unwrap().max_payload(), EDNS_PAYLOAD);
        // Other types of a spoofed name: no data.
        let m = reply(decide(
            &query("www.example.com.", RecordType::MX, false),
            &p,
        ));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn aaaa_without_answer6_is_nodata() {
        let mut p = policy(&[], false);
        p.v6 = None;
        let m = reply(decide(&query("x.org.", RecordType::AAAA, false), &p));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
    }

    #[test]
    fn unmatched() {
        let p = policy(&["*.example.com"], true);
        assert_eq!(
            decide(&query("other.org.", RecordType::A, false), &p),
            Decision::Forward {
                what: "A other.org.".into()
            }
        );
        let mut p = policy(&["*.example.com"], false);
        let m = reply(decide(&query("other.org.", RecordType::A, false), &p));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        p.unmatched = Unmatched::Refused;
        let m = reply(decide(&query("other.org.", RecordType::A, false), &p));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let q = query("other.org.", RecordType::A, true);
        let m = Message::from_vec(&servfail(&q, &p).unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m.edns.is_some());
    }

    #[test]
    fn bad_queries() {
        let p = policy(&[], false);
        assert!(matches!(decide(b"short", &p), Decision::Drop { .. }));
        let mut resp = query("a.", RecordType::A, false);
        resp[2] |= 0x80;
        assert!(matches!(decide(&resp, &p), Decision::Drop { .. }));
        // Garbage after a valid header: FORMERR with the same ID.
        let mut junk = query("a.", RecordType::A, false);
        junk.truncate(14);
        let m = reply(decide(&junk, &p));
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0x1234, ResponseCode::FormErr)
        );
        // Status opcode: NOTIMP.
        let mut st = query("a.", RecordType::A, false);
        st[2] = (st[2] & !0x78) | (2 << 3);
        let d = decide(&st, &p);
        assert!(d.is_error());
        let m = reply(d);
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        assert!(!decide(&query("a.", RecordType::A, false), &p).is_error());
    }

    #[test]
    fn framing() {
        let f = tcp_framed(b"abc");
        assert_eq!(f, b"\0\x03abc");
        assert_eq!(tcp_frame(&f), Some((2..5, 5)));
        assert_eq!(tcp_frame(&f[..4]), None);
        assert_eq!(tcp_frame(b"\0"), None);
        assert_eq!(message_id(b"\x12\x34"), Some(0x1234));
    }
}
