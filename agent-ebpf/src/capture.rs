//! Packet capture (`capagent capture`): TC classifier programs on the ingress and egress of
//! the captured interfaces. Each copies the first `snaplen` bytes of the packet (from the
//! Ethernet header on) with its timestamp, interface, direction, length and socket cookie
//! into the `PACKETS` ring buffer, and always lets the packet go on to the next program of
//! the hook (`TC_ACT_UNSPEC`, which is tcx's `TCX_NEXT`: `TC_ACT_OK` would end the chain, so
//! programs attached after this one, another capture included, would never see packets).
//!
//! With a filter expression (`CaptureConfig::filter`), the packet first goes through its
//! interface's classic BPF program ([`crate::filter`]): rejected packets are only counted.
//!
//! The copy goes through a per-CPU slot of `PACKET_SCRATCH` (a plain array indexed by CPU:
//! per-CPU arrays cannot hold values over 32 KiB) and the record is sized to the data.

use agent_common::{CaptureConfig, IfCounters, PACKET_MAX, PacketEvent, packet_dir};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        __sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
        TC_ACT_UNSPEC,
    },
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
    TC_ACT_UNSPEC
}

#[classifier]
pub fn capture_egress(ctx: TcContext) -> i32 {
    capture(&ctx, packet_dir::EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn capture(ctx: &TcContext, dir: u8) {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    let ifindex = unsafe { (*skb).ifindex };
    let orig_len = unsafe { (*skb).len };
    // The filter expression, on the whole packet, before anything else.
    let keep = filter(&crate::filter::Skb(skb), ifindex, orig_len);
    if keep == 0 {
        return;
    }
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
    submit(head, keep, |dst, n| unsafe {
        bpf_skb_load_bytes(skb as *const _, 0, dst.cast(), n)
    });
}

/// Runs the filter expression (when there is one) on a packet of `orig_len` bytes: the
/// bytes to keep (`u32::MAX`: all), 0 when it rejects the packet (counted).
#[inline(always)]
pub(crate) fn filter<P: crate::filter::PacketBytes>(pkt: &P, ifindex: u32, orig_len: u32) -> u32 {
    if capture_conf().filter == 0 {
        return u32::MAX;
    }
    let keep = crate::filter::run(pkt, ifindex, orig_len);
    if keep == 0
        && let Some(c) = CAPTURE_STATS.get_ptr_mut(ifindex)
    {
        unsafe { (*c).filtered += 1 };
    }
    keep
}

/// Copies the first `min(snaplen, keep)` bytes of a packet of `head.orig_len` bytes with
/// `load(dst, n)` (0 on success) and hands the record to userspace, counting it per
/// interface.
#[inline(always)]
pub(crate) fn submit(mut head: PacketEvent, keep: u32, load: impl Fn(*mut u8, u32) -> i64) {
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(s) = PACKET_SCRATCH.get_ptr_mut(cpu) else {
        return;
    };
    let mut n = head.orig_len;
    let snaplen = capture_conf().snaplen;
    if n > snaplen {
        n = snaplen;
    }
    if n > keep {
        n = keep;
    }
    if n > PACKET_MAX as u32 {
        n = PACKET_MAX as u32;
    }
    // No copy for a record that cannot fit: when userspace falls behind, dropping costs
    // little. (A record takes an 8-byte header and is 8-byte aligned in the ring.)
    let need = (core::mem::size_of::<PacketEvent>() as u64 + n as u64 + 8 + 7) & !7;
    let ring = PACKETS.query(BPF_RB_RING_SIZE.into());
    if PACKETS.query(BPF_RB_AVAIL_DATA.into()) + need > ring {
        if let Some(c) = CAPTURE_STATS.get_ptr_mut(head.ifindex) {
            unsafe { (*c).dropped += 1 };
        }
        return;
    }
    if n > 0 {
        // `len == n`, written so that the verifier sees 1..=65536 on the register it checks
        // (the compiler may test `n > 0` on a copy).
        let len = ((n - 1) & 0xffff) + 1;
        if load(unsafe { (*s).data.as_mut_ptr() }, len) != 0 {
            n = 0;
        }
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
