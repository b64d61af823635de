//! Traffic-control rtnetlink messages (`NETLINK_ROUTE`), built and parsed as bytes, no I/O:
//! a dump of the filters on one clsact hook (`RTM_GETTFILTER`), the deletion of one filter
//! (`RTM_DELTFILTER`) and of a `clsact` qdisc (`RTM_DELQDISC`), and the replies. Used by
//! [`super::hygiene`] to find and remove the filters a killed capagent left behind.
//!
//! Layouts (native byte order): `struct nlmsghdr` (16 bytes), `struct tcmsg` (20 bytes),
//! then `struct rtattr` attributes (u16 length, u16 type, 4-byte aligned).

/// `TC_H_CLSACT`: the clsact qdisc's parent id (same as `TC_H_INGRESS`).
pub const TC_H_CLSACT: u32 = 0xffff_fff1;
/// `TC_H_MIN_INGRESS`, `TC_H_MIN_EGRESS`: the minor ids of clsact's two hooks.
pub const TC_H_MIN_INGRESS: u32 = 0xfff2;
pub const TC_H_MIN_EGRESS: u32 = 0xfff3;

const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDR: usize = 16;
const TCMSG_LEN: usize = 20;

const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_CHAIN: u16 = 11;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;
/// Attribute type bits without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

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

fn header(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32) {
    out.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
}

fn tcmsg(out: &mut Vec<u8>, ifindex: i32, handle: u32, parent: u32, info: u32) {
    // family AF_UNSPEC, two pad bytes... as `struct tcmsg`.
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&ifindex.to_ne_bytes());
    out.extend_from_slice(&handle.to_ne_bytes());
    out.extend_from_slice(&parent.to_ne_bytes());
    out.extend_from_slice(&info.to_ne_bytes());
}

fn attr(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    out.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let len = out.len() as u32;
    out[..4].copy_from_slice(&len.to_ne_bytes());
    out
}

/// A dump request for the filters on `hook` of interface `ifindex`.
pub fn dump_filters_request(ifindex: i32, hook: Hook, seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(NLMSG_HDR + TCMSG_LEN);
    header(&mut out, RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, seq);
    tcmsg(&mut out, ifindex, 0, hook.parent(), 0);
    finish(out)
}

/// A request deleting exactly the filter `f` (its priority, protocol, handle, kind and
/// chain), acknowledged. `None` when `f` lacks a priority or a handle: the kernel would then
/// delete every filter of the priority or of the hook.
pub fn del_filter_request(f: &TcFilter, seq: u32) -> Option<Vec<u8>> {
    if f.prio() == 0 || f.handle == 0 {
        return None;
    }
    let mut out = Vec::with_capacity(64);
    header(&mut out, RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK, seq);
    tcmsg(&mut out, f.ifindex, f.handle, f.parent, f.info);
    let mut kind = f.kind.as_bytes().to_vec();
    kind.push(0);
    attr(&mut out, TCA_KIND, &kind);
    if let Some(chain) = f.chain {
        attr(&mut out, TCA_CHAIN, &chain.to_ne_bytes());
    }
    Some(finish(out))
}

/// A request deleting the `clsact` qdisc of `ifindex`, acknowledged.
pub fn del_clsact_request(ifindex: i32, seq: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    header(&mut out, RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK, seq);
    tcmsg(&mut out, ifindex, TC_H_CLSACT & 0xffff_0000, TC_H_CLSACT, 0);
    attr(&mut out, TCA_KIND, b"clsact\0");
    finish(out)
}

/// What one `recv` of replies held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub filters: Vec<TcFilter>,
    /// `NLMSG_DONE`, or an `NLMSG_ERROR` (an error or, with code 0, the acknowledgement).
    pub done: bool,
    /// The error of an `NLMSG_ERROR` (positive errno).
    pub error: Option<i32>,
}

/// Iterates over the `rtattr`s of `buf`: `(type without flags, payload)`. Stops at the first
/// malformed one.
fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut off = 0;
    std::iter::from_fn(move || {
        let h = buf.get(off..off + 4)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        if len < 4 {
            return None;
        }
        let data = buf.get(off + 4..off + len)?;
        off += len.next_multiple_of(4);
        Some((ty, data))
    })
}

