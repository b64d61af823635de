//! Everything about the kernel side: BTF offsets, loading the eBPF object, capability checks,
//! and the runtime of the sessions that read a ring buffer ([`session`]).

pub mod btf;
pub mod ring_fill;
pub mod session;

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, RawTracePoint, TracePoint, UProbe},
};
use thiserror::Error;

/// The eBPF object built by `agent/build.rs` (empty when built without bpf-linker).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/capagent-ebpf"));

#[derive(Debug, Error)]
pub enum KernelError {
    #[error("{0} needs root (CAP_BPF, CAP_PERFMON): run it with sudo")]
    NotRoot(&'static str),
    #[error(
        "this capagent was built without its eBPF programs (bpf-linker was missing): run `cargo xtask setup`, then rebuild"
    )]
    NoObject,
    #[error(transparent)]
    Btf(#[from] btf::BtfError),
    #[error("tracefs is not available at /sys/kernel/tracing and could not be mounted: {0}")]
    Tracefs(std::io::Error),
    #[error("loading the eBPF programs failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("eBPF program {0} is missing from the object")]
    MissingProgram(String),
    #[error("eBPF map {0} is missing from the object")]
    MissingMap(&'static str),
    #[error("the kernel refused eBPF program {name}")]
    Program {
        name: String,
        source: Box<ProgramError>,
    },
    #[error("attaching to {category}:{tp} failed (does this kernel have it?)")]
    Attach {
        category: String,
        tp: String,
        source: Box<ProgramError>,
    },
    #[error("eBPF map {name}")]
    Map {
        name: &'static str,
        source: Box<aya::maps::MapError>,
    },
}

/// Fails with a one-line message unless the agent runs with root's powers.
pub fn require_root(what: &'static str) -> Result<(), KernelError> {
    if unsafe { libc::geteuid() } != 0 {
        return Err(KernelError::NotRoot(what));
    }
    Ok(())
}

/// Makes sure tracefs is mounted (aya reads tracepoint ids from it).
pub fn ensure_tracefs() -> Result<(), KernelError> {
    let events = Path::new("/sys/kernel/tracing/events");
    if events.exists() || Path::new("/sys/kernel/debug/tracing/events").exists() {
        return Ok(());
    }
    let r = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 || !events.exists() {
        return Err(KernelError::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Loads the eBPF object for `capagent trace`: `config` written into its `CONFIG` global and
/// the `EVENTS` ring buffer sized to `ring_bytes` (the maps of `--tls` as small as can be
/// when `config.tls` is 0).
/// `stack_ring_bytes`: the size of the `STACKS` ring (`--stack`; the least there is without).
pub fn load(
    config: &agent_common::Config,
    ring_bytes: u32,
    stack_ring_bytes: u32,
) -> Result<Ebpf, KernelError> {
    use agent_common::trace::{CONFIG_GLOBAL, maps};
    let stack_ring = if config.stack == 0 {
        page_size()
    } else {
        stack_ring_bytes.max(page_size())
    };
    // One stack buffer per possible CPU (indexed by CPU number).
    let cpus = if config.stack == 0 {
        1
    } else {
        aya::util::nr_cpus().map_or(256, |n| n as u32)
    };
    let mut sized = vec![
        (maps::EVENTS, ring_bytes),
        (maps::STACKS, stack_ring),
        (maps::STACK_BUF, cpus),
    ];
    if config.tls == 0 {
        sized.extend(maps::TLS.iter().map(|&m| (m, 1)));
    }
    load_mode(CONFIG_GLOBAL, config, TRACE_MAPS, &sized)
}

/// The `trace --tls` uprobe programs of a loaded trace object ([`load`]), loaded into the
/// kernel and ready to attach with `UProbe::attach` (per library file, all processes; the
/// programs keep to the traced ones). The bpf cookie of each attachment:
/// - `enter` (uprobe) and `exit` (uretprobe) on the same read/write function: its
///   `agent_common::tls_fn` id (`SSL_write` → `tls_fn::SSL_WRITE`...);
/// - `set_fd` on `SSL_set_fd`/`SSL_set_rfd`/`SSL_set_wfd`: `tls_cookie::OPENSSL_SET_FD`,
///   on `gnutls_transport_set_int2`: `tls_cookie::GNUTLS_SET_INT2`;
/// - `free` on `SSL_free`/`gnutls_deinit`: `tls_cookie::FREE`.
pub struct TlsPrograms<'a> {
    pub enter: &'a mut UProbe,
    pub exit: &'a mut UProbe,
    pub set_fd: &'a mut UProbe,
    pub free: &'a mut UProbe,
}

/// [`TlsPrograms`] of `ebpf`, loaded (once: a later call finds them loaded).
pub fn tls_programs(ebpf: &mut Ebpf) -> Result<TlsPrograms<'_>, KernelError> {
    let [enter, exit, set_fd, free] = uprobes(ebpf, agent_common::trace::progs::TLS)?;
    Ok(TlsPrograms {
        enter,
        exit,
        set_fd,
        free,
    })
}

/// The `trace --tls` uprobe programs for Go binaries (`crypto/tls.(*Conn).Write` and
/// `Read`, Go 1.17+ on x86-64), loaded: `enter` at each function's entry and `ret` at every
/// RET instruction of it (`trace::tls::go::TlsHooks::probes`), both with the function's
/// `agent_common::tls_fn` id (`GO_WRITE`, `GO_READ`) as bpf cookie. Never a uretprobe.
pub struct GoTlsPrograms<'a> {
    pub enter: &'a mut UProbe,
    pub ret: &'a mut UProbe,
}

/// [`GoTlsPrograms`] of `ebpf`, loaded (once).
pub fn go_tls_programs(ebpf: &mut Ebpf) -> Result<GoTlsPrograms<'_>, KernelError> {
    let [enter, ret] = uprobes(ebpf, agent_common::trace::progs::GO_TLS)?;
    Ok(GoTlsPrograms { enter, ret })
}

