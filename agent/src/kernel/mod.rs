//! Everything about the kernel side: BTF offsets, loading the eBPF object, capability checks.

pub mod btf;
pub mod ring_fill;

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    programs::{ProgramError, RawTracePoint, TracePoint},
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

/// Loads the eBPF object with `config` written into its `CONFIG` global and the ring buffer
/// sized to `ring_bytes`.
pub fn load(config: &agent_common::Config, ring_bytes: u32) -> Result<Ebpf, KernelError> {
    if EBPF_OBJECT.is_empty() {
        return Err(KernelError::NoObject);
    }
    EbpfLoader::new()
        .override_global("CONFIG", config, true)
        .map_max_entries("EVENTS", ring_bytes)
        .load(EBPF_OBJECT)
        .map_err(|e| KernelError::Load(Box::new(e)))
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
/// `PACKETS` ring buffer sized to `ring_bytes`.
pub fn load_capture(
    config: &agent_common::CaptureConfig,
    ring_bytes: u32,
) -> Result<Ebpf, KernelError> {
    if EBPF_OBJECT.is_empty() {
        return Err(KernelError::NoObject);
    }
    EbpfLoader::new()
        .override_global("CAPTURE_CONFIG", config, true)
        .map_max_entries("PACKETS", ring_bytes)
        .load(EBPF_OBJECT)
        .map_err(|e| KernelError::Load(Box::new(e)))
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
/// into `INTERCEPT_CONFIG`; the other modes' ring buffers are made as small as they can be.
pub fn load_intercept(config: &agent_common::InterceptConfig) -> Result<Ebpf, KernelError> {
    if EBPF_OBJECT.is_empty() {
        return Err(KernelError::NoObject);
    }
    let page = 4096;
    EbpfLoader::new()
        .override_global("INTERCEPT_CONFIG", config, true)
        .map_max_entries("EVENTS", page)
        .map_max_entries("PACKETS", page)
        .load(EBPF_OBJECT)
        .map_err(|e| KernelError::Load(Box::new(e)))
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
