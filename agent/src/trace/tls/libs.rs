//! Which TLS libraries a process has mapped and where to hook them. Pure over bytes: the
//! text of `/proc/PID/maps`, and the bytes of a mapped file.
//!
//! - [`exec_mappings`]: the executable file mappings of a `/proc/PID/maps` text.
//! - [`examine`]: what a mapped file is for `--tls`: an OpenSSL-API library (OpenSSL 1.1/3,
//!   BoringSSL, AWS-LC, or an executable that links OpenSSL statically and keeps its
//!   symbols), GnuTLS, a Go binary (handed to `go.rs`), a TLS library that cannot be hooked
//!   (and why), or nothing of interest; with the file offsets of the functions to hook
//!   (uprobes are placed by file offset) and the version when the file says it.

use std::{
    ffi::OsString,
    os::unix::ffi::OsStringExt as _,
    path::{Path, PathBuf},
};

use agent_common::{tls_cookie, tls_fn};
use object::{
    Endianness, Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind,
    read::elf::{ElfFile64, ProgramHeader as _},
};

/// One executable file mapping of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// Offset of the mapping in the file.
    pub offset: u64,
    /// The file's device, as `/proc/PID/maps` prints it (major, minor).
    pub dev: (u32, u32),
    pub inode: u64,
    /// The path as the process sees it (inside its mount namespace).
    pub path: PathBuf,
    /// The file was deleted (or replaced) after it was mapped: only reachable through
    /// `/proc/PID/map_files/`.
    pub deleted: bool,
}

impl Mapping {
    /// The file's identity: the device as the kernel encodes it (`MKDEV`: major << 20 |
    /// minor, what `inode->i_sb->s_dev` holds) and the inode.
    pub fn file_key(&self) -> (u64, u64) {
        (kernel_dev(self.dev.0, self.dev.1), self.inode)
    }
}

/// The kernel's internal encoding of a device number (`MKDEV`), which eBPF programs read
/// from `super_block::s_dev` (not the `makedev` of `stat(2)`).
pub const fn kernel_dev(major: u32, minor: u32) -> u64 {
    ((major as u64) << 20) | (minor as u64 & 0xf_ffff)
}

/// The executable mappings of files in a `/proc/PID/maps` text, in its order, one per
/// mapping (a file mapped twice appears twice). Anonymous and special mappings (`[vdso]`)
/// and unparsable lines are left out.
pub fn exec_mappings(maps: &[u8]) -> Vec<Mapping> {
    maps.split(|&b| b == b'\n')
        .filter_map(parse_maps_line)
        .filter(|(perms, m)| perms.get(2) == Some(&b'x') && m.inode != 0)
        .map(|(_, m)| m)
        .collect()
}

/// One line of `/proc/PID/maps`: `start-end perms offset major:minor inode   path` (the
/// path may hold spaces; the kernel escapes a newline in it as `\012` and appends
/// ` (deleted)` to a deleted file). Returns the permissions and the mapping; None for a
/// line that is not a file mapping.
pub fn parse_maps_line(line: &[u8]) -> Option<(&[u8], Mapping)> {
    let mut rest = line;
    let mut field = || -> Option<&[u8]> {
        let start = rest.iter().position(|&b| b != b' ')?;
        let tail = &rest[start..];
        let len = tail.iter().position(|&b| b == b' ').unwrap_or(tail.len());
        rest = &tail[len..];
        Some(&tail[..len])
    };
    let range = field()?;
    let perms = field()?;
    let offset = hex(field()?)?;
    let dev = field()?;
    let inode: u64 = std::str::from_utf8(field()?).ok()?.parse().ok()?;
    let (start, end) = split_once(range, b'-')?;
    let (major, minor) = split_once(dev, b':')?;
    let path = rest.iter().position(|&b| b != b' ').map(|p| &rest[p..])?;
    if path.first() != Some(&b'/') {
        return None;
    }
    let (path, deleted) = match path.strip_suffix(b" (deleted)") {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some((
        perms,
        Mapping {
            start: hex(start)?,
            end: hex(end)?,
            offset,
            dev: (
                u32::try_from(hex(major)?).ok()?,
                u32::try_from(hex(minor)?).ok()?,
            ),
            inode,
            path: PathBuf::from(OsString::from_vec(unescape_newlines(path))),
            deleted,
        },
    ))
}

fn split_once(s: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = s.iter().position(|&b| b == sep)?;
    Some((&s[..i], &s[i + 1..]))
}

fn hex(s: &[u8]) -> Option<u64> {
    u64::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok()
}

/// The kernel prints a newline in a mapped file's path as `\012` (`seq_file_path`).
fn unescape_newlines(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i..].starts_with(b"\\012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.push(path[i]);
            i += 1;
        }
    }
    out
}

/// The eBPF program a hook runs (see `agent_common::trace::progs::TLS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prog {
    /// `tls_enter`: a plaintext function's entry (cookie: its `tls_fn` id).
    Enter,
    /// `tls_exit`: its return (uretprobe; cookie: its `tls_fn` id).
    Exit,
    /// `tls_set_fd`: the library is told the socket of a connection.
    SetFd,
    /// `tls_free`: the library frees a connection object.
    Free,
}

/// One uprobe to attach: program `prog` at file offset `offset` (the function `func`),
/// with bpf cookie `cookie`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub func: &'static str,
    pub offset: u64,
    pub prog: Prog,
    pub cookie: u64,
    /// The other functions whose calls the hook records under their own names (an inner
    /// function shared by `func` and these, see [`shared_hooks`]); usually none.
    pub also: Vec<&'static str>,
}

/// A TLS library that can be hooked: its family, version and hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsLib {
    /// `"openssl"` (the OpenSSL API, BoringSSL and AWS-LC included) or `"gnutls"`.
    pub lib: &'static str,
    pub version: Option<String>,
    pub hooks: Vec<Hook>,
}

impl TlsLib {
    /// How many plaintext functions (reads and writes) the hooks cover.
    pub fn functions(&self) -> usize {
        let mut f: Vec<&str> = self
            .hooks
            .iter()
            .filter(|h| h.prog == Prog::Enter)
            .flat_map(|h| std::iter::once(h.func).chain(h.also.iter().copied()))
            .collect();
        f.sort_unstable();
        f.dedup();
        f.len()
    }
}

/// What a mapped file is, for `--tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A library (or executable) with the OpenSSL or GnuTLS API to hook.
    Hook(TlsLib),
    /// A Go binary (`.go.buildinfo`, `.gopclntab` or the build-info magic): its
    /// `crypto/tls` functions are found by `go.rs`.
    Go,
    /// A TLS library that cannot be hooked: its family and why.
    Unhookable { lib: &'static str, why: String },
    /// Nothing `--tls` is interested in.
    NotTls,
}

