//! The trace mode of a kernel session ([`crate::kernel::session`]): its programs' config,
//! the traced processes, and the `Tracer` that turns the ring buffer's records into
//! `model::Event`s, keeps the set of live traced processes (the session stops when they are
//! gone), reports lost records and resumes the processes the kernel paused.

use std::{
    collections::HashSet,
    io,
    os::fd::{AsFd as _, BorrowedFd},
    process::ExitStatus,
    time::Duration,
};

use agent_common::{
    Config, KernelOffsets, counter, paused, sys,
    trace::{FileKey, ProcEvent, maps, progs},
    traced,
};
use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
};
use thiserror::Error;

use super::{
    assemble::{self, Assembler},
    decode,
    tls::attach::{LibReport, TlsAttach},
    tls::conns::TlsConns,
};
use crate::{
    control::Control,
    kernel::{
        self, KernelError,
        session::{self, Mode, Session, Setup},
    },
    model::{Detail, Event},
    output::EventWriter,
    process::{self, HeldChild},
};

/// The syscalls `capagent trace` can report: id and name.
pub const SYSCALLS: &[(u16, &str)] = &[
    (sys::SOCKET, "socket"),
    (sys::CONNECT, "connect"),
    (sys::BIND, "bind"),
    (sys::LISTEN, "listen"),
    (sys::ACCEPT, "accept"),
    (sys::ACCEPT4, "accept4"),
    (sys::SENDTO, "sendto"),
    (sys::RECVFROM, "recvfrom"),
    (sys::SENDMSG, "sendmsg"),
    (sys::RECVMSG, "recvmsg"),
    (sys::SENDMMSG, "sendmmsg"),
    (sys::RECVMMSG, "recvmmsg"),
    (sys::READ, "read"),
    (sys::WRITE, "write"),
    (sys::READV, "readv"),
    (sys::WRITEV, "writev"),
    (sys::CLOSE, "close"),
    (sys::SHUTDOWN, "shutdown"),
    (sys::SOCKETPAIR, "socketpair"),
];

#[derive(Debug, Error)]
pub enum TraceError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Target(#[from] process::TargetError),
    #[error(
        "unknown event {0:?} (expected socket, connect, bind, listen, accept, send, recv, data, close, shutdown, or a syscall name)"
    )]
    UnknownEvent(String),
    #[error("nothing to trace: give --pid PID, --comm NAME, --all, or -- CMD")]
    NoTarget,
    #[error("--ring-kib must be a power of two of at least 4, not {0}")]
    RingSize(u32),
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// This architecture's syscall numbers for a `sys::X` id (accept is also reached through
/// accept4 on some architectures, which simply lack the older call).
fn syscall_numbers(id: u16) -> Vec<usize> {
    let nrs: &[libc::c_long] = match id {
        sys::SOCKET => &[libc::SYS_socket],
        sys::CONNECT => &[libc::SYS_connect],
        sys::BIND => &[libc::SYS_bind],
        sys::LISTEN => &[libc::SYS_listen],
        #[cfg(target_arch = "x86_64")]
        sys::ACCEPT => &[libc::SYS_accept],
        sys::ACCEPT4 => &[libc::SYS_accept4],
        sys::SENDTO => &[libc::SYS_sendto],
        sys::RECVFROM => &[libc::SYS_recvfrom],
        sys::SENDMSG => &[libc::SYS_sendmsg],
        sys::RECVMSG => &[libc::SYS_recvmsg],
        sys::SENDMMSG => &[libc::SYS_sendmmsg],
        sys::RECVMMSG => &[libc::SYS_recvmmsg],
        sys::READ => &[libc::SYS_read],
        sys::WRITE => &[libc::SYS_write],
        sys::READV => &[libc::SYS_readv],
        sys::WRITEV => &[libc::SYS_writev],
        sys::CLOSE => &[libc::SYS_close],
        sys::SHUTDOWN => &[libc::SYS_shutdown],
        sys::SOCKETPAIR => &[libc::SYS_socketpair],
        // `--tls` only (not an `--events` name).
        sys::MMAP_EXEC => &[libc::SYS_mmap],
        _ => &[],
    };
    nrs.iter()
        .map(|&n| n as usize)
        .filter(|&n| n < agent_common::SYSCALL_TABLE_LEN)
        .collect()
}