/// The uprobe programs `names` of `ebpf`, in that order, loaded (once: a later call finds
/// them loaded).
fn uprobes<'a, const N: usize>(
    ebpf: &'a mut Ebpf,
    names: &[&str],
) -> Result<[&'a mut UProbe; N], KernelError> {
    let mut found: [Option<&mut UProbe>; N] = [const { None }; N];
    for (name, program) in ebpf.programs_mut() {
        let Some(i) = names.iter().position(|p| *p == name) else {
            continue;
        };
        let is_loaded = program.fd().is_ok();
        let refused = |source| KernelError::Program {
            name: name.to_string(),
            source: Box::new(source),
        };
        let uprobe: &mut UProbe = program.try_into().map_err(refused)?;
        if !is_loaded {
            uprobe.load().map_err(refused)?;
        }
        found[i] = Some(uprobe);
    }
    let mut out = Vec::with_capacity(N);
    for (i, p) in found.into_iter().enumerate() {
        out.push(p.ok_or_else(|| KernelError::MissingProgram(names[i].to_string()))?);
    }
    // N programs in, N out.
    Ok(out
        .try_into()
        .unwrap_or_else(|_| unreachable!("{N} programs")))
}

/// Loads the eBPF object for one mode: `config` written into the global `global`, the maps
/// sized as [`map_sizes`] says for `used` and `sized`.
fn load_mode<T: aya::Pod>(
    global: &str,
    config: &T,
    used: &[&str],
    sized: &[(&'static str, u32)],
) -> Result<Ebpf, KernelError> {
    if EBPF_OBJECT.is_empty() {
        return Err(KernelError::NoObject);
    }
    let sizes = map_sizes(used, sized);
    let mut loader = EbpfLoader::new();
    loader.override_global(global, config, true);
    for (name, n) in &sizes {
        loader.map_max_entries(name, *n);
    }
    loader
        .load(EBPF_OBJECT)
        .map_err(|e| KernelError::Load(Box::new(e)))
}

/// The maps `capagent trace`'s programs use.
pub const TRACE_MAPS: &[&str] = agent_common::trace::maps::ALL;
/// The maps `capagent capture`'s programs use (packets, filter, owners).
pub const CAPTURE_MAPS: &[&str] = agent_common::capture::maps::ALL;
/// The maps `capagent intercept`'s cgroup programs use.
pub const INTERCEPT_MAPS: &[&str] = agent_common::intercept::maps::ALL;

/// `max_entries` for the maps of the object when one mode loads it: `sized` as given, every
/// other map `used` as the object declares it, and every map the mode does not use as small
/// as the kernel allows (a page for a ring buffer, one entry otherwise), so that a mode does
/// not pin the other modes' memory (the whole object is loaded, and aya creates every map of
/// it). The global data sections (`.rodata`, `.bss`...) are left alone.
pub fn map_sizes(used: &[&str], sized: &[(&'static str, u32)]) -> Vec<(String, u32)> {
    let Ok(obj) = aya_obj::Object::parse(EBPF_OBJECT) else {
        // aya reports the unparsable object when loading it.
        return sized.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    };
    let mut out: Vec<(String, u32)> = sized.iter().map(|(n, v)| (n.to_string(), *v)).collect();
    for (name, map) in &obj.maps {
        if name.starts_with('.') || used.contains(&name.as_str()) {
            continue;
        }
        let min = if map.map_type() == aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32
        {
            page_size()
        } else {
            1
        };
        out.push((name.clone(), min));
    }
    out
}

fn page_size() -> u32 {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u32 } else { 4096 }
}

/// One of the object's maps, taken out of it in its typed form.
pub fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(|source| KernelError::Map {
        name,
        source: Box::new(source),
    })
}

/// Program `prog` of the object, of type `P`, loaded into the kernel.
fn loaded<'a, P>(
    ebpf: &'a mut Ebpf,
    prog: &str,
    load: fn(&mut P) -> Result<(), ProgramError>,
) -> Result<&'a mut P, KernelError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(prog)
        .ok_or_else(|| KernelError::MissingProgram(prog.to_string()))?;
    // A program attached to several hooks is loaded once.
    let is_loaded = program.fd().is_ok();
    let program: &mut P = program.try_into().map_err(|source| KernelError::Program {
        name: prog.to_string(),
        source: Box::new(source),
    })?;
    if !is_loaded {
        load(program).map_err(|source| KernelError::Program {
            name: prog.to_string(),
            source: Box::new(source),
        })?;
    }
    Ok(program)
}

