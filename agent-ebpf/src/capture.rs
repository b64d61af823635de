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
        __sk_buff, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, TC_ACT_UNSPEC,
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
fn capture_conf() -> &'static CaptureConfig {
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
    // The filter expression, on the whole packet, before anything is copied.
    let mut keep = u32::MAX;
    if capture_conf().filter != 0 {
        keep = crate::filter::run(&crate::filter::Skb(skb), ifindex, orig_len);
        if keep == 0 {
            if let Some(c) = CAPTURE_STATS.get_ptr_mut(ifindex) {
                unsafe { (*c).filtered += 1 };
            }
            return;
        }
    }
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(s) = PACKET_SCRATCH.get_ptr_mut(cpu) else {
        return;
    };
    let mut n = orig_len;
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
    if n > 0 {
        let r =
            unsafe { bpf_skb_load_bytes(skb as *const _, 0, (*s).data.as_mut_ptr() as *mut _, n) };
        if r != 0 {
            n = 0;
        }
    }
    unsafe {
        (*s).ev = PacketEvent {
            ts_ns: bpf_ktime_get_boot_ns(),
            cookie: bpf_get_socket_cookie(skb as *mut _),
            ifindex,
            orig_len,
            cap_len: n,
            dir,
            _pad: [0; 3],
        };
    }
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
