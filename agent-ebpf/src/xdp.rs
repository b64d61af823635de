//! `capagent capture --xdp`: an XDP program on the ingress of the captured interfaces,
//! instead of the TC ingress classifier (egress stays on TC: XDP has no egress hook). It
//! sees packets before the kernel allocates a socket buffer for them, so it carries no
//! socket cookie; the owner comes from the same socket lookup as TC ingress.

use agent_common::{PacketEvent, owner_src, packet_dir, select};
use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    helpers::generated::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    macros::xdp,
    programs::XdpContext,
};

use crate::{
    capture::{capture_conf, filter, submit},
    filter::PacketBytes,
    owner::{NetBytes, lookup_ingress, owner_of, selected},
};

const ETH_HLEN: u32 = 14;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

/// An XDP packet from its network header on (after the Ethernet header and one VLAN tag).
struct XdpNet {
    md: *mut xdp_md,
    base: u32,
    ethertype: u16,
}

impl NetBytes for XdpNet {
    #[inline(always)]
    fn ethertype(&self) -> u16 {
        self.ethertype
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: u32, buf: &mut [u8; N]) -> i64 {
        unsafe { bpf_xdp_load_bytes(self.md, self.base + off, buf.as_mut_ptr().cast(), N as u32) }
    }

    #[inline(always)]
    fn ctx(&self) -> *mut core::ffi::c_void {
        self.md.cast()
    }
}

/// The whole XDP packet, for the filter expression.
struct XdpPacket(*mut xdp_md);

impl PacketBytes for XdpPacket {
    #[inline(always)]
    fn load(&self, off: u32, to: *mut u8, len: u32) -> bool {
        unsafe { bpf_xdp_load_bytes(self.0, off, to.cast(), len) == 0 }
    }
}

#[xdp]
pub fn capture_xdp(ctx: XdpContext) -> u32 {
    capture(&ctx);
    xdp_action::XDP_PASS
}

#[inline(always)]
fn capture(ctx: &XdpContext) {
    let md = ctx.ctx;
    let ifindex = unsafe { (*md).ingress_ifindex };
    let orig_len = unsafe { bpf_xdp_get_buff_len(md) } as u32;
    let keep = filter(&XdpPacket(md), ifindex, orig_len);
    if keep == 0 {
        return;
    }
    let mut eth = [0u8; 18];
    let mut net = XdpNet {
        md,
        base: ETH_HLEN,
        ethertype: 0,
    };
    if unsafe { bpf_xdp_load_bytes(md, 0, eth.as_mut_ptr().cast(), 14) } == 0 {
        net.ethertype = u16::from_be_bytes([eth[12], eth[13]]);
        if (net.ethertype == ETH_P_8021Q || net.ethertype == ETH_P_8021AD)
            && unsafe { bpf_xdp_load_bytes(md, 0, eth.as_mut_ptr().cast(), 18) } == 0
        {
            net.ethertype = u16::from_be_bytes([eth[16], eth[17]]);
            net.base = ETH_HLEN + 4;
        }
    }
    let (src, ino, owner) = owner_of(lookup_ingress(&net));
    if capture_conf().select != select::ALL && src == owner_src::OWNER && !selected(&owner) {
        return;
    }
    let head = PacketEvent {
        ts_ns: 0,
        cookie: 0,
        ifindex,
        orig_len,
        cap_len: 0,
        dir: packet_dir::INGRESS,
        owner_src: src,
        _pad: [0; 2],
        ino,
        owner,
    };
    submit(head, keep, |dst, n| unsafe {
        bpf_xdp_load_bytes(md, 0, dst.cast(), n)
    });
}