fn attach_error(category: &str, tp: &str) -> impl FnOnce(ProgramError) -> KernelError {
    move |source| KernelError::Attach {
        category: category.to_string(),
        tp: tp.to_string(),
        source: Box::new(source),
    }
}

/// A tracepoint program of the object attached to `category:tp`. The link lives as long as
/// the `Ebpf` (dropping it detaches everything).
pub fn attach_tracepoint(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    tp: &str,
) -> Result<(), KernelError> {
    let program = loaded::<TracePoint>(ebpf, prog, TracePoint::load)?;
    let _span = tracing::debug_span!("attach", category, tp).entered();
    program
        .attach(category, tp)
        .map_err(attach_error(category, tp))?;
    tracing::debug!(prog, "attached");
    Ok(())
}

/// A raw tracepoint program of the object attached to `tp` (e.g. `sys_enter`).
pub fn attach_raw_tracepoint(ebpf: &mut Ebpf, prog: &str, tp: &str) -> Result<(), KernelError> {
    let program = loaded::<RawTracePoint>(ebpf, prog, RawTracePoint::load)?;
    let _span = tracing::debug_span!("attach", tp).entered();
    program
        .attach(tp)
        .map_err(attach_error("raw_tracepoint", tp))?;
    tracing::debug!(prog, "attached");
    Ok(())
}

/// Loads the eBPF object for `capagent capture`: `config` written into `CAPTURE_CONFIG`, the
/// `PACKETS` ring buffer sized to `ring_bytes`; without `pids` (no process is selected by pid) `CAPTURE_PIDS` stays empty and is made as
/// small as it can be.
pub fn load_capture(
    config: &agent_common::CaptureConfig,
    ring_bytes: u32,
    pids: bool,
) -> Result<Ebpf, KernelError> {
    use agent_common::capture::{CONFIG_GLOBAL, maps};
    let mut sized = vec![(maps::PACKETS, ring_bytes)];
    if !pids {
        sized.push((maps::CAPTURE_PIDS, 1));
    }
    load_mode(CONFIG_GLOBAL, config, CAPTURE_MAPS, &sized)
}

/// The TC classifier program `prog` of the object, loaded into the kernel (attach it with
/// `SchedClassifier::attach_with_options`).
pub fn loaded_classifier<'a>(
    ebpf: &'a mut Ebpf,
    prog: &str,
) -> Result<&'a mut aya::programs::SchedClassifier, KernelError> {
    loaded::<aya::programs::SchedClassifier>(ebpf, prog, aya::programs::SchedClassifier::load)
}

