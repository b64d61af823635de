//! `trace --stack`, the pipeline side: the `STACKS` ring's records, paired with the calls
//! they were taken at by (thread, stack id), unwound into [`Frame`]s.
//!
//! The unwinding and symbolization (DWARF CFI, frame pointers, debug info) is
//! [`Stacks`](super::stack::Stacks).

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use agent_common::{StackEvent, stack_flags};

use crate::model::Frame;

/// Most stacks held waiting for their call's record, and most unwound stacks kept for the
/// records of a call still to be assembled.
const HELD_MAX: usize = 4096;

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
    pub unwinder: super::stack::Stacks,
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
        let stack: &[u8] = if raw.flags & stack_flags::READ_FAILED == 0 {
            &raw.stack
        } else {
            &[]
        };
        let frames = self.unwinder.unwind(&super::stack::Sample {
            pid: raw.pid,
            tid: raw.tid,
            ip: raw.ip,
            sp: raw.sp,
            bp: raw.bp,
            stack,
        });
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

#[cfg(test)]
mod tests {
    use super::*;

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