/// A NUL-terminated (or not) string attribute.
fn attr_str(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

fn attr_u32(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}

fn parse_filter(body: &[u8]) -> Option<TcFilter> {
    let t = body.get(..TCMSG_LEN)?;
    let word = |i: usize| u32::from_ne_bytes(t[i..i + 4].try_into().expect("4 bytes"));
    let mut f = TcFilter {
        ifindex: word(4) as i32,
        handle: word(8),
        parent: word(12),
        info: word(16),
        ..TcFilter::default()
    };
    for (ty, data) in attrs(&body[TCMSG_LEN..]) {
        match ty {
            TCA_KIND => f.kind = attr_str(data),
            TCA_CHAIN => f.chain = attr_u32(data),
            TCA_OPTIONS => {
                // Options are nested attributes whose meaning depends on the kind; TCA_KIND
                // comes first in the kernel's messages, but do not rely on it.
                for (oty, odata) in attrs(data) {
                    match oty {
                        TCA_BPF_NAME => f.bpf_name = Some(attr_str(odata)),
                        TCA_BPF_ID => f.bpf_id = attr_u32(odata),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if f.kind != "bpf" {
        f.bpf_name = None;
        f.bpf_id = None;
    }
    Some(f)
}

/// Parses the netlink messages of one reply buffer (filter dump parts, `NLMSG_DONE`,
/// `NLMSG_ERROR`). Malformed trailing bytes are ignored.
pub fn parse_reply(buf: &[u8]) -> Reply {
    let mut out = Reply::default();
    let mut off = 0;
    while let Some(h) = buf.get(off..off + NLMSG_HDR) {
        let len = u32::from_ne_bytes(h[0..4].try_into().expect("4 bytes")) as usize;
        let ty = u16::from_ne_bytes([h[4], h[5]]);
        let Some(body) = buf.get(off + NLMSG_HDR..off.saturating_add(len)) else {
            break;
        };
        if len < NLMSG_HDR {
            break;
        }
        match ty {
            NLMSG_DONE => {
                out.done = true;
                break;
            }
            NLMSG_ERROR => {
                let e = body
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                if e != 0 {
                    out.error = Some(crate::netlink::errno_of(e));
                }
                out.done = true;
                break;
            }
            RTM_NEWTFILTER => {
                if let Some(f) = parse_filter(body) {
                    out.filters.push(f);
                }
            }
            _ => {}
        }
        off += len.next_multiple_of(4);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RTM_NEWTFILTER message as the kernel sends for a cls_bpf filter.
    pub(crate) fn filter_msg(f: &TcFilter) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, RTM_NEWTFILTER, 2, 1);
        tcmsg(&mut out, f.ifindex, f.handle, f.parent, f.info);
        let mut kind = f.kind.as_bytes().to_vec();
        kind.push(0);
        attr(&mut out, TCA_KIND, &kind);
        attr(&mut out, TCA_CHAIN, &f.chain.unwrap_or(0).to_ne_bytes());
        let mut opts = Vec::new();
        if let Some(n) = &f.bpf_name {
            let mut n = n.as_bytes().to_vec();
            n.push(0);
            attr(&mut opts, TCA_BPF_NAME, &n);
        }
        attr(&mut opts, 8, &1u32.to_ne_bytes()); // TCA_BPF_FLAGS
        if let Some(id) = f.bpf_id {
            attr(&mut opts, TCA_BPF_ID, &id.to_ne_bytes());
        }
        attr(&mut out, TCA_OPTIONS | 0x8000, &opts);
        finish(out)
    }

    fn done() -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, NLMSG_DONE, 2, 1);
        out.extend_from_slice(&0i32.to_ne_bytes());
        finish(out)
    }

    fn error(code: i32) -> Vec<u8> {
        let mut out = Vec::new();
        header(&mut out, NLMSG_ERROR, 0, 1);
        out.extend_from_slice(&code.to_ne_bytes());
        out.extend_from_slice(&[0; 16]);
        finish(out)
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

    #[test]
    fn hooks_and_requests() {
        assert_eq!(Hook::Ingress.parent(), 0xffff_fff2);
        assert_eq!(Hook::Egress.parent(), 0xffff_fff3);
        let req = dump_filters_request(7, Hook::Ingress, 9);
        assert_eq!(req.len(), 36);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 36);
        assert_eq!(u16::from_ne_bytes([req[4], req[5]]), RTM_GETTFILTER);
        assert_eq!(u16::from_ne_bytes([req[6], req[7]]), 0x301);
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
        assert_eq!(del.len(), 52);
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
        let mut buf = filter_msg(&f);
        buf.extend(filter_msg(&other));
        buf.extend(done());
        let r = parse_reply(&buf);
        assert!(r.done && r.error.is_none());
        assert_eq!(r.filters, [f.clone(), other]);
        assert_eq!(r.filters[0].prio(), 49152);

        let r = parse_reply(&error(-libc::EINVAL));
        assert_eq!((r.done, r.error), (true, Some(libc::EINVAL)));
        let ack = parse_reply(&error(0));
        assert_eq!((ack.done, ack.error), (true, None));
        // Codes no kernel sends are a protocol error, never a negative or zero errno
        // (i32::MIN came from the fuzzer: its absolute value is no i32).
        for bad in [i32::MIN, -4096, 1, libc::EINVAL, i32::MAX] {
            let r = parse_reply(&error(bad));
            assert_eq!((r.done, r.error), (true, Some(libc::EPROTO)), "{bad}");
        }

        // The fuzzer's input (issue 11): a filter, then an NLMSG_ERROR with code i32::MIN.
        #[cfg(target_endian = "little")]
        {
            let r = parse_reply(include_bytes!(
                "../../../fuzz/seeds/tc_netlink/nlmsgerr_i32_min"
            ));
            assert_eq!((r.done, r.error), (true, Some(libc::EPROTO)));
            assert_eq!(r.filters.len(), 1);
            assert_eq!(r.filters[0].bpf_name.as_deref(), Some("capture_egress"));
        }

        // Cut anywhere: no panic, whole messages only.
        let mut two = filter_msg(&f);
        two.extend(filter_msg(&f));
        for cut in 0..two.len() {
            let r = parse_reply(&two[..cut]);
            assert!(r.filters.len() <= 1 || cut == two.len(), "{cut}");
            assert!(!r.done);
        }
    }
}