/// Which syscalls a list of `--events` names selects.
pub fn parse_events(names: &[String]) -> Result<Vec<u16>, TraceError> {
    if names.is_empty() {
        return Ok(SYSCALLS.iter().map(|&(id, _)| id).collect());
    }
    let mut out = Vec::new();
    for name in names {
        let name = name.trim();
        let ids: &[u16] = match name {
            "accept" => &[sys::ACCEPT, sys::ACCEPT4],
            // The calls that make sockets (as strace's %network has both).
            "socket" => &[sys::SOCKET, sys::SOCKETPAIR],
            "send" => &[
                sys::SENDTO,
                sys::SENDMSG,
                sys::SENDMMSG,
                sys::WRITE,
                sys::WRITEV,
            ],
            "recv" => &[
                sys::RECVFROM,
                sys::RECVMSG,
                sys::RECVMMSG,
                sys::READ,
                sys::READV,
            ],
            "data" => &[
                sys::SENDTO,
                sys::SENDMSG,
                sys::SENDMMSG,
                sys::WRITE,
                sys::WRITEV,
                sys::RECVFROM,
                sys::RECVMSG,
                sys::RECVMMSG,
                sys::READ,
                sys::READV,
            ],
            _ => match SYSCALLS.iter().find(|(_, n)| *n == name) {
                Some((id, _)) => std::slice::from_ref(id),
                None => return Err(TraceError::UnknownEvent(name.to_string())),
            },
        };
        for id in ids {
            if !out.contains(id) {
                out.push(*id);
            }
        }
    }
    Ok(out)
}

/// What to trace and how.
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    pub all: bool,
    /// `-- CMD ARGS`.
    pub command: Vec<String>,
    /// Where CMD's stdout goes.
    pub command_stdout: process::ChildStdout,
    pub follow_forks: bool,
    /// Syscall ids to report (see [`parse_events`]).
    pub syscalls: Vec<u16>,
    pub snaplen: u32,
    pub ring_bytes: u32,
    pub duration: Option<Duration>,
    /// Stop a traced process whose records fill half the ring buffer until the agent has
    /// drained it, instead of dropping records.
    pub lossless: bool,
    /// `--tls`: hook the TLS libraries of the traced processes and record their plaintext.
    pub tls: bool,
    /// `--tls-only`: hide the ciphertext records of connections that carry TLS plaintext.
    pub tls_only: bool,
    /// `--stack`: the user stack of each reported call.
    pub stack: bool,
    /// `--stack-size`: stack bytes copied per call.
    pub stack_size: u32,
    /// Size of the `STACKS` ring (`--stack-ring-kib`, hidden: for tests that fill it).
    pub stack_ring_bytes: u32,
}

/// `struct pt_regs` offsets of the user instruction, stack and frame pointers.
#[cfg(target_arch = "x86_64")]
const STACK_REGS: [u32; 3] = [16 * 8, 19 * 8, 4 * 8];
#[cfg(target_arch = "aarch64")]
const STACK_REGS: [u32; 3] = [32 * 8, 31 * 8, 29 * 8];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const STACK_REGS: [u32; 3] = [0; 3];

/// How the session ended.
#[derive(Debug, Default)]
pub struct TraceOutcome {
    /// Exit status of `-- CMD`.
    pub exit_status: Option<ExitStatus>,
    pub lost_events: u64,
    pub lost_bytes: u64,
    pub kernel_events: u64,
    pub read_errors: u64,
    /// `--tls`: the TLS libraries of the traced processes, hooked or not.
    pub tls_libs: Vec<LibReport>,
    /// `--stack`: stacks captured, dropped, unresolved frames.
    pub stacks: Option<super::stacks::StackCounts>,
}

