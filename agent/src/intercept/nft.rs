//! nftables, programmed over netlink: capagent's own table, its chains and rules.
//!
//! The rules are described as data ([`Ruleset`], [`Rule`]) and turned into one nf_tables
//! batch by [`batch`], a pure function (so the bytes are unit-tested and fuzzed); [`Nft`]
//! sends it on a netlink socket that it keeps open for as long as the interception runs.
//! The table carries `NFT_TABLE_F_OWNER`: it belongs to that socket, no other process can
//! change it, `nft flush ruleset` skips it, and the kernel deletes it when the socket
//! closes, which happens even when the agent is killed with SIGKILL. A kernel without the
//! flag (before 5.12) gets the table without it, and the next start's sweep
//! ([`crate::intercept::cleanup`]) deletes what a killed agent left.
//!
//! Nothing outside capagent's table is ever touched: every message names it.

use std::io;
use std::net::IpAddr;

use crate::netlink::{
    self, Builder, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};

pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;

pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_GETTABLE: u16 = 1;
pub const NFT_MSG_DELTABLE: u16 = 2;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_NEWRULE: u16 = 6;

pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_TABLE_FLAGS: u16 = 2;
pub const NFTA_TABLE_OWNER: u16 = 7;
pub const NFT_TABLE_F_OWNER: u32 = 0x2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFT_META_MARK: u32 = 3;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_NFPROTO: u32 = 15;
const NFT_META_L4PROTO: u32 = 16;

const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;

const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;

const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;

const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_TPROXY_FAMILY: u16 = 1;
const NFTA_TPROXY_REG_PORT: u16 = 3;

const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const RTN_LOCAL: u32 = 2;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;

pub const NF_ACCEPT: i32 = 1;
pub const NFT_RETURN: i32 = -5;

pub const NF_INET_PRE_ROUTING: u32 = 0;
pub const NF_INET_LOCAL_OUT: u32 = 3;

const IFNAMSIZ: usize = 16;
const NLM_F_APPEND: u16 = 0x800;

/// Message type of nf_tables message `msg`.
pub const fn msg_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// A base chain of capagent's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    /// `nat`, `filter` (nft's chain types).
    pub kind: &'static str,
    /// [`NF_INET_PRE_ROUTING`] or [`NF_INET_LOCAL_OUT`].
    pub hook: u32,
    pub priority: i32,
    pub rules: Vec<Rule>,
}

/// What a rule matches; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    /// [`NFPROTO_IPV4`] or [`NFPROTO_IPV6`].
    pub nfproto: Option<u8>,
    pub iifname: Option<String>,
    pub oifname: Option<String>,
    /// `IPPROTO_TCP`, `IPPROTO_UDP`.
    pub l4proto: Option<u8>,
    /// Destination network (needs `nfproto` of its family).
    pub daddr: Option<(IpAddr, u8)>,
    /// Destination port (needs `l4proto`).
    pub dport: Option<u16>,
    /// The packet's mark.
    pub mark: Option<u32>,
    /// The destination is an address of this host (`fib daddr type local`).
    pub daddr_local: bool,
}

/// What a matching packet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `return`: leave capagent's chain (the packet goes on as if unmatched).
    Return,
    /// `redirect to :PORT` (NAT to the host's own address).
    Redirect { port: u16 },
    /// `tproxy to :PORT meta mark set MARK accept`.
    Tproxy { family: u8, port: u16, mark: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub when: Match,
    pub then: Action,
}