/// The functions whose plaintext is recorded: (symbol, `tls_fn` id).
const OPENSSL_DATA: &[(&str, u16)] = &[
    ("SSL_write", tls_fn::SSL_WRITE),
    ("SSL_read", tls_fn::SSL_READ),
    ("SSL_write_ex", tls_fn::SSL_WRITE_EX),
    ("SSL_read_ex", tls_fn::SSL_READ_EX),
    ("SSL_write_ex2", tls_fn::SSL_WRITE_EX2),
];
const OPENSSL_SET_FD: &[&str] = &["SSL_set_fd", "SSL_set_rfd", "SSL_set_wfd"];
const OPENSSL_FREE: &[&str] = &["SSL_free"];
const GNUTLS_DATA: &[(&str, u16)] = &[
    ("gnutls_record_send", tls_fn::GNUTLS_RECORD_SEND),
    ("gnutls_record_recv", tls_fn::GNUTLS_RECORD_RECV),
];
const GNUTLS_SET_FD: &[&str] = &["gnutls_transport_set_int2"];
const GNUTLS_FREE: &[&str] = &["gnutls_deinit"];

/// What the file at `path` (its name decides nothing alone, but names the libraries that
/// should have had symbols) with contents `data` is for `--tls`.
pub fn examine(path: &Path, data: &[u8]) -> Verdict {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let named = NamedAs::of(&name, path);
    let elf = match ElfFile64::<Endianness>::parse(data) {
        Ok(elf) => elf,
        Err(e) => {
            return match named {
                NamedAs::Other => not_tls_unless_go(data),
                _ => Verdict::Unhookable {
                    lib: named.lib(),
                    why: format!("not a 64-bit ELF file ({e})"),
                },
            };
        }
    };
    if is_go(&elf, data) {
        return Verdict::Go;
    }
    let symbols = Symbols::of(&elf);
    if let Some(lib) = hookable(
        &elf,
        &symbols,
        "openssl",
        OPENSSL_DATA,
        OPENSSL_SET_FD,
        OPENSSL_FREE,
    ) {
        return Verdict::Hook(TlsLib {
            version: openssl_version(rodata(&elf).unwrap_or(data)),
            ..lib
        });
    }
    if let Some(lib) = hookable(
        &elf,
        &symbols,
        "gnutls",
        GNUTLS_DATA,
        GNUTLS_SET_FD,
        GNUTLS_FREE,
    ) {
        return Verdict::Hook(TlsLib {
            version: gnutls_version(&elf, data),
            ..lib
        });
    }
    match named {
        NamedAs::Nss => Verdict::Unhookable {
            lib: "nss",
            why: "Mozilla NSS: not supported (no OpenSSL API)".into(),
        },
        NamedAs::OpenSsl if NSS_MARKERS.iter().any(|m| symbols.has(m)) => Verdict::Unhookable {
            lib: "nss",
            why: "Mozilla NSS: not supported (no OpenSSL API)".into(),
        },
        NamedAs::OpenSsl => Verdict::Unhookable {
            lib: "openssl",
            why: "no SSL_read/SSL_write symbols (stripped)".into(),
        },
        NamedAs::GnuTls => Verdict::Unhookable {
            lib: "gnutls",
            why: "no gnutls_record_send/recv symbols (stripped)".into(),
        },
        NamedAs::Java => Verdict::Unhookable {
            lib: "java",
            why: "Java JSSE: TLS is done in Java code, not possible without injecting code".into(),
        },
        NamedAs::Other => {
            let rodata = rodata(&elf);
            // OpenSSL's (and BoringSSL's) libssl names its source files in its errors.
            if symbols.is_empty()
                && let Some(r) =
                    rodata.filter(|r| memchr::memmem::find(r, b"ssl/ssl_lib.c").is_some())
            {
                let version = openssl_version(r)
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default();
                return Verdict::Unhookable {
                    lib: "openssl",
                    why: format!(
                        "OpenSSL{version} linked statically in a stripped executable: no symbols"
                    ),
                };
            }
            if rodata.is_some_and(|r| memchr::memmem::find(r, b"rustls").is_some()) {
                let why = if symbols.is_empty() {
                    "rustls in a stripped binary: not possible without injecting code"
                } else {
                    "rustls: not supported (no stable functions to hook)"
                };
                Verdict::Unhookable {
                    lib: "rustls",
                    why: why.into(),
                }
            } else {
                Verdict::NotTls
            }
        }
    }
}

/// `NotTls`, unless the bytes carry Go's build-info magic (a Go binary the ELF parser
/// refused: still handed over, go.rs says what it can do).
fn not_tls_unless_go(data: &[u8]) -> Verdict {
    if memchr::memmem::find(data, GO_BUILDINFO_MAGIC).is_some() {
        Verdict::Go
    } else {
        Verdict::NotTls
    }
}

/// What the file's name says it should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NamedAs {
    OpenSsl,
    GnuTls,
    Nss,
    Java,
    Other,
}

impl NamedAs {
    fn of(name: &str, path: &Path) -> NamedAs {
        let so = |prefix: &str| name.starts_with(prefix) && name.contains(".so");
        if name.starts_with("libssl3.so") || so("libnss3") {
            NamedAs::Nss
        } else if so("libssl") || so("libboringssl") {
            NamedAs::OpenSsl
        } else if name.starts_with("libgnutls.so") {
            // Not its companions (libgnutls-dane, libgnutlsxx, libgnutls-openssl): they
            // call it.
            NamedAs::GnuTls
        } else if so("libnet.") && path.to_string_lossy().contains("jvm") {
            // The JDK's network library (one per Java process that uses sockets).
            NamedAs::Java
        } else {
            NamedAs::Other
        }
    }

    fn lib(self) -> &'static str {
        match self {
            NamedAs::OpenSsl => "openssl",
            NamedAs::GnuTls => "gnutls",
            NamedAs::Nss => "nss",
            NamedAs::Java => "java",
            NamedAs::Other => "?",
        }
    }
}

/// The start of Go's build information (`.go.buildinfo`), present in every Go binary
/// since Go 1.13, stripped or not.
pub const GO_BUILDINFO_MAGIC: &[u8] = b"\xff Go buildinf:";

/// A Go binary: a `.go.buildinfo` or `.gopclntab` section, or the build-info magic.
fn is_go(elf: &ElfFile64<Endianness>, data: &[u8]) -> bool {
    if elf.section_by_name(".go.buildinfo").is_some() || elf.section_by_name(".gopclntab").is_some()
    {
        return true;
    }
    // Without section headers: the magic sits at the start of a 16-byte aligned block of
    // the data segment.
    elf.sections().next().is_none() && memchr::memmem::find(data, GO_BUILDINFO_MAGIC).is_some()
}

/// The names [`examine`] looks up (everything else in a symbol table is skipped: a large
/// binary such as librustc_driver has a million symbols).
fn wanted(name: &str) -> bool {
    let data = |t: &[(&str, u16)]| t.iter().any(|(n, _)| *n == name);
    let named = |t: &[&str]| t.contains(&name);
    match name.as_bytes().first() {
        Some(b'S') => {
            data(OPENSSL_DATA)
                || named(OPENSSL_SET_FD)
                || named(OPENSSL_FREE)
                || name == NSS_MARKERS[1]
        }
        Some(b'g') => data(GNUTLS_DATA) || named(GNUTLS_SET_FD) || named(GNUTLS_FREE),
        Some(b'P') => name == NSS_MARKERS[0],
        _ => false,
    }
}

