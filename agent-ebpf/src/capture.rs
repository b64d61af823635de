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
//! The bytes are copied once, straight into a ring buffer reservation. A reservation's size
//! must be known to the verifier, so records come in size classes (the header and room for
//! 64, 128, ... 65536 bytes, the smallest that holds the packet): `cap_len` says how much
//! of the room the packet fills, and userspace reads only that.

use agent_common::{CaptureConfig, IfCounters, PACKET_MAX, PacketEvent, packet_dir};
use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_UNSPEC},
    helpers::{
        bpf_ktime_get_boot_ns,
        generated::{bpf_get_socket_cookie, bpf_skb_load_bytes},
    },
    macros::{classifier, map},
    maps::{PerCpuHashMap, RingBuf},
    programs::TcContext,
};

use crate::helpers::{global, wakeup_flags};

/// Filled by userspace at load time.
#[unsafe(no_mangle)]
static CAPTURE_CONFIG: CaptureConfig = CaptureConfig::new();

/// Packet records for userspace. Small here; `capagent capture` sizes it at load time.
#[map]
static PACKETS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Per-interface counters (key: ifindex; userspace inserts the captured interfaces).
#[map]
static CAPTURE_STATS: PerCpuHashMap<u32, IfCounters> = PerCpuHashMap::with_max_entries(256, 0);

/// A record of size class `N`: the header and room for `N` packet bytes.
#[repr(C)]
struct Record<const N: usize> {
    ev: PacketEvent,
    data: [u8; N],
}

/// The configuration (snaplen, selection, filter, kernel offsets).
#[inline(always)]
pub(crate) fn capture_conf() -> &'static CaptureConfig {
    global(&CAPTURE_CONFIG)
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
/// `load(dst, n)` (0 on success) into a ring buffer record and hands it to userspace,
/// counting it per interface (as dropped when the ring buffer has no room: then nothing is
/// copied).
#[inline(always)]
pub(crate) fn submit(head: PacketEvent, keep: u32, load: impl Fn(*mut u8, u32) -> i64) {
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
    let ifindex = head.ifindex;
    let ok = if n <= 64 {
        submit_in::<64>(head, n, &load)
    } else if n <= 128 {
        submit_in::<128>(head, n, &load)
    } else if n <= 256 {
        submit_in::<256>(head, n, &load)
    } else if n <= 512 {
        submit_in::<512>(head, n, &load)
    } else if n <= 1024 {
        submit_in::<1024>(head, n, &load)
    } else if n <= 2048 {
        submit_in::<2048>(head, n, &load)
    } else if n <= 4096 {
        submit_in::<4096>(head, n, &load)
    } else if n <= 8192 {
        submit_in::<8192>(head, n, &load)
    } else if n <= 16384 {
        submit_in::<16384>(head, n, &load)
    } else if n <= 32768 {
        submit_in::<32768>(head, n, &load)
    } else {
        submit_in::<65536>(head, n, &load)
    };
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

/// [`submit`] into a record of size class `N` (a power of two, `n <= N`); false when the
/// ring buffer has no room for it.
#[inline(always)]
fn submit_in<const N: usize>(
    mut head: PacketEvent,
    n: u32,
    load: &impl Fn(*mut u8, u32) -> i64,
) -> bool {
    let Some(mut rec) = PACKETS.reserve::<Record<N>>(0) else {
        return false;
    };
    let r = rec.as_mut_ptr();
    head.cap_len = 0;
    if n > 0 {
        // `len == n`, written so that the verifier sees 1..=N on the register it checks: the
        // volatile read hides the class test from the compiler, which would otherwise drop
        // the mask and pass `n`, bounded only on another register.
        let n = unsafe { core::ptr::read_volatile(&n) };
        let len = ((n - 1) & (N as u32 - 1)) + 1;
        if load(unsafe { (*r).data.as_mut_ptr() }, len) == 0 {
            head.cap_len = len;
        }
    }
    head.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    unsafe { (*r).ev = head };
    rec.submit(wakeup_flags(
        &PACKETS,
        core::mem::size_of::<Record<N>>() as u64,
        false,
        capture_conf().wakeup_bytes,
    ));
    true
}
