//! Attributing captured packets to local processes, in userspace.
//!
//! A table of the local TCP/UDP sockets (IPv4 and IPv6, every state) comes from a
//! `NETLINK_SOCK_DIAG` dump ([`crate::netlink::sock_diag`]): 5-tuple, inode and socket
//! cookie of each. The inodes are then mapped to processes by scanning the `/proc/*/fd`
//! symlinks (`socket:[INODE]`) and `/proc/PID/comm`.
//!
//! sock_diag and `/proc/net` are per network namespace: the dump describes the sockets of
//! capagent's own namespace, which is right because capagent runs in the namespace whose
//! interfaces it captures (e.g. under `ip netns exec`). The `/proc` scan sees every process
//! of capagent's pid namespace.
//!
//! A packet is matched by its socket cookie first (non-zero when the kernel knew the
//! sending socket), else by its 5-tuple: exact, then the local address/port with any remote
//! (a listening or unconnected UDP socket), the wildcard local addresses included.

use std::{
    collections::HashMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use agent_common::packet_dir;
use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

pub use crate::model::packet::Owner;
use crate::netlink::{self, sock_diag};

pub const TCP: u8 = libc::IPPROTO_TCP as u8;
pub const UDP: u8 = libc::IPPROTO_UDP as u8;

/// One local socket from the sock_diag dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockEntry {
    pub proto: u8,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub inode: u32,
    pub cookie: u64,
}

