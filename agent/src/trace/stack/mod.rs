//! `trace --stack`: the user stack of a thread at a traced call, unwound and symbolized.
//!
//! The kernel copies the registers (ip, sp, bp) and the top of the user stack (bytes from
//! sp upwards) at the call; [`Stacks::unwind`] turns such a [`Sample`] into frames:
//!
//! - unwinding: framehop with each module's `.eh_frame`/`.eh_frame_hdr` (or `.debug_frame`)
//!   DWARF CFI (`module.rs`), reading the stack only from the sample's bytes; where no unwind
//!   information covers an address (JIT code, an unknown mapping), framehop follows the frame
//!   pointer (rbp). At most [`MAX_FRAMES`] frames; a read outside the copied bytes or a
//!   rule that makes no progress ends the stack.
//! - symbolization: blazesym over the module's file (`.symtab`, `.dynsym`, DWARF file:line,
//!   separate debug files named by `.gnu_debuglink`, beside the file or under `/usr/lib/debug`
//!   and its `.build-id/xx/` (Debian's layout), Rust and C++ demangling); `/tmp/perf-PID.map` for frames in no file
//!   (`perfmap.rs`).
//! - mappings: [`Stacks::note_process`] reads `/proc/PID/maps` (the parser of `trace::tls`,
//!   fuzzed by `fuzz/fuzz_targets/tls_libs.rs`) and opens each executable file then, so a
//!   process that has exited is still unwound and symbolized.

mod module;
pub mod perfmap;

use std::{collections::HashMap, sync::Arc};

use blazesym::symbolize::{Input, Symbolized, Symbolizer, source::Elf, source::Source};
use framehop::{
    FrameAddress, Unwinder as _,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use crate::model::Frame;
use crate::trace::tls::libs::{self, Mapping};
use module::{ModuleData, Slice};
use perfmap::PerfMap;

/// The most frames [`Stacks::unwind`] returns.
pub const MAX_FRAMES: usize = 128;

/// What the kernel captured at a call: the thread's user registers and the bytes of its
/// stack from `sp` upwards.
pub struct Sample<'a> {
    pub pid: u32,
    pub tid: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// The bytes at `sp..sp + stack.len()` in the thread's address space.
    pub stack: &'a [u8],
    /// Taken at a function's first instruction or at a RET (a uprobe): the return address
    /// is the word at `sp` and `bp` is the caller's, whatever unwind information covers
    /// `ip` (or none: frame pointers alone would skip the caller).
    pub ret_at_sp: bool,
}

/// One executable mapping of a process, with its file (opened when the process was noted).
struct Mapped {
    start: u64,
    end: u64,
    /// Offset in the file of `start`.
    offset: u64,
    /// The path as the process saw it (what frames show as their module).
    path: Arc<str>,
    module: Arc<ModuleData>,
}

/// What is known of one process: its executable mappings (sorted by start) and the
/// unwinder built from them.
struct Process {
    maps: Vec<Mapped>,
    unwinder: UnwinderX86_64<Slice>,
    perf_map: Option<PerfMap>,
    /// The size of the perf map file when it was read (0: none).
    perf_map_len: u64,
}

impl Process {
    /// The perf map's name for `addr` (in no mapped file).
    fn jit_symbol(&self, addr: u64) -> Option<(Arc<str>, u64)> {
        self.perf_map.as_ref().and_then(|p| p.lookup(addr))
    }

    /// Reads the perf map of `pid` again when its file has grown since (a JIT appends
    /// each function it compiles; Python's `-X perf` writes a function's entry at its first
    /// call, after the process was noted). The file stays after the process exits.
    fn reload_perf_map(&mut self, pid: u32) {
        // (A map removed since keeps what was read.)
        let Ok(meta) = std::fs::metadata(perfmap::path(pid)) else {
            return;
        };
        if meta.len() != self.perf_map_len
            && let Some(map) = PerfMap::load(pid)
        {
            self.perf_map = Some(map);
            self.perf_map_len = meta.len();
        }
    }
}

/// A symbol found for an address: function (demangled), the address minus its start, and
/// file:line when known.
#[derive(Clone, Default)]
struct Resolved {
    function: Option<Arc<str>>,
    offset: u64,
    file: Option<Arc<str>>,
    line: Option<u32>,
}

