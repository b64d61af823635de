//! The records of `capagent capture`: a packet as the kernel hands it over, the process it
//! is attributed to, and the kernel's counters of an interface. Outputs
//! ([`crate::output::PacketWriter`]) turn these into pcapng or text lines.

use agent_common::SockOwner;

/// One packet from the kernel; `data` borrows the ring buffer record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// CLOCK_BOOTTIME nanoseconds.
    pub ts_ns: u64,
    pub cookie: u64,
    pub ifindex: u32,
    pub orig_len: u32,
    pub dir: u8,
    /// Inode number of the local socket the kernel found for the packet, 0 when none.
    pub ino: u64,
    /// The owner of that socket as the kernel knows it. With a selection (`--pid`,
    /// `--comm`), the kernel has already checked a packet that has one.
    pub owner: Option<SockOwner>,
    pub data: &'a [u8],
}

/// The process owning a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

/// The kernel's counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfaceTotals {
    pub ifindex: u32,
    /// Packets written into the ring buffer.
    pub submitted: u64,
    /// Packets that passed the filter but did not fit in the ring buffer.
    pub dropped: u64,
    /// Packets the filter rejected.
    pub filtered: u64,
}
