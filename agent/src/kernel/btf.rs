//! Kernel struct field offsets resolved from the running kernel's BTF.
//!
//! The eBPF programs walk kernel structs (`task_struct` → `files_struct` → `fdtable` →
//! `file` → `socket` → `sock`) with `bpf_probe_read_kernel` at byte offsets that are not
//! known at compile time. This module reads `/sys/kernel/btf/vmlinux` and resolves them
//! into an [`agent_common::KernelOffsets`], which userspace hands to the programs at load
//! time.
//!
//! [`member_offset`] is the generic lookup: it follows a path of member names from a
//! named struct, looks through anonymous struct/union members transparently (as C does),
//! and refuses members that cannot be read at a byte offset (bitfields, unaligned
//! members).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use agent_common::KernelOffsets;
use btf_rs::{Btf, Member, Struct, Type};

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Deepest chain of nested anonymous members (or of type modifiers) followed before
/// giving up: protects against malformed (cyclic) BTF.
const MAX_DEPTH: usize = 32;

/// Why kernel offsets could not be resolved. Every message is a single line.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("kernel BTF not found at {} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read kernel BTF at {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse kernel BTF at {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: btf_rs::Error,
    },
    #[error("BTF: struct {strct} not found")]
    NoStruct { strct: String },
    #[error("BTF: struct {strct} has no member {member}")]
    NoMember { strct: String, member: String },
    #[error("BTF: struct {strct} member {member} is a bitfield and has no byte offset")]
    Bitfield { strct: String, member: String },
    #[error("BTF: struct {strct} member {member} is not byte-aligned (bit offset {bit_offset})")]
    Unaligned {
        strct: String,
        member: String,
        bit_offset: u64,
    },
    #[error("BTF: struct {strct} member {member} is not a struct or union (cannot look inside it)")]
    NotAggregate { strct: String, member: String },
    #[error("BTF: struct {strct} member {member} offset does not fit in 32 bits")]
    Overflow { strct: String, member: String },
    #[error("BTF: the syscall argument registers of struct pt_regs are more than 64 bytes apart")]
    RegsSpread,
    #[error("BTF: the fields capagent reads from struct {strct} are more than {width} bytes apart")]
    Spread { strct: &'static str, width: u32 },
    #[error("BTF: malformed type information in struct {strct}: {source}")]
    Malformed {
        strct: String,
        source: btf_rs::Error,
    },
}

/// Resolves the offsets from the running kernel's BTF ([`VMLINUX_BTF`]), once per process:
/// parsing it takes tens of megabytes for a moment, and the daemon starts many sessions.
pub fn resolve_offsets() -> Result<KernelOffsets, BtfError> {
    // Held while parsing, so sessions starting together parse it once.
    static RESOLVED: std::sync::Mutex<Option<KernelOffsets>> = std::sync::Mutex::new(None);
    let mut cached = RESOLVED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(o) = *cached {
        return Ok(o);
    }
    let o = resolve_offsets_from(Path::new(VMLINUX_BTF))?;
    *cached = Some(o);
    Ok(o)
}

/// Resolves the offsets from a BTF file (a `vmlinux` BTF blob, as in `/sys/kernel/btf`).
pub fn resolve_offsets_from(path: &Path) -> Result<KernelOffsets, BtfError> {
    offsets_from_btf(&load_btf(path)?)
}