/// The 5-tuple of a packet, as sent (`src` -> `dst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) as IPv4, so both sides compare.
fn canon(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// The TCP/UDP 5-tuple of an Ethernet frame, if it has one.
pub fn five_tuple(frame: &[u8]) -> Option<FiveTuple> {
    tuple_of(LaxSlicedPacket::from_ethernet(frame).ok()?)
}

/// The TCP/UDP 5-tuple of a packet that starts with its IP header (LINKTYPE_RAW devices).
pub fn five_tuple_raw(packet: &[u8]) -> Option<FiveTuple> {
    tuple_of(LaxSlicedPacket::from_ip(packet).ok()?)
}

/// The 5-tuple of a captured packet: `raw` when its interface has no link-layer header.
pub fn five_tuple_of(data: &[u8], raw: bool) -> Option<FiveTuple> {
    if raw {
        five_tuple_raw(data)
    } else {
        five_tuple(data)
    }
}

fn tuple_of(pkt: LaxSlicedPacket<'_>) -> Option<FiveTuple> {
    let (src, dst) = match &pkt.net {
        Some(LaxNetSlice::Ipv4(v4)) => (
            IpAddr::V4(v4.header().source_addr()),
            IpAddr::V4(v4.header().destination_addr()),
        ),
        Some(LaxNetSlice::Ipv6(v6)) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
        ),
        _ => return None,
    };
    let (proto, sp, dp) = match &pkt.transport {
        Some(TransportSlice::Tcp(t)) => (TCP, t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (UDP, u.source_port(), u.destination_port()),
        _ => return None,
    };
    Some(FiveTuple {
        proto,
        src: canon(SocketAddr::new(src, sp)),
        dst: canon(SocketAddr::new(dst, dp)),
    })
}

// ---- sock_diag -------------------------------------------------------------------------

/// Every TCP and UDP socket (IPv4 and IPv6) of this network namespace.
pub fn dump_sockets() -> io::Result<Vec<SockEntry>> {
    let mut sock = netlink::Socket::open(libc::NETLINK_SOCK_DIAG)?;
    let mut all = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        for proto in [TCP, UDP] {
            match sock_diag::dump(&mut sock, family, proto) {
                Ok(v) => all.extend(v.into_iter().map(|s| SockEntry {
                    proto,
                    local: canon(s.local),
                    remote: canon(s.remote),
                    inode: s.inode,
                    cookie: s.cookie,
                })),
                // udp_diag may be missing: TCP still works.
                Err(e) if proto == UDP => tracing::debug!("sock_diag UDP dump: {e}"),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(all)
}

/// `inode -> owner` for the socket inodes in `wanted` (all sockets with `None`), from
/// `/proc/*/fd` (the lowest pid wins when processes share a socket).
pub fn socket_owners(wanted: Option<&std::collections::HashSet<u32>>) -> HashMap<u32, Owner> {
    let mut out: HashMap<u32, Owner> = HashMap::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    let mut pids: Vec<u32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            let Ok(link) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = link
                .to_str()
                .and_then(|s| s.strip_prefix("socket:["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if wanted.is_some_and(|w| !w.contains(&inode)) || out.contains_key(&inode) {
                continue;
            }
            let comm = comm
                .get_or_insert_with(|| {
                    fs::read_to_string(format!("/proc/{pid}/comm"))
                        .map(|s| s.trim_end().to_string())
                        .unwrap_or_else(|_| "?".to_string())
                })
                .clone();
            out.insert(inode, Owner { pid, comm });
        }
    }
    out
}

// ---- the table and its lookups -----------------------------------------------------------

type LocalKey = (u8, SocketAddr);

/// Owned sockets, indexed for packet lookups.
#[derive(Debug, Default)]
pub struct OwnerTable {
    by_cookie: HashMap<u64, Owner>,
    exact: HashMap<(u8, SocketAddr, SocketAddr), Owner>,
    /// Sockets with no remote end (listening, unconnected UDP), by local address/port.
    unconnected: HashMap<LocalKey, Owner>,
}

fn is_unspecified(a: &SocketAddr) -> bool {
    a.ip().is_unspecified() && a.port() == 0
}

impl OwnerTable {
    /// Builds the table from the dump and the inode owners (sockets without owner are left
    /// out).
    pub fn build(entries: &[SockEntry], owners: &HashMap<u32, Owner>) -> OwnerTable {
        let mut t = OwnerTable::default();
        for e in entries {
            let Some(o) = owners.get(&e.inode) else {
                continue;
            };
            if e.cookie != 0 {
                t.by_cookie.insert(e.cookie, o.clone());
            }
            if is_unspecified(&e.remote) {
                t.unconnected.insert((e.proto, e.local), o.clone());
            } else {
                t.exact.insert((e.proto, e.local, e.remote), o.clone());
            }
        }
        t
    }

    pub fn len(&self) -> usize {
        self.by_cookie.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_cookie.is_empty()
    }

    pub fn by_cookie(&self, cookie: u64) -> Option<&Owner> {
        self.by_cookie.get(&cookie)
    }

    /// The socket whose local end is `local` and remote end `remote`: exactly, else an
    /// unconnected socket on `local` (its address, then the wildcard addresses).
    pub fn by_local(&self, proto: u8, local: SocketAddr, remote: SocketAddr) -> Option<&Owner> {
        if let Some(o) = self.exact.get(&(proto, local, remote)) {
            return Some(o);
        }
        let port = local.port();
        [
            local,
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
        ]
        .iter()
        .find_map(|a| self.unconnected.get(&(proto, *a)))
    }

    /// The owner of a packet: by cookie when non-zero, else by 5-tuple, taking the sender as
    /// the local end of egress packets and the receiver for ingress ones, then the other end
    /// (exact matches only).
    pub fn lookup(&self, cookie: u64, dir: u8, t: Option<&FiveTuple>) -> Option<&Owner> {
        if cookie != 0
            && let Some(o) = self.by_cookie(cookie)
        {
            return Some(o);
        }
        let t = t?;
        let (near, far) = if dir == packet_dir::EGRESS {
            (t.src, t.dst)
        } else {
            (t.dst, t.src)
        };
        self.by_local(t.proto, near, far)
            .or_else(|| self.exact.get(&(t.proto, far, near)))
    }
}

/// Resolves packets to owners, refreshing the table on a miss at most every
/// [`Resolver::MIN_REFRESH`]. The previous table is still consulted after a refresh, so
/// sockets that closed in between keep their owner for a while; owners found by cookie are
/// remembered (cookies are never reused).
pub struct Resolver {
    current: OwnerTable,
    previous: OwnerTable,
    cookies: HashMap<u64, Owner>,
    last_refresh: Option<Instant>,
    pub refreshes: u64,
    source: Box<dyn FnMut() -> io::Result<OwnerTable>>,
}

/// A lookup's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    Owner(Owner),
    /// No local socket, even after a fresh dump.
    Unknown,
    /// Not found, and the table may not be refreshed yet: ask again after
    /// [`Resolver::refresh_due`].
    Later,
}

impl Resolver {
    pub const MIN_REFRESH: Duration = Duration::from_millis(100);
    const MAX_COOKIES: usize = 65536;

    /// A resolver reading this namespace's sockets.
    pub fn system() -> Resolver {
        Resolver::with_source(Box::new(|| {
            let entries = dump_sockets()?;
            let wanted = entries
                .iter()
                .map(|e| e.inode)
                .filter(|&i| i != 0)
                .collect();
            let owners = socket_owners(Some(&wanted));
            tracing::trace!(?entries, ?owners, "socket dump");
            Ok(OwnerTable::build(&entries, &owners))
        }))
    }

    pub fn with_source(source: Box<dyn FnMut() -> io::Result<OwnerTable>>) -> Resolver {
        Resolver {
            current: OwnerTable::default(),
            previous: OwnerTable::default(),
            cookies: HashMap::new(),
            last_refresh: None,
            refreshes: 0,
            source,
        }
    }

    /// True when a refresh is allowed now.
    pub fn refresh_due(&self) -> bool {
        self.last_refresh
            .is_none_or(|t| t.elapsed() >= Self::MIN_REFRESH)
    }

    /// Re-reads the table (regardless of the rate limit).
    pub fn refresh(&mut self) {
        self.last_refresh = Some(Instant::now());
        self.refreshes += 1;
        match (self.source)() {
            Ok(t) => {
                tracing::debug!(sockets = t.len(), "socket table refreshed");
                self.previous = std::mem::replace(&mut self.current, t);
            }
            Err(e) => tracing::warn!("reading the socket table: {e}"),
        }
    }

    fn find(&mut self, cookie: u64, dir: u8, t: Option<&FiveTuple>) -> Option<Owner> {
        if cookie != 0
            && let Some(o) = self.cookies.get(&cookie)
        {
            return Some(o.clone());
        }
        let o = self
            .current
            .lookup(cookie, dir, t)
            .or_else(|| self.previous.lookup(cookie, dir, t))
            .cloned()?;
        if cookie != 0 && self.current.by_cookie(cookie).is_some() {
            if self.cookies.len() >= Self::MAX_COOKIES {
                self.cookies.clear();
            }
            self.cookies.insert(cookie, o.clone());
        }
        Some(o)
    }

    /// The owner of a packet (`frame`: from the Ethernet header on, or the IP header when
    /// `raw`).
    pub fn resolve(&mut self, cookie: u64, dir: u8, frame: &[u8], raw: bool) -> Resolution {
        let t = five_tuple_of(frame, raw);
        if cookie == 0 && t.is_none() {
            return Resolution::Unknown;
        }
        if let Some(o) = self.find(cookie, dir, t.as_ref()) {
            return Resolution::Owner(o);
        }
        if !self.refresh_due() {
            return Resolution::Later;
        }
        self.refresh();
        match self.find(cookie, dir, t.as_ref()) {
            Some(o) => Resolution::Owner(o),
            None => Resolution::Unknown,
        }
    }

    /// The owner of a packet from the tables as they are (no refresh).
    pub fn cached(&mut self, cookie: u64, dir: u8, frame: &[u8], raw: bool) -> Option<Owner> {
        let t = five_tuple_of(frame, raw);
        self.find(cookie, dir, t.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn owner(pid: u32, comm: &str) -> Owner {
        Owner {
            pid,
            comm: comm.into(),
        }
    }

    fn entry(proto: u8, local: &str, remote: &str, inode: u32, cookie: u64) -> SockEntry {
        SockEntry {
            proto,
            local: canon(sa(local)),
            remote: canon(sa(remote)),
            inode,
            cookie,
        }
    }

    fn table() -> OwnerTable {
        let entries = [
            // server: listener on 0.0.0.0:8000 and one accepted connection
            entry(TCP, "0.0.0.0:8000", "0.0.0.0:0", 10, 100),
            entry(TCP, "127.0.0.1:8000", "127.0.0.1:40000", 11, 101),
            // client
            entry(TCP, "127.0.0.1:40000", "127.0.0.1:8000", 20, 200),
            // UDP bound to a specific address, and a dual-stack one on [::]
            entry(UDP, "10.0.0.1:53", "0.0.0.0:0", 30, 300),
            entry(UDP, "[::]:5353", "[::]:0", 40, 400),
            // a socket nobody owns (TIME_WAIT)
            entry(TCP, "127.0.0.1:40001", "127.0.0.1:8000", 0, 500),
        ];
        let owners = HashMap::from([
            (10, owner(1, "server")),
            (11, owner(1, "server")),
            (20, owner(2, "curl")),
            (30, owner(3, "dns")),
            (40, owner(4, "mdns")),
        ]);
        OwnerTable::build(&entries, &owners)
    }

    fn tuple(proto: u8, src: &str, dst: &str) -> FiveTuple {
        FiveTuple {
            proto,
            src: sa(src),
            dst: sa(dst),
        }
    }

    const OUT: u8 = packet_dir::EGRESS;
    const IN: u8 = packet_dir::INGRESS;

    #[test]
    fn exact_match_by_direction() {
        let t = table();
        let c2s = tuple(TCP, "127.0.0.1:40000", "127.0.0.1:8000");
        let s2c = tuple(TCP, "127.0.0.1:8000", "127.0.0.1:40000");
        // On loopback both ends are local: the sender owns an egress packet.
        assert_eq!(t.lookup(0, OUT, Some(&c2s)).unwrap().comm, "curl");
        assert_eq!(t.lookup(0, OUT, Some(&s2c)).unwrap().comm, "server");
        // Ingress: the receiver.
        assert_eq!(t.lookup(0, IN, Some(&c2s)).unwrap().comm, "server");
        assert_eq!(t.lookup(0, IN, Some(&s2c)).unwrap().comm, "curl");
        // Unowned socket, other protocol, forwarded traffic: nobody.
        let tw = tuple(TCP, "127.0.0.1:40001", "127.0.0.1:9999");
        assert_eq!(t.lookup(0, OUT, Some(&tw)), None);
        let udp = tuple(UDP, "127.0.0.1:40000", "127.0.0.1:8000");
        assert_eq!(t.lookup(0, OUT, Some(&udp)), None);
        let fwd = tuple(TCP, "192.168.1.2:1234", "192.168.1.3:80");
        assert_eq!(t.lookup(0, IN, Some(&fwd)), None);
        assert_eq!(t.lookup(0, OUT, None), None);
    }

    #[test]
    fn wildcard_local_address() {
        let t = table();
        // A new connection to the listener (SYN): only the 0.0.0.0:8000 listener matches.
        let syn = tuple(TCP, "192.168.1.2:5555", "192.168.1.1:8000");
        assert_eq!(t.lookup(0, IN, Some(&syn)).unwrap().comm, "server");
        // The SYN-ACK (egress, no full socket yet): the listener, not the client side.
        let synack = tuple(TCP, "127.0.0.1:8000", "127.0.0.1:40002");
        assert_eq!(t.lookup(0, OUT, Some(&synack)).unwrap().comm, "server");
        // UDP bound to a specific address only matches that address.
        let dns = tuple(UDP, "10.0.0.9:1000", "10.0.0.1:53");
        assert_eq!(t.lookup(0, IN, Some(&dns)).unwrap().comm, "dns");
        let other = tuple(UDP, "10.0.0.9:1000", "10.0.0.2:53");
        assert_eq!(t.lookup(0, IN, Some(&other)), None);
        // [::] matches IPv6 and (dual stack) IPv4.
        let v6 = tuple(UDP, "[fe80::1]:5353", "[ff02::fb]:5353");
        assert_eq!(t.lookup(0, IN, Some(&v6)).unwrap().comm, "mdns");
        let v4 = tuple(UDP, "10.0.0.9:5353", "224.0.0.251:5353");
        assert_eq!(t.lookup(0, IN, Some(&v4)).unwrap().comm, "mdns");
        // The remote port of an incoming packet does not match a local listener.
        let from_8000 = tuple(TCP, "192.168.1.2:8000", "192.168.1.1:6000");
        assert_eq!(t.lookup(0, IN, Some(&from_8000)), None);
    }

    #[test]
    fn cookie_preferred_over_tuple() {
        let t = table();
        // The tuple says curl, the cookie says the server's accepted socket.
        let c2s = tuple(TCP, "127.0.0.1:40000", "127.0.0.1:8000");
        assert_eq!(t.lookup(101, OUT, Some(&c2s)).unwrap().comm, "server");
        // Unknown cookie: back to the tuple.
        assert_eq!(t.lookup(999, OUT, Some(&c2s)).unwrap().comm, "curl");
        assert_eq!(t.lookup(200, IN, None).unwrap().comm, "curl");
    }

    #[test]
    fn ipv4_mapped_sockets_match_ipv4_packets() {
        let entries = [entry(
            TCP,
            "[::ffff:127.0.0.1]:8000",
            "[::ffff:127.0.0.1]:4000",
            1,
            0,
        )];
        let t = OwnerTable::build(&entries, &HashMap::from([(1, owner(9, "srv"))]));
        let p = tuple(TCP, "127.0.0.1:8000", "127.0.0.1:4000");
        assert_eq!(t.lookup(0, OUT, Some(&p)).unwrap().pid, 9);
    }

    #[test]
    fn five_tuple_of_frames() {
        let b = PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([127, 0, 0, 1], [127, 0, 0, 2], 64)
            .tcp(41234, 8000, 1, 65535);
        let mut buf = Vec::new();
        b.write(&mut buf, b"x").unwrap();
        assert_eq!(
            five_tuple(&buf),
            Some(tuple(TCP, "127.0.0.1:41234", "127.0.0.2:8000"))
        );
        assert_eq!(five_tuple(&buf[..20]), None);
        // The same packet on a raw-IP device (no Ethernet header).
        let ip = &buf[14..];
        assert_eq!(
            five_tuple_of(ip, true),
            Some(tuple(TCP, "127.0.0.1:41234", "127.0.0.2:8000"))
        );
        assert_eq!(five_tuple_of(&buf, true), None);
        assert_eq!(five_tuple_of(&buf, false), five_tuple(&buf));
    }

    #[test]
    fn resolver_rate_limits_refreshes() {
        let mut r = Resolver::with_source(Box::new(|| Ok(table())));
        let mut buf = Vec::new();
        PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64)
            .tcp(40000, 8000, 1, 100)
            .write(&mut buf, b"")
            .unwrap();
        assert_eq!(
            r.resolve(0, OUT, &buf, false),
            Resolution::Owner(owner(2, "curl"))
        );
        assert_eq!(r.refreshes, 1);
        // Found in the cached table: no refresh.
        assert_eq!(
            r.resolve(200, OUT, &buf, false),
            Resolution::Owner(owner(2, "curl"))
        );
        assert_eq!(r.refreshes, 1);
        // A miss right after a refresh: later, without a dump.
        let mut other = Vec::new();
        PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 1, 100)
            .write(&mut other, b"")
            .unwrap();
        assert_eq!(r.resolve(0, OUT, &other, false), Resolution::Later);
        assert_eq!(r.resolve(0, OUT, &other, false), Resolution::Later);
        assert_eq!(r.cached(0, OUT, &other, false), None);
        assert_eq!(r.refreshes, 1);
        r.refresh();
        assert_eq!(r.cached(200, IN, &other, false), Some(owner(2, "curl")));
        assert_eq!(r.refreshes, 2);
    }

    #[test]
    fn dumps_this_namespace() {
        // Unprivileged: sock_diag dumps work for any user, /proc shows our own fds.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let entries = dump_sockets().unwrap();
        let e = entries
            .iter()
            .find(|e| e.proto == TCP && e.local.port() == port)
            .expect("our listener in the dump");
        assert_ne!(e.inode, 0);
        assert_ne!(e.cookie, 0);
        let owners = socket_owners(Some(&[e.inode].into()));
        assert_eq!(owners[&e.inode].pid, std::process::id());
    }
}
