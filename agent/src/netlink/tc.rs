//! tc over rtnetlink (`netlink-packet-route`): dumping the filters of a `clsact` hook
//! (`RTM_GETTFILTER`), deleting one filter (`RTM_DELTFILTER`) and a `clsact` qdisc
//! (`RTM_DELQDISC`). Used by `capture::hygiene` to find and remove the filters a killed
//! capagent left behind; attaching goes through aya.

use std::io;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHeader, TcMessage, TcOption},
};

use super::{Malformed, Socket, decode, serialize};

/// `TC_H_CLSACT`: the clsact qdisc's parent id (same as `TC_H_INGRESS`).
pub const TC_H_CLSACT: u32 = 0xffff_fff1;
/// `TC_H_MIN_INGRESS`, `TC_H_MIN_EGRESS`: the minor ids of clsact's two hooks.
pub const TC_H_MIN_INGRESS: u32 = 0xfff2;
pub const TC_H_MIN_EGRESS: u32 = 0xfff3;

pub const RTM_NEWTFILTER: u16 = 44;

/// A clsact hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    /// `tcm_parent` of the filters on this hook.
    pub fn parent(self) -> u32 {
        let minor = match self {
            Hook::Ingress => TC_H_MIN_INGRESS,
            Hook::Egress => TC_H_MIN_EGRESS,
        };
        (TC_H_CLSACT & 0xffff_0000) | minor
    }
}

/// One tc filter as the kernel dumps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TcFilter {
    pub ifindex: i32,
    pub parent: u32,
    pub handle: u32,
    /// `tcm_info`: priority in the high 16 bits, protocol (network byte order) in the low.
    pub info: u32,
    /// `TCA_KIND` (`"bpf"` for cls_bpf).
    pub kind: String,
    pub chain: Option<u32>,
    /// cls_bpf's `TCA_BPF_NAME`: the name the loader gave the filter.
    pub bpf_name: Option<String>,
    /// cls_bpf's `TCA_BPF_ID`: the id of the attached program.
    pub bpf_id: Option<u32>,
}

impl TcFilter {
    /// The filter's priority (`pref` in `tc filter show`).
    pub fn prio(&self) -> u16 {
        (self.info >> 16) as u16
    }
}

fn tc_message(ifindex: i32, handle: u32, parent: u32, info: u32) -> TcMessage {
    let mut m = TcMessage::default();
    m.header = TcHeader {
        index: ifindex,
        handle: handle.into(),
        parent: parent.into(),
        info,
        ..TcHeader::default()
    };
    m
}

/// A dump request for the filters on `hook` of interface `ifindex`.
pub fn dump_filters_request(ifindex: i32, hook: Hook, seq: u32) -> Vec<u8> {
    let m = tc_message(ifindex, 0, hook.parent(), 0);
    serialize(
        RouteNetlinkMessage::GetTrafficFilter(m),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
    )
}

/// A request deleting exactly the filter `f` (its priority, protocol, handle, kind and
/// chain), acknowledged. `None` when `f` lacks a priority or a handle: the kernel would then
/// delete every filter of the priority or of the hook.
pub fn del_filter_request(f: &TcFilter, seq: u32) -> Option<Vec<u8>> {
    if f.prio() == 0 || f.handle == 0 {
        return None;
    }
    let mut m = tc_message(f.ifindex, f.handle, f.parent, f.info);
    m.attributes.push(TcAttribute::Kind(f.kind.clone()));
    if let Some(chain) = f.chain {
        m.attributes.push(TcAttribute::Chain(chain));
    }
    Some(serialize(
        RouteNetlinkMessage::DelTrafficFilter(m),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    ))
}

/// A request deleting the `clsact` qdisc of `ifindex`, acknowledged.
pub fn del_clsact_request(ifindex: i32, seq: u32) -> Vec<u8> {
    let mut m = tc_message(ifindex, TC_H_CLSACT & 0xffff_0000, TC_H_CLSACT, 0);
    m.attributes.push(TcAttribute::Kind("clsact".into()));
    serialize(
        RouteNetlinkMessage::DelQueueDiscipline(m),
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
    )
}