/// The processes' mappings, the parsed modules and the symbols found so far; one per trace
/// session.
pub struct Stacks {
    processes: HashMap<u32, Process>,
    /// Modules by file identity (device, inode): each file is opened and parsed once.
    modules: HashMap<(u64, u64), Arc<ModuleData>>,
    cache: CacheX86_64,
    symbolizer: Symbolizer,
    /// Symbols by (module file identity, file offset of the looked-up address).
    symbols: HashMap<((u64, u64), u64), Resolved>,
    unresolved: u64,
    /// Per thread: return addresses seen at function entries (`Sample::ret_at_sp`), by the
    /// stack address that holds them (see [`Stacks::note_return`]).
    returns: HashMap<u32, Vec<(u64, u64)>>,
}

impl Default for Stacks {
    fn default() -> Self {
        Self::new()
    }
}

/// Bound on the symbol cache (entries): cleared when reached.
const MAX_CACHED_SYMBOLS: usize = 1 << 16;

impl Stacks {
    pub fn new() -> Stacks {
        Stacks {
            processes: HashMap::new(),
            modules: HashMap::new(),
            cache: CacheX86_64::new(),
            symbolizer: Symbolizer::builder()
                .enable_code_info(true)
                .enable_inlined_fns(false)
                .enable_demangling(false)
                .build(),
            symbols: HashMap::new(),
            unresolved: 0,
            returns: HashMap::new(),
        }
    }

    /// True when the mappings of `pid` were read ([`Stacks::note_process`]).
    pub fn knows(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Reads /proc/PID/maps now (executable mappings: path, start, end, file offset,
    /// build-id) and keeps them (also after the process exits). A process already gone
    /// keeps what was noted before.
    pub fn note_process(&mut self, pid: u32) {
        let Ok(text) = std::fs::read(format!("/proc/{pid}/maps")) else {
            tracing::debug!(pid, "stack: no maps (process gone)");
            return;
        };
        let mut maps = Vec::new();
        for m in libs::exec_mappings(&text) {
            let Some(module) = self.module(pid, &m) else {
                continue;
            };
            maps.push(Mapped {
                start: m.start,
                end: m.end,
                offset: m.offset,
                path: Arc::from(m.path.to_string_lossy()),
                module,
            });
        }
        maps.sort_by_key(|m| m.start);
        let mut unwinder = UnwinderX86_64::new();
        for m in &maps {
            if let Some(fm) = m.module.framehop_module(m.start, m.end, m.offset) {
                unwinder.add_module(fm);
            }
        }
        let mut process = Process {
            maps,
            unwinder,
            perf_map: None,
            perf_map_len: 0,
        };
        process.reload_perf_map(pid);
        self.processes.insert(pid, process);
    }

    /// The parsed module of mapping `m` of `pid`, opening it (as the process sees it) the
    /// first time its file is met.
    fn module(&mut self, pid: u32, m: &Mapping) -> Option<Arc<ModuleData>> {
        let key = m.file_key();
        if let Some(module) = self.modules.get(&key) {
            return Some(module.clone());
        }
        let (opened, file) = match crate::trace::tls::attach::open_mapped(pid, m) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(pid, path = %m.path.display(), "stack: cannot open: {e}");
                return None;
            }
        };
        match ModuleData::parse(key, file) {
            Ok(module) => {
                let module = Arc::new(module);
                self.modules.insert(key, module.clone());
                Some(module)
            }
            Err(e) => {
                tracing::debug!(path = %opened.display(), "stack: not an ELF module: {e}");
                None
            }
        }
    }