/// Functions only Mozilla NSS defines (its libssl3.so looks like OpenSSL's by name).
const NSS_MARKERS: [&str; 2] = ["PR_Read", "SSL_ImportFD"];

/// The defined function symbols of a file (dynamic and `.symtab`) that [`examine`] looks
/// for: name without version → virtual address; and whether it defines any function.
struct Symbols<'d> {
    found: Vec<(&'d str, u64)>,
    any: bool,
}

impl<'d> Symbols<'d> {
    fn of(elf: &ElfFile64<'d, Endianness>) -> Symbols<'d> {
        let mut found: Vec<(&'d str, u64)> = Vec::new();
        let mut any = false;
        for sym in elf.dynamic_symbols().chain(elf.symbols()) {
            if !sym.is_definition() || sym.kind() != SymbolKind::Text || sym.address() == 0 {
                continue;
            }
            any = true;
            let Ok(name) = sym.name() else { continue };
            // `SSL_write@@OPENSSL_3.0.0` in the .symtab of some builds.
            let name = name.split('@').next().unwrap_or(name);
            if wanted(name) && !found.iter().any(|(n, _)| *n == name) {
                found.push((name, sym.address()));
            }
        }
        Symbols { found, any }
    }

    fn get(&self, name: &str) -> Option<u64> {
        self.found.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn is_empty(&self) -> bool {
        !self.any
    }
}

/// `SSL_write_ex`/`SSL_read_ex` as Debian's OpenSSL 3 builds them (call-used registers
/// zeroed on return): `sub $8,%rsp; call INNER; xor %edx,%edx; test %eax,%eax;
/// cmovs %edx,%eax; add $8,%rsp;` zeroing `xor`s; `ret`: the function returns max(INNER's
/// int, 0).
const WRAPPER_HEAD: [u8; 5] = [0x48, 0x83, 0xec, 0x08, 0xe8];
const WRAPPER_TAIL: [u8; 11] = [
    0x31, 0xd2, 0x85, 0xc0, 0x0f, 0x48, 0xc2, 0x48, 0x83, 0xc4, 0x08,
];

/// The plaintext functions of the OpenSSL API that share an inner function in Debian's
/// OpenSSL 3 build: (`SSL_*`, its `_ex` variant, the `tls_fn` id of the inner function's
/// other callers: OpenSSL's SSL BIO).
const SHARED_INNER: &[(&str, &str, u16)] = &[
    ("SSL_write", "SSL_write_ex", tls_fn::BIO_WRITE),
    ("SSL_read", "SSL_read_ex", tls_fn::BIO_READ),
];

/// The entry and return hooks of the inner function that `plain` (`SSL_read`: see
/// [`plain_call`]) and `ex` (`SSL_read_ex`: a thin wrapper, see [`WRAPPER_HEAD`]) both call,
/// when their code is exactly that and the inner function begins with a `push`; and the
/// functions it covers (hooked nowhere else). Entry and return both on the inner function
/// (`tls_cookie::WRAPPED`) share one breakpoint: one trap per call, for every caller. x86
/// uprobes emulate `push` but single-step the callers' first instruction (`sub`), which in
/// a virtual machine costs a VM exit per call: about 13 µs on our build VM against about 1.5
/// (docs/benchmarks.md, `bench tls`). Each call is named by its caller, found from its
/// return address (`tls_cookie::CALLERS`); the inner function's other caller, OpenSSL's SSL
/// BIO (`BIO_read`/`BIO_write` on `BIO_f_ssl`), is named `other` (`BIO_READ`/`BIO_WRITE`).
/// None when neither caller has its expected code (both are then hooked at their entry).
fn shared_hooks(
    elf: &ElfFile64<Endianness>,
    symbols: &Symbols,
    (plain, ex, other): (&'static str, &'static str, u16),
) -> Option<([Hook; 2], Vec<&'static str>)> {
    let data = elf.data();
    // (function, the inner function's address, return address − inner function's address)
    let call = |func: &'static str, shape: fn(&[u8]) -> Option<(i64, i64)>| {
        let addr = symbols.get(func)?;
        let code = data.get(usize::try_from(file_offset(elf, addr)?).ok()?..)?;
        let (ret, target) = shape(code)?;
        let delta = u16::try_from(ret - target).ok().filter(|&d| d != 0)?;
        Some((func, addr.checked_add_signed(target)?, delta))
    };
    let plain = call(plain, plain_call);
    let ex = call(ex, |code| wrapper_target(code).map(|t| (9, t)));
    let inner = match (plain, ex) {
        (Some(p), Some(e)) if p.1 != e.1 => e.1,
        (Some((_, a, _)), _) | (None, Some((_, a, _))) => a,
        (None, None) => return None,
    };
    // A caller whose call goes elsewhere is hooked at its entry.
    let plain = plain.filter(|p| p.1 == inner);
    let inner_offset = file_offset(elf, inner)?;
    if !starts_with_push(data.get(usize::try_from(inner_offset).ok()?..)?) {
        return None;
    }
    let delta = |c: Option<(&str, u64, u16)>| c.map_or(0, |c| c.2);
    let cookie = tls_cookie::shared(other, delta(plain), delta(ex));
    let covers: Vec<&'static str> = plain.iter().chain(&ex).map(|c| c.0).collect();
    let hook = |prog| Hook {
        func: covers[0],
        offset: inner_offset,
        prog,
        cookie,
        also: covers[1..].to_vec(),
    };
    Some(([hook(Prog::Enter), hook(Prog::Exit)], covers))
}

/// `SSL_read`/`SSL_write` as Debian's OpenSSL 3 builds them: `if (num < 0) fail; size_t n;
/// ret = INNER(s, buf, (size_t)num, &n); if (ret > 0) ret = (int)n; return ret;` with a
/// stack protector. The exact bytes up to `mov (%rsp),%eax`, except the `call`'s target and
/// the `js`'s (which must jump past this code).
const PLAIN_CALLER: [u8; 42] = [
    0x48, 0x83, 0xec, 0x18, // sub $0x18,%rsp
    0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, // mov %fs:0x28,%rax
    0x48, 0x89, 0x44, 0x24, 0x08, // mov %rax,0x8(%rsp)
    0x31, 0xc0, // xor %eax,%eax
    0x85, 0xd2, // test %edx,%edx
    0x78, 0x00, // js (the failure)
    0x48, 0x89, 0xe1, // mov %rsp,%rcx
    0x48, 0x63, 0xd2, // movslq %edx,%rdx
    0xe8, 0x00, 0x00, 0x00, 0x00, // call INNER
    0x85, 0xc0, // test %eax,%eax
    0x7e, 0x03, // jle +3
    0x8b, 0x04, 0x24, // mov (%rsp),%eax
];

/// The code of an `SSL_read`-like caller (see [`PLAIN_CALLER`]): its return address and
/// where its `call` goes, relative to its first byte.
fn plain_call(code: &[u8]) -> Option<(i64, i64)> {
    let code = code.get(..PLAIN_CALLER.len())?;
    let same = |r: std::ops::Range<usize>| code[r.clone()] == PLAIN_CALLER[r];
    if !(same(0..23) && same(24..31) && same(35..42)) {
        return None;
    }
    // The `js` leaves this code.
    if 24 + usize::from(code[23]) < PLAIN_CALLER.len() || code[23] >= 0x80 {
        return None;
    }
    let rel = i32::from_le_bytes(code[31..35].try_into().ok()?);
    Some((35, 35 + i64::from(rel)))
}

/// The code of a thin wrapper (see [`WRAPPER_HEAD`]): where its `call` goes, relative to
/// the wrapper's first byte.
fn wrapper_target(code: &[u8]) -> Option<i64> {
    if code.get(..5)? != WRAPPER_HEAD || code.get(9..20)? != WRAPPER_TAIL {
        return None;
    }
    // Zeroing `xor`s of edx, ecx, esi, edi, then `ret`.
    let mut at = 20;
    while let [0x31, 0xd2 | 0xc9 | 0xf6 | 0xff, ..] = code.get(at..)? {
        at += 2;
        if at > 28 {
            return None;
        }
    }
    if *code.get(at)? != 0xc3 {
        return None;
    }
    let rel = i32::from_le_bytes(code[5..9].try_into().ok()?);
    Some(9 + i64::from(rel))
}

/// The code of a function that only moves arguments between registers and jumps to
/// another (a tail call; OpenSSL 3.3+'s `SSL_write_ex` as `gcc -O2` builds it: `mov
/// %rcx,%r8; xor %ecx,%ecx; jmp SSL_write_ex2`, maybe after an `endbr64`): where the `jmp`
/// goes, relative to the function's first byte.
fn tail_jump_target(code: &[u8]) -> Option<i64> {
    /// Register-only moves and zeroings of argument registers (rdx, rcx, r8, r9).
    const SETUP: &[&[u8]] = &[
        &[0x49, 0x89, 0xc8], // mov %rcx,%r8
        &[0x49, 0x89, 0xc9], // mov %rcx,%r9
        &[0x4d, 0x89, 0xc1], // mov %r8,%r9
        &[0x31, 0xc9],       // xor %ecx,%ecx
        &[0x31, 0xd2],       // xor %edx,%edx
        &[0x45, 0x31, 0xc0], // xor %r8d,%r8d
        &[0x45, 0x31, 0xc9], // xor %r9d,%r9d
    ];
    let mut at = if code.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) {
        4
    } else {
        0
    };
    for _ in 0..4 {
        match SETUP
            .iter()
            .find(|i| code.get(at..).is_some_and(|c| c.starts_with(i)))
        {
            Some(i) => at += i.len(),
            None => break,
        }
    }
    match code.get(at..)? {
        [0xe9, rel @ ..] => {
            let rel = i32::from_le_bytes(rel.get(..4)?.try_into().ok()?);
            Some(at as i64 + 5 + i64::from(rel))
        }
        [0xeb, rel, ..] => Some(at as i64 + 2 + i64::from(*rel as i8)),
        _ => None,
    }
}

/// The plaintext functions of `data_fns` that another of them enters by a tail jump (see
/// [`tail_jump_target`]): hooked with `tls_cookie::TAIL_CALLED`, so that such a call is
/// recorded once, under the name the application called.
fn tail_called(
    elf: &ElfFile64<Endianness>,
    symbols: &Symbols,
    data_fns: &[(&'static str, u16)],
) -> Vec<&'static str> {
    let data = elf.data();
    let target = |func: &str| {
        let addr = symbols.get(func)?;
        let code = data.get(usize::try_from(file_offset(elf, addr)?).ok()?..)?;
        addr.checked_add_signed(tail_jump_target(code)?)
    };
    let jumped: Vec<u64> = data_fns.iter().filter_map(|(f, _)| target(f)).collect();
    data_fns
        .iter()
        .map(|(f, _)| *f)
        .filter(|f| symbols.get(f).is_some_and(|a| jumped.contains(&a)))
        .collect()
}

/// `push %reg` (`0x50`-`0x57`, with a REX.B prefix `0x41` for r8-r15).
fn starts_with_push(code: &[u8]) -> bool {
    matches!(code, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..])
}

/// The hooks of one API family, when the file defines at least one of its plaintext
/// functions.
fn hookable(
    elf: &ElfFile64<Endianness>,
    symbols: &Symbols,
    lib: &'static str,
    data_fns: &[(&'static str, u16)],
    set_fd: &[&'static str],
    free: &[&'static str],
) -> Option<TlsLib> {
    let at = |hooks: &mut Vec<Hook>, func: &'static str, progs: &[(Prog, u64)]| {
        let offset = symbols.get(func).and_then(|a| file_offset(elf, a));
        if let Some(offset) = offset {
            for &(prog, cookie) in progs {
                hooks.push(Hook {
                    func,
                    offset,
                    prog,
                    cookie,
                    also: Vec::new(),
                });
            }
        }
    };
    let mut hooks = Vec::new();
    let mut covered = Vec::new();
    let tail = tail_called(elf, symbols, data_fns);
    for &(func, id) in data_fns {
        if covered.contains(&func) {
            continue;
        }
        if let Some(&pair) = SHARED_INNER
            .iter()
            .find(|(plain, ex, _)| *plain == func || *ex == func)
            && let Some((shared, covers)) = shared_hooks(elf, symbols, pair)
        {
            hooks.extend(shared);
            covered.extend(covers);
            if covered.contains(&func) {
                continue;
            }
        }
        let enter = if tail.contains(&func) {
            u64::from(id) | tls_cookie::TAIL_CALLED
        } else {
            id.into()
        };
        at(
            &mut hooks,
            func,
            &[(Prog::Enter, enter), (Prog::Exit, id.into())],
        );
    }
    if hooks.is_empty() {
        return None;
    }
    let fd_cookie = if lib == "gnutls" {
        tls_cookie::GNUTLS_SET_INT2
    } else {
        tls_cookie::OPENSSL_SET_FD
    };
    for &func in set_fd {
        at(&mut hooks, func, &[(Prog::SetFd, fd_cookie)]);
    }
    for &func in free {
        at(&mut hooks, func, &[(Prog::Free, tls_cookie::FREE)]);
    }
    Some(TlsLib {
        lib,
        version: None,
        hooks,
    })
}

/// The file offset of virtual address `addr`: through the `PT_LOAD` segment that holds it
/// in the file (what uprobes are placed by). None when no segment maps it from the file, or
/// the segment claims bytes past the file's end.
pub fn file_offset(elf: &ElfFile64<Endianness>, addr: u64) -> Option<u64> {
    let e = elf.endian();
    elf.elf_program_headers()
        .iter()
        .filter(|ph| ph.p_type(e) == object::elf::PT_LOAD)
        .find(|ph| {
            let vaddr = ph.p_vaddr(e);
            addr >= vaddr && addr - vaddr < ph.p_filesz(e)
        })
        .and_then(|ph| (addr - ph.p_vaddr(e)).checked_add(ph.p_offset(e)))
        .filter(|&off| off < elf.data().len() as u64)
}

/// The bytes of `.rodata`, where version strings live.
fn rodata<'d>(elf: &ElfFile64<'d, Endianness>) -> Option<&'d [u8]> {
    elf.section_by_name(".rodata")?.data().ok()
}

/// The version in an OpenSSL-API library's strings: `OpenSSL 3.0.19 27 Jan 2026` →
/// `3.0.19`, `OpenSSL 1.1.1w` → `1.1.1w`; `BoringSSL` or `AWS-LC x.y.z` for those. (libssl
/// has no version string of its own in OpenSSL 3: its libcrypto has.)
pub fn openssl_version(data: &[u8]) -> Option<String> {
    if let Some(v) = version_after(data, b"OpenSSL ") {
        return Some(v);
    }
    if let Some(v) = version_after(data, b"AWS-LC ") {
        return Some(format!("AWS-LC {v}"));
    }
    if let Some(v) = version_after(data, b"LibreSSL ") {
        return Some(format!("LibreSSL {v}"));
    }
    memchr::memmem::find(data, b"BoringSSL").map(|_| "BoringSSL".to_string())
}

/// The version of a GnuTLS library: its `GnuTLS 3.7.9` string, else the newest
/// `GNUTLS_3_x_y` symbol version it defines (as `≥3.x.y`).
fn gnutls_version(elf: &ElfFile64<Endianness>, data: &[u8]) -> Option<String> {
    if let Some(v) = version_after(rodata(elf).unwrap_or(data), b"GnuTLS ") {
        return Some(v);
    }
    let dynstr = elf.section_by_name(".dynstr")?.data().ok()?;
    gnutls_symbol_version(dynstr).map(|v| format!(">={v}"))
}

/// The newest `GNUTLS_3_x_y` name in a string table, as `3.x.y`.
pub fn gnutls_symbol_version(strings: &[u8]) -> Option<String> {
    strings
        .split(|&b| b == 0)
        .filter_map(|s| s.strip_prefix(b"GNUTLS_"))
        .filter_map(|v| {
            let v = std::str::from_utf8(v).ok()?;
            let parts: Vec<u32> = v
                .split('_')
                .map(|p| p.parse().ok())
                .collect::<Option<_>>()?;
            Some(parts)
        })
        .max()
        .map(|parts| {
            parts
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(".")
        })
}

/// The version after `prefix` in `data` (`PREFIX<digit>[.<alnum>-]*`): the first with a
/// patch level (`3.0.19`, two dots) when there is one (`OpenSSL 3.0 ...` also appears in
/// texts), else the first with a dot.
fn version_after(data: &[u8], prefix: &[u8]) -> Option<String> {
    let mut first = None;
    for at in memchr::memmem::find_iter(data, prefix).take(1000) {
        let tail = &data[at + prefix.len()..];
        if !tail.first().is_some_and(u8::is_ascii_digit) {
            continue;
        }
        let len = tail
            .iter()
            .take(32)
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'.' || b == b'-'))
            .unwrap_or(tail.len().min(32));
        let v = &tail[..len];
        match v.iter().filter(|&&b| b == b'.').count() {
            0 => {}
            1 => {
                first.get_or_insert(v);
            }
            _ => return Some(String::from_utf8_lossy(v).into_owned()),
        }
    }
    first.map(|v| String::from_utf8_lossy(v).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines_of_every_kind() {
        let maps = b"\
55d0c0a00000-55d0c0a1b000 r--p 00000000 08:01 131090                     /usr/bin/curl
55d0c0a1b000-55d0c0a4c000 r-xp 0001b000 08:01 131090                     /usr/bin/curl
7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0 
7f1c2a400000-7f1c2a47d000 r-xp 0001f000 fd:02 2621570                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f1c2a500000-7f1c2a510000 r-xp 00001000 103:05 42                        /tmp/my dir/lib ssl.so (deleted)
7f1c2a600000-7f1c2a610000 r-xp 00001000 08:01 43                         /tmp/new\\012line.so
7ffd6b5f2000-7ffd6b5f4000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
garbage line
";
        let m = exec_mappings(maps);
        assert_eq!(m.len(), 4, "{m:#?}");
        assert_eq!(
            m[0],
            Mapping {
                start: 0x55d0c0a1b000,
                end: 0x55d0c0a4c000,
                offset: 0x1b000,
                dev: (8, 1),
                inode: 131090,
                path: "/usr/bin/curl".into(),
                deleted: false,
            }
        );
        assert_eq!(m[1].dev, (0xfd, 2));
        assert_eq!(m[1].file_key(), ((0xfd << 20) | 2, 2621570));
        assert_eq!(m[1].offset, 0x1f000);
        assert_eq!(m[2].path, Path::new("/tmp/my dir/lib ssl.so"));
        assert!(m[2].deleted);
        assert_eq!(m[2].dev, (0x103, 5));
        assert_eq!(m[3].path, Path::new("/tmp/new\nline.so"));
        assert!(!m[3].deleted);
        // Not executable, or not a file: not there.
        let (perms, rw) = parse_maps_line(b"7f-80 rw-p 0 08:01 7 /a b").unwrap();
        assert_eq!(perms, b"rw-p");
        assert_eq!(rw.path, Path::new("/a b"));
        assert!(exec_mappings(b"7f-80 rw-p 0 08:01 7 /a").is_empty());
        assert!(parse_maps_line(b"7f-80 r-xp 0 08:01 7 [vdso]").is_none());
        assert!(parse_maps_line(b"7f-80 r-xp 0 08:01").is_none());
        assert!(parse_maps_line(b"").is_none());
    }

    #[test]
    fn this_process_maps_hold_its_executable() {
        let maps = std::fs::read("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let m = exec_mappings(&maps);
        let me = m
            .iter()
            .find(|m| m.path == exe)
            .expect("own executable mapped");
        use std::os::unix::fs::MetadataExt as _;
        let st = std::fs::metadata(&exe).unwrap();
        assert_eq!(me.inode, st.ino());
        // stat's st_dev is glibc's makedev encoding of the same numbers.
        assert_eq!(
            (libc::major(st.dev()), libc::minor(st.dev())),
            (me.dev.0, me.dev.1)
        );
    }

    #[test]
    fn version_strings() {
        assert_eq!(
            openssl_version(b"xx\0OpenSSL 3.0.19 27 Jan 2026\0").as_deref(),
            Some("3.0.19")
        );
        assert_eq!(
            openssl_version(b"OPENSSL_init\0OpenSSL \0OpenSSL 1.1.1w  11 Sep 2023").as_deref(),
            Some("1.1.1w")
        );
        assert_eq!(
            openssl_version(b"AWS-LC 1.21.0\0").as_deref(),
            Some("AWS-LC 1.21.0")
        );
        assert_eq!(
            openssl_version(b"..BoringSSL..").as_deref(),
            Some("BoringSSL")
        );
        assert_eq!(openssl_version(b"OpenSSL 3"), None);
        // A patch level wins over an earlier major.minor.
        assert_eq!(
            openssl_version(b"OpenSSL 3.0 provider\0OpenSSL 3.0.19 27 Jan 2026").as_deref(),
            Some("3.0.19")
        );
        assert_eq!(openssl_version(b"OpenSSL 3.0 x").as_deref(), Some("3.0"));
        assert_eq!(
            gnutls_symbol_version(
                b"\0GNUTLS_3_4\0GNUTLS_3_7_7\0GNUTLS_3_6_13\0GNUTLS_FIPS140_3_4\0"
            )
            .as_deref(),
            Some("3.7.7")
        );
    }

    const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

    fn examine_file(path: &str) -> Verdict {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        examine(Path::new(path), &data)
    }

    fn offsets_by_nm(path: &str) -> std::collections::HashMap<String, u64> {
        // The reference: binutils' view of the same symbols (value = virtual address),
        // turned into file offsets with readelf's segments.
        let out = std::process::Command::new("nm")
            .args(["-D", "--defined-only", path])
            .output()
            .expect("nm (binutils)");
        let mut m = std::collections::HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 3 && (f[1] == "T" || f[1] == "t") {
                let name = f[2].split('@').next().unwrap().to_string();
                m.insert(name, u64::from_str_radix(f[0], 16).unwrap());
            }
        }
        m
    }

    fn load_segments(path: &str) -> Vec<(u64, u64, u64)> {
        let out = std::process::Command::new("readelf")
            .args(["-lW", path])
            .output()
            .expect("readelf (binutils)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.trim_start().starts_with("LOAD"))
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let h = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
                (h(f[1]), h(f[2]), h(f[4])) // offset, vaddr, filesz
            })
            .collect()
    }

