//! Packet capture (`capagent capture`): TC classifier programs on the chosen interfaces copy
//! the first bytes of every packet into a ring buffer of their own; this module resolves the
//! interfaces, attaches the programs ([`attach`]) and, as the capture mode of a kernel
//! session ([`crate::kernel::session`]), hands every packet of the ring buffer to a
//! [`PacketWriter`]. A filter expression ([`filter`]) is compiled to classic BPF
//! and evaluated in the kernel before packets are copied. [`session`] is the sink of `capagent capture`: it attributes
//! packets to processes ([`owner`]), selects them (`--pid`/`--comm`) and writes them
//! (pcapng [`pcapng`] or one text line [`text`]).

pub mod attach;
pub mod command;
pub mod filter;
pub mod hygiene;
pub mod owner;
pub mod pcapng;
pub mod session;
pub mod text;

use std::{ffi::CString, io, time::Duration};

use agent_common::{
    CaptureConfig, FILTER_MAX_INSNS, FilterInsn, FilterRef, IfCounters, PACKET_MAX, PacketEvent,
    SockOwner,
    capture::{maps, progs},
    owner_src, select,
};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, PerCpuHashMap, PerCpuValues, RingBuf};
use thiserror::Error;

pub use crate::model::packet::{IfaceTotals, Owner, Packet};
use crate::{
    kernel::{
        self, KernelError,
        session::{Mode, Session, Setup},
    },
    output::PacketWriter,
    process::{self, HeldChild, TargetError},
};
use filter::{Filter, FilterError};

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("no such interface: {0}")]
    NoInterface(String),
    #[error(
        "{iface}: cannot capture on interfaces of type ARPHRD {arphrd} (only Ethernet-like and layer-3 IP devices)"
    )]
    UnsupportedLink { iface: String, arphrd: u16 },
    #[error("give at least one interface with -i IFACE")]
    NoInterfaces,
    #[error("--snaplen must be between 1 and {PACKET_MAX}, not {0}")]
    Snaplen(u32),
    #[error("--ring-kib must be a power of two of at least 4, not {0}")]
    RingSize(u32),
    #[error("CAPAGENT_TC_MODE must be tcx, clsact or auto, not {0:?}")]
    TcMode(String),
    #[error("attaching to {iface} ({dir}) failed: {reason}")]
    Attach {
        iface: String,
        dir: &'static str,
        reason: String,
    },
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("eBPF map CAPTURE_STATS: {0}")]
    Stats(aya::maps::MapError),
    #[error("loading the filter into the kernel: {0}")]
    FilterMap(aya::maps::MapError),
    #[error("writing output: {0}")]
    Output(io::Error),
    #[error("cannot create {}: {source}", path.display())]
    Open {
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    TlsKeylog(#[from] crate::mitm::keylog::TlsKeylogError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

/// What the TC programs see of an interface's packets, hence the link type written in its
/// pcapng Interface Description Block and the one filter expressions are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkType {
    /// An Ethernet header first: Ethernet-like devices (veth, bridges, taps...) and `lo`,
    /// whose packets carry a 14-byte all-zero Ethernet header.
    Ethernet,
    /// The IP header first, no link-layer header: layer-3 devices (tun, wireguard, ipip,
    /// sit, ppp...).
    Raw,
}

impl LinkType {
    /// The pcapng/pcap `LINKTYPE_*` value.
    pub fn linktype(self) -> u16 {
        match self {
            LinkType::Ethernet => 1,
            LinkType::Raw => 101,
        }
    }

    /// The link type of an interface of type `arphrd` (`ARPHRD_*`, from SIOCGIFHWADDR), or
    /// `None` for types whose TC view capagent does not know.
    pub fn of_arphrd(arphrd: u16) -> Option<LinkType> {
        const ARPHRD_RAWIP: u16 = 519;
        match arphrd {
            libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => Some(LinkType::Ethernet),
            libc::ARPHRD_NONE
            | ARPHRD_RAWIP
            | libc::ARPHRD_PPP
            | libc::ARPHRD_TUNNEL
            | libc::ARPHRD_TUNNEL6
            | libc::ARPHRD_SIT => Some(LinkType::Raw),
            _ => None,
        }
    }
}

/// A captured interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub ifindex: u32,
    pub loopback: bool,
    pub linktype: LinkType,
}

