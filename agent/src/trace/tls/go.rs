//! Go binaries: where `crypto/tls.(*Conn).Read` and `Write` are, and the RET instructions
//! of a function, for entry uprobes (Go moves goroutine stacks, so a uretprobe, which
//! rewrites the return address on the stack, crashes it: the return of `Read` is caught by
//! a uprobe on each of its RET instructions instead). Pure over the bytes of the ELF file.
//!
//! - Go or not, and which Go: the build information (`.go.buildinfo`, e.g. `go1.19.8`),
//!   read by the [`gobin`] crate. The register ABI (arguments and results in registers,
//!   the goroutine in R14) is Go 1.17 and later on x86-64; the eBPF programs read it, so
//!   older Go and other architectures are refused with the reason.
//! - The functions: through `.symtab` when the binary has one (exact sizes), else through
//!   `.gopclntab`, which the Go runtime needs and so survives `-ldflags=-s -w` and `strip`
//!   ([`gobin`] parses its Go 1.2 to 1.26 layouts; a function's size there is the distance
//!   to the next function, alignment padding included). Addresses are turned into file
//!   offsets (what uprobes take) through the executable `PT_LOAD` segment holding them.
//! - The RETs: the function's bytes decoded linearly from its entry by a real x86-64
//!   decoder ([`iced_x86`]); Go emits no data inside functions, only `INT3` padding after
//!   them, so a linear sweep sees every instruction. A byte sequence that does not decode
//!   is an error, never a guess: a uprobe in the middle of an instruction corrupts it.
use std::ops::Range;

use agent_common::tls_fn;
use iced_x86::{Decoder, DecoderOptions, Mnemonic};
use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, SegmentFlags, elf};

pub use object::Architecture;

/// `crypto/tls.(*Conn).Read`: `func (c *Conn) Read(b []byte) (int, error)`.
pub const CONN_READ: &str = "crypto/tls.(*Conn).Read";
/// `crypto/tls.(*Conn).Write`: `func (c *Conn) Write(b []byte) (int, error)`.
pub const CONN_WRITE: &str = "crypto/tls.(*Conn).Write";

/// Sections only the Go linker writes: an ELF without any of them is not looked at further
/// (so a large C library costs one section-table walk).
const GO_SECTIONS: &[&str] = &[
    ".go.buildinfo",
    ".gopclntab",
    ".note.go.buildid",
    ".data.rel.ro.gopclntab",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoError {
    #[error("not an ELF file: {0}")]
    NotElf(String),
    #[error("a Go binary without a readable Go version (.go.buildinfo)")]
    NoVersion,
    #[error("{version} on {arch}: only Go 1.17 and later on x86-64 (the register ABI) are hooked")]
    Unsupported { version: String, arch: String },
    #[error("{version}: the Go binary has no readable .gopclntab")]
    NoPclntab { version: String },
    #[error("{0} is not in the binary (it does not use crypto/tls)")]
    Missing(&'static str),
    #[error("{0}: its end is not in .gopclntab")]
    NoSize(&'static str),
    #[error("{name} at {address:#x} ({size} bytes) is not in an executable segment of the file")]
    NotInFile {
        name: &'static str,
        address: u64,
        size: u64,
    },
    #[error("{name}: no x86-64 instruction decodes at {address:#x}")]
    Undecodable { name: &'static str, address: u64 },
    #[error("{0} has no RET instruction")]
    NoReturn(&'static str),
}

/// What kind of Go binary this is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoInfo {
    /// The toolchain that built it, as Go writes it: `go1.19.8`, `go1.22rc1`,
    /// `devel go1.23-abcdef Mon ...`.
    pub version: String,
    /// Major and minor version (`(1, 19)`) when `version` names a release or a devel build
    /// of one.
    pub release: Option<(u32, u32)>,
    /// The ELF machine (`X86_64`, `Aarch64`...).
    pub arch: Architecture,
    /// Arguments and results in registers (receiver RAX, `b.ptr` RBX, `b.len` RCX; results
    /// RAX, RBX, RCX; goroutine R14): Go 1.17 and later on x86-64. The Go uprobes need it.
    pub register_abi: bool,
}

/// Where the symbols came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FuncSource {
    /// The ELF symbol table (exact size).
    Symtab,
    /// The Go runtime's function table (size up to the next function).
    Pclntab,
}

/// A function of the binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoFunc {
    pub name: &'static str,
    /// Its link-time virtual address (the entry).
    pub address: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The file offset of its entry (a uprobe's offset).
    pub file_offset: u64,
    pub source: FuncSource,
}

impl GoFunc {
    /// The file offsets of its bytes.
    fn file_range(&self) -> Option<Range<usize>> {
        let start = usize::try_from(self.file_offset).ok()?;
        Some(start..start.checked_add(usize::try_from(self.size).ok()?)?)
    }
}

/// What the Go uprobes of one binary attach to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsHooks {
    pub info: GoInfo,
    pub read: GoFunc,
    pub write: GoFunc,
    /// File offsets of every RET of `(*Conn).Read` (its result `n` is in RAX there).
    pub read_rets: Vec<u64>,
    /// File offsets of every RET of `(*Conn).Write`.
    pub write_rets: Vec<u64>,
}

/// Where a Go uprobe goes: the entry of a function, or one of its RET instructions (never a
/// uretprobe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeAt {
    /// Entry: receiver RAX (`*tls.Conn`), `b.ptr` RBX, `b.len` RCX, goroutine R14.
    Entry,
    /// A RET: the result `n` in RAX, the goroutine still in R14.
    Ret,
}

/// One uprobe of a Go binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoProbe {
    /// `tls_fn::GO_READ` or `tls_fn::GO_WRITE`: the bpf cookie.
    pub func: u16,
    pub at: ProbeAt,
    /// File offset in the binary.
    pub offset: u64,
}