    /// Unwinds (DWARF CFI from .eh_frame/.debug_frame via framehop; frame pointers where no
    /// unwind info covers the address, e.g. JIT) and symbolizes (blazesym: symbols,
    /// demangling, file:line from debug info incl. separate files under
    /// /usr/lib/debug/.build-id; /tmp/perf-PID.map for JIT). At most 128 frames, innermost
    /// first. A process never noted is noted now (when it is still alive).
    pub fn unwind(&mut self, s: &Sample) -> Vec<Frame> {
        if !self.processes.contains_key(&s.pid) {
            self.note_process(s.pid);
        }
        let empty = Process {
            maps: Vec::new(),
            unwinder: UnwinderX86_64::new(),
            perf_map: None,
            perf_map_len: 0,
        };
        self.note_return(s);
        let returns = self.returns.get(&s.tid).map_or(&[][..], Vec::as_slice);
        let process = self.processes.get(&s.pid).unwrap_or(&empty);
        let addresses = walk(process, &mut self.cache, s, returns);
        let unnamed_jit = |p: &Process, a: &FrameAddress| {
            let lookup = a.address_for_lookup();
            mapping_of(&p.maps, lookup).is_none() && p.jit_symbol(lookup).is_none()
        };
        if addresses.iter().any(|a| unnamed_jit(process, a))
            && let Some(p) = self.processes.get_mut(&s.pid)
        {
            p.reload_perf_map(s.pid);
        }
        let process = self.processes.get(&s.pid).unwrap_or(&empty);
        let mut frames = Vec::with_capacity(addresses.len());
        for a in addresses {
            let (address, lookup) = match a {
                FrameAddress::InstructionPointer(ip) => (ip, ip),
                FrameAddress::ReturnAddress(r) => (r.get(), r.get() - 1),
            };
            let mut frame = Frame {
                addr: address,
                module: None,
                function: None,
                offset: 0,
                file: None,
                line: None,
            };
            let resolved = match mapping_of(&process.maps, lookup) {
                Some(m) => {
                    frame.module = Some(m.path.clone());
                    let file_offset = lookup - m.start + m.offset;
                    resolve(
                        &self.symbolizer,
                        &mut self.symbols,
                        m.module.as_ref(),
                        file_offset,
                    )
                }
                None => process
                    .jit_symbol(lookup)
                    .map(|(name, start)| Resolved {
                        function: Some(name),
                        offset: lookup - start,
                        ..Resolved::default()
                    })
                    .unwrap_or_default(),
            };
            if resolved.function.is_some() {
                frame.function = resolved.function;
                frame.offset = resolved.offset + (address - lookup);
                frame.file = resolved.file;
                frame.line = resolved.line;
            } else {
                self.unresolved += 1;
            }
            frames.push(frame);
        }
        frames
    }

    /// Notes the return address of `s` when it was taken at a function's entry: per
    /// thread, (stack address, return address) pairs, which [`walk`] reads instead of a
    /// uretprobe's trampoline.
    ///
    /// `trace --tls` puts a uretprobe on the TLS functions: while one runs, the kernel has
    /// replaced its return address on the stack with the address of its trampoline (the
    /// `[uprobes]` page), where unwinding would end. The stack taken at that function's
    /// entry (`--tls --stack`) has the original at its sp; the stacks of the syscalls made
    /// inside the call (taken later) read it back from there.
    fn note_return(&mut self, s: &Sample) {
        /// Entries kept per thread, and threads kept.
        const PER_THREAD: usize = 16;
        const THREADS: usize = 4096;
        if s.ret_at_sp
            && let Some(word) = s.stack.get(..8)
        {
            let ra = u64::from_le_bytes(word.try_into().unwrap_or_default());
            if self.returns.len() >= THREADS && !self.returns.contains_key(&s.tid) {
                self.returns.clear();
            }
            let v = self.returns.entry(s.tid).or_default();
            v.retain(|&(at, _)| at != s.sp);
            if v.len() >= PER_THREAD {
                v.remove(0);
            }
            v.push((s.sp, ra));
        }
    }

    /// Frames without a function so far.
    pub fn unresolved(&self) -> u64 {
        self.unresolved
    }
}