impl Iface {
    /// Looks `name` up in this process's network namespace.
    pub fn resolve(name: &str) -> Result<Iface, CaptureError> {
        let no = || CaptureError::NoInterface(name.to_string());
        let c = CString::new(name).map_err(|_| no())?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
        if ifindex == 0 || name.len() >= libc::IFNAMSIZ {
            return Err(no());
        }
        let loopback = is_loopback(name);
        let arphrd = arphrd(name).unwrap_or(if loopback {
            libc::ARPHRD_LOOPBACK
        } else {
            libc::ARPHRD_ETHER
        });
        let linktype = LinkType::of_arphrd(arphrd).ok_or(CaptureError::UnsupportedLink {
            iface: name.to_string(),
            arphrd,
        })?;
        Ok(Iface {
            name: name.to_string(),
            ifindex,
            loopback,
            linktype,
        })
    }
}

/// Runs the interface ioctl `req` on `name` and returns the filled `ifreq`.
fn if_ioctl(name: &str, req: libc::c_ulong) -> Option<libc::ifreq> {
    // SAFETY: a plain socket, closed below; `ifr` is zeroed and its name NUL-terminated
    // (names are shorter than IFNAMSIZ, checked by the caller).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        let r = libc::ioctl(fd, req as _, &mut ifr);
        libc::close(fd);
        (r >= 0).then_some(ifr)
    }
}

/// True when the interface has IFF_LOOPBACK (SIOCGIFFLAGS).
fn is_loopback(name: &str) -> bool {
    match if_ioctl(name, libc::SIOCGIFFLAGS) {
        // SAFETY: SIOCGIFFLAGS fills the flags member.
        Some(ifr) => unsafe { ifr.ifr_ifru.ifru_flags as libc::c_int & libc::IFF_LOOPBACK != 0 },
        None => name == "lo",
    }
}

/// The interface's hardware type (`ARPHRD_*`, SIOCGIFHWADDR).
fn arphrd(name: &str) -> Option<u16> {
    // SAFETY: SIOCGIFHWADDR fills the hwaddr member.
    if_ioctl(name, libc::SIOCGIFHWADDR).map(|ifr| unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_family })
}

/// What to capture and how.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub ifaces: Vec<String>,
    pub snaplen: u32,
    pub ring_bytes: u32,
    pub duration: Option<Duration>,
    pub count: Option<u64>,
    pub select: Selection,
    /// Ingress through an XDP program instead of TC.
    pub xdp: bool,
    /// Forced attachment mode (`CAPAGENT_TC_MODE`); `None`: tcx when possible, else clsact.
    pub tc_mode: Option<attach::Mode>,
    /// Filter expression (tcpdump's syntax); `None`: every packet.
    pub filter: Option<String>,
}

/// Whose packets to keep (`--pid`, `--comm`, `-- CMD`); everybody's when empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    /// Children of selected processes are selected too (always with `-- CMD`).
    pub follow_forks: bool,
}

impl Selection {
    pub fn is_active(&self) -> bool {
        !self.pids.is_empty() || self.comm.is_some()
    }
}

/// A process name from a NUL-padded kernel `comm`.
pub fn comm_str(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// Decodes one `PACKETS` record (a [`PacketEvent`] and its bytes).
pub fn decode(rec: &[u8]) -> Option<Packet<'_>> {
    let hdr_len = size_of::<PacketEvent>();
    if rec.len() < hdr_len {
        return None;
    }
    // SAFETY: PacketEvent is plain old data and `rec` holds at least its size.
    let ev: PacketEvent = unsafe { std::ptr::read_unaligned(rec.as_ptr().cast()) };
    let data = rec.get(hdr_len..hdr_len + ev.cap_len as usize)?;
    Some(Packet {
        ts_ns: ev.ts_ns,
        cookie: ev.cookie,
        ifindex: ev.ifindex,
        orig_len: ev.orig_len,
        dir: ev.dir,
        ino: ev.ino,
        owner: (ev.owner_src == owner_src::OWNER).then_some(ev.owner),
        data,
    })
}