/// capagent's whole table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub table: String,
    /// Ask for `NFT_TABLE_F_OWNER`.
    pub owner: bool,
    pub chains: Vec<Chain>,
}

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot open a netfilter netlink socket")]
    Socket(#[source] io::Error),
    #[error("the kernel refused nftables table {table}")]
    Apply {
        table: String,
        #[source]
        source: io::Error,
    },
    #[error("deleting nftables table {table}")]
    Delete {
        table: String,
        #[source]
        source: io::Error,
    },
    #[error("listing nftables tables")]
    List(#[source] io::Error),
    #[error("{0}")]
    Usage(String),
}

fn nfgenmsg(family: u8, res_id: u16) -> [u8; 4] {
    let r = res_id.to_be_bytes();
    [family, 0, r[0], r[1]]
}

/// An expression element: `name` and its data attributes.
fn expr(b: &mut Builder, name: &str, data: impl FnOnce(&mut Builder)) {
    b.nest(NFTA_LIST_ELEM, |b| {
        b.attr_str(NFTA_EXPR_NAME, name);
        b.nest(NFTA_EXPR_DATA, data);
    });
}

fn meta_load(b: &mut Builder, key: u32) {
    expr(b, "meta", |b| {
        b.attr_be32(NFTA_META_KEY, key)
            .attr_be32(NFTA_META_DREG, NFT_REG_1);
    });
}

fn cmp_eq(b: &mut Builder, data: &[u8]) {
    expr(b, "cmp", |b| {
        b.attr_be32(NFTA_CMP_SREG, NFT_REG_1)
            .attr_be32(NFTA_CMP_OP, NFT_CMP_EQ)
            .nest(NFTA_CMP_DATA, |b| {
                b.attr(NFTA_DATA_VALUE, data);
            });
    });
}

fn payload_load(b: &mut Builder, base: u32, offset: u32, len: u32) {
    expr(b, "payload", |b| {
        b.attr_be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
            .attr_be32(NFTA_PAYLOAD_BASE, base)
            .attr_be32(NFTA_PAYLOAD_OFFSET, offset)
            .attr_be32(NFTA_PAYLOAD_LEN, len);
    });
}

fn bitwise_mask(b: &mut Builder, mask: &[u8]) {
    let xor = vec![0u8; mask.len()];
    expr(b, "bitwise", |b| {
        b.attr_be32(NFTA_BITWISE_SREG, NFT_REG_1)
            .attr_be32(NFTA_BITWISE_DREG, NFT_REG_1)
            .attr_be32(NFTA_BITWISE_LEN, mask.len() as u32)
            .nest(NFTA_BITWISE_MASK, |b| {
                b.attr(NFTA_DATA_VALUE, mask);
            })
            .nest(NFTA_BITWISE_XOR, |b| {
                b.attr(NFTA_DATA_VALUE, &xor);
            });
    });
}

fn immediate(b: &mut Builder, data: &[u8]) {
    expr(b, "immediate", |b| {
        b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_1)
            .nest(NFTA_IMMEDIATE_DATA, |b| {
                b.attr(NFTA_DATA_VALUE, data);
            });
    });
}

fn verdict(b: &mut Builder, code: i32) {
    expr(b, "immediate", |b| {
        b.attr_be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT)
            .nest(NFTA_IMMEDIATE_DATA, |b| {
                b.nest(NFTA_DATA_VERDICT, |b| {
                    b.attr_be32(NFTA_VERDICT_CODE, code as u32);
                });
            });
    });
}

/// `ifname` as the kernel compares it: IFNAMSIZ bytes, NUL padded.
fn ifname_bytes(name: &str) -> Result<[u8; IFNAMSIZ], NftError> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
        return Err(NftError::Usage(format!(
            "interface name {name:?}: 1 to 15 bytes"
        )));
    }
    let mut out = [0u8; IFNAMSIZ];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// The mask of a /`len` prefix over `bytes` bytes.
pub fn prefix_mask(bytes: usize, len: u8) -> Vec<u8> {
    let mut m = vec![0u8; bytes];
    let mut left = u32::from(len).min(bytes as u32 * 8);
    for b in m.iter_mut() {
        let take = left.min(8);
        *b = if take == 0 { 0 } else { 0xffu8 << (8 - take) };
        left -= take;
    }
    m
}

