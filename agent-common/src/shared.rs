//! What every capability's programs share.

pub const TASK_COMM_LEN: usize = 16;

/// Byte offsets of kernel struct fields, resolved from BTF by userspace at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub task_exit_code: u32,
    /// `struct sock.sk_socket` (capture: from a socket to its inode).
    pub sk_socket: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub inode_ino: u32,
    pub socket_sk: u32,
    pub sk_daddr: u32,
    pub sk_rcv_saddr: u32,
    pub sk_dport: u32,
    pub sk_num: u32,
    pub sk_family: u32,
    pub sk_state: u32,
    pub sk_v6_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_type: u32,
    pub sk_protocol: u32,
    /// `struct pt_regs` members holding the six syscall arguments, in order, and the
    /// syscall number (x86_64: di, si, dx, r10, r8, r9; orig_ax).
    pub regs_args: [u32; 6],
    pub regs_nr: u32,
    /// `struct socket_alloc.vfs_inode` minus `.socket`: from a `struct socket` to its inode
    /// (`SOCK_INODE()`).
    pub socket_inode: u32,
    /// `struct inode.i_sb` and `struct super_block.s_dev` (trace --tls: the device of a
    /// mapped file, as `/proc/PID/maps` shows it).
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// `struct task_struct.mm` and `struct mm_struct.exe_file` (trace --tls: the program a
    /// process runs).
    pub task_mm: u32,
    pub mm_exe_file: u32,
}

impl KernelOffsets {
    pub const ZERO: KernelOffsets = KernelOffsets {
        task_files: 0,
        task_group_leader: 0,
        task_comm: 0,
        task_exit_code: 0,
        sk_socket: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        file_inode: 0,
        file_private_data: 0,
        inode_mode: 0,
        inode_ino: 0,
        socket_sk: 0,
        sk_daddr: 0,
        sk_rcv_saddr: 0,
        sk_dport: 0,
        sk_num: 0,
        sk_family: 0,
        sk_state: 0,
        sk_v6_daddr: 0,
        sk_v6_rcv_saddr: 0,
        sk_type: 0,
        sk_protocol: 0,
        regs_args: [0; 6],
        regs_nr: 0,
        socket_inode: 0,
        inode_sb: 0,
        sb_dev: 0,
        task_mm: 0,
        mm_exe_file: 0,
    };
}

const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 35 * 4);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, repr(C), no padding (asserted above).
    unsafe impl aya::Pod for super::KernelOffsets {}
}