/// Runs a trace session, handing every event to `sink` as it completes (and ticking it every
/// 100 ms, events or not), until `ctl` is stopped, the duration ends or the traced processes
/// are gone.
pub fn run(
    opts: &TraceOptions,
    ctl: &Control,
    sink: &mut dyn EventWriter,
) -> Result<TraceOutcome, TraceError> {
    if opts.pids.is_empty() && opts.comm.is_none() && !opts.all && opts.command.is_empty() {
        return Err(TraceError::NoTarget);
    }
    if opts.ring_bytes < 4096 || !opts.ring_bytes.is_power_of_two() {
        return Err(TraceError::RingSize(opts.ring_bytes / 1024));
    }
    kernel::require_root("capagent trace")?;
    for &pid in &opts.pids {
        process::check_pid(pid)?;
    }
    let comm_filter = opts.comm.as_deref().map(process::comm_filter).transpose()?;
    let config = config(opts, session::prepare("capagent trace")?, comm_filter);
    let _span = tracing::info_span!("trace").entered();
    let mut ebpf = kernel::load(&config, opts.ring_bytes, opts.stack_ring_bytes)?;

    // The maps userspace works with, taken out of the object (they stay alive while held).
    let mut traced: HashMap<MapData, u32, u8> = kernel::take_map(&mut ebpf, maps::TRACED)?;
    let ring: RingBuf<MapData> = kernel::take_map(&mut ebpf, maps::EVENTS)?;
    let mut tracer = Tracer::new(
        opts,
        sink,
        kernel::take_map(&mut ebpf, maps::COUNTERS)?,
        kernel::take_map(&mut ebpf, maps::PAUSED)?,
    );
    if opts.stack {
        tracer.stack_ring = Some(kernel::take_map(&mut ebpf, maps::STACKS)?);
        let mut pairing = super::stacks::Pairing::default();
        for &pid in opts.pids.iter() {
            pairing.unwinder.note_process(pid);
        }
        tracer.assembler.stacks = Some(pairing);
    }
    let mut trace_pid = |pid: u32, live: &mut HashSet<u32>| {
        live.insert(pid);
        traced
            .insert(pid, traced::ROOT, 0)
            .map_err(|source| KernelError::Map {
                name: maps::TRACED,
                source: Box::new(source),
            })
    };
    // Processes to trace, before any program is attached.
    let by_comm = opts.comm.as_deref().map(process::pids_by_comm);
    for &pid in opts.pids.iter().chain(by_comm.iter().flatten()) {
        trace_pid(pid, &mut tracer.live)?;
    }
    attach(&mut ebpf)?;
    // --tls: the TLS programs and their uprobes go with the attach manager, which hooks the
    // libraries of the processes traced now (later ones: on their exec and mmap records).
    let programs = if opts.tls {
        tracer.tls = Some(start_tls(ebpf, opts.all, &tracer.live)?);
        None
    } else {
        Some(ebpf)
    };
    // Start the command last, so it is traced from its first syscall.
    let mut child = None;
    if !opts.command.is_empty() {
        let held = HeldChild::spawn(&opts.command, opts.command_stdout)?;
        trace_pid(held.pid(), &mut tracer.live)?;
        child = Some(held);
    }
    let setup = Setup {
        programs,
        ring,
        ring_bytes: opts.ring_bytes,
        duration: opts.duration,
        child: child.as_mut(),
        after_child: None,
    };
    let mut session = Session::start(setup, ctl)?;
    tracing::info!("attached: tracing");
    while session.poll(&mut tracer)? {}

    // Drain what is left, then close pending calls.
    session.drain(&mut tracer);
    tracer.close();
    session.wait_child(Duration::from_millis(500));
    let exit_status = session.exit_status();
    drop(session); // detaches every program (but the TLS ones)
    tracer.finish_tls(); // detaches the TLS uprobes
    tracer.resume_paused();
    tracer.outcome(exit_status)
}