/// The XDP program `prog` of the object, loaded into the kernel.
pub fn loaded_xdp<'a>(
    ebpf: &'a mut Ebpf,
    prog: &str,
) -> Result<&'a mut aya::programs::Xdp, KernelError> {
    loaded::<aya::programs::Xdp>(ebpf, prog, aya::programs::Xdp::load)
}

/// Loads the eBPF object for `capagent intercept --pid/--cgroup/-- CMD`: `config` written
/// into `INTERCEPT_CONFIG`; the other modes' maps are made as small as they can be.
pub fn load_intercept(config: &agent_common::InterceptConfig) -> Result<Ebpf, KernelError> {
    // Without --udp, the UDP maps are as small as the others a mode does not use.
    let udp = config.udp_port4 != 0 || config.udp_port6 != 0;
    let unused: Vec<(&'static str, u32)> = if udp {
        Vec::new()
    } else {
        agent_common::intercept::maps::UDP
            .iter()
            .map(|m| (*m, 1))
            .collect()
    };
    load_mode(
        agent_common::intercept::CONFIG_GLOBAL,
        config,
        INTERCEPT_MAPS,
        &unused,
    )
}

/// The cgroup sock_addr program `prog` of the object, loaded into the kernel.
pub fn loaded_sock_addr<'a>(
    ebpf: &'a mut Ebpf,
    prog: &str,
) -> Result<&'a mut aya::programs::CgroupSockAddr, KernelError> {
    loaded::<aya::programs::CgroupSockAddr>(ebpf, prog, aya::programs::CgroupSockAddr::load)
}

/// The sock_ops program `prog` of the object, loaded into the kernel.
pub fn loaded_sock_ops<'a>(
    ebpf: &'a mut Ebpf,
    prog: &str,
) -> Result<&'a mut aya::programs::SockOps, KernelError> {
    loaded::<aya::programs::SockOps>(ebpf, prog, aya::programs::SockOps::load)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_and_program_belongs_to_a_mode_and_the_others_shrink() {
        if EBPF_OBJECT.is_empty() {
            return; // built without bpf-linker: no object to look at
        }
        let obj = aya_obj::Object::parse(EBPF_OBJECT).unwrap();
        let modes = [TRACE_MAPS, CAPTURE_MAPS, INTERCEPT_MAPS];
        for name in obj.maps.keys().filter(|n| !n.starts_with('.')) {
            let owners = modes.iter().filter(|m| m.contains(&name.as_str())).count();
            assert_eq!(owners, 1, "map {name} must be used by exactly one mode");
        }
        let trace_progs: Vec<&str> = agent_common::trace::progs::ALL
            .iter()
            .chain(agent_common::trace::progs::TLS)
            .chain(agent_common::trace::progs::GO_TLS)
            .copied()
            .collect();
        let progs = [
            &trace_progs[..],
            agent_common::capture::progs::ALL,
            agent_common::intercept::progs::ALL,
        ];
        for name in obj.programs.keys() {
            let owners = progs.iter().filter(|m| m.contains(&name.as_str())).count();
            assert_eq!(
                owners, 1,
                "program {name} must be named in exactly one mode's progs"
            );
        }
        for name in progs.iter().flat_map(|p| p.iter()) {
            assert!(
                obj.programs.contains_key(*name),
                "no program {name} in the object"
            );
        }
        for name in modes.iter().flat_map(|m| m.iter()) {
            assert!(obj.maps.contains_key(*name), "no map {name} in the object");
        }
        let sizes = map_sizes(CAPTURE_MAPS, &[("PACKETS", 1 << 25)]);
        let size = |n: &str| sizes.iter().find(|(m, _)| m == n).map(|(_, v)| *v);
        assert_eq!(size("PACKETS"), Some(1 << 25));
        assert_eq!(size("EVENTS"), Some(page_size()));
        assert_eq!(size("ARGS"), Some(1));
        assert_eq!(size("ICPT_PIDS"), Some(1));
        assert_eq!(size("SOCK_OWNERS"), None, "a used map keeps its size");
        assert_eq!(size("TLS_CALLS"), Some(1));
        assert_eq!(size("GO_CALLS"), Some(1));
    }
}