/// One message of a filter dump (header included): the filter of an `RTM_NEWTFILTER`,
/// `Ok(None)` for other messages.
pub fn parse_filter(msg: &[u8]) -> Result<Option<TcFilter>, Malformed> {
    let Some(RouteNetlinkMessage::NewTrafficFilter(tc)) = decode(msg, RTM_NEWTFILTER)? else {
        return Ok(None);
    };
    let mut f = TcFilter {
        ifindex: tc.header.index,
        handle: tc.header.handle.into(),
        parent: tc.header.parent.into(),
        info: tc.header.info,
        ..TcFilter::default()
    };
    for a in tc.attributes {
        match a {
            TcAttribute::Kind(k) => f.kind = k,
            TcAttribute::Chain(c) => f.chain = Some(c),
            // The options of a `bpf` filter (parsed as such because TCA_KIND came first).
            TcAttribute::Options(opts) => {
                for o in opts {
                    match o {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => f.bpf_name = Some(n),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => f.bpf_id = Some(id),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(Some(f))
}

/// The filters on `hook` of `ifindex`; none when the interface has no clsact qdisc.
pub fn filters(sock: &mut Socket, ifindex: i32, hook: Hook) -> io::Result<Vec<TcFilter>> {
    let seq = sock.next_seq();
    let msgs = match sock.dump(&dump_filters_request(ifindex, hook, seq), seq) {
        // No clsact qdisc (EINVAL), or the interface went away (ENODEV).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENODEV)) => {
            return Ok(Vec::new());
        }
        r => r?,
    };
    let mut out = Vec::new();
    for m in msgs {
        // A message that does not decode is not one of capagent's filters: skip it.
        if let Ok(Some(f)) = parse_filter(&m) {
            out.push(f);
        }
    }
    Ok(out)
}

/// Deletes exactly filter `f` (as dumped).
pub fn delete_filter(sock: &mut Socket, f: &TcFilter) -> io::Result<()> {
    let seq = sock.next_seq();
    let req = del_filter_request(f, seq).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "filter without a priority or handle",
        )
    })?;
    sock.request(&req, seq)
}

/// Deletes the `clsact` qdisc of `ifindex`.
pub fn delete_clsact(sock: &mut Socket, ifindex: i32) -> io::Result<()> {
    let seq = sock.next_seq();
    sock.request(&del_clsact_request(ifindex, seq), seq)
}

#[cfg(test)]
mod tests {
    use super::super::{Builder, DumpError, NLMSG_DONE, dump_part, tests::ack as error};
    use super::*;

    const TCA_KIND: u16 = 1;
    const TCA_OPTIONS: u16 = 2;
    const TCA_CHAIN: u16 = 11;
    const TCA_BPF_NAME: u16 = 7;
    const TCA_BPF_FLAGS: u16 = 8;
    const TCA_BPF_ID: u16 = 11;
    const RTM_DELTFILTER: u16 = 45;
    const RTM_GETTFILTER: u16 = 46;
    const RTM_DELQDISC: u16 = 37;

    fn tcmsg(f: &TcFilter) -> Vec<u8> {
        [
            &[0u8, 0, 0, 0][..],
            &f.ifindex.to_ne_bytes(),
            &f.handle.to_ne_bytes(),
            &f.parent.to_ne_bytes(),
            &f.info.to_ne_bytes(),
        ]
        .concat()
    }

    /// A RTM_NEWTFILTER message as the kernel sends for a cls_bpf filter (written by hand,
    /// not by the crate that parses it).
    fn filter_msg(f: &TcFilter, seq: u32) -> Vec<u8> {
        let mut b = Builder::new();
        b.begin(RTM_NEWTFILTER, 2, seq)
            .raw(&tcmsg(f))
            .attr_str(TCA_KIND, &f.kind)
            .attr_u32(TCA_CHAIN, f.chain.unwrap_or(0))
            .nest(TCA_OPTIONS, |b| {
                if let Some(n) = &f.bpf_name {
                    b.attr_str(TCA_BPF_NAME, n);
                }
                b.attr_u32(TCA_BPF_FLAGS, 1);
                if let Some(id) = f.bpf_id {
                    b.attr_u32(TCA_BPF_ID, id);
                }
            })
            .end();
        b.into_bytes()
    }

    fn done(seq: u32) -> Vec<u8> {
        let mut b = Builder::new();
        b.begin(NLMSG_DONE, 2, seq).raw(&0i32.to_ne_bytes()).end();
        b.into_bytes()
    }

    fn capagent_filter() -> TcFilter {
        TcFilter {
            ifindex: 1,
            parent: Hook::Egress.parent(),
            handle: 1,
            info: (49152 << 16) | u32::from(0x0003u16.to_be()),
            kind: "bpf".into(),
            chain: Some(0),
            bpf_name: Some("capture_egress".into()),
            bpf_id: Some(4242),
        }
    }

    /// The filters of one dump answer, as [`filters`] reads them.
    fn dump(buf: &[u8], seq: u32) -> Result<(Vec<TcFilter>, bool), DumpError> {
        let mut msgs = Vec::new();
        let done = dump_part(buf, seq, &mut msgs)?;
        let filters = msgs
            .iter()
            .filter_map(|m| parse_filter(m).ok().flatten())
            .collect();
        Ok((filters, done))
    }

    #[test]
    fn hooks_and_requests() {
        assert_eq!(Hook::Ingress.parent(), 0xffff_fff2);
        assert_eq!(Hook::Egress.parent(), 0xffff_fff3);
        let req = dump_filters_request(7, Hook::Ingress, 9);
        assert_eq!(req.len(), 36);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 36);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), RTM_GETTFILTER);
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x301);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 9);
        assert_eq!(i32::from_ne_bytes(req[20..24].try_into().unwrap()), 7);
        assert_eq!(
            u32::from_ne_bytes(req[28..32].try_into().unwrap()),
            0xffff_fff2
        );

        let f = capagent_filter();
        let del = del_filter_request(&f, 3).unwrap();
        assert_eq!(u16::from_ne_bytes([del[4], del[5]]), RTM_DELTFILTER);
        assert_eq!(u16::from_ne_bytes([del[6], del[7]]), 5);
        assert_eq!(u32::from_ne_bytes(del[24..28].try_into().unwrap()), 1);
        assert_eq!(u32::from_ne_bytes(del[32..36].try_into().unwrap()), f.info);
        assert_eq!(&del[36..40], &[8, 0, 1, 0]);
        assert_eq!(&del[40..44], b"bpf\0");
        assert_eq!(&del[44..48], &[8, 0, 11, 0]);
        assert_eq!(&del[48..52], &0u32.to_ne_bytes());
        assert_eq!(del.len(), 52);
        assert_eq!(u32::from_ne_bytes(del[0..4].try_into().unwrap()), 52);
        // Without a priority or a handle the kernel would delete more than this filter.
        for bad in [
            TcFilter {
                info: 3,
                ..f.clone()
            },
            TcFilter {
                handle: 0,
                ..f.clone()
            },
        ] {
            assert_eq!(del_filter_request(&bad, 1), None);
        }

        let q = del_clsact_request(2, 4);
        assert_eq!(u16::from_ne_bytes([q[4], q[5]]), RTM_DELQDISC);
        assert_eq!(
            u32::from_ne_bytes(q[24..28].try_into().unwrap()),
            0xffff_0000
        );
        assert_eq!(
            u32::from_ne_bytes(q[28..32].try_into().unwrap()),
            TC_H_CLSACT
        );
        assert_eq!(&q[40..47], b"clsact\0");
        assert_eq!(q.len(), 48);
    }

    #[test]
    fn parses_dumps_acks_and_errors() {
        let f = capagent_filter();
        let other = TcFilter {
            handle: 0x10,
            info: 7 << 16,
            kind: "matchall".into(),
            chain: Some(0),
            ..TcFilter::default()
        };
        let mut buf = filter_msg(&f, 1);
        buf.extend(filter_msg(&other, 1));
        buf.extend(done(1));
        let (filters, done_) = dump(&buf, 1).unwrap();
        assert!(done_);
        assert_eq!(filters, [f.clone(), other]);
        assert_eq!(filters[0].prio(), 49152);
        // Another request's messages are not part of this answer.
        assert_eq!(dump(&buf, 2).unwrap(), (vec![], false));

        assert_eq!(
            dump(&error(-libc::EINVAL, 1), 1),
            Err(DumpError::Kernel(libc::EINVAL))
        );
        assert_eq!(dump(&error(0, 1), 1), Ok((vec![], true)));
        // Codes no kernel sends are a protocol error, never a negative or zero errno.
        for bad in [i32::MIN, -4096, 1, libc::EINVAL, i32::MAX] {
            assert_eq!(
                dump(&error(bad, 1), 1),
                Err(DumpError::Kernel(libc::EPROTO)),
                "{bad}"
            );
        }

        // The fuzzer's input (issue 11): a filter (sequence 1), an NLMSG_ERROR with code
        // i32::MIN (sequence 0x2c00), then a message too short for its header.
        #[cfg(target_endian = "little")]
        {
            let seed = include_bytes!("../../../fuzz/seeds/netlink/nlmsgerr_i32_min");
            let f = parse_filter(seed).unwrap().unwrap();
            assert_eq!(f.bpf_name.as_deref(), Some("capture_egress"));
            assert_eq!(dump(seed, 0x2c00), Err(DumpError::Kernel(libc::EPROTO)));
            assert!(matches!(dump(seed, 1), Err(DumpError::Malformed(_))));
        }

        // Cut anywhere: no panic, whole messages only.
        let mut two = filter_msg(&f, 1);
        two.extend(filter_msg(&f, 1));
        for cut in 0..two.len() {
            let r = dump(&two[..cut], 1);
            if let Ok((filters, done_)) = r {
                assert!(filters.len() <= 1 || cut == two.len(), "{cut}");
                assert!(!done_);
            }
        }
        // A filter message cut inside its tcmsg is malformed, not a filter.
        let one = filter_msg(&f, 1);
        let mut short = one[..24].to_vec();
        short[0..4].copy_from_slice(&24u32.to_ne_bytes());
        assert!(parse_filter(&short).is_err());
        assert_eq!(parse_filter(&done(1)), Ok(None));
    }
}
