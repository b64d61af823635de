//! What every program needs: reading kernel and user memory, the load-time configuration
//! globals, ring buffer wakeups, the process's name.

use agent_common::{KernelOffsets, TASK_COMM_LEN};
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_task,
        generated::{bpf_probe_read_kernel, bpf_probe_read_user},
    },
    maps::RingBuf,
};

/// `clone` flag of a new thread (as opposed to a new process).
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// A `T` read from kernel address `addr` (zeroes if the read fails).
///
/// The destination is not zeroed first: the helper fills all of it either way (the bytes
/// read, or zeroes on failure), and the verifier accepts uninitialised stack for it. A
/// zeroing would cost a byte-wise `memset` call for anything larger than a few words (BPF
/// code does not inline it), on every read.
///
/// # Safety
/// `addr` is a kernel address computed from offsets userspace resolved from BTF;
/// `bpf_probe_read_kernel` checks it and fails instead of faulting. `T` must be valid for
/// any bytes (plain integers and arrays of them).
#[inline(always)]
pub unsafe fn kread<T: Copy>(addr: u64) -> T {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes exactly `size_of::<T>()` bytes into `v`, read or zero, so
    // `v` is initialised after it.
    unsafe {
        bpf_probe_read_kernel(
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        );
        v.assume_init()
    }
}

/// A `T` read from the current process's memory at `addr`, or `None` if the read fails
/// (page not resident, bad address). (Not zeroed first, as in [`kread`].)
///
/// # Safety
/// `bpf_probe_read_user` checks `addr` and fails instead of faulting. `T` must be valid for
/// any bytes (plain integers and arrays of them).
#[inline(always)]
pub unsafe fn uread<T: Copy>(addr: u64) -> Option<T> {
    let mut v = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper writes exactly `size_of::<T>()` bytes into `v` (read, or zeroes
    // on failure).
    let r = unsafe {
        bpf_probe_read_user(
            v.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        )
    };
    // SAFETY: see above.
    if r == 0 {
        Some(unsafe { v.assume_init() })
    } else {
        None
    }
}

/// A load-time configuration global, read through an opaque pointer so the compiler cannot
/// fold the link-time defaults into the code (userspace rewrites them before loading).
#[inline(always)]
pub fn global<T>(g: &'static T) -> &'static T {
    let p: *const T = g;
    // SAFETY: `p` points to a static, valid for the program's life.
    unsafe { &*core::ptr::read_volatile(&p) }
}

/// The flags of a ring buffer submit: wake the agent only when this record of `size` bytes
/// makes the data waiting in `ring` cross `wakeup_bytes` (the agent also polls every 10 ms),
/// so one wakeup per batch instead of one per record. `reserved`: the record is already
/// reserved, so the waiting data includes it.
#[inline(always)]
pub fn wakeup_flags(ring: &RingBuf, size: u64, reserved: bool, wakeup_bytes: u32) -> u64 {
    let mut avail = ring.query(BPF_RB_AVAIL_DATA.into());
    if reserved {
        avail = avail.saturating_sub(size);
    }
    let at = wakeup_bytes as u64;
    if avail < at && avail + size >= at {
        BPF_RB_FORCE_WAKEUP.into()
    } else {
        BPF_RB_NO_WAKEUP.into()
    }
}

/// The process's name: the thread group leader's comm (a thread may have renamed itself).
#[inline(always)]
pub fn process_comm(pid_tgid: u64, o: &KernelOffsets) -> [u8; TASK_COMM_LEN] {
    if pid_tgid >> 32 == pid_tgid & 0xffff_ffff {
        return bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    }
    // SAFETY: kernel reads at BTF offsets (see `kread`).
    unsafe {
        let task = bpf_get_current_task();
        let leader: u64 = kread(task + o.task_group_leader as u64);
        kread(leader + o.task_comm as u64)
    }
}

/// `Some(pointer)` to the value of `key` in a hash map (`HashMap` or `LruHashMap`), inserted
/// as `empty` first when absent (evaluated only then); `None` when it cannot be inserted. For
/// per-thread slots written in place: no element inserted and deleted, no struct copied, per
/// call.
macro_rules! get_or_insert {
    ($map:expr, $key:expr, $empty:expr) => {
        match $map.get_ptr_mut($key) {
            Some(slot) => Some(slot),
            None => {
                if $map.insert($key, &$empty, 0).is_err() {
                    None
                } else {
                    $map.get_ptr_mut($key)
                }
            }
        }
    };
}
pub(crate) use get_or_insert;
