//! The trace session: load and attach the programs, choose the traced processes, drain the
//! ring buffer into `model::Event`s, and stop on signal, duration or when the traced
//! processes are gone.

use std::{
    collections::HashSet,
    io,
    os::fd::AsRawFd as _,
    process::ExitStatus,
    time::{Duration, Instant},
};

use agent_common::{Config, counter, sys, traced};
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use thiserror::Error;

use super::{
    assemble::{self, Assembler},
    decode,
};
use crate::{
    control::Control,
    kernel::{self, KernelError, ring_fill::RingFill},
    model::{Detail, Event},
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
}

/// How the session ended.
#[derive(Debug, Default)]
pub struct TraceOutcome {
    /// Exit status of `-- CMD`.
    pub exit_status: Option<ExitStatus>,
    pub lost_events: u64,
    pub lost_bytes: u64,
    pub kernel_events: u64,
    pub read_errors: u64,
}

/// Hands every record waiting in the ring buffer to the assembler and the complete events to
/// `emit`; returns the bytes drained.
fn drain<C: assemble::CommLookup>(
    ring: &mut RingBuf<MapData>,
    assembler: &mut Assembler<C>,
    emit: &mut dyn FnMut(&Event),
) -> u64 {
    let mut events = Vec::new();
    let mut bytes = 0;
    while let Some(item) = ring.next() {
        bytes += item.len() as u64;
        match decode::decode(&item) {
            Ok(rec) => assembler.push_into(&rec, &mut events),
            Err(e) => tracing::warn!("undecodable kernel record: {e}"),
        }
        drop(item);
        for ev in events.drain(..) {
            emit(&ev);
        }
    }
    bytes
}

/// Continues the processes the kernel stopped because the ring buffer was filling up (the
/// caller has just drained it).
fn resume_paused(paused: &mut HashMap<MapData, u32, u8>) {
    let pids: Vec<u32> = paused.keys().filter_map(Result::ok).collect();
    for pid in pids {
        let _ = paused.remove(&pid);
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
    }
}

/// Where [`run`] hands the events.
pub trait EventSink {
    /// One event, as it completes.
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    /// Called every 100 ms while tracing, events or not (to flush files).
    fn idle(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<F: FnMut(&Event) -> io::Result<()>> EventSink for F {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self(ev)
    }
}

/// Runs a trace session, handing every event to `sink` as it completes, until `ctl` is
/// stopped, the duration ends or the traced processes are gone.
pub fn run(
    opts: &TraceOptions,
    ctl: &Control,
    sink: &mut dyn EventSink,
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
    kernel::ensure_tracefs()?;

    let mut config = Config::new();
    config.offsets = kernel::btf::resolve_offsets().map_err(KernelError::from)?;
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
    if let Some(f) = comm_filter {
        config.comm_match = 1;
        config.comm_filter = f;
    }
    let _span = tracing::info_span!("trace").entered();
    let mut ebpf = kernel::load(&config, opts.ring_bytes)?;

    // The maps userspace works with, taken out of the object (they stay alive while held).
    let mut traced_map: HashMap<MapData, u32, u8> = kernel::take_map(&mut ebpf, "TRACED")?;
    let mut ring: RingBuf<MapData> = kernel::take_map(&mut ebpf, "EVENTS")?;
    let counters: PerCpuArray<MapData, u64> = kernel::take_map(&mut ebpf, "COUNTERS")?;
    let mut paused: HashMap<MapData, u32, u8> = kernel::take_map(&mut ebpf, "PAUSED")?;
    let mut trace_pid = |pid: u32| {
        traced_map
            .insert(pid, traced::ROOT, 0)
            .map_err(|source| KernelError::Map {
                name: "TRACED",
                source: Box::new(source),
            })
    };

    // Processes to trace, before any program is attached.
    let mut live: HashSet<u32> = HashSet::new();
    let mut roots = opts.pids.clone();
    if let Some(name) = &opts.comm {
        roots.extend(process::pids_by_comm(name));
    }
    for pid in roots {
        trace_pid(pid)?;
        live.insert(pid);
    }

    for (prog, tp) in [
        ("task_newtask", ("task", "task_newtask")),
        ("sched_process_exec", ("sched", "sched_process_exec")),
        ("sched_process_exit", ("sched", "sched_process_exit")),
    ] {
        kernel::attach_tracepoint(&mut ebpf, prog, tp.0, tp.1)?;
    }
    kernel::attach_raw_tracepoint(&mut ebpf, "sys_enter", "sys_enter")?;
    kernel::attach_raw_tracepoint(&mut ebpf, "sys_exit", "sys_exit")?;

    // Start the command last, so it is traced from its first syscall.
    let mut child = None;
    if !opts.command.is_empty() {
        let mut held = HeldChild::spawn(&opts.command, opts.command_stdout)?;
        trace_pid(held.pid())?;
        live.insert(held.pid());
        held.release()?;
        child = Some(held);
    }

    let read_counter =
        |idx: u32| -> u64 { counters.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0) };

