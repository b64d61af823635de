//! Policy routing for tproxy, over rtnetlink: packets the tproxy rule marked are routed to
//! the local host (`ip rule add fwmark MARK lookup TABLE` and
//! `ip route add local default dev lo table TABLE`, for IPv4 and IPv6).
//!
//! Ownership is written into the numbers themselves, so a later start (or
//! `capagent cleanup`) can tell what a dead agent left without any state file: the mark and
//! the table are [`MARK_TAG`] plus the agent's pid, and the rule and routes carry the
//! routing protocol [`RTPROT_CAPAGENT`]. Nothing else is ever deleted.
//!
//! Messages are built and parsed by pure functions (with `netlink-packet-route`); [`Routing`]
//! talks to the kernel.

use std::io;
use std::net::IpAddr;

use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType},
    rule::{RuleAction, RuleAttribute, RuleMessage},
};

use crate::netlink::{self, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};

pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_DELROUTE: u16 = 25;
pub const RTM_GETROUTE: u16 = 26;
pub const RTM_NEWRULE: u16 = 32;
pub const RTM_DELRULE: u16 = 33;
pub const RTM_GETRULE: u16 = 34;

const RT_SCOPE_HOST: u8 = 254;
const RTN_LOCAL: u8 = 2;

/// The routing protocol number on capagent's rules and routes (`ip route` shows
/// `proto 202`); 202 is not used by any routing daemon iproute2 knows.
pub const RTPROT_CAPAGENT: u8 = 202;
/// High byte of capagent's tproxy marks and routing tables; the low 24 bits are the pid.
pub const MARK_TAG: u32 = 0xca00_0000;
/// High byte of the mark on the agent's own upstream sockets.
pub const OWN_MARK_TAG: u32 = 0xcb00_0000;
const PID_MASK: u32 = 0x00ff_ffff;
/// Priority of capagent's rule: before `main` (32766), after `local` (0).
pub const RULE_PRIORITY: u32 = 9000;

/// The mark (and routing table) of the tproxy rules of agent `pid`.
pub fn tproxy_mark(pid: u32) -> u32 {
    MARK_TAG | (pid & PID_MASK)
}

/// The mark of agent `pid`'s own sockets (never intercepted).
pub fn own_mark(pid: u32) -> u32 {
    OWN_MARK_TAG | (pid & PID_MASK)
}

/// The pid of the agent that owns table (or mark) `t`, if it is one of capagent's.
pub fn owner_of(t: u32) -> Option<u32> {
    (t & !PID_MASK == MARK_TAG).then_some(t & PID_MASK)
}

/// A policy routing rule as a dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleInfo {
    pub family: u8,
    pub table: u32,
    pub priority: Option<u32>,
    pub fwmark: Option<u32>,
    pub fwmask: Option<u32>,
    pub protocol: Option<u8>,
}

/// A route as a dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub family: u8,
    pub dst_len: u8,
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
    pub dst: Option<IpAddr>,
    pub oif: Option<u32>,
}

fn rule(family: u8, table: u32) -> RuleMessage {
    let mut m = RuleMessage::default();
    m.header.family = AddressFamily::from(family);
    // A table above 255 is given by FRA_TABLE only.
    m.header.table = u8::try_from(table).unwrap_or(0);
    m.header.action = RuleAction::ToTable;
    m
}