/// The file of an mmap or exec record (`--tls`): the kernel's device and inode number.
fn proc_file(p: &ProcEvent) -> FileKey {
    FileKey {
        dev: u64::from(p.child_pid),
        ino: p.hdr.sock.ino,
    }
}

/// The programs' configuration for `opts`.
fn config(opts: &TraceOptions, offsets: KernelOffsets, comm_filter: Option<[u8; 16]>) -> Config {
    let mut config = Config::new();
    config.offsets = offsets;
    config.snaplen = opts.snaplen;
    config.trace_all = opts.all as u8;
    config.follow_forks = opts.follow_forks as u8;
    config.pause = opts.lossless as u8;
    // Wake up well before a paused process would wait for the next poll.
    config.wakeup_bytes = (256 * 1024).min(opts.ring_bytes / 8);
    config.self_pid = std::process::id();
    for &id in &opts.syscalls {
        for nr in syscall_numbers(id) {
            config.sys_table[nr] = id as u8;
        }
    }
    if opts.tls {
        tls_config(&mut config, &opts.syscalls);
    }
    if opts.stack {
        config.stack = 1;
        config.stack_size = (opts.stack_size.min(agent_common::STACK_MAX as u32)) & !7;
        config.stack_regs = STACK_REGS;
        // Executable mappings are reported (and, lossless, the process paused until the
        // agent has read its mappings): a process gone before its stacks are unwound is
        // still symbolized.
        for nr in syscall_numbers(sys::MMAP_EXEC) {
            config.sys_table[nr] = sys::MMAP_EXEC as u8;
        }
    }
    if let Some(f) = comm_filter {
        config.comm_match = 1;
        config.comm_filter = f;
    }
    config
}

/// `--tls` in the programs' configuration: the TLS uprobes record; every send/recv-type
/// syscall names the socket of the TLS call it is made in, also when `--events` leaves it
/// out (then it is looked at for that only); `mmap` reports the executable mappings of
/// files not examined yet.
fn tls_config(config: &mut Config, selected: &[u16]) {
    config.tls = 1;
    let data = parse_events(&["data".to_string()]).unwrap_or_default();
    for id in data.into_iter().filter(|id| !selected.contains(id)) {
        for nr in syscall_numbers(id) {
            config.sys_table[nr] = id as u8 | agent_common::SYS_TLS_ONLY;
        }
    }
    for nr in syscall_numbers(sys::MMAP_EXEC) {
        config.sys_table[nr] = sys::MMAP_EXEC as u8;
    }
}

/// Attaches the programs: process life (fork, exec, exit), then the syscalls.
fn attach(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    for (prog, tp) in [
        (progs::TASK_NEWTASK, ("task", "task_newtask")),
        (progs::SCHED_PROCESS_EXEC, ("sched", "sched_process_exec")),
        (progs::SCHED_PROCESS_EXIT, ("sched", "sched_process_exit")),
    ] {
        kernel::attach_tracepoint(ebpf, prog, tp.0, tp.1)?;
    }
    kernel::attach_raw_tracepoint(ebpf, progs::SYS_ENTER, "sys_enter")?;
    kernel::attach_raw_tracepoint(ebpf, progs::SYS_EXIT, "sys_exit")
}