/// Totals of a capture session, per interface in the order given.
#[derive(Debug, Default)]
pub struct CaptureOutcome {
    pub packets: u64,
    pub bytes: u64,
    pub per_iface: Vec<IfaceTotals>,
    /// How the programs were attached.
    pub mode: Option<attach::Mode>,
    /// The exit status of the `-- CMD` process.
    pub exit_status: Option<std::process::ExitStatus>,
}

impl CaptureOutcome {
    pub fn dropped(&self) -> u64 {
        self.per_iface.iter().map(|t| t.dropped).sum()
    }

    pub fn filtered(&self) -> u64 {
        self.per_iface.iter().map(|t| t.filtered).sum()
    }
}

/// Compiles the filter expression of `opts` for the link types of `ifaces` (before anything
/// is loaded); `None` without an expression.
pub fn compile_filter(
    opts: &CaptureOptions,
    ifaces: &[Iface],
) -> Result<Option<Filter>, CaptureError> {
    let Some(expr) = &opts.filter else {
        return Ok(None);
    };
    Ok(Some(Filter::compile(
        expr,
        ifaces.iter().map(|i| i.linktype),
    )?))
}

/// Writes the programs of `filter` into `FILTER_INSNS` (one slot per link type) and points
/// every interface at its program in `FILTER_IFACES`. The maps stay in `ebpf` (the programs
/// are loaded afterwards and need them).
fn load_filter(
    ebpf: &mut aya::Ebpf,
    filter: &Filter,
    ifaces: &[Iface],
) -> Result<(), CaptureError> {
    let mut slots: Vec<(LinkType, FilterRef)> = Vec::new();
    {
        let map = ebpf
            .map_mut(maps::FILTER_INSNS)
            .ok_or(KernelError::MissingMap(maps::FILTER_INSNS))?;
        let mut insns: Array<&mut MapData, FilterInsn> =
            Array::try_from(map).map_err(CaptureError::FilterMap)?;
        for (slot, lt) in filter.linktypes().enumerate() {
            let prog = filter.program(lt).unwrap_or_default();
            let start = (slot * FILTER_MAX_INSNS) as u32;
            for (i, insn) in prog.iter().enumerate() {
                insns
                    .set(start + i as u32, insn, 0)
                    .map_err(CaptureError::FilterMap)?;
            }
            let len = prog.len() as u32;
            slots.push((lt, FilterRef { start, len }));
        }
    }
    let map = ebpf
        .map_mut(maps::FILTER_IFACES)
        .ok_or(KernelError::MissingMap(maps::FILTER_IFACES))?;
    let mut refs: BpfHashMap<&mut MapData, u32, FilterRef> =
        BpfHashMap::try_from(map).map_err(CaptureError::FilterMap)?;
    for iface in ifaces {
        if let Some((_, r)) = slots.iter().find(|(lt, _)| *lt == iface.linktype) {
            refs.insert(iface.ifindex, r, 0)
                .map_err(CaptureError::FilterMap)?;
        }
    }
    Ok(())
}

/// Checks the options and resolves the interfaces (before anything is loaded).
pub fn resolve(opts: &CaptureOptions) -> Result<Vec<Iface>, CaptureError> {
    if opts.ifaces.is_empty() {
        return Err(CaptureError::NoInterfaces);
    }
    if opts.snaplen == 0 || opts.snaplen as usize > PACKET_MAX {
        return Err(CaptureError::Snaplen(opts.snaplen));
    }
    if opts.ring_bytes < 4096 || !opts.ring_bytes.is_power_of_two() {
        return Err(CaptureError::RingSize(opts.ring_bytes / 1024));
    }
    let mut out: Vec<Iface> = Vec::new();
    for name in &opts.ifaces {
        let iface = Iface::resolve(name)?;
        if !out.iter().any(|i| i.ifindex == iface.ifindex) {
            out.push(iface);
        }
    }
    Ok(out)
}

