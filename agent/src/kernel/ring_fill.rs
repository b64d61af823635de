//! How full a BPF ring buffer is, read from its two position pages.
//!
//! A ring buffer map's fd maps, at offset 0, the consumer position (the page userspace
//! advances) and, one page further, the producer position (the page the kernel advances);
//! both are `unsigned long`s at the start of their page. The reader that drains the ring
//! (aya's `RingBuf`) has its own mappings; this one maps both pages read-only, next to it.

use std::{
    io,
    os::fd::AsRawFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

/// Read-only view of a ring buffer's positions.
pub struct RingFill {
    consumer: NonNull<libc::c_void>,
    producer: NonNull<libc::c_void>,
    page: usize,
    size: u64,
}

// SAFETY: the mappings are read-only shared memory, read with atomic loads.
unsafe impl Send for RingFill {}

fn map_page(fd: i32, offset: usize, page: usize) -> io::Result<NonNull<libc::c_void>> {
    // SAFETY: a new read-only shared mapping of one page of the map's fd.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

impl RingFill {
    /// Maps the position pages of the ring buffer map `map` of `size` data bytes.
    pub fn new(map: &impl AsRawFd, size: u64) -> io::Result<RingFill> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.as_raw_fd();
        let consumer = map_page(fd, 0, page)?;
        let producer = match map_page(fd, page, page) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above, one page.
                unsafe { libc::munmap(consumer.as_ptr(), page) };
                return Err(e);
            }
        };
        Ok(RingFill {
            consumer,
            producer,
            page,
            size,
        })
    }

    /// Bytes written by the kernel and not consumed yet (record headers included).
    pub fn used(&self) -> u64 {
        // SAFETY: both pages stay mapped while self lives; the positions are aligned u64s
        // the kernel and the consumer update atomically.
        let (c, p) = unsafe {
            (
                (*self.consumer.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire),
                (*self.producer.as_ptr().cast::<AtomicU64>()).load(Ordering::Acquire),
            )
        };
        p.wrapping_sub(c).min(self.size)
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: mapped in new(), one page each.
        unsafe {
            libc::munmap(self.consumer.as_ptr(), self.page);
            libc::munmap(self.producer.as_ptr(), self.page);
        }
    }
}