/// The trace mode of a session: kernel records to events for the sink, the set of live
/// traced processes, the lost-records reports, and the processes the kernel paused.
struct Tracer<'s> {
    assembler: Assembler<assemble::ThreadComm>,
    sink: &'s mut dyn EventWriter,
    /// The events of the record being handled (reused).
    events: Vec<Event>,
    /// The traced processes still alive (when the session ends with them).
    live: HashSet<u32>,
    stop_when_gone: bool,
    /// `-- CMD` has not ended yet.
    child_running: bool,
    counters: PerCpuArray<MapData, u64>,
    paused: HashMap<MapData, u32, u8>,
    /// The lost events and bytes reported so far.
    reported_lost: (u64, u64),
    output_error: Option<io::Error>,
    /// `--tls`: the connections that carry TLS, to mark (and with `--tls-only` hide) their
    /// ciphertext records.
    tls_conns: Option<TlsConns>,
    /// `--tls`: the attach manager (it owns the programs then), until the end.
    tls: Option<TlsAttach>,
    /// `--tls`: its reports, once it is finished.
    tls_libs: Vec<LibReport>,
    /// `--tls`: the processes the kernel had paused for a rescan (`paused::TLS`) when the
    /// current drain began.
    tls_paused_before: Vec<u32>,
    /// `--tls`: the processes whose exec or mmap record the current drain handled.
    tls_handled: Vec<u32>,
    /// `--stack`: the `STACKS` ring.
    stack_ring: Option<RingBuf<MapData>>,
}

impl<'s> Tracer<'s> {
    fn new(
        opts: &TraceOptions,
        sink: &'s mut dyn EventWriter,
        counters: PerCpuArray<MapData, u64>,
        paused: HashMap<MapData, u32, u8>,
    ) -> Self {
        Tracer {
            // The kernel names every record with its process's name at the time of the call
            // (the thread group leader's comm): no /proc lookup (it would be racy with exec).
            assembler: Assembler::new(crate::clock::boot_to_wall_offset_ns(), assemble::ThreadComm),
            sink,
            events: Vec::new(),
            live: HashSet::new(),
            stop_when_gone: opts.comm.is_none() && !opts.all,
            child_running: !opts.command.is_empty(),
            counters,
            paused,
            reported_lost: (0, 0),
            output_error: None,
            tls_conns: opts.tls.then(|| TlsConns::new(opts.tls_only)),
            tls: None,
            tls_libs: Vec::new(),
            tls_paused_before: Vec::new(),
            tls_handled: Vec::new(),
            stack_ring: None,
        }
    }
}

/// `--tls`: the attach manager, owning the loaded object, with the libraries of the processes
/// traced now hooked (every process's with `--all`).
fn start_tls(ebpf: Ebpf, all: bool, live: &HashSet<u32>) -> Result<TlsAttach, TraceError> {
    let mut tls = TlsAttach::new(ebpf)?;
    let started = std::time::Instant::now();
    let pids: Vec<u32> = if all {
        process::all_pids()
    } else {
        live.iter().copied().collect()
    };
    for &pid in &pids {
        tls.scan(pid);
    }
    tracing::info!(
        processes = pids.len(),
        uprobes = tls.attached(),
        ms = started.elapsed().as_millis() as u64,
        "tls: scanned the traced processes"
    );
    Ok(tls)
}