impl TlsHooks {
    /// Every uprobe to attach: the entry and each RET of `Write`, then of `Read`.
    pub fn probes(&self) -> Vec<GoProbe> {
        let mut probes = Vec::new();
        for (func, f, rets) in [
            (tls_fn::GO_WRITE, &self.write, &self.write_rets),
            (tls_fn::GO_READ, &self.read, &self.read_rets),
        ] {
            probes.push(GoProbe {
                func,
                at: ProbeAt::Entry,
                offset: f.file_offset,
            });
            probes.extend(rets.iter().map(|&offset| GoProbe {
                func,
                at: ProbeAt::Ret,
                offset,
            }));
        }
        probes
    }
}

/// A parsed Go ELF file.
pub struct GoElf<'a> {
    data: &'a [u8],
    elf: object::File<'a>,
    go: Option<gobin::GoBinary<'a>>,
    pub info: GoInfo,
}

impl<'a> GoElf<'a> {
    /// `Ok(None)` when `data` is an ELF file the Go linker did not write.
    pub fn parse(data: &'a [u8]) -> Result<Option<GoElf<'a>>, GoError> {
        let elf = object::File::parse(data).map_err(|e| GoError::NotElf(e.to_string()))?;
        if elf.format() != object::BinaryFormat::Elf {
            return Err(GoError::NotElf(format!("{:?}", elf.format())));
        }
        if !elf
            .sections()
            .any(|s| s.name().is_ok_and(|n| GO_SECTIONS.contains(&n)))
        {
            return Ok(None);
        }
        let go = gobin::GoBinary::parse(data);
        let version = go
            .as_ref()
            .and_then(|g| g.go_version())
            .ok_or(GoError::NoVersion)?
            .to_string();
        let release = release(&version);
        let arch = elf.architecture();
        let register_abi = arch == Architecture::X86_64 && release.is_some_and(|r| r >= (1, 17));
        Ok(Some(GoElf {
            data,
            elf,
            go,
            info: GoInfo {
                version,
                release,
                arch,
                register_abi,
            },
        }))
    }

    /// The function `name`: from `.symtab` when the binary has one, else from `.gopclntab`.
    /// `Ok(None)` when it is in neither.
    pub fn function(&self, name: &'static str) -> Result<Option<GoFunc>, GoError> {
        match self.symtab_function(name)? {
            Some(f) => Ok(Some(f)),
            None => self.pclntab_function(name),
        }
    }

    /// The function through `.symtab` only.
    pub fn symtab_function(&self, name: &'static str) -> Result<Option<GoFunc>, GoError> {
        let Some(sym) = self
            .elf
            .symbols()
            .find(|s| s.kind() == object::SymbolKind::Text && s.name() == Ok(name))
            .filter(|s| s.size() > 0)
        else {
            return Ok(None);
        };
        self.located(name, sym.address(), sym.size(), FuncSource::Symtab)
            .map(Some)
    }

    /// The function through `.gopclntab` only.
    pub fn pclntab_function(&self, name: &'static str) -> Result<Option<GoFunc>, GoError> {
        let no_pclntab = || GoError::NoPclntab {
            version: self.info.version.clone(),
        };
        let go = self.go.as_ref().ok_or_else(no_pclntab)?;
        let pcl = go.pclntab().ok_or_else(no_pclntab)?;
        let mut entries = pcl.func_entries().peekable();
        while let Some((entry_off, func_off)) = entries.next() {
            let Some(func) = pcl.parse_func(func_off) else {
                continue;
            };
            let Ok(name_off) = u32::try_from(func.name_off) else {
                continue;
            };
            if pcl.func_name(name_off) != Some(name) {
                continue;
            }
            // The table is sorted by entry; the next entry ends this function. The last
            // function's end (a sentinel) is not exposed: the TLS functions are never last.
            let (next_off, _) = *entries.peek().ok_or(GoError::NoSize(name))?;
            let size = next_off
                .checked_sub(entry_off)
                .filter(|&n| n > 0)
                .ok_or(GoError::NoSize(name))?;
            let address = go.entry_va(&func).ok_or_else(no_pclntab)?;
            return self
                .located(name, address, u64::from(size), FuncSource::Pclntab)
                .map(Some);
        }
        Ok(None)
    }

    fn located(
        &self,
        name: &'static str,
        address: u64,
        size: u64,
        source: FuncSource,
    ) -> Result<GoFunc, GoError> {
        let file_offset = self.file_offset(address, size).ok_or(GoError::NotInFile {
            name,
            address,
            size,
        })?;
        Ok(GoFunc {
            name,
            address,
            size,
            file_offset,
            source,
        })
    }

    /// The file offset of `[address, address + size)` when an executable `PT_LOAD` segment
    /// of the file holds all of it.
    pub fn file_offset(&self, address: u64, size: u64) -> Option<u64> {
        let end = address.checked_add(size)?;
        self.elf.segments().find_map(|seg| {
            // (object lists the PT_LOAD segments only.)
            let SegmentFlags::Elf { p_flags } = seg.flags() else {
                return None;
            };
            if p_flags & elf::PF_X == 0 {
                return None;
            }
            let (offset, file_size) = seg.file_range();
            let start = seg.address();
            if address < start || end > start.checked_add(file_size)? {
                return None;
            }
            let off = offset.checked_add(address - start)?;
            // The bytes are in the file (a corrupt header may say otherwise).
            (off.checked_add(size)? <= self.data.len() as u64).then_some(off)
        })
    }

    /// The file offsets of the RET instructions of `f` (see [`ret_offsets`]).
    pub fn ret_offsets(&self, f: &GoFunc) -> Result<Vec<u64>, GoError> {
        let code = f
            .file_range()
            .and_then(|r| self.data.get(r))
            .ok_or(GoError::NotInFile {
                name: f.name,
                address: f.address,
                size: f.size,
            })?;
        let rets = ret_offsets(code, f.address).map_err(|address| GoError::Undecodable {
            name: f.name,
            address,
        })?;
        if rets.is_empty() {
            return Err(GoError::NoReturn(f.name));
        }
        Ok(rets
            .into_iter()
            .map(|at| f.file_offset.wrapping_add(at.wrapping_sub(f.address)))
            .collect())
    }

    /// Everything the Go uprobes attach to, or why this binary cannot be hooked.
    pub fn tls_hooks(&self) -> Result<TlsHooks, GoError> {
        // A program without crypto/tls first (Missing: not a TLS user, whatever its Go).
        let read = self
            .function(CONN_READ)?
            .ok_or(GoError::Missing(CONN_READ))?;
        let write = self
            .function(CONN_WRITE)?
            .ok_or(GoError::Missing(CONN_WRITE))?;
        if !self.info.register_abi {
            return Err(GoError::Unsupported {
                version: self.info.version.clone(),
                arch: format!("{:?}", self.info.arch),
            });
        }
        Ok(TlsHooks {
            info: self.info.clone(),
            read_rets: self.ret_offsets(&read)?,
            write_rets: self.ret_offsets(&write)?,
            read,
            write,
        })
    }
}

/// The Go uprobe targets of an ELF file: `Ok(None)` when it is not a Go binary, an error
/// saying why when it is one that cannot be hooked (too old, not x86-64...).
/// `Err(GoError::Missing(_))` is a Go program that does not use `crypto/tls` at all: no TLS
/// library to report.
pub fn tls_hooks(elf: &[u8]) -> Result<Option<TlsHooks>, GoError> {
    match GoElf::parse(elf)? {
        Some(go) => go.tls_hooks().map(Some),
        None => Ok(None),
    }
}

/// Major and minor version of a Go version string (`go1.19.8` → `(1, 19)`; also
/// `go1.22rc1`, `go1.21.0`, `devel go1.23-abcdef ...`).
pub fn release(version: &str) -> Option<(u32, u32)> {
    let at = version.find("go")?;
    let rest = &version[at + 2..];
    let number = |s: &str| -> Option<(u32, usize)> {
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        Some((s[..digits].parse().ok()?, digits))
    };
    let (major, n) = number(rest)?;
    let rest = rest[n..].strip_prefix('.')?;
    let (minor, _) = number(rest)?;
    Some((major, minor))
}

/// The addresses of the near RET instructions in the x86-64 `code` placed at `address`,
/// decoded linearly from its first byte. `Err(at)`: no instruction decodes at `at` (or the
/// last one runs past the end of `code`).
pub fn ret_offsets(code: &[u8], address: u64) -> Result<Vec<u64>, u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut rets = Vec::new();
    while decoder.can_decode() {
        let at = decoder.ip();
        let instr = decoder.decode();
        if instr.is_invalid() {
            return Err(at);
        }
        if instr.mnemonic() == Mnemonic::Ret {
            rets.push(at);
        }
    }
    Ok(rets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases() {
        assert_eq!(release("go1.19.8"), Some((1, 19)));
        assert_eq!(release("go1.17"), Some((1, 17)));
        assert_eq!(release("go1.22rc1"), Some((1, 22)));
        assert_eq!(release("go1.21.0"), Some((1, 21)));
        assert_eq!(release("devel go1.23-4f0aa3e Mon Jan 1"), Some((1, 23)));
        assert_eq!(release("go2"), None);
        assert_eq!(release("gox.1"), None);
        assert_eq!(release(""), None);
    }

    #[test]
    fn rets_of_a_go_epilogue() {
        // The end of a Go function: add rsp, 0x48; pop rbp; ret; then the morestack call
        // and the INT3 padding; a second path returning with `ret` after a `mov`.
        let code = [
            0x48, 0x83, 0xc4, 0x48, // add rsp, 0x48
            0x5d, // pop rbp
            0xc3, // ret            <- 5
            0x48, 0x89, 0xd8, // mov rax, rbx
            0xc3, // ret            <- 9
            0xe8, 0x00, 0x00, 0x00, 0x00, // call rel32
            0xeb, 0xee, // jmp short
            0xcc, 0xcc, 0xcc, // int3 padding
        ];
        assert_eq!(ret_offsets(&code, 0x1000), Ok(vec![0x1005, 0x1009]));
    }

    #[test]
    fn a_c3_inside_an_instruction_is_no_ret() {
        // mov eax, 0xc3c3c3c3; ret imm16 counts too (a near return); retf does not.
        let code = [0xb8, 0xc3, 0xc3, 0xc3, 0xc3, 0xc2, 0x08, 0x00, 0xcb];
        assert_eq!(ret_offsets(&code, 0x400000), Ok(vec![0x400005]));
    }

    #[test]
    fn undecodable_and_cut_code_are_errors() {
        // 0x06 (push es) does not exist in 64-bit mode.
        assert_eq!(ret_offsets(&[0xc3, 0x06, 0xc3], 0x10), Err(0x11));
        // A mov imm32 cut short.
        assert_eq!(ret_offsets(&[0xc3, 0xb8, 0x01], 0x10), Err(0x11));
        assert_eq!(ret_offsets(&[], 0x10), Ok(vec![]));
    }

    #[test]
    fn not_elf_and_not_go() {
        assert!(matches!(
            GoElf::parse(b"#!/bin/sh\n"),
            Err(GoError::NotElf(_))
        ));
        assert!(matches!(tls_hooks(&[]), Err(GoError::NotElf(_))));
        // A real ELF file that is not Go: the test binary itself.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(GoElf::parse(&me).unwrap().is_none());
        assert_eq!(tls_hooks(&me), Ok(None));
    }

    /// A minimal ELF file (fuzz/seeds/make_go_seeds.py) holding the real code of
    /// `(*Conn).Read` and `Write` from Debian's go1.19.8 at 0x400078 and 0x400478, a
    /// `.symtab` naming them, a `.go.buildinfo`, and no `.gopclntab`.
    const GO_MIN: &[u8] = include_bytes!("testdata/go_min.elf");

    #[test]
    fn symtab_functions_and_their_rets() {
        let go = GoElf::parse(GO_MIN).unwrap().expect("Go");
        assert_eq!(
            go.info,
            GoInfo {
                version: "go1.19.8".into(),
                release: Some((1, 19)),
                arch: Architecture::X86_64,
                register_abi: true,
            }
        );
        let read = go.function(CONN_READ).unwrap().unwrap();
        assert_eq!(
            read,
            GoFunc {
                name: CONN_READ,
                address: 0x400078,
                size: 1022,
                file_offset: 0x78,
                source: FuncSource::Symtab,
            }
        );
        // objdump -d of the go1.19.8 build: `ret` at Read+0x104, +0x131, +0x1b2, +0x2fd,
        // +0x330, +0x3ad and +0x3cb (before the morestack call).
        assert_eq!(
            go.ret_offsets(&read).unwrap(),
            [0x104, 0x131, 0x1b2, 0x2fd, 0x330, 0x3ad, 0x3cb].map(|r| 0x78 + r)
        );
        let hooks = go.tls_hooks().unwrap();
        assert_eq!(hooks.read, read);
        let probes = hooks.probes();
        assert_eq!(
            probes.len(),
            2 + hooks.write_rets.len() + hooks.read_rets.len()
        );
        assert_eq!(
            probes[0],
            GoProbe {
                func: tls_fn::GO_WRITE,
                at: ProbeAt::Entry,
                offset: 0x478
            }
        );
        let read_probes: Vec<_> = probes
            .iter()
            .filter(|p| p.func == tls_fn::GO_READ)
            .map(|p| (p.at, p.offset))
            .collect();
        assert_eq!(read_probes[0], (ProbeAt::Entry, 0x78));
        assert_eq!(
            read_probes[1..],
            hooks
                .read_rets
                .iter()
                .map(|&o| (ProbeAt::Ret, o))
                .collect::<Vec<_>>()
        );
        assert_eq!(hooks.write.file_offset, 0x478);
        assert_eq!(hooks.write.size, 1957);
        assert!(!hooks.write_rets.is_empty());
        assert!(hooks.write_rets.iter().all(|&r| GO_MIN[r as usize] == 0xc3));
        // No .gopclntab: the runtime's table is not there to fall back on.
        assert!(matches!(
            go.pclntab_function(CONN_READ),
            Err(GoError::NoPclntab { .. })
        ));
        // Not in .symtab: looked up in the (missing) .gopclntab.
        assert!(matches!(
            go.function("main.main"),
            Err(GoError::NoPclntab { .. })
        ));
    }

    #[test]
    fn cut_or_moved_code_is_refused() {
        // The file cut inside Read: its section headers are gone.
        assert!(matches!(
            tls_hooks(&GO_MIN[..0x100]),
            Err(GoError::NotElf(_))
        ));
        // Read's symbol moved out of every segment (its address is also the ELF entry, at
        // offset 24, and .text's address, in the section headers after the symbols).
        let mut moved = GO_MIN.to_vec();
        let sym = 25 + find(&moved[25..], &0x400078u64.to_le_bytes()).unwrap();
        moved[sym..sym + 8].copy_from_slice(&0x900000u64.to_le_bytes());
        assert_eq!(
            tls_hooks(&moved),
            Err(GoError::NotInFile {
                name: CONN_READ,
                address: 0x900000,
                size: 1022
            })
        );
        // A byte that decodes to nothing where Read's second instruction starts.
        let mut bad = GO_MIN.to_vec();
        bad[0x78 + 4] = 0x06;
        assert_eq!(
            tls_hooks(&bad),
            Err(GoError::Undecodable {
                name: CONN_READ,
                address: 0x40007c
            })
        );
        // An older Go: the stack ABI.
        let mut old = GO_MIN.to_vec();
        let v = find(&old, b"go1.19.8").unwrap();
        old[v..v + 8].copy_from_slice(b"go1.16.9");
        assert_eq!(
            tls_hooks(&old),
            Err(GoError::Unsupported {
                version: "go1.16.9".into(),
                arch: "X86_64".into()
            })
        );
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn names_match_the_record_ids() {
        assert_eq!(tls_fn::name(tls_fn::GO_READ), CONN_READ);
        assert_eq!(tls_fn::name(tls_fn::GO_WRITE), CONN_WRITE);
    }

    #[test]
    fn errors_say_why() {
        let e = GoError::Unsupported {
            version: "go1.16.15".into(),
            arch: "X86_64".into(),
        };
        assert_eq!(
            e.to_string(),
            "go1.16.15 on X86_64: only Go 1.17 and later on x86-64 (the register ABI) are hooked"
        );
        assert_eq!(
            GoError::Missing(CONN_READ).to_string(),
            "crypto/tls.(*Conn).Read is not in the binary (it does not use crypto/tls)"
        );
    }
}