/// `ip rule add fwmark MARK/0xffffffff lookup TABLE pref RULE_PRIORITY proto 202`.
pub fn rule_message(ty: u16, family: u8, mark: u32, table: u32, seq: u32) -> Vec<u8> {
    let mut m = rule(family, table);
    m.attributes = vec![
        RuleAttribute::Priority(RULE_PRIORITY),
        RuleAttribute::FwMark(mark),
        RuleAttribute::FwMask(u32::MAX),
        RuleAttribute::Table(table),
        RuleAttribute::Protocol(RouteProtocol::from(RTPROT_CAPAGENT)),
    ];
    if ty == RTM_NEWRULE {
        netlink::serialize(
            RouteNetlinkMessage::NewRule(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            seq,
        )
    } else {
        netlink::serialize(
            RouteNetlinkMessage::DelRule(m),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
        )
    }
}

/// Deletes exactly rule `r` (as dumped).
pub fn delete_rule_message(r: &RuleInfo, seq: u32) -> Vec<u8> {
    let mut m = rule(r.family, r.table);
    m.attributes.push(RuleAttribute::Table(r.table));
    if let Some(p) = r.priority {
        m.attributes.push(RuleAttribute::Priority(p));
    }
    if let Some(mark) = r.fwmark {
        m.attributes.push(RuleAttribute::FwMark(mark));
    }
    if let Some(mask) = r.fwmask {
        m.attributes.push(RuleAttribute::FwMask(mask));
    }
    netlink::serialize(
        RouteNetlinkMessage::DelRule(m),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

fn route(family: u8, protocol: u8, scope: u8, kind: u8, dst_len: u8) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::from(family);
    m.header.destination_prefix_length = dst_len;
    m.header.protocol = RouteProtocol::from(protocol);
    m.header.scope = RouteScope::from(scope);
    m.header.kind = RouteType::from(kind);
    m
}

/// `ip route add local default dev IFINDEX table TABLE proto 202` (or del).
pub fn local_route_message(ty: u16, family: u8, table: u32, lo: u32, seq: u32) -> Vec<u8> {
    let mut m = route(family, RTPROT_CAPAGENT, RT_SCOPE_HOST, RTN_LOCAL, 0);
    m.attributes = vec![RouteAttribute::Table(table), RouteAttribute::Oif(lo)];
    if ty == RTM_NEWROUTE {
        netlink::serialize(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            seq,
        )
    } else {
        netlink::serialize(
            RouteNetlinkMessage::DelRoute(m),
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
        )
    }
}

/// Deletes exactly route `r` (as dumped).
pub fn delete_route_message(r: &RouteInfo, seq: u32) -> Vec<u8> {
    let mut m = route(r.family, r.protocol, r.scope, r.kind, r.dst_len);
    m.attributes.push(RouteAttribute::Table(r.table));
    if let Some(dst) = r.dst {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
    }
    if let Some(oif) = r.oif {
        m.attributes.push(RouteAttribute::Oif(oif));
    }
    netlink::serialize(
        RouteNetlinkMessage::DelRoute(m),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// A dump request for rules or routes (`ty` = RTM_GETRULE / RTM_GETROUTE) of `family`.
pub fn dump_request(ty: u16, family: u8, seq: u32) -> Vec<u8> {
    let flags = NLM_F_REQUEST | NLM_F_DUMP;
    if ty == RTM_GETRULE {
        netlink::serialize(RouteNetlinkMessage::GetRule(rule(family, 0)), flags, seq)
    } else {
        let m = route(family, 0, 0, 0, 0);
        netlink::serialize(RouteNetlinkMessage::GetRoute(m), flags, seq)
    }
}

/// One message of a rule dump; `Ok(None)` for other messages.
pub fn parse_rule(msg: &[u8]) -> Result<Option<RuleInfo>, netlink::Malformed> {
    let Some(RouteNetlinkMessage::NewRule(m)) = netlink::decode(msg, RTM_NEWRULE)? else {
        return Ok(None);
    };
    let mut r = RuleInfo {
        family: u8::from(m.header.family),
        table: u32::from(m.header.table),
        priority: None,
        fwmark: None,
        fwmask: None,
        protocol: None,
    };
    for a in m.attributes {
        match a {
            RuleAttribute::Table(t) => r.table = t,
            RuleAttribute::Priority(p) => r.priority = Some(p),
            RuleAttribute::FwMark(v) => r.fwmark = Some(v),
            RuleAttribute::FwMask(v) => r.fwmask = Some(v),
            RuleAttribute::Protocol(p) => r.protocol = Some(u8::from(p)),
            _ => {}
        }
    }
    Ok(Some(r))
}

/// One message of a route dump; `Ok(None)` for other messages.
pub fn parse_route(msg: &[u8]) -> Result<Option<RouteInfo>, netlink::Malformed> {
    let Some(RouteNetlinkMessage::NewRoute(m)) = netlink::decode(msg, RTM_NEWROUTE)? else {
        return Ok(None);
    };
    let h = &m.header;
    let mut r = RouteInfo {
        family: u8::from(h.address_family),
        dst_len: h.destination_prefix_length,
        table: u32::from(h.table),
        protocol: u8::from(h.protocol),
        scope: u8::from(h.scope),
        kind: u8::from(h.kind),
        dst: None,
        oif: None,
    };
    for a in m.attributes {
        match a {
            RouteAttribute::Table(t) => r.table = t,
            RouteAttribute::Destination(RouteAddress::Inet(a)) => r.dst = Some(a.into()),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => r.dst = Some(a.into()),
            RouteAttribute::Oif(i) => r.oif = Some(i),
            _ => {}
        }
    }
    Ok(Some(r))
}

/// True when rule `r` is one of capagent's (its table is in capagent's range; with a
/// protocol, it is capagent's).
pub fn is_capagent_rule(r: &RuleInfo) -> bool {
    owner_of(r.table).is_some() && r.protocol.is_none_or(|p| p == RTPROT_CAPAGENT)
}

pub fn is_capagent_route(r: &RouteInfo) -> bool {
    owner_of(r.table).is_some() && r.protocol == RTPROT_CAPAGENT
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot open a routing netlink socket")]
    Socket(#[source] io::Error),
    #[error("{what}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
}

fn family_name(f: u8) -> &'static str {
    if f as i32 == libc::AF_INET6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// What one agent added: rules and local routes per family. Dropping it removes them.
pub struct Routing {
    sock: netlink::Socket,
    mark: u32,
    table: u32,
    lo: u32,
    rules: Vec<u8>,
    routes: Vec<u8>,
}

impl Routing {
    pub fn open(mark: u32, table: u32) -> Result<Routing, RouteError> {
        let sock = netlink::Socket::open(libc::NETLINK_ROUTE).map_err(RouteError::Socket)?;
        // SAFETY: if_nametoindex reads a NUL-terminated name.
        let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
        if lo == 0 {
            return Err(RouteError::Kernel {
                what: "finding the loopback interface".into(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(Routing {
            sock,
            mark,
            table,
            lo,
            rules: Vec::new(),
            routes: Vec::new(),
        })
    }

    /// Adds the rule and the local route for `family` (AF_INET, AF_INET6).
    pub fn add(&mut self, family: u8) -> Result<(), RouteError> {
        let seq = self.sock.next_seq();
        let msg = local_route_message(RTM_NEWROUTE, family, self.table, self.lo, seq);
        self.sock
            .transact(&msg, &[seq])
            .map_err(|source| RouteError::Kernel {
                what: format!(
                    "adding the {} route `local default dev lo table {}`",
                    family_name(family),
                    self.table
                ),
                source,
            })?;
        self.routes.push(family);
        let seq = self.sock.next_seq();
        let msg = rule_message(RTM_NEWRULE, family, self.mark, self.table, seq);
        self.sock
            .transact(&msg, &[seq])
            .map_err(|source| RouteError::Kernel {
                what: format!(
                    "adding the {} rule `fwmark {:#x} lookup {}`",
                    family_name(family),
                    self.mark,
                    self.table
                ),
                source,
            })?;
        self.rules.push(family);
        Ok(())
    }

    /// Removes what [`Routing::add`] added.
    pub fn remove(&mut self) -> Result<(), RouteError> {
        let mut first = Ok(());
        while let Some(family) = self.rules.pop() {
            let seq = self.sock.next_seq();
            let msg = rule_message(RTM_DELRULE, family, self.mark, self.table, seq);
            if let Err(source) = self.sock.transact(&msg, &[seq]) {
                first = first.and(Err(RouteError::Kernel {
                    what: format!("removing the {} rule", family_name(family)),
                    source,
                }));
            }
        }
        while let Some(family) = self.routes.pop() {
            let seq = self.sock.next_seq();
            let msg = local_route_message(RTM_DELROUTE, family, self.table, self.lo, seq);
            if let Err(source) = self.sock.transact(&msg, &[seq]) {
                first = first.and(Err(RouteError::Kernel {
                    what: format!("removing the {} local route", family_name(family)),
                    source,
                }));
            }
        }
        first
    }
}

impl Drop for Routing {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("{e}: {:?}", std::error::Error::source(&e));
        }
    }
}

/// Every rule of both families in this network namespace.
pub fn dump_rules(sock: &mut netlink::Socket) -> io::Result<Vec<RuleInfo>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let seq = sock.next_seq();
        for m in sock.dump(&dump_request(RTM_GETRULE, family, seq), seq)? {
            if let Some(r) =
                parse_rule(&m).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                out.push(r);
            }
        }
    }
    Ok(out)
}

/// Every route of every table of both families in this network namespace.
pub fn dump_routes(sock: &mut netlink::Socket) -> io::Result<Vec<RouteInfo>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let seq = sock.next_seq();
        for m in sock.dump(&dump_request(RTM_GETROUTE, family, seq), seq)? {
            if let Some(r) =
                parse_route(&m).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                out.push(r);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_carry_the_pid() {
        assert_eq!(tproxy_mark(4242), 0xca00_1092);
        assert_eq!(owner_of(tproxy_mark(4242)), Some(4242));
        assert_eq!(owner_of(254), None);
        assert_eq!(owner_of(own_mark(7)), None);
        assert_ne!(own_mark(7), tproxy_mark(7));
    }

    #[test]
    fn rule_round_trip() {
        let msg = rule_message(
            RTM_NEWRULE,
            libc::AF_INET as u8,
            0xca00_0001,
            0xca00_0001,
            9,
        );
        let r = parse_rule(&msg).unwrap().unwrap();
        assert_eq!(
            r,
            RuleInfo {
                family: libc::AF_INET as u8,
                table: 0xca00_0001,
                priority: Some(RULE_PRIORITY),
                fwmark: Some(0xca00_0001),
                fwmask: Some(u32::MAX),
                protocol: Some(RTPROT_CAPAGENT),
            }
        );
        assert!(is_capagent_rule(&r));
        // Deleting what a dump returned says the same things.
        let del = delete_rule_message(&r, 10);
        let m = netlink::messages(&del).next().unwrap().unwrap();
        assert_eq!(m.ty, RTM_DELRULE);
        assert_eq!(m.payload[..12], msg[16..28]);
    }

    #[test]
    fn route_round_trip() {
        let msg = local_route_message(RTM_NEWROUTE, libc::AF_INET6 as u8, 0xca00_0002, 1, 3);
        // Header: AF_INET6, /0, table in RTA_TABLE, proto 202, scope host, type local.
        assert_eq!(msg[16..24], [10, 0, 0, 0, 0, 202, 254, 2]);
        let r = parse_route(&msg).unwrap().unwrap();
        assert_eq!(r.table, 0xca00_0002);
        assert_eq!(r.oif, Some(1));
        assert!(is_capagent_route(&r));
        let main = RouteInfo {
            table: 254,
            protocol: 2,
            ..r.clone()
        };
        assert!(!is_capagent_route(&main));
    }

    /// The fuzz seeds, written by fuzz/seeds/make_seeds.py the way the kernel lays them out.
    #[cfg(target_endian = "little")]
    #[test]
    fn parses_kernel_layouts() {
        let r = parse_rule(include_bytes!("../../../fuzz/seeds/netlink/rule"))
            .unwrap()
            .unwrap();
        assert_eq!(r.table, 0xca00_0001);
        assert_eq!(r.priority, Some(RULE_PRIORITY));
        assert_eq!(r.fwmark, Some(0xca00_0001));
        assert_eq!(r.protocol, Some(RTPROT_CAPAGENT));
        assert!(is_capagent_rule(&r));
        let r = parse_route(include_bytes!("../../../fuzz/seeds/netlink/route"))
            .unwrap()
            .unwrap();
        assert_eq!(r.dst, Some("::1".parse().unwrap()));
        assert_eq!(
            (r.table, r.oif, r.scope, r.kind),
            (0xca00_0001, Some(1), 254, 2)
        );
        assert!(is_capagent_route(&r));
    }

    #[test]
    fn truncated_dumps_are_errors() {
        let msg = rule_message(RTM_NEWRULE, 2, 1, 1, 1);
        let mut short = msg[..20].to_vec();
        short[0..4].copy_from_slice(&20u32.to_ne_bytes());
        assert!(parse_rule(&short).is_err());
        assert!(parse_route(&[0u8; 3]).is_err());
    }
}
