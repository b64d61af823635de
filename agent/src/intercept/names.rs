//! The names behind addresses, learned from the DNS answers intercept relays, so that a
//! connection to an original destination goes to the upstream proxy as the name the
//! program resolved (`--upstream-proxy`), as a SOCKS client given the name would send it.
//!
//! - [`answers`]: what one DNS response says (address → name asked, following CNAME chains
//!   back to the question; TTL the smallest along the chain), a pure function over bytes;
//! - [`Names`]: the cache: one name per address, the most recent answer wins, each entry
//!   for its TTL (at least [`MIN_LIFE`], at most [`MAX_LIFE`]), at most `capacity` entries;
//! - [`DnsTap`]: a stream wrapper learning from the DNS-over-TCP answers read through it.
//!
//! Names are learned only from answers that cross intercept (UDP from port 53 with `--udp`,
//! TCP port 53): a resolver the program reaches another way (a local stub, `capagent dns`
//! outside the intercepted path) teaches nothing, and the address is sent.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData};

use crate::proxy::tap::{Tapped, Watch};

/// The port DNS answers come from.
pub const DNS_PORT: u16 = 53;
/// An entry lives at least this long, whatever its TTL: programs keep using an address a
/// little past a short TTL (Java caches 30 s, browsers a minute).
pub const MIN_LIFE: Duration = Duration::from_secs(60);
/// And at most this long.
pub const MAX_LIFE: Duration = Duration::from_secs(24 * 3600);
/// Entries a session keeps by default.
pub const DEFAULT_CAPACITY: usize = 16384;
/// CNAME links followed from the question at most.
const MAX_CHAIN: usize = 16;

/// One address a DNS answer gave for the name asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    pub addr: IpAddr,
    /// The name asked, lower case, without the final dot.
    pub name: String,
    /// Seconds: the smallest TTL of the address record and the CNAMEs leading to it.
    pub ttl: u32,
}

/// The name of `n` as a proxy is given it (`www.example.com`), or None when it is not a
/// plain host name (root, escapes, over 253 bytes, an address).
fn host_name(n: &Name) -> Option<String> {
    let s = n.to_lowercase().to_ascii();
    let s = s.strip_suffix('.').unwrap_or(&s).to_string();
    let plain = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s.parse::<IpAddr>().is_err();
    plain.then_some(s)
}

/// The addresses a DNS response `msg` gives for its question's name: A and AAAA records of
/// that name or of a name its CNAME chain in the answer section leads to. Nothing for
/// anything else (a query, an error, no single IN question, bytes that do not parse).
pub fn answers(msg: &[u8]) -> Vec<Learned> {
    let Ok(m) = Message::from_vec(msg) else {
        return Vec::new();
    };
    let meta = &m.metadata;
    if meta.message_type != MessageType::Response
        || meta.op_code != OpCode::Query
        || meta.response_code != ResponseCode::NoError
        || m.queries.len() != 1
        || m.queries[0].query_class != DNSClass::IN
    {
        return Vec::new();
    }
    let asked = &m.queries[0].name;
    let Some(name) = host_name(asked) else {
        return Vec::new();
    };
    // The chain: each name with the smallest TTL of the CNAMEs leading to it.
    let mut chain: Vec<(&Name, u32)> = vec![(asked, u32::MAX)];
    while chain.len() <= MAX_CHAIN {
        let (cur, ttl) = *chain.last().expect("not empty");
        let next = m.answers.iter().find_map(|r| match &r.data {
            RData::CNAME(c) if r.dns_class == DNSClass::IN && &r.name == cur => {
                Some((&c.0, ttl.min(r.ttl)))
            }
            _ => None,
        });
        match next {
            // A loop ends the chain.
            Some((n, t)) if !chain.iter().any(|(c, _)| *c == n) => chain.push((n, t)),
            _ => break,
        }
    }
    m.answers
        .iter()
        .filter(|r| r.dns_class == DNSClass::IN)
        .filter_map(|r| {
            let addr = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => return None,
            };
            let (_, ttl) = chain.iter().find(|(n, _)| **n == r.name)?;
            Some(Learned {
                addr,
                name: name.clone(),
                ttl: r.ttl.min(*ttl),
            })
        })
        .collect()
}