/// Runs a capture session on `ifaces` (from [`resolve`]) with `filter` (from
/// [`compile_filter`]), handing every packet to `sink` with its wall-clock timestamp, until
/// `ctl` is stopped, the duration, the packet count, or the end of `child` (`-- CMD`, held
/// before exec: released once the capture is live).
pub fn run(
    opts: &CaptureOptions,
    ifaces: &[Iface],
    filter: Option<&Filter>,
    ctl: &crate::control::Control,
    sink: &mut dyn PacketWriter,
    child: Option<&mut HeldChild>,
) -> Result<CaptureOutcome, CaptureError> {
    let offsets = kernel::session::prepare("capagent capture")?;
    let config = config(opts, offsets, filter.is_some())?;
    let _span = tracing::info_span!("capture").entered();
    // Filters a killed capagent left (clsact mode) go before anything is attached.
    hygiene::sweep_leftovers();
    let mut attached = attach::Attached::new(
        kernel::load_capture(&config, opts.ring_bytes, !opts.select.pids.is_empty())?,
        opts.tc_mode,
    );
    if let Some(f) = filter {
        load_filter(attached.ebpf(), f, ifaces)?;
    }
    let ring: RingBuf<MapData> = kernel::take_map(attached.ebpf(), maps::PACKETS)?;
    let stats = interface_stats(attached.ebpf(), ifaces)?;
    let _owners = track_owners(attached.ebpf(), &opts.select)?;
    attached.attach_all(ifaces, opts.xdp)?;
    announce(opts, ifaces, &attached);
    let mode = attached.mode;
    let setup = Setup {
        programs: attached,
        ring,
        ring_bytes: opts.ring_bytes,
        duration: opts.duration,
        child,
        // The last packets of the command (its FIN, the peer's ACK) are a few microseconds
        // behind its exit.
        after_child: Some(Duration::from_millis(100)),
    };
    let mut session = Session::start(setup, ctl)?;
    let mut capturer = Capturer {
        sink,
        filtering: filter.is_some(),
        stats,
        ifaces,
        offset: crate::clock::boot_to_wall_offset_ns(),
        limit: opts.count.unwrap_or(u64::MAX),
        packets: 0,
        bytes: 0,
        output_error: None,
    };
    while session.poll(&mut capturer).map_err(CaptureError::Output)? {}
    // Detach first (no new packets), then drain what is left.
    session.detach();
    session.drain(&mut capturer);
    let outcome = CaptureOutcome {
        packets: capturer.packets,
        bytes: capturer.bytes,
        per_iface: capturer.totals(),
        mode,
        exit_status: session.exit_status(),
    };
    match capturer.output_error {
        Some(e) => Err(CaptureError::Output(e)),
        None => Ok(outcome),
    }
}

/// The programs' configuration for `opts`.
fn config(
    opts: &CaptureOptions,
    offsets: agent_common::KernelOffsets,
    filtering: bool,
) -> Result<CaptureConfig, CaptureError> {
    let sel = &opts.select;
    let mut config = CaptureConfig {
        snaplen: opts.snaplen,
        wakeup_bytes: (256 * 1024).min(opts.ring_bytes / 8),
        offsets,
        self_pid: std::process::id(),
        follow_forks: u8::from(sel.follow_forks),
        filter: u32::from(filtering),
        ..CaptureConfig::new()
    };
    if sel.is_active() {
        config.select = select::PROCESSES;
    }
    if let Some(name) = &sel.comm {
        config.comm_match = 1;
        config.comm = process::comm_filter(name)?;
    }
    Ok(config)
}

/// `CAPTURE_STATS`, taken out of the object with a zeroed entry per interface.
fn interface_stats(
    ebpf: &mut aya::Ebpf,
    ifaces: &[Iface],
) -> Result<PerCpuHashMap<MapData, u32, IfCounters>, CaptureError> {
    let mut stats: PerCpuHashMap<MapData, u32, IfCounters> =
        kernel::take_map(ebpf, maps::CAPTURE_STATS)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| CaptureError::Output(e))?;
    for iface in ifaces {
        let zeros = PerCpuValues::try_from(vec![IfCounters::default(); cpus])
            .map_err(|e| CaptureError::Stats(aya::maps::MapError::from(e)))?;
        stats
            .insert(iface.ifindex, zeros, 0)
            .map_err(CaptureError::Stats)?;
    }
    Ok(stats)
}