fn rule_exprs(b: &mut Builder, r: &Rule) -> Result<(), NftError> {
    let m = &r.when;
    if let Some(p) = m.nfproto {
        meta_load(b, NFT_META_NFPROTO);
        cmp_eq(b, &[p]);
    }
    if let Some(n) = &m.iifname {
        let name = ifname_bytes(n)?;
        meta_load(b, NFT_META_IIFNAME);
        cmp_eq(b, &name);
    }
    if let Some(n) = &m.oifname {
        let name = ifname_bytes(n)?;
        meta_load(b, NFT_META_OIFNAME);
        cmp_eq(b, &name);
    }
    if let Some(mark) = m.mark {
        meta_load(b, NFT_META_MARK);
        cmp_eq(b, &mark.to_ne_bytes());
    }
    if m.daddr_local {
        expr(b, "fib", |b| {
            b.attr_be32(NFTA_FIB_DREG, NFT_REG_1)
                .attr_be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
                .attr_be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
        });
        cmp_eq(b, &RTN_LOCAL.to_ne_bytes());
    }
    if let Some(p) = m.l4proto {
        meta_load(b, NFT_META_L4PROTO);
        cmp_eq(b, &[p]);
    }
    if let Some((net, len)) = m.daddr {
        let (want, off, bytes): (Vec<u8>, u32, usize) = match (net, m.nfproto) {
            (IpAddr::V4(a), Some(NFPROTO_IPV4)) => (a.octets().to_vec(), 16, 4),
            (IpAddr::V6(a), Some(NFPROTO_IPV6)) => (a.octets().to_vec(), 24, 16),
            _ => {
                return Err(NftError::Usage(format!(
                    "destination {net}/{len} in a rule of another family"
                )));
            }
        };
        if u32::from(len) > bytes as u32 * 8 {
            return Err(NftError::Usage(format!("prefix length {len} of {net}")));
        }
        payload_load(b, NFT_PAYLOAD_NETWORK_HEADER, off, bytes as u32);
        let mask = prefix_mask(bytes, len);
        let masked: Vec<u8> = want.iter().zip(&mask).map(|(a, m)| a & m).collect();
        if len as usize != bytes * 8 {
            bitwise_mask(b, &mask);
        }
        cmp_eq(b, &masked);
    }
    if let Some(port) = m.dport {
        if m.l4proto.is_none() {
            return Err(NftError::Usage("a port match needs a protocol".into()));
        }
        // TCP and UDP both keep the destination port at offset 2.
        payload_load(b, NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2);
        cmp_eq(b, &port.to_be_bytes());
    }
    match r.then {
        Action::Return => verdict(b, NFT_RETURN),
        Action::Redirect { port } => {
            immediate(b, &port.to_be_bytes());
            expr(b, "redir", |b| {
                b.attr_be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
            });
        }
        Action::Tproxy { family, port, mark } => {
            if m.l4proto.is_none() {
                return Err(NftError::Usage("tproxy needs a protocol".into()));
            }
            immediate(b, &port.to_be_bytes());
            expr(b, "tproxy", |b| {
                b.attr_be32(NFTA_TPROXY_FAMILY, u32::from(family))
                    .attr_be32(NFTA_TPROXY_REG_PORT, NFT_REG_1);
            });
            immediate(b, &mark.to_ne_bytes());
            expr(b, "meta", |b| {
                b.attr_be32(NFTA_META_KEY, NFT_META_MARK)
                    .attr_be32(NFTA_META_SREG, NFT_REG_1);
            });
            verdict(b, NF_ACCEPT);
        }
    }
    Ok(())
}

/// The nf_tables batch that creates `rs` (table, chains, rules, in that order) with
/// sequence numbers from `seq0` on. Returns the bytes and the sequence numbers that are
/// acknowledged (every message between the batch's begin and end).
pub fn batch(rs: &Ruleset, seq0: u32) -> Result<(Vec<u8>, Vec<u32>), NftError> {
    let mut b = Builder::new();
    let mut seq = seq0;
    let mut acks = Vec::new();
    let table = rs.table.as_str();
    b.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq)
        .raw(&nfgenmsg(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES))
        .end();
    seq += 1;
    b.begin(
        msg_type(NFT_MSG_NEWTABLE),
        NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK,
        seq,
    )
    .raw(&nfgenmsg(NFPROTO_INET, 0))
    .attr_str(NFTA_TABLE_NAME, table)
    .attr_be32(
        NFTA_TABLE_FLAGS,
        if rs.owner { NFT_TABLE_F_OWNER } else { 0 },
    )
    .end();
    acks.push(seq);
    for c in &rs.chains {
        seq += 1;
        b.begin(
            msg_type(NFT_MSG_NEWCHAIN),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK,
            seq,
        )
        .raw(&nfgenmsg(NFPROTO_INET, 0))
        .attr_str(NFTA_CHAIN_TABLE, table)
        .attr_str(NFTA_CHAIN_NAME, &c.name)
        .nest(NFTA_CHAIN_HOOK, |b| {
            b.attr_be32(NFTA_HOOK_HOOKNUM, c.hook)
                .attr_be32(NFTA_HOOK_PRIORITY, c.priority as u32);
        })
        .attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32)
        .attr_str(NFTA_CHAIN_TYPE, c.kind)
        .end();
        acks.push(seq);
        for r in &c.rules {
            seq += 1;
            b.begin(
                msg_type(NFT_MSG_NEWRULE),
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_APPEND | NLM_F_ACK,
                seq,
            )
            .raw(&nfgenmsg(NFPROTO_INET, 0))
            .attr_str(NFTA_RULE_TABLE, table)
            .attr_str(NFTA_RULE_CHAIN, &c.name);
            let mut err = None;
            b.nest(NFTA_RULE_EXPRESSIONS, |b| {
                if let Err(e) = rule_exprs(b, r) {
                    err = Some(e);
                }
            });
            b.end();
            if let Some(e) = err {
                return Err(e);
            }
            acks.push(seq);
        }
    }
    seq += 1;
    b.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq)
        .raw(&nfgenmsg(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES))
        .end();
    Ok((b.into_bytes(), acks))
}