struct Entry {
    name: Arc<str>,
    expires: Instant,
}

/// The session's names: address → the name a DNS answer last gave it.
pub struct Names {
    map: Mutex<HashMap<IpAddr, Entry>>,
    capacity: usize,
}

impl Default for Names {
    fn default() -> Names {
        Names::new(DEFAULT_CAPACITY)
    }
}

impl Names {
    /// A cache of at most `capacity` addresses (at least one).
    pub fn new(capacity: usize) -> Names {
        Names {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Learns what the DNS response `msg` says; how many addresses it named.
    pub fn learn(&self, msg: &[u8]) -> usize {
        self.learn_at(msg, Instant::now())
    }

    /// [`Names::learn`] at time `now`.
    pub fn learn_at(&self, msg: &[u8], now: Instant) -> usize {
        let learned = answers(msg);
        for l in &learned {
            self.insert_at(l.addr, &l.name, l.ttl, now);
        }
        if !learned.is_empty() {
            tracing::debug!(name = %learned[0].name, n = learned.len(), "intercept: learned a name");
        }
        learned.len()
    }

    /// `addr` is `name` for `ttl` seconds from `now` (within [`MIN_LIFE`]..[`MAX_LIFE`]);
    /// an older entry of `addr` goes. A full cache drops its expired entries, else the one
    /// expiring first.
    pub fn insert_at(&self, addr: IpAddr, name: &str, ttl: u32, now: Instant) {
        let life = Duration::from_secs(ttl.into()).clamp(MIN_LIFE, MAX_LIFE);
        let addr = addr.to_canonical();
        let mut map = self.map.lock().expect("names lock");
        if !map.contains_key(&addr) && map.len() >= self.capacity {
            map.retain(|_, e| e.expires > now);
            if map.len() >= self.capacity
                && let Some(first) = map.iter().min_by_key(|(_, e)| e.expires).map(|(a, _)| *a)
            {
                map.remove(&first);
            }
        }
        map.insert(
            addr,
            Entry {
                name: name.into(),
                expires: now + life,
            },
        );
    }

    /// The name of `addr`, when an answer gave one that has not expired.
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.name_at(addr, Instant::now())
    }

    /// [`Names::name_of`] at time `now`.
    pub fn name_at(&self, addr: IpAddr, now: Instant) -> Option<String> {
        let map = self.map.lock().expect("names lock");
        map.get(&addr.to_canonical())
            .filter(|e| e.expires > now)
            .map(|e| e.name.to_string())
    }

    /// Addresses held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.map.lock().expect("names lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A stream whose reads are DNS over TCP answers (RFC 1035 4.2.2: each message after its
/// two-byte length), learned into [`Names`] as they pass; writes and reads are untouched.
pub type DnsTap<S> = Tapped<S, DnsAnswers>;

impl<S> DnsTap<S> {
    pub fn new(inner: S, names: Arc<Names>) -> DnsTap<S> {
        Tapped::with(
            inner,
            DnsAnswers {
                names,
                buf: Vec::new(),
            },
        )
    }
}

/// What a [`DnsTap`] does with the answers read.
pub struct DnsAnswers {
    names: Arc<Names>,
    /// Bytes of the message being read (its length prefix first).
    buf: Vec<u8>,
}

impl Watch for DnsAnswers {
    /// `data` read from the server: learns each message it completes.
    fn read(&mut self, mut data: &[u8], _room: usize) {
        while !data.is_empty() {
            let want = match self.buf.len() {
                0 | 1 => 2,
                _ => 2 + usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]])),
            };
            let take = (want - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == want && want > 2 {
                self.names.learn(&self.buf[2..]);
                self.buf.clear();
            } else if want == 2 && self.buf.len() == 2 && self.buf == [0, 0] {
                // An empty message: nothing to learn.
                self.buf.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Record, RecordType};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response(asked: &str, answers: Vec<Record>) -> Vec<u8> {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_query(Query::query(name(asked), RecordType::A));
        m.add_answers(answers);
        m.to_vec().unwrap()
    }

    fn a(owner: &str, ttl: u32, ip: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(ip.parse().unwrap())))
    }

    fn cname(owner: &str, ttl: u32, to: &str) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(to))))
    }

    fn learned(addr: &str, name: &str, ttl: u32) -> Learned {
        Learned {
            addr: addr.parse().unwrap(),
            name: name.into(),
            ttl,
        }
    }

    #[test]
    fn addresses_of_the_name_asked() {
        let msg = response(
            "WWW.Example.COM.",
            vec![
                a("www.example.com.", 300, "192.0.2.1"),
                a("www.example.com.", 200, "192.0.2.2"),
                Record::from_rdata(
                    name("www.example.com."),
                    60,
                    RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
                ),
                // Not the name asked, not led to: ignored.
                a("other.example.", 300, "192.0.2.9"),
            ],
        );
        assert_eq!(
            answers(&msg),
            vec![
                learned("192.0.2.1", "www.example.com", 300),
                learned("192.0.2.2", "www.example.com", 200),
                learned("2001:db8::1", "www.example.com", 60),
            ]
        );
    }

    #[test]
    fn cname_chains_lead_back_to_the_question() {
        // Answer order does not matter; the TTL is the chain's smallest.
        let msg = response(
            "app.example.com.",
            vec![
                a("edge.cdn.example.", 600, "198.51.100.7"),
                cname("lb.example.net.", 30, "edge.cdn.example."),
                cname("app.example.com.", 3600, "lb.example.net."),
            ],
        );
        assert_eq!(
            answers(&msg),
            vec![learned("198.51.100.7", "app.example.com", 30)]
        );
        // A CNAME loop ends; an address of a name off the chain is not learned.
        let msg = response(
            "x.example.",
            vec![
                cname("x.example.", 60, "y.example."),
                cname("y.example.", 60, "x.example."),
                a("z.example.", 60, "192.0.2.3"),
            ],
        );
        assert!(answers(&msg).is_empty());
    }

    #[test]
    fn the_fuzz_seed_is_a_cname_answer() {
        let seed = include_bytes!("../../../fuzz/seeds/dns_message/response_cname");
        assert_eq!(
            answers(seed),
            vec![learned("198.51.100.7", "app.example.com", 30)]
        );
    }

    #[test]
    fn nothing_from_queries_errors_or_garbage() {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name("a.example."), RecordType::A));
        q.add_answer(a("a.example.", 60, "192.0.2.1"));
        assert!(answers(&q.to_vec().unwrap()).is_empty());
        let mut nx = Message::new(7, MessageType::Response, OpCode::Query);
        nx.metadata.response_code = ResponseCode::NXDomain;
        nx.add_query(Query::query(name("a.example."), RecordType::A));
        nx.add_answer(a("a.example.", 60, "192.0.2.1"));
        assert!(answers(&nx.to_vec().unwrap()).is_empty());
        assert!(answers(b"").is_empty());
        assert!(answers(b"\x00\x07\x81\x80garbage").is_empty());
        // The root is no host name.
        assert!(answers(&response(".", vec![a(".", 60, "192.0.2.1")])).is_empty());
        // Nor is an address.
        let msg = response("192.0.2.1.", vec![a("192.0.2.1.", 60, "192.0.2.1")]);
        assert!(answers(&msg).is_empty());
    }

    #[test]
    fn cache_ttl_and_most_recent_answer() {
        let names = Names::new(8);
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        names.learn_at(
            &response("one.example.", vec![a("one.example.", 300, "192.0.2.1")]),
            t0,
        );
        assert_eq!(names.name_at(ip, t0).as_deref(), Some("one.example"));
        // An IPv4-mapped address is the same address.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(names.name_at(mapped, t0).as_deref(), Some("one.example"));
        // Lives for its TTL.
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(names.name_at(ip, at(299)).as_deref(), Some("one.example"));
        assert_eq!(names.name_at(ip, at(300)), None);
        // The most recent answer wins.
        names.learn_at(
            &response("two.example.", vec![a("two.example.", 300, "192.0.2.1")]),
            at(10),
        );
        assert_eq!(names.name_at(ip, at(11)).as_deref(), Some("two.example"));
        // A short TTL lives MIN_LIFE; a huge one MAX_LIFE.
        names.insert_at(ip, "short.example", 1, t0);
        assert!(
            names
                .name_at(ip, t0 + MIN_LIFE - Duration::from_secs(1))
                .is_some()
        );
        assert!(names.name_at(ip, t0 + MIN_LIFE).is_none());
        names.insert_at(ip, "long.example", u32::MAX, t0);
        assert!(names.name_at(ip, t0 + MAX_LIFE).is_none());
    }

    #[test]
    fn cache_is_bounded() {
        let names = Names::new(3);
        let t0 = Instant::now();
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        // Expiring at 100, 200, 300 s.
        for i in 1..=3u8 {
            names.insert_at(ip(i), &format!("n{i}"), u32::from(i) * 100, t0);
        }
        assert_eq!(names.len(), 3);
        // Full: the one expiring first goes.
        names.insert_at(ip(4), "n4", 400, t0);
        assert_eq!(names.len(), 3);
        assert_eq!(names.name_at(ip(1), t0), None);
        assert_eq!(names.name_at(ip(4), t0).as_deref(), Some("n4"));
        // Replacing an address held takes no room.
        names.insert_at(ip(2), "n2b", 500, t0);
        assert_eq!(names.len(), 3);
        assert_eq!(names.name_at(ip(3), t0).as_deref(), Some("n3"));
        // Full again with entries expired by then: they all go.
        names.insert_at(ip(5), "n5", 100, t0 + Duration::from_secs(450));
        assert_eq!(names.len(), 2);
        assert_eq!(names.name_at(ip(2), t0).as_deref(), Some("n2b"));
        assert_eq!(
            names
                .name_at(ip(5), t0 + Duration::from_secs(450))
                .as_deref(),
            Some("n5")
        );
    }

    #[tokio::test]
    async fn tap_learns_tcp_answers_split_anywhere() {
        let m1 = response("a.example.", vec![a("a.example.", 300, "192.0.2.1")]);
        let m2 = response("b.example.", vec![a("b.example.", 300, "192.0.2.2")]);
        let mut stream = Vec::new();
        for m in [&m1, &m2] {
            stream.extend_from_slice(&(m.len() as u16).to_be_bytes());
            stream.extend_from_slice(m);
        }
        // Every cut of the stream into two writes.
        for cut in 0..=stream.len() {
            let names = Arc::new(Names::default());
            let (mut server, client) = tokio::io::duplex(4096);
            let mut tap = DnsTap::new(client, names.clone());
            server.write_all(&stream[..cut]).await.unwrap();
            let mut got = vec![0u8; cut];
            tap.read_exact(&mut got).await.unwrap();
            server.write_all(&stream[cut..]).await.unwrap();
            drop(server);
            tap.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, stream, "bytes pass unchanged");
            assert_eq!(
                names.name_of("192.0.2.1".parse().unwrap()).as_deref(),
                Some("a.example"),
                "cut {cut}"
            );
            assert_eq!(
                names.name_of("192.0.2.2".parse().unwrap()).as_deref(),
                Some("b.example"),
                "cut {cut}"
            );
        }
    }
}
