//! `trace --stack`, the pipeline side: the `STACKS` ring's records, paired with the calls
//! they were taken at by (thread, stack id), unwound into [`Frame`]s.
//!
//! The unwinder and symbolizer (DWARF CFI, debug info) is `trace::stack::Stacks` (issue 15,
//! owner U). Until it is on main, [`Unwinder`] is a FALLBACK: a frame-pointer walk over the
//! copied stack, symbolized from the ELF symbol tables of the mappings read at
//! [`Unwinder::note_process`]. Switch [`Unwinder`] to `Stacks` once it lands (same calls).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use agent_common::{StackEvent, stack_flags};

use crate::model::Frame;

/// Most stacks held waiting for their call's record, and most unwound stacks kept for the
/// records of a call still to be assembled.
const HELD_MAX: usize = 4096;
/// Most frames of one stack.
const FRAMES_MAX: usize = 128;

/// A stack record from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStack {
    pub pid: u32,
    pub tid: u32,
    pub stack_id: u32,
    pub flags: u32,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub stack: Vec<u8>,
}

/// Decodes a `STACKS` record (None when malformed).
pub fn decode(rec: &[u8]) -> Option<RawStack> {
    let head = std::mem::size_of::<StackEvent>();
    if rec.len() < head {
        return None;
    }
    // SAFETY: StackEvent is repr(C) plain old data; read unaligned from a long enough slice.
    let ev: StackEvent = unsafe { std::ptr::read_unaligned(rec.as_ptr().cast()) };
    let len = ev.len as usize;
    let stack = rec.get(head..head + len)?.to_vec();
    Some(RawStack {
        pid: ev.pid,
        tid: ev.tid,
        stack_id: ev.stack_id,
        flags: ev.flags,
        ip: ev.ip,
        sp: ev.sp,
        bp: ev.bp,
        stack,
    })
}

/// Stack counts for the summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StackCounts {
    /// Stacks paired with their call.
    pub captured: u64,
    /// Stacks the kernel dropped (ring full).
    pub dropped: u64,
    /// Stacks or calls that found no partner (held too long, or missing).
    pub orphans: u64,
    /// Frames without a function.
    pub unresolved: u64,
}

/// Pairs stacks with calls by (tid, stack id), both ways bounded.
#[derive(Default)]
pub struct Pairing {
    held: HashMap<(u32, u32), RawStack>,
    held_order: VecDeque<(u32, u32)>,
    done: HashMap<(u32, u32), Arc<Vec<Frame>>>,
    done_order: VecDeque<(u32, u32)>,
    pub unwinder: Unwinder,
    pub counts: StackCounts,
}

impl Pairing {
    /// Holds a stack until its call's record comes.
    pub fn hold(&mut self, s: RawStack) {
        let key = (s.tid, s.stack_id);
        if self.held.insert(key, s).is_none() {
            self.held_order.push_back(key);
        }
        while self.held.len() > HELD_MAX {
            let Some(old) = self.held_order.pop_front() else {
                break;
            };
            if self.held.remove(&old).is_some() {
                self.counts.orphans += 1;
            }
        }
    }

    /// True when the stack of call (tid, id) is unwound already or held.
    pub fn has(&self, tid: u32, id: u32) -> bool {
        self.done.contains_key(&(tid, id)) || self.held.contains_key(&(tid, id))
    }

    /// Unwinds the held stack of call (tid, id), if held; false when it is not.
    pub fn resolve(&mut self, tid: u32, id: u32) -> bool {
        let key = (tid, id);
        if self.done.contains_key(&key) {
            return true;
        }
        let Some(raw) = self.held.remove(&key) else {
            return false;
        };
        let frames = self.unwinder.unwind(&raw);
        self.counts.captured += 1;
        self.counts.unresolved += frames.iter().filter(|f| f.function.is_none()).count() as u64;
        self.done.insert(key, Arc::new(frames));
        self.done_order.push_back(key);
        while self.done.len() > HELD_MAX {
            let Some(old) = self.done_order.pop_front() else {
                break;
            };
            self.done.remove(&old);
        }
        true
    }

    /// A call whose stack never came (counted once).
    pub fn missing(&mut self) {
        self.counts.orphans += 1;
    }