    fn check_offsets(path: &str, lib: &TlsLib) {
        let nm = offsets_by_nm(path);
        let segs = load_segments(path);
        for h in &lib.hooks {
            let va = nm[h.func];
            let (off, vaddr, _) = *segs
                .iter()
                .find(|(_, v, sz)| va >= *v && va < v + sz)
                .unwrap();
            let at = va - vaddr + off;
            if h.cookie & tls_cookie::WRAPPED == 0 {
                assert_eq!(h.offset, at, "{}", h.func);
                continue;
            }
            // An inner function shared by its callers: entry and return on their `call`s'
            // target, each caller's return address − that target in the cookie, as objdump
            // disassembles them.
            for f in std::iter::once(h.func).chain(h.also.iter().copied()) {
                let (ret, target) = objdump_call(path, nm[f]);
                assert_eq!(target - vaddr + off, h.offset, "{f} {:?}", h.prog);
                let id = OPENSSL_DATA.iter().find(|(n, _)| *n == f).unwrap().1;
                assert_eq!(tls_cookie::caller(h.cookie, ret - target), id, "{f}");
            }
            assert!(matches!(
                h.cookie as u16,
                tls_fn::BIO_READ | tls_fn::BIO_WRITE
            ));
            assert_eq!(tls_cookie::caller(h.cookie, 1), h.cookie as u16);
        }
    }