/// The maps of socket owners and selected pids, held while the capture runs.
type OwnerMaps = (
    BpfHashMap<MapData, u64, SockOwner>,
    BpfHashMap<MapData, u32, u8>,
);

/// Socket owners: new sockets from the tracepoints (attached first), then the sockets that
/// exist now from /proc (without overwriting what the tracepoints found); and the pids
/// selected.
fn track_owners(ebpf: &mut aya::Ebpf, sel: &Selection) -> Result<OwnerMaps, CaptureError> {
    for tp in ["sys_exit_socket", "sys_exit_accept", "sys_exit_accept4"] {
        kernel::attach_tracepoint(ebpf, progs::SOCK_EXIT, "syscalls", tp)?;
    }
    kernel::attach_tracepoint(ebpf, progs::NEWTASK, "task", "task_newtask")?;
    let mut owners: BpfHashMap<MapData, u64, SockOwner> =
        kernel::take_map(ebpf, maps::SOCK_OWNERS)?;
    let seeded = seed_owners(&mut owners);
    tracing::debug!(seeded, "socket owners from /proc");
    let mut pids: BpfHashMap<MapData, u32, u8> = kernel::take_map(ebpf, maps::CAPTURE_PIDS)?;
    for &pid in &sel.pids {
        pids.insert(pid, 1, 0).map_err(|source| CaptureError::Map {
            name: maps::CAPTURE_PIDS,
            source,
        })?;
    }
    Ok((owners, pids))
}

/// Says, like tcpdump's "listening on", that the capture is live.
fn announce(opts: &CaptureOptions, ifaces: &[Iface], attached: &attach::Attached) {
    let names: Vec<&str> = ifaces.iter().map(|i| i.name.as_str()).collect();
    // XDP the driver refused in native mode runs in generic mode: said, since it costs a
    // socket buffer per packet like TC does.
    let xdp_ifaces = ifaces.iter().filter(|i| !i.loopback).count();
    let generic = match attached.xdp_generic.len() {
        0 => String::new(),
        n if n == xdp_ifaces => ", xdp: generic".to_string(),
        _ => format!(", xdp: generic on {}", attached.xdp_generic.join(", ")),
    };
    eprintln!(
        "capagent: capturing on {} ({}{}), snaplen {}{generic}",
        names.join(", "),
        if opts.xdp { "xdp ingress, egress " } else { "" },
        match attached.mode {
            Some(attach::Mode::Clsact) => "clsact",
            _ => "tcx",
        },
        opts.snaplen
    );
}

/// The capture mode of a session: packet records to the sink, counted, up to `--count`.
struct Capturer<'a> {
    sink: &'a mut dyn PacketWriter,
    /// A filter expression is in use.
    filtering: bool,
    stats: PerCpuHashMap<MapData, u32, IfCounters>,
    ifaces: &'a [Iface],
    /// CLOCK_BOOTTIME to wall clock.
    offset: i64,
    limit: u64,
    packets: u64,
    bytes: u64,
    output_error: Option<io::Error>,
}

impl Capturer<'_> {
    /// The kernel's counters since the start, per interface in the order given.
    fn totals(&self) -> Vec<IfaceTotals> {
        self.ifaces
            .iter()
            .map(|iface| {
                let c = self
                    .stats
                    .get(&iface.ifindex, 0)
                    .map(|v| {
                        v.iter().fold(IfCounters::default(), |a, c| IfCounters {
                            packets: a.packets + c.packets,
                            dropped: a.dropped + c.dropped,
                            filtered: a.filtered + c.filtered,
                        })
                    })
                    .unwrap_or_default();
                IfaceTotals {
                    ifindex: iface.ifindex,
                    submitted: c.packets,
                    dropped: c.dropped,
                    filtered: c.filtered,
                }
            })
            .collect()
    }
}