/// The frame addresses of sample `s` (innermost first, at most [`MAX_FRAMES`]): framehop,
/// reading 8-byte words of the stack only from the sample's bytes; a word at a stack address
/// of `returns` that is in no mapped file (a uretprobe's trampoline) reads as the original
/// return address noted there (see [`Stacks::note_return`]).
fn walk(
    process: &Process,
    cache: &mut CacheX86_64,
    s: &Sample,
    returns: &[(u64, u64)],
) -> Vec<FrameAddress> {
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        let at = usize::try_from(addr.checked_sub(s.sp).ok_or(())?).map_err(|_| ())?;
        let word = s.stack.get(at..at.checked_add(8).ok_or(())?).ok_or(())?;
        let word = u64::from_le_bytes(word.try_into().map_err(|_| ())?);
        if let Some(&(_, orig)) = returns.iter().find(|&&(slot, _)| slot == addr)
            && orig != word
            && mapping_of(&process.maps, word).is_none()
        {
            return Ok(orig);
        }
        Ok(word)
    };
    let mut out = vec![FrameAddress::InstructionPointer(s.ip)];
    // The frame after the first, and the registers there.
    let (mut at, mut regs) = if s.ret_at_sp {
        // The first instruction of a function or a RET: return to the word at sp.
        let Some(ra) = read_stack(s.sp)
            .ok()
            .and_then(FrameAddress::from_return_address)
        else {
            return out;
        };
        (ra, UnwindRegsX86_64::new(ra.address(), s.sp + 8, s.bp))
    } else {
        let mut regs = UnwindRegsX86_64::new(s.ip, s.sp, s.bp);
        let first = FrameAddress::InstructionPointer(s.ip);
        match step(process, cache, first, &mut regs, &mut read_stack, s) {
            Some(ra) => (ra, regs),
            None => return out,
        }
    };
    while out.len() < MAX_FRAMES {
        out.push(at);
        match step(process, cache, at, &mut regs, &mut read_stack, s) {
            Some(ra) => at = ra,
            None => break,
        }
    }
    out
}

/// One unwinding step from frame `at` (framehop): the caller's return address, `regs`
/// moved to the caller; None at the end of the stack.
fn step(
    process: &Process,
    cache: &mut CacheX86_64,
    at: FrameAddress,
    regs: &mut UnwindRegsX86_64,
    read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
    s: &Sample,
) -> Option<FrameAddress> {
    match process.unwinder.unwind_frame(at, regs, cache, read_stack) {
        Ok(ra) => ra.and_then(FrameAddress::from_return_address),
        Err(e) => {
            tracing::trace!(pid = s.pid, tid = s.tid, "stack: unwinding ends: {e}");
            None
        }
    }
}

/// The mapping of `maps` (sorted by start) that holds `addr`.
fn mapping_of(maps: &[Mapped], addr: u64) -> Option<&Mapped> {
    let i = maps.partition_point(|m| m.start <= addr);
    let m = maps.get(i.checked_sub(1)?)?;
    (addr < m.end).then_some(m)
}

/// The symbol of `file_offset` in `module` (cached).
fn resolve(
    symbolizer: &Symbolizer,
    cache: &mut HashMap<((u64, u64), u64), Resolved>,
    module: &ModuleData,
    file_offset: u64,
) -> Resolved {
    let key = (module.key, file_offset);
    if let Some(r) = cache.get(&key) {
        return r.clone();
    }
    let src = Source::Elf(Elf::new(module.symbol_path()));
    let r = match symbolizer.symbolize_single(&src, Input::FileOffset(file_offset)) {
        Ok(Symbolized::Sym(sym)) => {
            let (file, line) = sym.code_info.as_ref().map_or((None, None), |ci| {
                (Some(Arc::from(ci.to_path().to_string_lossy())), ci.line)
            });
            Resolved {
                function: Some(Arc::from(demangle(&sym.name))),
                offset: sym.offset as u64,
                file,
                line,
            }
        }
        Ok(Symbolized::Unknown(_)) => Resolved::default(),
        Err(e) => {
            tracing::debug!("stack: symbolizing {file_offset:#x}: {e}");
            Resolved::default()
        }
    };
    if cache.len() >= MAX_CACHED_SYMBOLS {
        cache.clear();
    }
    cache.insert(key, r.clone());
    r
}

/// `name` demangled when it is a mangled Rust (legacy `_ZN…E` or v0 `_R…`) or C++ (`_Z…`)
/// name; other names (C) as they are. (Only names with a mangling prefix are tried: the
/// C++ demangler reads a bare `b` as the type `bool`.)
fn demangle(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.starts_with("_Z") && !name.starts_with("_R") && !name.starts_with("__Z") {
        return name.into();
    }
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}").into();
    }
    cpp_demangle::Symbol::new(name)
        .ok()
        .and_then(|s| s.demangle().ok())
        .map_or(name.into(), Into::into)
}

#[cfg(test)]
mod tests;