/// The batch that deletes table `name` of `family`.
pub fn delete_batch(family: u8, name: &str, seq0: u32) -> (Vec<u8>, Vec<u32>) {
    let mut b = Builder::new();
    b.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, seq0)
        .raw(&nfgenmsg(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES))
        .end();
    b.begin(
        msg_type(NFT_MSG_DELTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        seq0 + 1,
    )
    .raw(&nfgenmsg(family, 0))
    .attr_str(NFTA_TABLE_NAME, name)
    .end();
    b.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq0 + 2)
        .raw(&nfgenmsg(NFPROTO_UNSPEC, NFNL_SUBSYS_NFTABLES))
        .end();
    (b.into_bytes(), vec![seq0 + 1])
}

/// The request that dumps every table of every family.
pub fn list_tables_request(seq: u32) -> Vec<u8> {
    let mut b = Builder::new();
    b.begin(msg_type(NFT_MSG_GETTABLE), NLM_F_REQUEST | NLM_F_DUMP, seq)
        .raw(&nfgenmsg(NFPROTO_UNSPEC, 0))
        .end();
    b.into_bytes()
}

/// A table as a dump lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub family: u8,
    pub name: String,
    pub flags: u32,
    /// Netlink port id of the owning socket (with `NFT_TABLE_F_OWNER`).
    pub owner: Option<u32>,
}

/// One message of a table dump (header included); `Ok(None)` for other messages.
pub fn parse_table(msg: &[u8]) -> Result<Option<TableInfo>, netlink::Malformed> {
    let Some(m) = netlink::messages(msg).next().transpose()? else {
        return Ok(None);
    };
    if m.ty != msg_type(NFT_MSG_NEWTABLE) {
        return Ok(None);
    }
    if m.payload.len() < 4 {
        return Err(netlink::Malformed("short nfgenmsg"));
    }
    let family = m.payload[0];
    let mut name = None;
    let mut flags = 0;
    let mut owner = None;
    for a in netlink::attrs(&m.payload[4..]) {
        let (ty, p) = a?;
        match ty {
            NFTA_TABLE_NAME => name = Some(netlink::attr_string(p)),
            NFTA_TABLE_FLAGS => flags = netlink::attr_be32(p).unwrap_or(0),
            NFTA_TABLE_OWNER => owner = netlink::attr_be32(p),
            _ => {}
        }
    }
    Ok(name.map(|name| TableInfo {
        family,
        name,
        flags,
        owner,
    }))
}

/// capagent's table in the kernel, on the socket that owns it. Dropping it deletes the
/// table (and closing the socket would, too, for an owned table).
pub struct Nft {
    sock: netlink::Socket,
    table: Option<String>,
    /// The kernel took the owner flag.
    pub owned: bool,
}

impl Nft {
    pub fn open() -> Result<Nft, NftError> {
        let sock = netlink::Socket::open(libc::NETLINK_NETFILTER).map_err(NftError::Socket)?;
        Ok(Nft {
            sock,
            table: None,
            owned: false,
        })
    }

