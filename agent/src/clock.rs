//! The kernel stamps its records with CLOCK_BOOTTIME; records are written with the wall
//! clock. Shared by every kernel session (trace, capture), and the wall clock of every record
//! made in userspace (proxies, capture's pcapng, the daemon's file names).

fn now(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into; both clocks exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// Wall-clock time now, in nanoseconds since the Unix epoch (the records' time).
pub fn wall_ns() -> u64 {
    now(libc::CLOCK_REALTIME).max(0) as u64
}

/// CLOCK_BOOTTIME now, in nanoseconds (the kernel's timestamps).
pub fn boot_ns() -> u64 {
    now(libc::CLOCK_BOOTTIME) as u64
}

/// Wall-clock time minus CLOCK_BOOTTIME, in nanoseconds: added to a kernel timestamp, it
/// gives nanoseconds since the Unix epoch. Read it once at start (it changes only when the
/// wall clock is set).
pub fn boot_to_wall_offset_ns() -> i64 {
    let b1 = now(libc::CLOCK_BOOTTIME);
    let real = now(libc::CLOCK_REALTIME);
    let b2 = now(libc::CLOCK_BOOTTIME);
    let off = real - (b1 + b2) / 2;
    off.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_is_the_boot_time() {
        let off = boot_to_wall_offset_ns();
        // Booted after 2001 and before 2100.
        assert!(off > 1_000_000_000_000_000_000 && off < 4_102_444_800_000_000_000);
        assert!(boot_ns() > 0);
    }
}