impl Mode for Capturer<'_> {
    fn record(&mut self, rec: &[u8]) {
        if self.packets >= self.limit || self.output_error.is_some() {
            return;
        }
        let Some(p) = decode(rec) else {
            tracing::warn!("undecodable packet record ({} bytes)", rec.len());
            return;
        };
        self.packets += 1;
        self.bytes += u64::from(p.orig_len);
        if let Err(e) = self
            .sink
            .write_packet(&p, p.ts_ns.saturating_add_signed(self.offset), None)
        {
            self.output_error = Some(e);
        }
    }

    fn drained(&mut self, _bytes: u64) {
        if self.output_error.is_none()
            && let Err(e) = self.sink.tick()
        {
            self.output_error = Some(e);
        }
        if self.output_error.is_none()
            && self.sink.wants_totals()
            && let Err(e) = self.sink.totals(&self.totals(), self.filtering)
        {
            self.output_error = Some(e);
        }
    }

    fn done(&self) -> bool {
        self.packets >= self.limit
    }
}

/// Puts the owner of every socket open now (from /proc) into `SOCK_OWNERS`, leaving
/// entries the tracepoints already made alone. Returns how many were added.
fn seed_owners(map: &mut BpfHashMap<MapData, u64, SockOwner>) -> usize {
    const BPF_NOEXIST: u64 = 1;
    let mut n = 0;
    for (ino, o) in owner::socket_owners(None) {
        let mut comm = [0u8; agent_common::TASK_COMM_LEN];
        for (d, s) in comm.iter_mut().zip(o.comm.bytes().take(15)) {
            *d = s;
        }
        let v = SockOwner {
            pid: o.pid,
            tid: o.pid,
            comm,
        };
        if map.insert(u64::from(ino), v, BPF_NOEXIST).is_ok() {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_header_and_data() {
        let ev = PacketEvent {
            ts_ns: 5,
            cookie: 9,
            ifindex: 3,
            orig_len: 100,
            cap_len: 4,
            dir: agent_common::packet_dir::INGRESS,
            owner_src: owner_src::OWNER,
            _pad: [0; 2],
            ino: 77,
            owner: SockOwner {
                pid: 42,
                tid: 43,
                comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            },
        };
        let mut rec = vec![0u8; size_of::<PacketEvent>()];
        // SAFETY: rec holds a PacketEvent's size.
        unsafe { std::ptr::write_unaligned(rec.as_mut_ptr().cast(), ev) };
        rec.extend_from_slice(&[1, 2, 3, 4]);
        let p = decode(&rec).unwrap();
        assert_eq!((p.ts_ns, p.cookie, p.ifindex, p.orig_len), (5, 9, 3, 100));
        assert_eq!(p.data, &[1, 2, 3, 4]);
        assert_eq!(p.ino, 77);
        let o = p.owner.unwrap();
        assert_eq!(
            (o.pid, o.tid, comm_str(&o.comm)),
            (42, 43, "curl".to_string())
        );
        assert!(decode(&rec[..rec.len() - 1]).is_none());
        assert!(decode(&rec[..10]).is_none());
    }

    #[test]
    fn link_types() {
        assert_eq!(
            LinkType::of_arphrd(libc::ARPHRD_ETHER),
            Some(LinkType::Ethernet)
        );
        assert_eq!(LinkType::of_arphrd(libc::ARPHRD_NONE), Some(LinkType::Raw));
        assert_eq!(LinkType::of_arphrd(libc::ARPHRD_CAN), None);
        assert_eq!(LinkType::Raw.linktype(), 101);
    }

    #[test]
    fn unknown_interface_is_one_line() {
        let opts = CaptureOptions {
            ifaces: vec!["nosuchif0".into()],
            snaplen: 96,
            ring_bytes: 1 << 20,
            duration: None,
            count: None,
            select: Selection::default(),
            xdp: false,
            tc_mode: None,
            filter: None,
        };
        let e = resolve(&opts).unwrap_err().to_string();
        assert_eq!(e, "no such interface: nosuchif0");
        let lo = Iface::resolve("lo").unwrap();
        assert!(lo.loopback);
        assert_eq!(lo.linktype, LinkType::Ethernet);
    }
}