    /// Creates the table of `rs` in one transaction (nothing is created if any part fails).
    /// Without owner-flag support in the kernel, creates it without the flag.
    pub fn apply(&mut self, rs: &Ruleset) -> Result<(), NftError> {
        let mut rs = rs.clone();
        let mut result = self.send_batch(&rs)?;
        if rs.owner
            && let Err(e) = &result
            && e.raw_os_error() == Some(libc::EOPNOTSUPP)
        {
            tracing::warn!(
                "this kernel has no nftables table owner flag: a killed agent's table is removed by the next start or `capagent cleanup`"
            );
            rs.owner = false;
            result = self.send_batch(&rs)?;
        }
        result.map_err(|source| NftError::Apply {
            table: rs.table.clone(),
            source,
        })?;
        self.owned = rs.owner;
        self.table = Some(rs.table);
        Ok(())
    }

    /// Sends the batch of `rs`: Err for a ruleset that cannot be expressed, Ok(the kernel's
    /// answer) otherwise.
    fn send_batch(&mut self, rs: &Ruleset) -> Result<io::Result<()>, NftError> {
        let seq = self.sock.next_seq();
        let (bytes, acks) = batch(rs, seq)?;
        // The batch used sequence numbers seq..=seq + acks + 1.
        self.sock.skip(acks.len() as u32 + 1);
        Ok(self.sock.transact(&bytes, &acks))
    }

    /// Deletes table `name` (inet) on this socket.
    pub fn delete(&mut self, name: &str) -> Result<(), NftError> {
        self.delete_family(NFPROTO_INET, name)
    }

    /// Deletes table `name` of `family`.
    pub fn delete_family(&mut self, family: u8, name: &str) -> Result<(), NftError> {
        let seq = self.sock.next_seq();
        let (bytes, acks) = delete_batch(family, name, seq);
        self.sock.skip(2);
        self.sock
            .transact(&bytes, &acks)
            .map_err(|source| NftError::Delete {
                table: name.to_string(),
                source,
            })
    }