impl Tracer<'_> {
    /// Keeps the set of live traced processes up to date, then hands the event on (marked
    /// when it is TLS ciphertext; not at all when `--tls-only` hides it).
    fn emit(&mut self, ev: &mut Event) {
        if let Some(t) = &mut self.tls_conns
            && !t.pass(ev)
        {
            return;
        }
        match &ev.detail {
            Detail::Fork { child_pid } if self.stop_when_gone => {
                self.live.insert(*child_pid);
            }
            Detail::Exit => {
                self.live.remove(&ev.task.pid);
            }
            _ => {}
        }
        if let Err(e) = self.sink.write_event(ev) {
            self.output_error.get_or_insert(e);
        }
    }

    fn counter(&self, idx: u32) -> u64 {
        self.counters
            .get(&idx, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Reports the records the kernel lost since the last report, if any.
    fn report_lost(&mut self) {
        let lost = (
            self.counter(counter::LOST_EVENTS),
            self.counter(counter::LOST_BYTES),
        );
        if lost != self.reported_lost {
            let now = self.assembler.wall_ns(crate::clock::boot_ns());
            let mut ev = assemble::lost_event(
                now,
                lost.0 - self.reported_lost.0,
                lost.1 - self.reported_lost.1,
            );
            self.reported_lost = lost;
            self.emit(&mut ev);
        }
    }

    /// `--stack`: the stack of a call record with a stack id, paired before the record is
    /// assembled (its events then carry the frames). The kernel wrote the stack at the
    /// call's entry, before the call's records: if it is not held yet, it is in the ring.
    /// Exec records note the new program's mappings.
    fn pair_stack(&mut self, rec: &decode::Record) {
        let Some(pairing) = &mut self.assembler.stacks else {
            return;
        };
        let hdr = match rec {
            decode::Record::Sock(ev) => &ev.hdr,
            decode::Record::Data { ev, .. } => &ev.hdr,
            decode::Record::Tls { ev, .. } => &ev.hdr,
            decode::Record::Proc(p) if p.hdr.syscall == sys::EXEC => {
                pairing.unwinder.note_process(p.hdr.pid);
                return;
            }
            decode::Record::Proc(p) if p.hdr.syscall == sys::MMAP_EXEC => {
                pairing.unwinder.note_process(p.hdr.pid);
                if self.tls.is_none() {
                    // Resumed once this drain ends (see `drained`).
                    self.tls_handled.push(p.hdr.pid);
                }
                return;
            }
            _ => return,
        };
        if hdr.stack_id == 0 {
            return;
        }
        let (tid, id) = (hdr.tid, hdr.stack_id);
        if !pairing.has(tid, id) {
            self.drain_stacks(Some((tid, id)));
        }
        let Some(pairing) = &mut self.assembler.stacks else {
            return;
        };
        if !pairing.resolve(tid, id) {
            pairing.missing();
        }
    }

    /// `--stack`: unwinds the stacks waiting in the `STACKS` ring, held for their calls'
    /// records: every one at every poll (see `drained`: the main ring was just read, so
    /// these are mostly of calls still in progress), and up to the stack of call `until`
    /// when a record needs it (not further: the stacks of the many calls whose records are
    /// still in the main ring would outnumber what is held).
    fn drain_stacks(&mut self, until: Option<(u32, u32)>) {
        let (Some(pairing), Some(ring)) = (&mut self.assembler.stacks, &mut self.stack_ring) else {
            return;
        };
        while let Some(item) = ring.next() {
            // Copied out: the kernel has the room back before the unwinding.
            let raw = super::stacks::decode(&item);
            drop(item);
            match raw {
                Some(s) => {
                    // A process's first stack: its mappings, while it is alive.
                    if !pairing.unwinder.knows(s.pid) {
                        pairing.unwinder.note_process(s.pid);
                    }
                    let key = (s.tid, s.stack_id);
                    pairing.hold(s);
                    if until == Some(key) {
                        return;
                    }
                }
                None => tracing::warn!("undecodable stack record"),
            }
        }
    }

    /// Continues every process the kernel paused (at the end: nothing more is handled).
    fn resume_paused(&mut self) {
        let pids: Vec<u32> = self.paused.keys().filter_map(Result::ok).collect();
        self.resume(&pids);
    }

    /// Continues processes `pids` the kernel paused (the ring buffer was filling up; `--tls`:
    /// it exec'd or mapped an executable file).
    fn resume(&mut self, pids: &[u32]) {
        for &pid in pids {
            let _ = self.paused.remove(&pid);
            // SAFETY: kill(2) has no memory effects.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
    }

    /// At the end: closes the pending calls and reports the last losses.
    fn close(&mut self) {
        for mut ev in self.assembler.flush() {
            self.emit(&mut ev);
        }
        self.report_lost();
        self.resume_paused();
    }

    /// Detaches the TLS uprobes and keeps the manager's reports.
    fn finish_tls(&mut self) {
        if let Some(tls) = self.tls.take() {
            self.tls_libs = tls.finish(self.live.iter().copied());
        }
    }

    /// A traced process exec'd or mapped an executable file it had not mapped before
    /// (`--tls`; the kernel paused it): hooks its new TLS libraries before it goes on.
    /// Returns true for a record that is only that (not an event).
    /// A TLS record names the libraries of its process in the summary: a process whose
    /// libraries had all been examined for others was not paused for them.
    fn rescan(&mut self, rec: &decode::Record) -> bool {
        let Some(tls) = &mut self.tls else {
            // `--stack` without `--tls`: an mmap record is only that (see `pair_stack`).
            return matches!(rec, decode::Record::Proc(p) if p.hdr.syscall == sys::MMAP_EXEC);
        };
        match rec {
            decode::Record::Proc(p) if p.hdr.syscall == sys::MMAP_EXEC => {
                tls.scan(p.hdr.pid);
                tls.seen(proc_file(p));
                self.tls_handled.push(p.hdr.pid);
                true
            }
            decode::Record::Proc(p) if p.hdr.syscall == sys::EXEC => {
                tls.exec(p.hdr.pid);
                tls.seen(proc_file(p));
                self.tls_handled.push(p.hdr.pid);
                false
            }
            decode::Record::Tls { ev, .. } => {
                tls.tls_call(ev.hdr.pid);
                false
            }
            _ => false,
        }
    }

    fn outcome(mut self, exit_status: Option<ExitStatus>) -> Result<TraceOutcome, TraceError> {
        let dropped = self.counter(counter::STACK_LOST);
        let stacks = self.assembler.stacks.take();
        if let Some(e) = self.output_error {
            return Err(TraceError::Output(e));
        }
        Ok(TraceOutcome {
            exit_status,
            lost_events: self.reported_lost.0,
            lost_bytes: self.reported_lost.1,
            kernel_events: self.counter(counter::EVENTS),
            read_errors: self.counter(counter::READ_ERRORS),
            tls_libs: self.tls_libs,
            stacks: stacks.map(|mut p| {
                let mut c = p.finish();
                c.dropped = dropped;
                c
            }),
        })
    }
}

impl Mode for Tracer<'_> {
    fn record(&mut self, rec: &[u8]) {
        match decode::decode(rec) {
            Ok(rec) => {
                self.pair_stack(&rec);
                if !self.rescan(&rec) {
                    self.assembler.push_into(&rec, &mut self.events);
                }
            }
            Err(e) => tracing::warn!("undecodable kernel record: {e}"),
        }
        let mut events = std::mem::take(&mut self.events);
        for mut ev in events.drain(..) {
            self.emit(&mut ev);
        }
        self.events = events;
    }

    fn drained(&mut self, _bytes: u64) {
        // `--stack`: the stack ring too (a process paused for it goes on below).
        self.drain_stacks(None);
        // Paused because a ring buffer was filling up (the main one or the stack ring): both
        // were just drained, go on.
        // Paused for a rescan (--tls): the kernel writes the exec or mmap record before the
        // `PAUSED` entry, so the process goes on once that record is handled (the files it
        // mapped hooked): when this drain handled it, or when the entry was there before
        // this drain began. Else the record may still be in the ring: wait for the next drain
        // (within a poll).
        let mut go = Vec::new();
        let mut wait = Vec::new();
        for (pid, why) in self.paused.iter().filter_map(Result::ok) {
            if why != paused::TLS
                || self.tls_paused_before.contains(&pid)
                || self.tls_handled.contains(&pid)
            {
                go.push(pid);
            } else {
                wait.push(pid);
            }
        }
        self.resume(&go);
        self.tls_paused_before = wait;
        self.tls_handled.clear();
    }

    fn other_ring(&self) -> Option<BorrowedFd<'_>> {
        self.stack_ring.as_ref().map(|r| r.as_fd())
    }

    fn tick(&mut self) {
        if let Err(e) = self.sink.tick() {
            self.output_error.get_or_insert(e);
        }
        self.report_lost();
        if self.stop_when_gone {
            self.live.retain(|&pid| process::alive(pid));
        }
    }

    fn child_exited(&mut self, pid: u32) {
        self.child_running = false;
        self.live.remove(&pid);
    }

    fn done(&self) -> bool {
        self.output_error.is_some()
            || (self.stop_when_gone && self.live.is_empty() && !self.child_running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_expand_groups_and_names() {
        let v = parse_events(&["connect".into(), "send".into()]).unwrap();
        assert_eq!(
            v,
            vec![
                sys::CONNECT,
                sys::SENDTO,
                sys::SENDMSG,
                sys::SENDMMSG,
                sys::WRITE,
                sys::WRITEV
            ]
        );
        assert_eq!(parse_events(&[]).unwrap().len(), SYSCALLS.len());
        assert_eq!(
            parse_events(&["accept".into()]).unwrap(),
            vec![sys::ACCEPT, sys::ACCEPT4]
        );
        // `socket`: the calls that make sockets; `socketpair` alone is that call only.
        assert_eq!(
            parse_events(&["socket".into()]).unwrap(),
            vec![sys::SOCKET, sys::SOCKETPAIR]
        );
        assert_eq!(
            parse_events(&["socketpair".into(), "close".into()]).unwrap(),
            vec![sys::SOCKETPAIR, sys::CLOSE]
        );
        let err = parse_events(&["bogus".into()]).unwrap_err().to_string();
        assert!(err.starts_with("unknown event \"bogus\""), "{err}");
    }

    #[test]
    fn every_syscall_has_its_name_and_number() {
        for &(id, name) in SYSCALLS {
            assert_eq!(sys::name(id), name);
            assert_eq!(syscall_numbers(id).len(), 1, "{name}");
        }
        assert_eq!(syscall_numbers(sys::READ), vec![libc::SYS_read as usize]);
    }

    #[test]
    fn tls_config_adds_mmap_and_the_data_syscalls_unreported() {
        let table = |events: &[&str], tls: bool| {
            let names: Vec<String> = events.iter().map(|s| s.to_string()).collect();
            let opts = TraceOptions {
                syscalls: parse_events(&names).unwrap(),
                tls,
                ..Default::default()
            };
            config(&opts, KernelOffsets::ZERO, None)
        };
        let nr = |n: libc::c_long| n as usize;
        let plain = table(&["connect", "read"], false);
        assert_eq!(plain.tls, 0);
        assert_eq!(plain.sys_table[nr(libc::SYS_mmap)], 0);
        assert_eq!(plain.sys_table[nr(libc::SYS_write)], 0);
        assert_eq!(plain.sys_table[nr(libc::SYS_read)], sys::READ as u8);

        let tls = table(&["connect", "read"], true);
        assert_eq!(tls.tls, 1);
        assert_eq!(tls.sys_table[nr(libc::SYS_mmap)], sys::MMAP_EXEC as u8);
        assert_eq!(tls.sys_table[nr(libc::SYS_connect)], sys::CONNECT as u8);
        assert_eq!(tls.sys_table[nr(libc::SYS_read)], sys::READ as u8);
        let only = agent_common::SYS_TLS_ONLY;
        assert_eq!(tls.sys_table[nr(libc::SYS_write)], sys::WRITE as u8 | only);
        assert_eq!(
            tls.sys_table[nr(libc::SYS_recvfrom)],
            sys::RECVFROM as u8 | only
        );
        assert_eq!(tls.sys_table[nr(libc::SYS_close)], 0);
        // Every syscall selected: nothing is entered for TLS only.
        let all = table(&[], true);
        assert!(all.sys_table.iter().all(|&v| v & only == 0));
        assert_eq!(all.sys_table[nr(libc::SYS_sendmsg)], sys::SENDMSG as u8);
    }
}
