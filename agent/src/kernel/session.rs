//! The life every kernel session shares (trace, capture; TLS uprobes and call stacks next):
//! the checks and the kernel's structure offsets ([`prepare`]); then, once the mode has
//! loaded its object, taken its maps and attached its programs, the held `-- CMD` released
//! and the ring buffer polled until a stop ([`Session::start`], [`Session::poll`]); and the
//! end (drain, detach, the command's status).
//!
//! A mode brings its programs (whatever detaches them when dropped), its ring buffer and a
//! [`Mode`]: the decoder of its records and its periodic work.
//!
//! ```text
//! let offsets = session::prepare("capagent X")?;        // root, tracefs, BTF
//! let ebpf = ...;                                         // config, load, maps, attach
//! let mut s = Session::start(Setup { programs: ebpf, ring, .. }, ctl)?;
//! while s.poll(&mut mode)? {}
//! s.detach();                                             // no new records
//! s.drain(&mut mode);                                     // what is left
//! ```

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd, RawFd},
    process::ExitStatus,
    time::{Duration, Instant},
};

use agent_common::KernelOffsets;
use aya::maps::{MapData, RingBuf};

use super::{KernelError, ring_fill::RingFill};
use crate::{
    control::Control,
    process::{HeldChild, TargetError},
};

/// How often [`Mode::tick`] runs (and the ring buffer's fill level is published).
const TICK: Duration = Duration::from_millis(100);

/// The checks every kernel session makes before loading anything (root's powers; tracefs,
/// where aya reads tracepoint ids), and the kernel's structure offsets its programs read
/// (from BTF, for the mode's config).
pub fn prepare(what: &'static str) -> Result<KernelOffsets, KernelError> {
    super::require_root(what)?;
    super::ensure_tracefs()?;
    Ok(super::btf::resolve_offsets()?)
}

/// A mode's side of a session: what it does with the records of its ring buffer.
pub trait Mode {
    /// One record of the ring buffer (the mode's decoder).
    fn record(&mut self, rec: &[u8]);
    /// After every drain of the ring buffer (at least every [`Control::poll_ms`]), with the
    /// bytes drained.
    fn drained(&mut self, _bytes: u64) {}
    /// A second ring buffer whose wakeups end the wait too (`trace --stack`: the stack
    /// ring); the mode reads it itself (in [`Mode::drained`]).
    fn other_ring(&self) -> Option<BorrowedFd<'_>> {
        None
    }
    /// Every 100 ms, and once more when the session is stopped.
    fn tick(&mut self) {}
    /// `-- CMD` (process `pid`) ended.
    fn child_exited(&mut self, _pid: u32) {}
    /// True once the session should end for the mode's own reasons (a packet count, the
    /// traced processes gone, an output that failed).
    fn done(&self) -> bool {
        false
    }
}

/// What a mode hands over to start its session.
pub struct Setup<'c, P> {
    /// The attached programs: dropping them detaches them.
    pub programs: P,
    /// The ring buffer the programs write into.
    pub ring: RingBuf<MapData>,
    /// Its size, in bytes.
    pub ring_bytes: u32,
    /// `--duration`.
    pub duration: Option<Duration>,
    /// `-- CMD`, held before `exec`: released once the session is live.
    pub child: Option<&'c mut HeldChild>,
    /// How long the session goes on after `-- CMD` ended (its last records trail its exit);
    /// `None`: its end alone does not end the session.
    pub after_child: Option<Duration>,
}

/// A live kernel session.
pub struct Session<'c, P> {
    programs: Option<P>,
    ring: RingBuf<MapData>,
    fill: Option<RingFill>,
    ctl: Control,
    deadline: Option<Instant>,
    last_tick: Instant,
    child: Option<&'c mut HeldChild>,
    after_child: Option<Duration>,
    /// `-- CMD`'s status, and when it was seen.
    exited: Option<(ExitStatus, Instant)>,
}

impl<'c, P> Session<'c, P> {
    /// The session is live: lets `-- CMD` go (it is seen from its first syscall), starts
    /// the clock of `--duration` and arms `ctl` (the signals of the command line).
    pub fn start(setup: Setup<'c, P>, ctl: &Control) -> Result<Self, TargetError> {
        let Setup {
            programs,
            ring,
            ring_bytes,
            duration,
            mut child,
            after_child,
        } = setup;
        if let Some(c) = child.as_deref_mut() {
            c.release()?;
        }
        let fill = RingFill::new(&ring, u64::from(ring_bytes))
            .map_err(|e| tracing::debug!("ring buffer fill level unavailable: {e}"))
            .ok();
        if let Err(e) = ctl.arm() {
            tracing::warn!("cannot catch signals: {e}");
        }
        let now = Instant::now();
        Ok(Session {
            programs: Some(programs),
            ring,
            fill,
            ctl: ctl.clone(),
            deadline: duration.map(|d| now + d),
            last_tick: now,
            child,
            after_child,
            exited: None,
        })
    }

    /// Waits for records (up to [`Control::poll_ms`]), hands them to `mode`, and runs its
    /// periodic work; false once the session should end: stopped, `--duration` over, `--
    /// CMD` gone (see [`Setup::after_child`]) or `mode` done.
    pub fn poll(&mut self, mode: &mut impl Mode) -> io::Result<bool> {
        let pfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut pfds = [pfd(self.ring.as_raw_fd()), pfd(-1)];
        let n = match mode.other_ring() {
            Some(other) => {
                pfds[1] = pfd(other.as_raw_fd());
                2
            }
            None => 1,
        };
        // SAFETY: `n` valid pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), n, self.ctl.poll_ms()) };
        self.drain(mode);
        let now = Instant::now();
        let stopped = self.ctl.is_stopped();
        if stopped || now.duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            if let Some(f) = &self.fill {
                self.ctl.set_ring_fill(f.used(), f.size());
            }
            mode.tick();
        }
        if let Some(c) = self.child.as_deref_mut()
            && self.exited.is_none()
            && let Some(status) = c.try_wait()?
        {
            self.exited = Some((status, now));
            mode.child_exited(c.pid());
        }
        let child_gone = match (self.exited, self.after_child) {
            (Some((_, at)), Some(after)) => at.elapsed() >= after,
            _ => false,
        };
        let over = stopped || self.deadline.is_some_and(|d| now >= d) || child_gone;
        Ok(!over && !mode.done())
    }

    /// Hands every record waiting in the ring buffer to `mode`.
    pub fn drain(&mut self, mode: &mut impl Mode) {
        let mut bytes = 0;
        while let Some(item) = self.ring.next() {
            bytes += item.len() as u64;
            mode.record(&item);
        }
        mode.drained(bytes);
    }

    /// Gives `-- CMD` up to `grace` to end when the session was stopped before it (by a
    /// signal or `--duration`), so that its status can be passed on. Ctrl-C reached it too
    /// (same terminal process group); a command that goes on keeps running on its own, as
    /// after strace detaches.
    pub fn wait_child(&mut self, grace: Duration) {
        let Some(c) = self.child.as_deref_mut() else {
            return;
        };
        let until = Instant::now() + grace;
        while self.exited.is_none() && Instant::now() < until {
            if let Some(status) = c.try_wait().ok().flatten() {
                self.exited = Some((status, Instant::now()));
            } else {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Detaches the programs (no new records; those in the ring buffer stay to drain).
    pub fn detach(&mut self) {
        drop(self.programs.take());
    }

    /// `-- CMD`'s exit status, once it ended.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exited.map(|(s, _)| s)
    }
}