    /// The frames of call (tid, id), once resolved.
    pub fn frames(&self, tid: u32, id: u32) -> Option<Vec<Frame>> {
        self.done.get(&(tid, id)).map(|f| f.as_ref().clone())
    }

    /// At the end: the stacks still held found no call.
    pub fn finish(&mut self) -> StackCounts {
        self.counts.orphans += self.held.len() as u64;
        self.held.clear();
        self.counts
    }
}

/// An executable file mapping of a process.
#[derive(Debug, Clone)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    path: Arc<str>,
}

/// A module's function symbols: (start, size, name), sorted by start; and its loadable
/// segments (file offset, vaddr, file size) to turn file offsets into addresses.
#[derive(Debug, Default)]
struct Symbols {
    funcs: Vec<(u64, u64, Arc<str>)>,
    segments: Vec<(u64, u64, u64)>,
}

/// FALLBACK unwinder (see the module's documentation): frame pointers only, symbols from
/// the ELF symbol tables (no DWARF, no file:line).
#[derive(Default)]
pub struct Unwinder {
    maps: HashMap<u32, Vec<Mapping>>,
    modules: HashMap<Arc<str>, Option<Symbols>>,
}

impl Unwinder {
    /// True when `addr` lies in an executable file mapping of `pid`.
    fn in_module(&self, pid: u32, addr: u64) -> bool {
        self.maps
            .get(&pid)
            .is_some_and(|m| m.iter().any(|m| addr >= m.start && addr < m.end))
    }

    /// True when the mappings of `pid` were read.
    pub fn knows(&self, pid: u32) -> bool {
        self.maps.contains_key(&pid)
    }

    /// Reads the executable mappings of `pid` now and keeps them (also after it exits).
    pub fn note_process(&mut self, pid: u32) {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return;
        };
        let mut maps = Vec::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(range), Some(perms), Some(off), _, _, Some(path)) = (
                it.next(),
                it.next(),
                it.next(),
                it.next(),
                it.next(),
                it.next(),
            ) else {
                continue;
            };
            if !perms.contains('x') || !path.starts_with('/') {
                continue;
            }
            let Some((a, b)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end), Ok(offset)) = (
                u64::from_str_radix(a, 16),
                u64::from_str_radix(b, 16),
                u64::from_str_radix(off, 16),
            ) else {
                continue;
            };
            maps.push(Mapping {
                start,
                end,
                offset,
                path: path.into(),
            });
        }
        if !maps.is_empty() {
            self.maps.insert(pid, maps);
        }
    }

    /// The frames of a stack: the innermost at `ip`, then the return addresses a
    /// frame-pointer walk finds within the copied bytes.
    pub fn unwind(&mut self, s: &RawStack) -> Vec<Frame> {
        // Mapped since last read (the libraries after an exec): read again while alive.
        let mapped = |m: &Vec<Mapping>| m.iter().any(|m| s.ip >= m.start && s.ip < m.end);
        if !self.maps.get(&s.pid).is_some_and(mapped) {
            self.note_process(s.pid);
        }
        let mut addrs = vec![s.ip];
        if s.flags & stack_flags::READ_FAILED == 0 {
            let word = |at: u64| -> Option<u64> {
                let off = at.checked_sub(s.sp)? as usize;
                let b = s.stack.get(off..off + 8)?;
                Some(u64::from_ne_bytes(b.try_into().ok()?))
            };
            // The innermost function may keep no frame pointer (libc's syscall wrappers):
            // its caller's return address is the first word between sp and bp that points
            // into an executable mapping (a scan: heuristic, part of the fallback).
            let top = s.bp.clamp(s.sp, s.sp + 512);
            let mut at = s.sp;
            while at + 8 <= top {
                if let Some(w) = word(at)
                    && self.in_module(s.pid, w)
                {
                    addrs.push(w);
                    break;
                }
                at += 8;
            }
            let mut bp = s.bp;
            while addrs.len() < FRAMES_MAX {
                let (Some(next), Some(ret)) = (word(bp), word(bp.wrapping_add(8))) else {
                    break;
                };
                if ret == 0 {
                    break;
                }
                addrs.push(ret);
                if next <= bp {
                    break;
                }
                bp = next;
            }
        }
        addrs
            .into_iter()
            .enumerate()
            .map(|(i, addr)| self.symbolize(s.pid, addr, i > 0))
            .collect()
    }

    fn symbolize(&mut self, pid: u32, addr: u64, caller: bool) -> Frame {
        let mut frame = Frame {
            addr,
            module: None,
            function: None,
            offset: 0,
            file: None,
            line: None,
        };
        let Some(m) = self
            .maps
            .get(&pid)
            .and_then(|maps| maps.iter().find(|m| addr >= m.start && addr < m.end))
            .cloned()
        else {
            return frame;
        };
        frame.module = Some(m.path.clone());
        let syms = self
            .modules
            .entry(m.path.clone())
            .or_insert_with(|| read_symbols(&m.path));
        let Some(syms) = syms else { return frame };
        // A return address points after the call: look up the call itself.
        let look = if caller { addr - 1 } else { addr };
        let file_off = look - m.start + m.offset;
        let Some(vaddr) = syms
            .segments
            .iter()
            .find(|(o, _, sz)| file_off >= *o && file_off < o + sz)
            .map(|(o, v, _)| file_off - o + v)
        else {
            return frame;
        };
        let i = syms.funcs.partition_point(|(a, _, _)| *a <= vaddr);
        if i > 0 {
            let (start, size, name) = &syms.funcs[i - 1];
            if vaddr < start + (*size).max(1) {
                frame.function = Some(name.clone());
                frame.offset = vaddr - start + u64::from(look != addr);
            }
        }
        frame
    }
}