/// Reads and parses a standalone BTF file.
pub fn load_btf(path: &Path) -> Result<Btf, BtfError> {
    let bytes = fs::read(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => BtfError::NotFound {
            path: path.to_path_buf(),
        },
        _ => BtfError::Read {
            path: path.to_path_buf(),
            source,
        },
    })?;
    Btf::from_bytes(&bytes).map_err(|source| BtfError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Fields the programs read together in one window: (struct, (offset, size) of each field,
/// width of the window in bytes).
type Window<'a> = (&'static str, &'a [(u32, u32)], u32);

/// `struct pt_regs` members that carry the six syscall arguments (the syscall ABI).
#[cfg(target_arch = "x86_64")]
const SYSCALL_REGS: [&str; 6] = ["di", "si", "dx", "r10", "r8", "r9"];
/// `struct pt_regs` member that keeps the syscall number.
#[cfg(target_arch = "x86_64")]
const SYSCALL_NR_REG: &str = "orig_ax";

/// Resolves every field of [`KernelOffsets`] from parsed BTF.
pub fn offsets_from_btf(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    // The `sock_common` fields are reached through `struct sock`'s first member, so the
    // results are offsets from the start of `struct sock`.
    let skc = |field: &str| member_offset(btf, "sock", &["__sk_common", field]);
    Ok(KernelOffsets {
        task_files: member_offset(btf, "task_struct", &["files"])?,
        task_group_leader: member_offset(btf, "task_struct", &["group_leader"])?,
        task_comm: member_offset(btf, "task_struct", &["comm"])?,
        task_exit_code: member_offset(btf, "task_struct", &["exit_code"])?,
        sk_socket: member_offset(btf, "sock", &["sk_socket"])?,
        files_fdt: member_offset(btf, "files_struct", &["fdt"])?,
        fdt_max_fds: member_offset(btf, "fdtable", &["max_fds"])?,
        fdt_fd: member_offset(btf, "fdtable", &["fd"])?,
        file_inode: member_offset(btf, "file", &["f_inode"])?,
        file_private_data: member_offset(btf, "file", &["private_data"])?,
        inode_mode: member_offset(btf, "inode", &["i_mode"])?,
        inode_ino: member_offset(btf, "inode", &["i_ino"])?,
        socket_sk: member_offset(btf, "socket", &["sk"])?,
        sk_daddr: skc("skc_daddr")?,
        sk_rcv_saddr: skc("skc_rcv_saddr")?,
        sk_dport: skc("skc_dport")?,
        sk_num: skc("skc_num")?,
        sk_family: skc("skc_family")?,
        sk_state: skc("skc_state")?,
        sk_v6_daddr: skc("skc_v6_daddr")?,
        sk_v6_rcv_saddr: skc("skc_v6_rcv_saddr")?,
        // Plain u16 fields since Linux 5.6; bitfields before (rejected with an error).
        sk_type: member_offset(btf, "sock", &["sk_type"])?,
        sk_protocol: member_offset(btf, "sock", &["sk_protocol"])?,
        regs_args: [
            member_offset(btf, "pt_regs", &[SYSCALL_REGS[0]])?,
            member_offset(btf, "pt_regs", &[SYSCALL_REGS[1]])?,
            member_offset(btf, "pt_regs", &[SYSCALL_REGS[2]])?,
            member_offset(btf, "pt_regs", &[SYSCALL_REGS[3]])?,
            member_offset(btf, "pt_regs", &[SYSCALL_REGS[4]])?,
            member_offset(btf, "pt_regs", &[SYSCALL_REGS[5]])?,
        ],
        regs_nr: member_offset(btf, "pt_regs", &[SYSCALL_NR_REG])?,
        socket_inode: {
            let inode = member_offset(btf, "socket_alloc", &["vfs_inode"])?;
            let socket = member_offset(btf, "socket_alloc", &["socket"])?;
            inode
                .checked_sub(socket)
                .ok_or_else(|| BtfError::NoMember {
                    strct: "socket_alloc".into(),
                    member: "vfs_inode (after socket)".into(),
                })?
        },
        inode_sb: member_offset(btf, "inode", &["i_sb"])?,
        sb_dev: member_offset(btf, "super_block", &["s_dev"])?,
        task_mm: member_offset(btf, "task_struct", &["mm"])?,
        mm_exe_file: member_offset(btf, "mm_struct", &["exe_file"])?,
    })
    .and_then(|o| {
        // The programs read the argument registers as one 64-byte window.
        let lo = o.regs_args.iter().min().copied().unwrap_or(0);
        let hi = o.regs_args.iter().max().copied().unwrap_or(0);
        if hi - lo > 56 {
            return Err(BtfError::RegsSpread);
        }
        // Fields the programs read together in one window of N bytes: (struct, fields and
        // their sizes, N).
        let windows: [Window<'_>; 4] = [
            ("fdtable", &[(o.fdt_max_fds, 4), (o.fdt_fd, 8)], 16),
            ("file", &[(o.file_inode, 8), (o.file_private_data, 8)], 16),
            (
                "sock_common",
                &[
                    (o.sk_daddr, 4),
                    (o.sk_rcv_saddr, 4),
                    (o.sk_dport, 2),
                    (o.sk_num, 2),
                    (o.sk_family, 2),
                    (o.sk_state, 1),
                ],
                24,
            ),
            ("sock", &[(o.sk_type, 2), (o.sk_protocol, 2)], 8),
        ];
        for (strct, fields, width) in windows {
            let lo = fields.iter().map(|f| f.0).min().unwrap_or(0);
            if fields.iter().any(|&(off, size)| off + size - lo > width) {
                return Err(BtfError::Spread { strct, width });
            }
        }
        Ok(o)
    })
}

/// Byte offset of `path` (a chain of member names, e.g. `["__sk_common", "skc_dport"]`)
/// from the start of `struct struct_name`.
///
/// Each name is looked up among the members of the current struct/union and, like in C,
/// inside its anonymous struct/union members at any depth. Every element but the last must
/// be a struct or union (through typedefs and qualifiers). The last member must not be a
/// bitfield and must start on a byte boundary.
///
/// Bitfields are recognised from the member's bitfield size, which BTF records when the
/// enclosing struct uses the `kind_flag` encoding (as pahole does for every struct that
/// has bitfields); in the older encoding a bitfield that does not start on a byte boundary
/// is still refused as unaligned.
pub fn member_offset(btf: &Btf, struct_name: &str, path: &[&str]) -> Result<u32, BtfError> {
    let dotted = || path.join(".");
    let malformed = |source| BtfError::Malformed {
        strct: struct_name.to_string(),
        source,
    };
    if path.is_empty() {
        return Err(BtfError::NoMember {
            strct: struct_name.to_string(),
            member: "(empty path)".to_string(),
        });
    }

    let mut current = find_struct(btf, struct_name)?;
    let mut bits: u64 = 0;
    for (i, name) in path.iter().enumerate() {
        let (offset, member) = find_member(btf, &current, name, 0)
            .map_err(malformed)?
            .ok_or_else(|| BtfError::NoMember {
                strct: struct_name.to_string(),
                member: dotted(),
            })?;
        bits += offset;

        if i + 1 == path.len() {
            if member.bitfield_size().is_some_and(|size| size != 0) {
                return Err(BtfError::Bitfield {
                    strct: struct_name.to_string(),
                    member: dotted(),
                });
            }
        } else {
            current = match resolve_member_type(btf, &member).map_err(malformed)? {
                Type::Struct(s) | Type::Union(s) => s,
                _ => {
                    return Err(BtfError::NotAggregate {
                        strct: struct_name.to_string(),
                        member: path[..=i].join("."),
                    });
                }
            };
        }
    }

    if !bits.is_multiple_of(8) {
        return Err(BtfError::Unaligned {
            strct: struct_name.to_string(),
            member: dotted(),
            bit_offset: bits,
        });
    }
    u32::try_from(bits / 8).map_err(|_| BtfError::Overflow {
        strct: struct_name.to_string(),
        member: dotted(),
    })
}

/// The definition of `struct name` (or `union name`); forward declarations are skipped.
fn find_struct(btf: &Btf, name: &str) -> Result<Struct, BtfError> {
    let types = btf
        .resolve_types_by_name(name)
        .map_err(|source| BtfError::Malformed {
            strct: name.to_string(),
            source,
        })?;
    types
        .into_iter()
        .find_map(|t| match t {
            Type::Struct(s) | Type::Union(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| BtfError::NoStruct {
            strct: name.to_string(),
        })
}

/// Finds member `name` of `st`, directly or inside anonymous struct/union members.
/// Returns its bit offset from the start of `st` and the member itself.
fn find_member(
    btf: &Btf,
    st: &Struct,
    name: &str,
    depth: usize,
) -> btf_rs::Result<Option<(u64, Member)>> {
    if depth > MAX_DEPTH {
        return Ok(None);
    }
    for member in &st.members {
        let member_name = btf.resolve_name(member)?;
        if member_name == name {
            return Ok(Some((u64::from(member.bit_offset()), member.clone())));
        }
        if member_name.is_empty()
            && let Type::Struct(inner) | Type::Union(inner) = resolve_member_type(btf, member)?
            && let Some((offset, found)) = find_member(btf, &inner, name, depth + 1)?
        {
            return Ok(Some((u64::from(member.bit_offset()) + offset, found)));
        }
    }
    Ok(None)
}

/// The type of a member, looking through typedefs and qualifiers.
fn resolve_member_type(btf: &Btf, member: &Member) -> btf_rs::Result<Type> {
    let mut ty = btf.resolve_chained_type(member)?;
    for _ in 0..MAX_DEPTH {
        ty = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t)?,
            Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                btf.resolve_chained_type(t)?
            }
            Type::TypeTag(t) => btf.resolve_chained_type(t)?,
            _ => return Ok(ty),
        };
    }
    Ok(ty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use std::sync::OnceLock;

    /// The running kernel's BTF, parsed once for all tests; `None` (with a notice) when the
    /// machine has none.
    fn live_btf() -> Option<&'static Btf> {
        static BTF: OnceLock<Option<Btf>> = OnceLock::new();
        let btf = BTF.get_or_init(|| {
            if !Path::new(VMLINUX_BTF).exists() {
                return None;
            }
            Some(load_btf(Path::new(VMLINUX_BTF)).expect("parse live kernel BTF"))
        });
        if btf.is_none() {
            eprintln!("notice: {VMLINUX_BTF} absent, skipping live BTF test");
        }
        btf.as_ref()
    }

    fn live_offsets() -> Option<KernelOffsets> {
        live_btf().map(|btf| offsets_from_btf(btf).expect("resolve offsets from live BTF"))
    }

    fn struct_size(btf: &Btf, name: &str) -> u32 {
        find_struct(btf, name).unwrap().size() as u32
    }

    #[test]
    fn resolves_and_prints_live_offsets() {
        let Some(o) = live_offsets() else { return };
        println!("kernel offsets resolved from {VMLINUX_BTF}:");
        println!("{o:#?}");
        // The public entry point agrees with the parsed-once path.
        assert_eq!(resolve_offsets().unwrap(), o);
    }

    #[test]
    fn sock_common_has_its_fixed_layout() {
        let Some(o) = live_offsets() else { return };
        assert_eq!(o.sk_daddr, 0);
        assert_eq!(o.sk_rcv_saddr, 4);
        assert_eq!(o.sk_dport, 12);
        assert_eq!(o.sk_num, 14);
        assert_eq!(o.sk_family, 16);
        assert_eq!(o.sk_state, 18);
        // __sk_common is the first member of struct sock, so both views agree.
        let btf = live_btf().unwrap();
        assert_eq!(member_offset(btf, "sock", &["__sk_common"]).unwrap(), 0);
        assert_eq!(
            member_offset(btf, "sock_common", &["skc_dport"]).unwrap(),
            12
        );
        assert_eq!(
            member_offset(btf, "sock_common", &["skc_v6_daddr"]).unwrap(),
            o.sk_v6_daddr
        );
    }

    #[test]
    fn live_offsets_are_plausible() {
        let Some(o) = live_offsets() else { return };
        let btf = live_btf().unwrap();
        let ptr = std::mem::size_of::<usize>() as u32;

        // Members that are never first in their struct.
        for (name, off) in [
            ("task_files", o.task_files),
            ("task_group_leader", o.task_group_leader),
            ("task_comm", o.task_comm),
            ("files_fdt", o.files_fdt),
            ("fdt_fd", o.fdt_fd),
            ("file_inode", o.file_inode),
            ("file_private_data", o.file_private_data),
            ("inode_ino", o.inode_ino),
            ("socket_sk", o.socket_sk),
            ("sk_v6_daddr", o.sk_v6_daddr),
            ("sk_v6_rcv_saddr", o.sk_v6_rcv_saddr),
            ("sk_type", o.sk_type),
            ("sk_protocol", o.sk_protocol),
        ] {
            assert_ne!(off, 0, "{name} must not be at offset 0");
        }
        // Pointers are naturally aligned.
        for (name, off) in [
            ("task_files", o.task_files),
            ("task_group_leader", o.task_group_leader),
            ("files_fdt", o.files_fdt),
            ("fdt_fd", o.fdt_fd),
            ("file_inode", o.file_inode),
            ("file_private_data", o.file_private_data),
            ("socket_sk", o.socket_sk),
        ] {
            assert_eq!(off % ptr, 0, "pointer {name} at {off} is misaligned");
        }
        // The IPv6 addresses follow each other and are 8-byte aligned.
        assert_eq!(o.sk_v6_daddr % 8, 0);
        assert_eq!(o.sk_v6_rcv_saddr, o.sk_v6_daddr + 16);
        assert_eq!(o.sk_num, o.sk_dport + 2);
        // sk_type / sk_protocol: distinct u16 fields of struct sock, past sock_common.
        let sock_common = struct_size(btf, "sock_common");
        assert!(o.sk_type >= sock_common && o.sk_protocol >= sock_common);
        assert_ne!(o.sk_type, o.sk_protocol);
        assert_eq!(o.sk_type % 2, 0);
        assert_eq!(o.sk_protocol % 2, 0);
        // i_mode is the first member of struct inode; fdtable.max_fds is first too.
        assert_eq!(o.inode_mode, 0);
        assert_eq!(o.fdt_max_fds, 0);
        assert!(o.fdt_fd > o.fdt_max_fds);
        // Every offset lies inside its struct (with room for the field).
        for (strct, off, width) in [
            ("task_struct", o.task_files, ptr),
            ("task_struct", o.task_group_leader, ptr),
            (
                "task_struct",
                o.task_comm,
                agent_common::TASK_COMM_LEN as u32,
            ),
            ("files_struct", o.files_fdt, ptr),
            ("fdtable", o.fdt_max_fds, 4),
            ("fdtable", o.fdt_fd, ptr),
            ("file", o.file_inode, ptr),
            ("file", o.file_private_data, ptr),
            ("inode", o.inode_mode, 2),
            ("inode", o.inode_ino, ptr),
            ("inode", o.inode_sb, ptr),
            ("super_block", o.sb_dev, 4),
            ("task_struct", o.task_mm, ptr),
            ("mm_struct", o.mm_exe_file, ptr),
            ("socket", o.socket_sk, ptr),
            ("sock", o.sk_v6_rcv_saddr, 16),
            ("sock", o.sk_type, 2),
            ("sock", o.sk_protocol, 2),
        ] {
            let size = struct_size(btf, strct);
            assert!(
                off + width <= size,
                "{strct}: offset {off} outside size {size}"
            );
        }
    }

    #[test]
    fn missing_member_is_reported() {
        let Some(btf) = live_btf() else { return };
        let err = member_offset(btf, "sock", &["skc_no_such_member"]).unwrap_err();
        assert!(matches!(err, BtfError::NoMember { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "BTF: struct sock has no member skc_no_such_member"
        );
        // sock_common members are not found directly in struct sock: __sk_common is named.
        let err = member_offset(btf, "sock", &["skc_dport"]).unwrap_err();
        assert_eq!(err.to_string(), "BTF: struct sock has no member skc_dport");
        let err = member_offset(btf, "sock", &["__sk_common", "skc_nope"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "BTF: struct sock has no member __sk_common.skc_nope"
        );
    }

    #[test]
    fn missing_struct_is_reported() {
        let Some(btf) = live_btf() else { return };
        let err = member_offset(btf, "capagent_no_such_struct", &["x"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "BTF: struct capagent_no_such_struct not found"
        );
    }

    #[test]
    fn bitfields_and_non_aggregates_are_refused() {
        let Some(btf) = live_btf() else { return };
        // skc_reuse:4 / skc_reuseport:1 have been bitfields of sock_common for ages.
        for field in ["skc_reuse", "skc_reuseport"] {
            let err = member_offset(btf, "sock", &["__sk_common", field]).unwrap_err();
            assert!(matches!(err, BtfError::Bitfield { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!(
                    "BTF: struct sock member __sk_common.{field} is a bitfield and has no byte offset"
                )
            );
        }
        // comm is an array: there is nothing to look into.
        let err = member_offset(btf, "task_struct", &["comm", "x"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "BTF: struct task_struct member comm is not a struct or union (cannot look inside it)"
        );
    }

    #[test]
    fn missing_file_gives_the_config_hint() {
        let path = Path::new("/nonexistent/capagent/vmlinux");
        let err = resolve_offsets_from(path).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel BTF not found at /nonexistent/capagent/vmlinux (the kernel needs CONFIG_DEBUG_INFO_BTF=y)"
        );
    }

    #[test]
    fn garbage_file_is_a_parse_error() {
        let path = temp_path("garbage");
        fs::write(&path, b"this is not BTF at all").unwrap();
        let err = resolve_offsets_from(&path).unwrap_err();
        let _ = fs::remove_file(&path);
        assert!(matches!(err, BtfError::Parse { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.starts_with("cannot parse kernel BTF at "), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
    }

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("capagent-btf-test-{}-{tag}", std::process::id()))
    }

    /// Minimal little-endian BTF encoder, to exercise layouts the kernel does not have.
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    const KIND_INT: u32 = 1;
    const KIND_ARRAY: u32 = 3;
    const KIND_STRUCT: u32 = 4;
    const KIND_UNION: u32 = 5;
    const KIND_TYPEDEF: u32 = 8;
    const KIND_CONST: u32 = 10;

    impl BtfBuilder {
        fn new() -> Self {
            BtfBuilder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn put(&mut self, v: u32) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }

        fn header(
            &mut self,
            name: &str,
            kind: u32,
            vlen: u32,
            kind_flag: bool,
            size_type: u32,
        ) -> u32 {
            let name = self.string(name);
            self.put(name);
            self.put(vlen | (kind << 24) | (u32::from(kind_flag) << 31));
            self.put(size_type);
            self.next_id += 1;
            self.next_id - 1
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.header(name, KIND_INT, 0, false, bytes);
            self.put(bytes * 8);
            id
        }

        fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.header("", KIND_ARRAY, 0, false, 0);
            self.put(elem);
            self.put(index);
            self.put(n);
            id
        }

        fn modifier(&mut self, name: &str, kind: u32, target: u32) -> u32 {
            self.header(name, kind, 0, false, target)
        }

        /// members: (name, type id, bit offset, bitfield size).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let id = self.header(name, kind, members.len() as u32, kind_flag, size);
            for &(name, ty, bit_offset, bitfield) in members {
                let name = self.string(name);
                self.put(name);
                self.put(ty);
                self.put(if kind_flag {
                    (bitfield << 24) | bit_offset
                } else {
                    bit_offset
                });
            }
            id
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            for v in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// struct outer {                       // plain encoding (kind_flag = 0)
    ///     int a;                           // bit 0
    ///     union {                          // bit 32
    ///         struct { int deep; int deeper; };
    ///         long x;
    ///     };
    ///     const inner_t inner;             // bit 128, typedef of struct inner { short pad; short y; }
    ///     char c;                          // bit 196: unaligned on purpose
    ///     char name[4];                    // bit 224
    /// };
    /// struct flags { int f:3; int g; };    // kind_flag = 1
    fn synthetic_btf() -> Vec<u8> {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let short = b.int("short", 2);
        let char_ = b.int("char", 1);
        let anon_struct = b.composite(
            KIND_STRUCT,
            "",
            8,
            false,
            &[("deep", int, 0, 0), ("deeper", int, 32, 0)],
        );
        let anon_union = b.composite(
            KIND_UNION,
            "",
            8,
            false,
            &[("", anon_struct, 0, 0), ("x", long, 0, 0)],
        );
        let inner = b.composite(
            KIND_STRUCT,
            "inner",
            4,
            false,
            &[("pad", short, 0, 0), ("y", short, 16, 0)],
        );
        let inner_t = b.modifier("inner_t", KIND_TYPEDEF, inner);
        let const_inner = b.modifier("", KIND_CONST, inner_t);
        let name_arr = b.array(char_, int, 4);
        b.composite(
            KIND_STRUCT,
            "outer",
            32,
            false,
            &[
                ("a", int, 0, 0),
                ("", anon_union, 32, 0),
                ("inner", const_inner, 128, 0),
                ("c", char_, 196, 0),
                ("name", name_arr, 224, 0),
            ],
        );
        b.composite(
            KIND_STRUCT,
            "flags",
            8,
            true,
            &[("f", int, 0, 3), ("g", int, 32, 0)],
        );
        b.build()
    }

    #[test]
    fn synthetic_layouts() {
        let btf = Btf::from_bytes(&synthetic_btf()).unwrap();
        let off = |s: &str, path: &[&str]| member_offset(&btf, s, path);

        assert_eq!(off("outer", &["a"]).unwrap(), 0);
        // Found through two levels of anonymous members.
        assert_eq!(off("outer", &["deep"]).unwrap(), 4);
        assert_eq!(off("outer", &["deeper"]).unwrap(), 8);
        assert_eq!(off("outer", &["x"]).unwrap(), 4);
        // Descends through const + typedef into a named struct.
        assert_eq!(off("outer", &["inner", "y"]).unwrap(), 18);
        assert_eq!(off("outer", &["name"]).unwrap(), 28);
        assert_eq!(off("flags", &["g"]).unwrap(), 4);

        let err = off("outer", &["c"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "BTF: struct outer member c is not byte-aligned (bit offset 196)"
        );
        let err = off("flags", &["f"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "BTF: struct flags member f is a bitfield and has no byte offset"
        );
        let err = off("outer", &["a", "b"]).unwrap_err();
        assert!(matches!(err, BtfError::NotAggregate { .. }), "{err:?}");
        let err = off("outer", &["inner", "z"]).unwrap_err();
        assert_eq!(err.to_string(), "BTF: struct outer has no member inner.z");
        let err = off("outer", &[]).unwrap_err();
        assert!(matches!(err, BtfError::NoMember { .. }), "{err:?}");
    }

    #[test]
    fn btf_without_kernel_structs_names_the_first_missing_one() {
        let path = temp_path("synthetic");
        fs::write(&path, synthetic_btf()).unwrap();
        let err = resolve_offsets_from(&path).unwrap_err();
        let _ = fs::remove_file(&path);
        assert_eq!(err.to_string(), "BTF: struct task_struct not found");
    }

    /// Bit offset of `strct.member` in `bpftool btf dump ... format raw` output (first
    /// definition of the struct, as `find_struct` picks).
    fn bpftool_bit_offset(raw: &str, strct: &str, member: &str) -> Option<u64> {
        let head = format!("] STRUCT '{strct}' ");
        let want = format!("'{member}' ");
        let mut lines = raw
            .lines()
            .skip_while(|l| !(l.starts_with('[') && l.contains(&head)));
        lines.next()?;
        lines
            .take_while(|l| l.starts_with('\t'))
            .map(str::trim)
            .find(|l| l.starts_with(&want))?
            .split_whitespace()
            .find_map(|f| f.strip_prefix("bits_offset="))?
            .parse()
            .ok()
    }

    #[test]
    fn cross_check_with_bpftool() {
        let Some(o) = live_offsets() else { return };
        let out = match Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
        {
            Ok(out) => out,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                eprintln!("notice: bpftool not installed, skipping the bpftool cross-check");
                return;
            }
            Err(e) => panic!("running bpftool: {e}"),
        };
        assert!(
            out.status.success(),
            "bpftool failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let raw = String::from_utf8(out.stdout).unwrap();
        let bytes = |strct: &str, member: &str| {
            let bits = bpftool_bit_offset(&raw, strct, member)
                .unwrap_or_else(|| panic!("bpftool output lacks {strct}.{member}"));
            assert_eq!(bits % 8, 0);
            (bits / 8) as u32
        };
        assert_eq!(bytes("task_struct", "files"), o.task_files);
        assert_eq!(bytes("task_struct", "comm"), o.task_comm);
        assert_eq!(bytes("sock", "sk_protocol"), o.sk_protocol);
        assert_eq!(bytes("sock", "sk_type"), o.sk_type);
        assert_eq!(bytes("fdtable", "fd"), o.fdt_fd);
        assert_eq!(bytes("socket", "sk"), o.socket_sk);
        assert_eq!(bytes("sock", "sk_socket"), o.sk_socket);
        assert_eq!(
            bytes("socket_alloc", "vfs_inode") - bytes("socket_alloc", "socket"),
            o.socket_inode
        );
        assert_eq!(bytes("sock", "__sk_common"), 0);
        assert_eq!(bytes("sock_common", "skc_v6_daddr"), o.sk_v6_daddr);
        assert_eq!(bytes("sock_common", "skc_family"), o.sk_family);
        assert_eq!(bytes("inode", "i_sb"), o.inode_sb);
        assert_eq!(bytes("super_block", "s_dev"), o.sb_dev);
        assert_eq!(bytes("task_struct", "mm"), o.task_mm);
        // (mm_struct.exe_file sits in an anonymous struct, which this reading of bpftool's
        // output does not descend into.)
    }
}
