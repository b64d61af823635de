//! A classic BPF interpreter in eBPF: runs the filter expression of `capagent capture`
//! (compiled by libpcap in userspace, exactly as tcpdump compiles it) on a packet, in the
//! kernel, before the packet is copied anywhere.
//!
//! The program of each interface sits in `FILTER_INSNS` (one slot of
//! [`FILTER_MAX_INSNS`] instructions per link type; `FILTER_IFACES` maps an ifindex to its
//! slot and length). [`run`] executes one instruction per `bpf_loop` step, so the verifier
//! checks the step once whatever the program; the registers A and X, the scratch memory
//! M[16] and the program counter live in a per-CPU map (`FILTER_STATE`), whose values the
//! verifier does not track one by one. Jumps only go forward, so a program of n
//! instructions ends within n steps.
//!
//! Semantics (the same as `agent/src/capture/filter/cbpf.rs::run`, its oracle in the tests):
//! registers and M[] start at 0, loads are big-endian and a load past the end of the packet
//! returns 0 (reject), division by a zero X returns 0, shifts by 32 or more give 0, and the
//! returned value is how many bytes to keep.
//!
//! Packet bytes come through [`PacketBytes`], so an XDP program can reuse the interpreter
//! with `bpf_xdp_load_bytes`.

use agent_common::{FILTER_MAX_INSNS, FILTER_SLOTS, FilterInsn, FilterRef};
use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{bpf_loop, bpf_skb_load_bytes},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};

/// The programs, [`FILTER_MAX_INSNS`] entries per slot (filled by userspace at load time).
#[map]
static FILTER_INSNS: Array<FilterInsn> =
    Array::with_max_entries((FILTER_SLOTS * FILTER_MAX_INSNS) as u32, 0);

/// Which program filters which interface (key: ifindex).
#[map]
static FILTER_IFACES: HashMap<u32, FilterRef> = HashMap::with_max_entries(256, 0);

#[repr(C)]
struct FilterState {
    a: u32,
    x: u32,
    pc: u32,
    start: u32,
    len: u32,
    wirelen: u32,
    ret: u32,
    _pad: u32,
    m: [u32; 16],
}

/// The interpreter's registers, per CPU.
#[map]
static FILTER_STATE: PerCpuArray<FilterState> = PerCpuArray::with_max_entries(1, 0);

/// Where the interpreter reads packet bytes from.
pub trait PacketBytes {
    /// Copies `len` (1, 2 or 4) bytes at `off` to `to`; false when they are not all in the
    /// packet.
    fn load(&self, off: u32, to: *mut u8, len: u32) -> bool;
}

/// The packet of a TC program.
pub struct Skb(pub *mut __sk_buff);

impl PacketBytes for Skb {
    #[inline(always)]
    fn load(&self, off: u32, to: *mut u8, len: u32) -> bool {
        unsafe { bpf_skb_load_bytes(self.0 as *const _, off, to as *mut _, len) == 0 }
    }
}

/// Runs the filter of interface `ifindex` on `pkt`, whose length is `wirelen`: the number of
/// bytes to keep, 0 when the filter rejects the packet, `u32::MAX` when the interface has
/// no filter.
#[inline(always)]
pub fn run<P: PacketBytes>(pkt: &P, ifindex: u32, wirelen: u32) -> u32 {
    let Some(r) = (unsafe { FILTER_IFACES.get(&ifindex) }) else {
        return u32::MAX;
    };
    let (start, len) = (r.start, r.len);
    let Some(st) = FILTER_STATE.get_ptr_mut(0) else {
        return u32::MAX;
    };
    unsafe {
        *st = FilterState {
            a: 0,
            x: 0,
            pc: 0,
            start,
            len,
            wirelen,
            ret: 0,
            _pad: 0,
            m: [0; 16],
        };
    }
    let steps = if len > FILTER_MAX_INSNS as u32 {
        FILTER_MAX_INSNS as u32
    } else {
        len
    };
    unsafe {
        bpf_loop(
            steps,
            step::<P> as *mut core::ffi::c_void,
            pkt as *const P as *mut core::ffi::c_void,
            0,
        );
        (*st).ret
    }
}