/// The function symbols and loadable segments of an ELF file (None if unreadable).
fn read_symbols(path: &str) -> Option<Symbols> {
    use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let mut funcs: Vec<(u64, u64, Arc<str>)> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
        .filter_map(|s| Some((s.address(), s.size(), Arc::from(s.name().ok()?))))
        .collect();
    funcs.sort_by_key(|f| f.0);
    funcs.dedup_by_key(|f| f.0);
    let segments = file
        .segments()
        .map(|s| {
            let (o, sz) = s.file_range();
            (o, s.address(), sz)
        })
        .collect();
    Some(Symbols { funcs, segments })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_pointer_walk_reads_the_chain_in_the_copied_stack() {
        let sp = 0x1000u64;
        let mut stack = vec![0u8; 64];
        // bp = sp+16: [saved bp = sp+40][ret 0xaaaa]; sp+40: [saved bp 0][ret 0xbbbb].
        stack[16..24].copy_from_slice(&(sp + 40).to_ne_bytes());
        stack[24..32].copy_from_slice(&0xaaaau64.to_ne_bytes());
        stack[40..48].copy_from_slice(&0u64.to_ne_bytes());
        stack[48..56].copy_from_slice(&0xbbbbu64.to_ne_bytes());
        let raw = RawStack {
            pid: 0,
            tid: 1,
            stack_id: 1,
            flags: 0,
            ip: 0x5555,
            sp,
            bp: sp + 16,
            stack,
        };
        let frames = Unwinder::default().unwind(&raw);
        let addrs: Vec<u64> = frames.iter().map(|f| f.addr).collect();
        assert_eq!(addrs, vec![0x5555, 0xaaaa, 0xbbbb]);
    }

    #[test]
    fn pairing_holds_then_resolves_and_bounds_what_it_holds() {
        let mut p = Pairing::default();
        let raw = |tid, id| RawStack {
            pid: 0,
            tid,
            stack_id: id,
            flags: stack_flags::READ_FAILED,
            ip: 1,
            sp: 0,
            bp: 0,
            stack: Vec::new(),
        };
        p.hold(raw(7, 1));
        assert!(p.has(7, 1));
        assert!(p.resolve(7, 1));
        assert_eq!(p.frames(7, 1).unwrap().len(), 1);
        assert!(!p.resolve(7, 2));
        for i in 0..(HELD_MAX as u32 + 3) {
            p.hold(raw(8, i + 1));
        }
        assert_eq!(p.counts.orphans, 3);
        assert_eq!(p.finish().orphans, 3 + HELD_MAX as u64);
        assert_eq!(p.counts.captured, 1);
    }
}