    /// Every table of the current network namespace.
    pub fn tables(&mut self) -> Result<Vec<TableInfo>, NftError> {
        let seq = self.sock.next_seq();
        let msgs = self
            .sock
            .dump(&list_tables_request(seq), seq)
            .map_err(NftError::List)?;
        let mut out = Vec::new();
        for m in msgs {
            if let Some(t) = parse_table(&m)
                .map_err(|e| NftError::List(io::Error::new(io::ErrorKind::InvalidData, e)))?
            {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Removes capagent's table now (also what dropping does).
    pub fn remove(&mut self) -> Result<(), NftError> {
        match self.table.take() {
            Some(t) => self.delete(&t),
            None => Ok(()),
        }
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!("{e}: {:?}", std::error::Error::source(&e));
        }
    }
}

/// The name of agent `pid`'s table.
pub fn table_name(pid: u32) -> String {
    format!("capagent-{pid}")
}

/// The pid in a table name made by [`table_name`].
pub fn table_owner(name: &str) -> Option<u32> {
    name.strip_prefix("capagent-")?.parse().ok()
}

/// What capagent's table must do (see [`capagent_ruleset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub pid: u32,
    /// tproxy (else NAT redirect).
    pub tproxy: bool,
    pub iface: String,
    /// Also this host's own connections leaving through `iface` (redirect).
    pub local: bool,
    pub ports: Vec<u16>,
    pub dsts: Vec<(IpAddr, u8)>,
    /// Listener ports, per family (None: that family is not intercepted).
    pub tcp4: Option<u16>,
    pub tcp6: Option<u16>,
    pub udp4: Option<u16>,
    pub udp6: Option<u16>,
    /// tproxy: the mark that selects capagent's routing table.
    pub mark: u32,
    /// The mark of the agent's own sockets.
    pub own_mark: u32,
}

/// The rules of one family and protocol: every (destination, port) combination.
fn family_rules(p: &Plan, nfproto: u8, l4proto: u8, listen: u16, iif: bool, rules: &mut Vec<Rule>) {
    let v6 = nfproto == NFPROTO_IPV6;
    let dsts: Vec<Option<(IpAddr, u8)>> = if p.dsts.is_empty() {
        vec![None]
    } else {
        let mine: Vec<_> = p
            .dsts
            .iter()
            .filter(|(ip, _)| ip.is_ipv6() == v6)
            .map(|d| Some(*d))
            .collect();
        if mine.is_empty() {
            // --dst named only the other family: nothing of this one is intercepted.
            return;
        }
        mine
    };
    let ports: Vec<Option<u16>> = if p.ports.is_empty() {
        vec![None]
    } else {
        p.ports.iter().map(|x| Some(*x)).collect()
    };
    for d in &dsts {
        for port in &ports {
            let when = Match {
                nfproto: Some(nfproto),
                iifname: iif.then(|| p.iface.clone()),
                oifname: (!iif).then(|| p.iface.clone()),
                l4proto: Some(l4proto),
                daddr: *d,
                dport: *port,
                ..Match::default()
            };
            let then = if p.tproxy {
                Action::Tproxy {
                    family: nfproto,
                    port: listen,
                    mark: p.mark,
                }
            } else {
                Action::Redirect { port: listen }
            };
            rules.push(Rule { when, then });
        }
    }
}

/// capagent's table for `p`:
///
/// ```text
/// table inet capagent-PID {                      # flags owner
///   chain prerouting {                           # redirect: type nat, priority dstnat
///     iifname IFACE fib daddr type local return  # tproxy: type filter, priority mangle
///     meta nfproto ipv4 iifname IFACE meta l4proto tcp [ip daddr CIDR] [th dport PORT]
///         redirect to :PORT4                     # tproxy: tproxy to :PORT4 meta mark set MARK accept
///     (the same for ipv6, and for udp with tproxy --udp)
///   }
///   chain output {                               # redirect --local only
///     meta mark OWN_MARK return
///     oifname IFACE fib daddr type local return
///     meta nfproto ipv4 oifname IFACE meta l4proto tcp ... redirect to :PORT4
///   }
/// }
/// ```
pub fn capagent_ruleset(p: &Plan) -> Ruleset {
    const TCP: u8 = 6;
    const UDP: u8 = 17;
    let local_return = |iif: bool| Rule {
        when: Match {
            iifname: iif.then(|| p.iface.clone()),
            oifname: (!iif).then(|| p.iface.clone()),
            daddr_local: true,
            ..Match::default()
        },
        then: Action::Return,
    };
    let mut pre = vec![local_return(true)];
    let mut out = vec![
        Rule {
            when: Match {
                mark: Some(p.own_mark),
                ..Match::default()
            },
            then: Action::Return,
        },
        local_return(false),
    ];
    for (nfproto, tcp, udp) in [
        (NFPROTO_IPV4, p.tcp4, p.udp4),
        (NFPROTO_IPV6, p.tcp6, p.udp6),
    ] {
        if let Some(port) = tcp {
            family_rules(p, nfproto, TCP, port, true, &mut pre);
            if p.local && !p.tproxy {
                family_rules(p, nfproto, TCP, port, false, &mut out);
            }
        }
        if let Some(port) = udp
            && p.tproxy
        {
            family_rules(p, nfproto, UDP, port, true, &mut pre);
        }
    }
    let mut chains = vec![Chain {
        name: "prerouting".into(),
        kind: if p.tproxy { "filter" } else { "nat" },
        hook: NF_INET_PRE_ROUTING,
        priority: if p.tproxy { -150 } else { -100 },
        rules: pre,
    }];
    if p.local && !p.tproxy {
        chains.push(Chain {
            name: "output".into(),
            kind: "nat",
            hook: NF_INET_LOCAL_OUT,
            priority: -100,
            rules: out,
        });
    }
    Ruleset {
        table: table_name(p.pid),
        owner: true,
        chains,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elems(rule_payload: &[u8]) -> Vec<String> {
        // rule payload: nfgenmsg, then attributes; the expressions' names in order.
        let exprs = netlink::find_attr(&rule_payload[4..], NFTA_RULE_EXPRESSIONS)
            .unwrap()
            .unwrap();
        netlink::attrs(exprs)
            .map(|e| {
                let (_, p) = e.unwrap();
                netlink::attr_string(netlink::find_attr(p, NFTA_EXPR_NAME).unwrap().unwrap())
            })
            .collect()
    }

    fn sample() -> Ruleset {
        Ruleset {
            table: "capagent-42".into(),
            owner: true,
            chains: vec![Chain {
                name: "pre".into(),
                kind: "nat",
                hook: NF_INET_PRE_ROUTING,
                priority: -100,
                rules: vec![
                    Rule {
                        when: Match {
                            daddr_local: true,
                            ..Match::default()
                        },
                        then: Action::Return,
                    },
                    Rule {
                        when: Match {
                            nfproto: Some(NFPROTO_IPV4),
                            iifname: Some("veth0".into()),
                            l4proto: Some(6),
                            daddr: Some(("10.1.0.0".parse().unwrap(), 16)),
                            dport: Some(80),
                            ..Match::default()
                        },
                        then: Action::Redirect { port: 40000 },
                    },
                ],
            }],
        }
    }

    #[test]
    fn batch_layout() {
        let (bytes, acks) = batch(&sample(), 100).unwrap();
        assert_eq!(acks, vec![101, 102, 103, 104]);
        let msgs: Vec<_> = netlink::messages(&bytes).collect::<Result<_, _>>().unwrap();
        let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
        assert_eq!(
            types,
            vec![
                NFNL_MSG_BATCH_BEGIN,
                0x0a00,
                0x0a03,
                0x0a06,
                0x0a06,
                NFNL_MSG_BATCH_END
            ]
        );
        // Batch header: AF_UNSPEC, version 0, res_id = NFNL_SUBSYS_NFTABLES (big endian).
        assert_eq!(msgs[0].payload, &[0, 0, 0, 10]);
        // Table: inet, name, owner flag.
        let t = &msgs[1];
        assert_eq!(t.payload[0], NFPROTO_INET);
        assert_eq!(
            t.flags,
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | NLM_F_ACK
        );
        assert_eq!(
            netlink::find_attr(&t.payload[4..], NFTA_TABLE_NAME).unwrap(),
            Some(&b"capagent-42\0"[..])
        );
        assert_eq!(
            netlink::find_attr(&t.payload[4..], NFTA_TABLE_FLAGS).unwrap(),
            Some(&[0, 0, 0, 2][..])
        );
        // Chain hook: prerouting, priority -100.
        let hook = netlink::find_attr(&msgs[2].payload[4..], NFTA_CHAIN_HOOK)
            .unwrap()
            .unwrap();
        assert_eq!(
            netlink::find_attr(hook, NFTA_HOOK_PRIORITY).unwrap(),
            Some(&(-100i32).to_be_bytes()[..])
        );
        assert_eq!(elems(msgs[3].payload), ["fib", "cmp", "immediate"]);
        assert_eq!(
            elems(msgs[4].payload),
            [
                "meta",
                "cmp",
                "meta",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "bitwise",
                "cmp",
                "payload",
                "cmp",
                "immediate",
                "redir"
            ]
        );
        // The port in the redirect's register is in network byte order.
        let exprs = netlink::find_attr(&msgs[4].payload[4..], NFTA_RULE_EXPRESSIONS)
            .unwrap()
            .unwrap();
        let imm = netlink::attrs(exprs).nth(11).unwrap().unwrap().1;
        let data = netlink::find_attr(imm, NFTA_EXPR_DATA).unwrap().unwrap();
        let value = netlink::find_attr(data, NFTA_IMMEDIATE_DATA)
            .unwrap()
            .unwrap();
        assert_eq!(
            netlink::find_attr(value, NFTA_DATA_VALUE).unwrap(),
            Some(&40000u16.to_be_bytes()[..])
        );
    }

    fn plan() -> Plan {
        Plan {
            pid: 42,
            tproxy: false,
            iface: "veth0".into(),
            local: false,
            ports: vec![80, 8080],
            dsts: vec![("10.0.0.0".parse().unwrap(), 8)],
            tcp4: Some(4000),
            tcp6: Some(4001),
            udp4: None,
            udp6: None,
            mark: 0xca00_002a,
            own_mark: 0xcb00_002a,
        }
    }

    #[test]
    fn redirect_plan() {
        let rs = capagent_ruleset(&plan());
        assert_eq!(rs.table, "capagent-42");
        assert!(rs.owner);
        assert_eq!(rs.chains.len(), 1);
        let c = &rs.chains[0];
        assert_eq!(
            (c.kind, c.hook, c.priority),
            ("nat", NF_INET_PRE_ROUTING, -100)
        );
        // local-destination return, then 1 destination x 2 ports, IPv4 only (--dst is IPv4).
        assert_eq!(c.rules.len(), 3);
        assert_eq!(c.rules[0].then, Action::Return);
        assert!(c.rules[0].when.daddr_local);
        assert_eq!(c.rules[2].when.dport, Some(8080));
        assert_eq!(c.rules[2].then, Action::Redirect { port: 4000 });
        let mut local = plan();
        local.local = true;
        local.dsts.clear();
        let rs = capagent_ruleset(&local);
        assert_eq!(rs.chains.len(), 2);
        // mark return, local return, 2 families x 2 ports.
        assert_eq!(rs.chains[1].rules.len(), 6);
        assert_eq!(rs.chains[1].rules[0].when.mark, Some(0xcb00_002a));
        assert_eq!(rs.chains[1].rules[5].when.oifname.as_deref(), Some("veth0"));
        assert!(batch(&rs, 1).is_ok());
    }

    #[test]
    fn tproxy_plan() {
        let mut p = plan();
        p.tproxy = true;
        p.dsts.clear();
        p.ports = vec![53];
        p.udp4 = Some(5000);
        p.udp6 = Some(5001);
        let rs = capagent_ruleset(&p);
        let c = &rs.chains[0];
        assert_eq!((c.kind, c.priority), ("filter", -150));
        assert_eq!(c.rules.len(), 5);
        assert_eq!(
            c.rules[2].then,
            Action::Tproxy {
                family: NFPROTO_IPV4,
                port: 5000,
                mark: 0xca00_002a
            }
        );
        assert_eq!(c.rules[2].when.l4proto, Some(17));
        assert_eq!(c.rules[4].when.nfproto, Some(NFPROTO_IPV6));
        let (bytes, _) = batch(&rs, 1).unwrap();
        let msgs: Vec<_> = netlink::messages(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            elems(msgs[4].payload),
            [
                "meta",
                "cmp",
                "meta",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "cmp",
                "immediate",
                "tproxy",
                "immediate",
                "meta",
                "immediate"
            ]
        );
        assert_eq!(table_owner("capagent-42"), Some(42));
        assert_eq!(table_owner("capagentx"), None);
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(4, 16), [255, 255, 0, 0]);
        assert_eq!(prefix_mask(4, 20), [255, 255, 240, 0]);
        assert_eq!(prefix_mask(4, 0), [0, 0, 0, 0]);
        assert_eq!(prefix_mask(4, 99), [255; 4]);
        assert_eq!(prefix_mask(16, 64)[7..9], [255, 0]);
    }

    #[test]
    fn bad_rules_are_refused() {
        let mut rs = sample();
        rs.chains[0].rules[1].when.iifname = Some("a-much-too-long-name".into());
        assert!(batch(&rs, 1).is_err());
        let mut rs = sample();
        rs.chains[0].rules[1].when.nfproto = Some(NFPROTO_IPV6);
        assert!(batch(&rs, 1).is_err());
        let mut rs = sample();
        rs.chains[0].rules[1].when.l4proto = None;
        assert!(batch(&rs, 1).is_err());
    }

    #[test]
    fn table_dump_messages() {
        let mut b = Builder::new();
        b.begin(msg_type(NFT_MSG_NEWTABLE), 0, 1)
            .raw(&[NFPROTO_INET, 0, 0, 0])
            .attr_str(NFTA_TABLE_NAME, "capagent-7")
            .attr_be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER)
            .attr_be32(NFTA_TABLE_OWNER, 1234)
            .end();
        let t = parse_table(b.bytes()).unwrap().unwrap();
        assert_eq!(
            t,
            TableInfo {
                family: NFPROTO_INET,
                name: "capagent-7".into(),
                flags: 2,
                owner: Some(1234)
            }
        );
        assert!(parse_table(&b.bytes()[..20]).is_err());
    }

    #[test]
    fn delete_names_only_the_table() {
        let (bytes, acks) = delete_batch(NFPROTO_INET, "capagent-9", 5);
        assert_eq!(acks, vec![6]);
        let msgs: Vec<_> = netlink::messages(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(msgs[1].ty, msg_type(NFT_MSG_DELTABLE));
        assert_eq!(
            netlink::find_attr(&msgs[1].payload[4..], NFTA_TABLE_NAME).unwrap(),
            Some(&b"capagent-9\0"[..])
        );
    }
}