/// Big-endian load of `size` bytes at `off`.
#[inline(always)]
fn load<P: PacketBytes>(pkt: &P, off: u64, size: u32) -> Option<u32> {
    if off > 0x7fff_ffff {
        return None;
    }
    let mut b = [0u8; 4];
    let ok = match size {
        1 => pkt.load(off as u32, b.as_mut_ptr(), 1),
        2 => pkt.load(off as u32, b.as_mut_ptr(), 2),
        _ => pkt.load(off as u32, b.as_mut_ptr(), 4),
    };
    if !ok {
        return None;
    }
    Some(match size {
        1 => b[0] as u32,
        2 => u16::from_be_bytes([b[0], b[1]]) as u32,
        _ => u32::from_be_bytes(b),
    })
}

/// Ends the program with `v`.
#[inline(always)]
fn done(st: &mut FilterState, v: u32) -> i64 {
    st.ret = v;
    1
}

/// One instruction. 1 = the program returned.
#[inline(never)]
extern "C" fn step<P: PacketBytes>(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    let Some(st) = FILTER_STATE.get_ptr_mut(0) else {
        return 1;
    };
    let st = unsafe { &mut *st };
    let pkt = unsafe { &*(ctx as *const P) };
    if st.pc >= st.len {
        return done(st, 0);
    }
    let Some(i) = FILTER_INSNS.get(st.start + st.pc) else {
        return done(st, 0);
    };
    let (code, k) = (i.code, i.k);
    let (jt, jf) = (i.jt as u32, i.jf as u32);
    st.pc += 1;
    let (a, x) = (st.a, st.x);
    let mem = (k & 15) as usize;
    match code {
        // ld [k], ld [x + k] (w, h, b)
        0x20 | 0x28 | 0x30 | 0x40 | 0x48 | 0x50 => {
            let size = match code & 0x18 {
                0x00 => 4,
                0x08 => 2,
                _ => 1,
            };
            let off = if code & 0xe0 == 0x20 {
                k as u64
            } else {
                x as u64 + k as u64
            };
            match load(pkt, off, size) {
                Some(v) => st.a = v,
                None => return done(st, 0),
            }
        }
        // ldx 4*([k]&0xf)
        0xb1 => match load(pkt, k as u64, 1) {
            Some(v) => st.x = (v & 0xf) << 2,
            None => return done(st, 0),
        },
        0x80 => st.a = st.wirelen,
        0x81 => st.x = st.wirelen,
        0x00 => st.a = k,
        0x01 => st.x = k,
        0x60 => st.a = st.m[mem],
        0x61 => st.x = st.m[mem],
        0x02 => st.m[mem] = a,
        0x03 => st.m[mem] = x,
        0x04 => st.a = a.wrapping_add(k),
        0x0c => st.a = a.wrapping_add(x),
        0x14 => st.a = a.wrapping_sub(k),
        0x1c => st.a = a.wrapping_sub(x),
        0x24 => st.a = a.wrapping_mul(k),
        0x2c => st.a = a.wrapping_mul(x),
        0x34 | 0x3c | 0x94 | 0x9c => {
            let d = if code & 0x08 == 0 { k } else { x };
            let r = if code & 0xf0 == 0x30 {
                a.checked_div(d)
            } else {
                a.checked_rem(d)
            };
            match r {
                Some(v) => st.a = v,
                None => return done(st, 0),
            }
        }
        0x44 => st.a = a | k,
        0x4c => st.a = a | x,
        0x54 => st.a = a & k,
        0x5c => st.a = a & x,
        0xa4 => st.a = a ^ k,
        0xac => st.a = a ^ x,
        0x64 | 0x6c => {
            let s = if code & 0x08 == 0 { k } else { x };
            st.a = if s < 32 { a << (s & 31) } else { 0 };
        }
        0x74 | 0x7c => {
            let s = if code & 0x08 == 0 { k } else { x };
            st.a = if s < 32 { a >> (s & 31) } else { 0 };
        }
        0x84 => st.a = a.wrapping_neg(),
        0x07 => st.x = a,
        0x87 => st.a = x,
        0x06 => return done(st, k),
        0x16 => return done(st, a),
        0x05 => st.pc = st.pc.wrapping_add(k),
        0x15 | 0x1d | 0x25 | 0x2d | 0x35 | 0x3d | 0x45 | 0x4d => {
            let v = if code & 0x08 == 0 { k } else { x };
            let taken = match code & 0xf0 {
                0x10 => a == v,
                0x20 => a > v,
                0x30 => a >= v,
                _ => a & v != 0,
            };
            st.pc += if taken { jt } else { jf };
        }
        _ => return done(st, 0),
    }
    0
}
