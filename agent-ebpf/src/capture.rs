//! Packet capture (`capagent capture`): TC classifier programs on the ingress and egress of
//! the captured interfaces. Each copies the first `snaplen` bytes of the packet (from the
//! Ethernet header on) with its timestamp, interface, direction, length and socket cookie
//! into the `PACKETS` ring buffer, and always lets the packet go on (`TC_ACT_OK`).
//!
//! The copy goes through a per-CPU slot of `PACKET_SCRATCH` (a plain array indexed by CPU:
//! per-CPU arrays cannot hold values over 32 KiB) and the record is sized to the data.

use agent_common::{CaptureConfig, IfCounters, PACKET_MAX, PacketEvent, packet_dir};
use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_OK},
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_get_smp_processor_id, bpf_get_socket_cookie, bpf_skb_load_bytes},
    },
    macros::{classifier, map},
    maps::{Array, PerCpuHashMap, RingBuf},
    programs::TcContext,
};

/// Filled by userspace at load time.
#[unsafe(no_mangle)]
static CAPTURE_CONFIG: CaptureConfig = CaptureConfig::new();

/// Packet records for userspace. Small here; `capagent capture` sizes it at load time.
#[map]
static PACKETS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Per-interface counters (key: ifindex; userspace inserts the captured interfaces).
#[map]
static CAPTURE_STATS: PerCpuHashMap<u32, IfCounters> = PerCpuHashMap::with_max_entries(256, 0);

#[repr(C)]
struct PacketScratch {
    ev: PacketEvent,
    data: [u8; PACKET_MAX + 1],
}

/// One slot per CPU (userspace sets the number of entries to the number of CPUs).
#[map]
static PACKET_SCRATCH: Array<PacketScratch> = Array::with_max_entries(1, 0);

#[inline(always)]
pub(crate) fn capture_conf() -> &'static CaptureConfig {
    let p: *const CaptureConfig = &CAPTURE_CONFIG;
    unsafe { &*core::ptr::read_volatile(&p) }
}

#[classifier]
pub fn capture_ingress(ctx: TcContext) -> i32 {
    capture(&ctx, packet_dir::INGRESS);
    TC_ACT_OK
}

#[classifier]
pub fn capture_egress(ctx: TcContext) -> i32 {
    capture(&ctx, packet_dir::EGRESS);
    TC_ACT_OK
}

#[inline(always)]
fn capture(ctx: &TcContext, dir: u8) {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    let ifindex = unsafe { (*skb).ifindex };
    let orig_len = unsafe { (*skb).len };
    let Some((owner_src, ino, owner)) = crate::owner::packet_owner(ctx, dir) else {
        return;
    };
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut _) };
    let head = PacketEvent {
        ts_ns: 0,
        cookie,
        ifindex,
        orig_len,
        cap_len: 0,
        dir,
        owner_src,
        _pad: [0; 2],
        ino,
        owner,
    };
    submit(head, |dst, n| unsafe {
        bpf_skb_load_bytes(skb as *const _, 0, dst.cast(), n)
    });
}

/// Copies the first `snaplen` bytes of a packet of `head.orig_len` bytes with `load(dst,
/// n)` (0 on success) and hands the record to userspace, counting it per interface.
#[inline(always)]
pub(crate) fn submit(mut head: PacketEvent, load: impl Fn(*mut u8, u32) -> i64) {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(s) = PACKET_SCRATCH.get_ptr_mut(cpu) else {
        return;
    };
    let mut n = head.orig_len;
    let snaplen = capture_conf().snaplen;
    if n > snaplen {
        n = snaplen;
    }
    if n > PACKET_MAX as u32 {
        n = PACKET_MAX as u32;
    }
    if n > 0 && load(unsafe { (*s).data.as_mut_ptr() }, n) != 0 {
        n = 0;
    }
    head.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    head.cap_len = n;
    let ifindex = head.ifindex;
    unsafe { (*s).ev = head };
    let size = core::mem::size_of::<PacketEvent>() + n as usize;
    let bytes = unsafe { core::slice::from_raw_parts(s as *const u8, size) };
    let ok = PACKETS
        .output::<[u8]>(bytes, wakeup_flags(size as u64))
        .is_ok();
    if let Some(c) = CAPTURE_STATS.get_ptr_mut(ifindex) {
        unsafe {
            if ok {
                (*c).packets += 1;
            } else {
                (*c).dropped += 1;
            }
        }
    }
}

/// Wakes the agent only when this record makes the waiting data cross `wakeup_bytes` (the
/// agent also polls every 10 ms).
#[inline(always)]
fn wakeup_flags(size: u64) -> u64 {
    let avail = PACKETS.query(BPF_RB_AVAIL_DATA.into());
    let at = capture_conf().wakeup_bytes as u64;
    if avail < at && avail + size >= at {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}