    /// The first `call` of the function at `va`, as objdump disassembles it: (its return
    /// address, its target).
    fn objdump_call(path: &str, va: u64) -> (u64, u64) {
        let out = std::process::Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(format!("--start-address={va:#x}"))
            .arg(format!("--stop-address={:#x}", va + 64))
            .arg(path)
            .output()
            .expect("objdump (binutils)");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| l.contains(":\t"));
        let hex = |s: &str| u64::from_str_radix(s.trim().trim_end_matches(':'), 16).unwrap();
        let call = lines
            .by_ref()
            .find(|l| l.contains("\tcall "))
            .unwrap_or_else(|| panic!("no call at {va:#x}:\n{text}"));
        let target = call
            .split("call")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap();
        let next = lines.next().unwrap().split('\t').next().unwrap();
        (hex(next), hex(target))
    }

    /// OpenSSL 3.3.1's `SSL_write_ex` (the psycopg-binary 3.2.3 wheel's libssl) at 0x3bf90,
    /// a tail jump to `SSL_write_ex2` at 0x3bf70; with an `endbr64`; a short `jmp`; and what
    /// is not one.
    #[test]
    fn tail_jumps_by_their_code() {
        let ex = [0x49, 0x89, 0xc8, 0x31, 0xc9, 0xe9, 0xd6, 0xff, 0xff, 0xff];
        assert_eq!(tail_jump_target(&ex), Some(0x3bf70 - 0x3bf90));
        let endbr = [&[0xf3, 0x0f, 0x1e, 0xfa][..], &ex].concat();
        // (The function 4 bytes longer, starting 4 bytes earlier.)
        assert_eq!(tail_jump_target(&endbr), Some(0x3bf70 - (0x3bf90 - 4)));
        assert_eq!(tail_jump_target(&[0x31, 0xc9, 0xeb, 0x10]), Some(4 + 0x10));
        assert_eq!(tail_jump_target(&[0xe9, 0, 0, 0, 0]), Some(5));
        // A call, a push, a stack adjustment: not a tail jump.
        assert_eq!(tail_jump_target(&[0xe8, 0, 0, 0, 0]), None);
        assert_eq!(tail_jump_target(&[0x55, 0xe9, 0, 0, 0, 0]), None);
        assert_eq!(
            tail_jump_target(&[0x48, 0x83, 0xec, 0x08, 0xe9, 0, 0, 0, 0]),
            None
        );
        assert_eq!(tail_jump_target(&[0x49, 0x89, 0xc8, 0xe9, 0, 0]), None);
    }

    #[test]
    fn thin_wrappers_by_their_exact_code() {
        // Debian's OpenSSL 3.0.19 SSL_write_ex: call -0x479.
        let mut code = vec![
            0x48, 0x83, 0xec, 0x08, 0xe8, 0x87, 0xfb, 0xff, 0xff, 0x31, 0xd2, 0x85, 0xc0, 0x0f,
            0x48, 0xc2, 0x48, 0x83, 0xc4, 0x08, 0x31, 0xd2, 0x31, 0xc9, 0x31, 0xf6, 0x31, 0xff,
            0xc3, 0x0f, 0x1f, 0x00,
        ];
        assert_eq!(wrapper_target(&code), Some(9 - 0x479));
        // Without the zeroing: still max(eax, 0).
        let short: Vec<u8> = code[..20].iter().chain(&[0xc3]).copied().collect();
        assert_eq!(wrapper_target(&short), Some(9 - 0x479));
        // Anything else is hooked at the entry: another frame size, no `ret` where expected,
        // another instruction after the call, cut short.
        code[3] = 0x18;
        assert_eq!(wrapper_target(&code), None);
        code[3] = 0x08;
        code[28] = 0x90;
        assert_eq!(wrapper_target(&code), None);
        code[28] = 0xc3;
        code[10] = 0xc0;
        assert_eq!(wrapper_target(&code), None);
        code[10] = 0xd2;
        assert_eq!(wrapper_target(&code[..24]), None);
        assert_eq!(wrapper_target(&code), Some(9 - 0x479));
        assert!(starts_with_push(&[0x41, 0x56]) && starts_with_push(&[0x53]));

        // Debian's OpenSSL 3.0.19 SSL_read: `call 35290` from 3544e.
        let mut read = PLAIN_CALLER.to_vec();
        read[23] = 0x2f;
        read[31..35].copy_from_slice(&(0x35290i32 - 0x35453).to_le_bytes());
        assert_eq!(plain_call(&read), Some((35, 35 + 0x35290 - 0x35453)));
        // Another register for the byte count's pointer (OpenSSL 3.3's 5-argument inner
        // function), a `js` into this code, another frame, cut short: hooked at the entry.
        for (at, byte) in [(26, 0xe0), (23, 0x10), (3, 0x28)] {
            let mut other = read.clone();
            other[at] = byte;
            assert_eq!(plain_call(&other), None, "{at}");
        }
        assert_eq!(plain_call(&read[..41]), None);
        // The callers of a shared inner function by their return addresses.
        let c = tls_cookie::shared(tls_fn::BIO_READ, 0x1c3, 0x239);
        assert_eq!(tls_cookie::caller(c, 0x1c3), tls_fn::SSL_READ);
        assert_eq!(tls_cookie::caller(c, 0x239), tls_fn::SSL_READ_EX);
        assert_eq!(tls_cookie::caller(c, 0x1c4), tls_fn::BIO_READ);
        assert_eq!(tls_cookie::caller(c, 0x1c3 << 16), tls_fn::BIO_READ);
        let c = tls_cookie::shared(tls_fn::BIO_WRITE, 0, 0x479);
        assert_eq!(tls_cookie::caller(c, 0x479), tls_fn::SSL_WRITE_EX);
        assert_eq!(tls_cookie::caller(c, 0), tls_fn::BIO_WRITE);
        assert_eq!(
            tls_cookie::caller(u64::from(tls_fn::SSL_READ), 0x1c3),
            tls_fn::SSL_READ
        );
        assert!(!starts_with_push(&[0x48, 0x83, 0xec, 0x08]) && !starts_with_push(&[0x41]));
    }

    #[test]
    fn debian_libssl3_is_openssl_with_its_functions() {
        let path = format!("{LIBDIR}/libssl.so.3");
        let Verdict::Hook(lib) = examine_file(&path) else {
            panic!("libssl not hookable")
        };
        assert_eq!(lib.lib, "openssl");
        // OpenSSL 3's libssl has no version string (libcrypto has).
        assert_eq!(lib.version, None);
        let funcs: Vec<(&str, Prog, u64)> = lib
            .hooks
            .iter()
            .map(|h| (h.func, h.prog, h.cookie))
            .collect();
        // SSL_write and SSL_write_ex (SSL_read and SSL_read_ex) call one inner function in
        // Debian's build: hooked there, once for both (see `shared_hooks`), with their return
        // addresses' distances to it (objdump: `call 355a0` returning to 359a3 and 35a19;
        // `call 35290` returning to 35453 and 354c9).
        let d = |ret: u32, inner: u32| (ret - inner) as u16;
        let writes =
            tls_cookie::shared(tls_fn::BIO_WRITE, d(0x359a3, 0x355a0), d(0x35a19, 0x355a0));
        let reads = tls_cookie::shared(tls_fn::BIO_READ, d(0x35453, 0x35290), d(0x354c9, 0x35290));
        assert_eq!(
            funcs,
            vec![
                ("SSL_write", Prog::Enter, writes),
                ("SSL_write", Prog::Exit, writes),
                ("SSL_read", Prog::Enter, reads),
                ("SSL_read", Prog::Exit, reads),
                ("SSL_set_fd", Prog::SetFd, tls_cookie::OPENSSL_SET_FD),
                ("SSL_set_rfd", Prog::SetFd, tls_cookie::OPENSSL_SET_FD),
                ("SSL_set_wfd", Prog::SetFd, tls_cookie::OPENSSL_SET_FD),
                ("SSL_free", Prog::Free, 0),
            ]
        );
        assert_eq!(lib.hooks[0].also, ["SSL_write_ex"]);
        assert_eq!(lib.hooks[3].also, ["SSL_read_ex"]);
        assert_eq!(
            (lib.hooks[0].offset, lib.hooks[2].offset),
            (0x355a0, 0x35290)
        );
        assert_eq!(lib.functions(), 4);
        check_offsets(&path, &lib);
        // Each inner function has exactly one caller besides the two: in OpenSSL's SSL BIO
        // (bio_ssl.c's `ssl_read`/`ssl_write`, near `BIO_f_ssl`), which is what `BIO_read`/
        // `BIO_write` name.
        let out = std::process::Command::new("objdump")
            .args(["-d", "--no-show-raw-insn", &path])
            .output()
            .expect("objdump (binutils)");
        let text = String::from_utf8_lossy(&out.stdout);
        for inner in ["35290", "355a0"] {
            let calls: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains(&format!("\tcall   {inner} "))
                        || l.contains(&format!("\tjmp    {inner} "))
                })
                .collect();
            assert_eq!(calls.len(), 3, "{inner}: {calls:#?}");
        }
        let crypto = std::fs::read(format!("{LIBDIR}/libcrypto.so.3")).unwrap();
        assert_eq!(openssl_version(&crypto).as_deref(), Some("3.0.19"));
        // libcrypto alone: no SSL_* (it is found with libssl, not hooked).
        assert_eq!(
            examine(Path::new("/x/libcrypto.so.3"), &crypto),
            Verdict::NotTls
        );
    }

    #[test]
    fn debian_gnutls_is_gnutls_with_its_version() {
        let path = format!("{LIBDIR}/libgnutls.so.30");
        let Verdict::Hook(lib) = examine_file(&path) else {
            panic!("gnutls not hookable")
        };
        assert_eq!(lib.lib, "gnutls");
        assert!(
            lib.version.as_deref().unwrap().starts_with("3.7."),
            "{lib:?}"
        );
        let funcs: Vec<(&str, Prog)> = lib.hooks.iter().map(|h| (h.func, h.prog)).collect();
        assert_eq!(
            funcs,
            vec![
                ("gnutls_record_send", Prog::Enter),
                ("gnutls_record_send", Prog::Exit),
                ("gnutls_record_recv", Prog::Enter),
                ("gnutls_record_recv", Prog::Exit),
                ("gnutls_transport_set_int2", Prog::SetFd),
                ("gnutls_deinit", Prog::Free),
            ]
        );
        assert_eq!(lib.hooks[4].cookie, tls_cookie::GNUTLS_SET_INT2);
        check_offsets(&path, &lib);
    }

    #[test]
    fn importers_nss_and_others_are_not_hooked() {
        // Python's _ssl and curl import SSL_* (undefined symbols): nothing to hook there.
        let py = "/root/.pyenv/versions/3.11.7/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so";
        if Path::new(py).exists() {
            assert_eq!(examine_file(py), Verdict::NotTls);
        }
        assert_eq!(examine_file("/usr/bin/curl"), Verdict::NotTls);
        assert_eq!(
            examine_file("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            Verdict::NotTls
        );
        // NSS's libssl3.so is named like OpenSSL but is not.
        let nss = format!("{LIBDIR}/libssl3.so");
        if Path::new(&nss).exists() {
            assert!(
                matches!(examine_file(&nss), Verdict::Unhookable { lib: "nss", .. }),
                "{:?}",
                examine_file(&nss)
            );
        }
    }

    #[test]
    fn stripped_libssl_says_why() {
        // libssl without its dynamic symbols: the file stripped of .dynsym by objcopy.
        let dir = std::env::temp_dir().join(format!("capagent-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("libssl.so.3");
        let st = std::process::Command::new("objcopy")
            .args(["--strip-all", "--remove-section=.dynsym"])
            .arg(format!("{LIBDIR}/libssl.so.3"))
            .arg(&out)
            .status()
            .expect("objcopy (binutils)");
        assert!(st.success());
        let v = examine(&out, &std::fs::read(&out).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            v,
            Verdict::Unhookable {
                lib: "openssl",
                why: "no SSL_read/SSL_write symbols (stripped)".into()
            }
        );
        // Not an ELF file at all.
        assert!(matches!(
            examine(Path::new("/lib/libgnutls.so.30"), b"not elf"),
            Verdict::Unhookable { lib: "gnutls", .. }
        ));
        assert_eq!(examine(Path::new("/bin/x"), b"not elf"), Verdict::NotTls);
        // GnuTLS's companion libraries call it: not TLS libraries of their own (gnutls-cli
        // maps libgnutls-dane).
        let dane = format!("{LIBDIR}/libgnutls-dane.so.0");
        let data = std::fs::read(&dane).unwrap();
        assert_eq!(examine(Path::new(&dane), &data), Verdict::NotTls);
    }

    #[test]
    fn node_links_openssl_statically() {
        let node = "/usr/bin/node";
        if !Path::new(node).exists() {
            return;
        }
        let Verdict::Hook(lib) = examine_file(node) else {
            panic!("node's SSL_* not found")
        };
        assert_eq!(lib.lib, "openssl");
        assert!(
            lib.version.as_deref().is_some_and(|v| v.starts_with('3')),
            "{lib:?}"
        );
        assert!(lib.functions() >= 4);
        check_offsets(node, &lib);
    }

    #[test]
    fn static_openssl_executable_by_its_symtab() {
        // A program linked with Debian's libssl.a: SSL_* only in .symtab (not exported);
        // stripped, only the version string says OpenSSL is inside.
        let dir = std::env::temp_dir().join(format!("capagent-static-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("t.c");
        std::fs::write(
            &src,
            "#include <openssl/ssl.h>\nint main(void) { SSL_CTX *c = SSL_CTX_new(TLS_client_method()); SSL *s = SSL_new(c); char b[4]; size_t n; SSL_set_fd(s, 0); SSL_write(s, b, 1); SSL_read_ex(s, b, 4, &n); SSL_free(s); return 0; }\n",
        )
        .unwrap();
        let exe = dir.join("app");
        let st = std::process::Command::new("cc")
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .args(["-static", "-lssl", "-lcrypto", "-lpthread"])
            .stderr(std::process::Stdio::null())
            .status()
            .expect("cc");
        assert!(st.success());
        let Verdict::Hook(lib) = examine(&exe, &std::fs::read(&exe).unwrap()) else {
            panic!("static SSL_* not found")
        };
        // OpenSSL_version() is not linked in: no version string.
        assert_eq!(lib.version, None);
        // (SSL_read_ex shares SSL_read's inner function, as in the shared library.)
        let funcs: Vec<&str> = lib
            .hooks
            .iter()
            .flat_map(|h| std::iter::once(h.func).chain(h.also.iter().copied()))
            .collect();
        for f in ["SSL_write", "SSL_read_ex", "SSL_set_fd", "SSL_free"] {
            assert!(funcs.contains(&f), "{f} in {funcs:?}");
        }
        let st = std::process::Command::new("strip")
            .arg(&exe)
            .status()
            .unwrap();
        assert!(st.success());
        let v = examine(&exe, &std::fs::read(&exe).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            v,
            Verdict::Unhookable {
                lib: "openssl",
                why: "OpenSSL linked statically in a stripped executable: no symbols".into()
            }
        );
    }

    #[test]
    fn a_segment_past_the_end_of_the_file_gives_no_hook() {
        // Found by the fuzzer (fuzz/seeds/tls_libs/segment_past_eof): a PT_LOAD whose file
        // offset lies beyond the file's end.
        let data = include_bytes!("../../../../fuzz/seeds/tls_libs/segment_past_eof");
        for name in ["/usr/lib/libssl.so.3", "/usr/bin/app"] {
            if let Verdict::Hook(lib) = examine(Path::new(name), data) {
                for h in &lib.hooks {
                    assert!(h.offset < data.len() as u64, "{h:?}");
                }
            }
        }
        assert_eq!(examine(Path::new("/usr/bin/app"), data), Verdict::NotTls);
    }

    #[test]
    fn go_binaries_are_handed_over() {
        let go = std::fs::canonicalize("/usr/bin/go");
        if let Ok(go) = go {
            assert_eq!(examine(&go, &std::fs::read(&go).unwrap()), Verdict::Go);
        }
        // The magic alone (a file object cannot parse).
        let mut data = b"junk".to_vec();
        data.extend_from_slice(GO_BUILDINFO_MAGIC);
        assert_eq!(examine(Path::new("/bin/x"), &data), Verdict::Go);
    }

    #[test]
    fn java_is_reported() {
        let java = "/usr/lib/jvm/java-17-openjdk-amd64/lib/libnet.so";
        if Path::new(java).exists() {
            assert!(matches!(
                examine_file(java),
                Verdict::Unhookable { lib: "java", .. }
            ));
            // One line per Java process: the JDK's other libraries say nothing.
            assert_eq!(
                examine_file("/usr/lib/jvm/java-17-openjdk-amd64/lib/libjava.so"),
                Verdict::NotTls
            );
        }
    }
}
