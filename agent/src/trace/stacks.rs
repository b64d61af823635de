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

/// Most unwound stacks kept for calls whose records are still to come or to be assembled
/// (a stack is unwound when it is read from its ring, which the agent drains at every poll:
/// the ring's copy is 16 KiB, the frames a few hundred bytes).
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

/// An unwound stack, and whether its call's record came.
struct Unwound {
    frames: Arc<Vec<Frame>>,
    paired: bool,
}

/// Pairs stacks with calls by (tid, stack id), both ways bounded.
#[derive(Default)]
pub struct Pairing {
    done: HashMap<(u32, u32), Unwound>,
    done_order: VecDeque<(u32, u32)>,
    pub unwinder: super::stack::Stacks,
    pub counts: StackCounts,
}

impl Pairing {
    /// Unwinds a stack read from the ring and keeps its frames until its call's records
    /// come (the oldest beyond [`HELD_MAX`] are forgotten, counted when never paired).
    pub fn hold(&mut self, raw: RawStack) {
        let key = (raw.tid, raw.stack_id);
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
            ret_at_sp: raw.flags & stack_flags::RET_AT_SP != 0,
        });
        self.counts.unresolved += frames.iter().filter(|f| f.function.is_none()).count() as u64;
        let unwound = Unwound {
            frames: Arc::new(frames),
            paired: false,
        };
        if let Some(old) = self.done.insert(key, unwound) {
            // The thread's counter wrapped around onto a stack never paired.
            if !old.paired {
                self.counts.orphans += 1;
            }
        } else {
            self.done_order.push_back(key);
        }
        while self.done.len() > HELD_MAX {
            let Some(old) = self.done_order.pop_front() else {
                break;
            };
            if self.done.remove(&old).is_some_and(|u| !u.paired) {
                self.counts.orphans += 1;
            }
        }
    }

    /// True when the stack of call (tid, id) is held.
    pub fn has(&self, tid: u32, id: u32) -> bool {
        self.done.contains_key(&(tid, id))
    }

    /// Pairs call (tid, id) with its stack (counted once per call); false when the stack
    /// is not held.
    pub fn resolve(&mut self, tid: u32, id: u32) -> bool {
        let Some(u) = self.done.get_mut(&(tid, id)) else {
            return false;
        };
        if !u.paired {
            u.paired = true;
            self.counts.captured += 1;
        }
        true
    }

    /// A call whose stack never came (counted once).
    pub fn missing(&mut self) {
        self.counts.orphans += 1;
    }

    /// The frames of call (tid, id), once resolved.
    pub fn frames(&self, tid: u32, id: u32) -> Option<Vec<Frame>> {
        self.done
            .get(&(tid, id))
            .filter(|u| u.paired)
            .map(|u| u.frames.as_ref().clone())
    }

    /// At the end: the stacks still held found no call.
    pub fn finish(&mut self) -> StackCounts {
        self.counts.orphans += self.done.values().filter(|u| !u.paired).count() as u64;
        self.done.clear();
        self.done_order.clear();
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