    let fill = RingFill::new(&ring, u64::from(opts.ring_bytes))
        .map_err(|e| tracing::debug!("ring buffer fill level unavailable: {e}"))
        .ok();
    ctl.arm();
    tracing::info!("attached: tracing");
    let started = Instant::now();
    let deadline = opts.duration.map(|d| started + d);
    let stop_when_gone = opts.comm.is_none() && !opts.all;
    // The kernel names every record with its process's name at the time of the call (the
    // thread group leader's comm), so no /proc lookup is needed (it would be racy with exec).
    let mut assembler =
        Assembler::new(crate::clock::boot_to_wall_offset_ns(), assemble::ThreadComm);
    let mut outcome = TraceOutcome::default();
    let mut reported_lost = (0u64, 0u64);
    let mut last_check = Instant::now();
    let mut drained_since_check = 0u64;
    let mut output_error = None;

    // Keeps the set of live traced processes up to date, then hands the event on.
    let emit = |ev: &Event, live: &mut HashSet<u32>, sink: &mut dyn EventSink| -> io::Result<()> {
        match &ev.detail {
            Detail::Fork { child_pid } if stop_when_gone => {
                live.insert(*child_pid);
            }
            Detail::Exit => {
                live.remove(&ev.task.pid);
            }
            _ => {}
        }
        sink.event(ev)
    };
    let now_wall = |assembler: &Assembler<_>| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        assembler.wall_ns((ts.tv_sec * 1_000_000_000 + ts.tv_nsec) as u64)
    };

    loop {
        let mut pfd = libc::pollfd {
            fd: ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        unsafe { libc::poll(&mut pfd, 1, ctl.poll_ms()) };
        drained_since_check += drain(&mut ring, &mut assembler, &mut |ev| {
            if let Err(e) = emit(ev, &mut live, sink) {
                output_error.get_or_insert(e);
            }
        });
        // A paused process left at least half the ring buffer behind it: look for paused
        // processes once that much has been drained (and on the periodic check below).
        if drained_since_check >= u64::from(config.wakeup_bytes) {
            drained_since_check = 0;
            resume_paused(&mut paused);
        }
        if output_error.is_some() {
            break;
        }
        let now = Instant::now();
        if now.duration_since(last_check) >= Duration::from_millis(100) || ctl.is_stopped() {
            last_check = now;
            if let Some(f) = &fill {
                ctl.set_ring_fill(f.used(), f.size());
            }
            if let Err(e) = sink.idle() {
                output_error.get_or_insert(e);
            }
            let lost = (
                read_counter(counter::LOST_EVENTS),
                read_counter(counter::LOST_BYTES),
            );
            if lost != reported_lost {
                let ev = assemble::lost_event(
                    now_wall(&assembler),
                    lost.0 - reported_lost.0,
                    lost.1 - reported_lost.1,
                );
                reported_lost = lost;
                if let Err(e) = emit(&ev, &mut live, sink) {
                    output_error.get_or_insert(e);
                }
            }
            if stop_when_gone {
                live.retain(|&pid| process::alive(pid));
            }
            resume_paused(&mut paused);
        }
        if ctl.is_stopped() || deadline.is_some_and(|d| now >= d) {
            break;
        }
        if let Some(held) = child.as_mut()
            && outcome.exit_status.is_none()
            && let Some(status) = held.try_wait()?
        {
            outcome.exit_status = Some(status);
            live.remove(&held.pid());
        }
        if stop_when_gone
            && live.is_empty()
            && child.as_ref().is_none_or(|_| outcome.exit_status.is_some())
        {
            break;
        }
    }

    // Drain what is left, then close pending calls.
    drain(&mut ring, &mut assembler, &mut |ev| {
        if let Err(e) = emit(ev, &mut live, sink) {
            output_error.get_or_insert(e);
        }
    });
    for ev in assembler.flush() {
        if let Err(e) = emit(&ev, &mut live, sink) {
            output_error.get_or_insert(e);
        }
    }
    outcome.lost_events = read_counter(counter::LOST_EVENTS);
    outcome.lost_bytes = read_counter(counter::LOST_BYTES);
    if (outcome.lost_events, outcome.lost_bytes) != reported_lost {
        let ev = assemble::lost_event(
            now_wall(&assembler),
            outcome.lost_events - reported_lost.0,
            outcome.lost_bytes - reported_lost.1,
        );
        if let Err(e) = emit(&ev, &mut live, sink) {
            output_error.get_or_insert(e);
        }
    }
    outcome.kernel_events = read_counter(counter::EVENTS);
    outcome.read_errors = read_counter(counter::READ_ERRORS);
    resume_paused(&mut paused);
    if let Some(mut held) = child
        && outcome.exit_status.is_none()
    {
        // Stopped by a signal or --duration. Ctrl-C reached the command too (same terminal
        // process group): give it a moment to exit so its status can be passed on; a command
        // that goes on keeps running on its own, as after strace detaches.
        let grace = Instant::now() + Duration::from_millis(500);
        while outcome.exit_status.is_none() && Instant::now() < grace {
            outcome.exit_status = held.try_wait().ok().flatten();
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    drop(ebpf); // detaches every program
    resume_paused(&mut paused);
    if let Some(e) = output_error {
        return Err(TraceError::Output(e));
    }
    Ok(outcome)
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
}
