//! Leaving interfaces as capagent found them, even after a capagent was killed.
//!
//! tcx links detach when the process that holds them dies, but a legacy tc filter (the
//! `clsact` fallback) holds its program itself and outlives its loader. So at start
//! [`sweep_leftovers`] looks at the clsact hooks of every interface of this network namespace
//! for cls_bpf filters running one of capagent's programs (kernel program name
//! `capture_ingress` or `capture_egress`) that no live process holds anymore, and removes
//! them. Nothing else is touched: other filters, and qdiscs (capagent cannot tell who added
//! a clsact qdisc it finds, so one a killed capagent added stays; it is harmless).
//!
//! "No live process holds it": no file descriptor of any process in `/proc` refers to the
//! program (a running capagent keeps one per program, and per tcx link). Processes of other
//! PID namespaces are not visible in `/proc`: a capagent running in another PID namespace but
//! in this network namespace would look gone.
//!
//! [`remove_clsact_if_empty`] deletes a clsact qdisc capagent added when no filter is left on
//! it (someone may have added theirs while capagent ran).

use std::{
    collections::{HashMap, HashSet},
    fs, io,
};

use agent_common::capture::progs;

use crate::netlink::{
    Socket,
    tc::{self, Hook},
};

/// A filter [`sweep_leftovers`] removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub iface: String,
    pub hook: Hook,
    pub prog: String,
    pub prog_id: u32,
    pub prio: u16,
}

/// The interfaces of this network namespace: `(ifindex, name)` (`if_nameindex`, which asks
/// the kernel, unlike `/sys/class/net`, which shows the namespace sysfs was mounted in).
fn interfaces() -> io::Result<Vec<(i32, String)>> {
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = list;
    // SAFETY: every entry up to the terminator is valid, with a NUL-terminated name.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(((*p).if_index as i32, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}

/// The `prog_id` line of a `/proc/PID/fdinfo/FD` file (BPF program and link fds have one).
pub fn prog_id_of_fdinfo(fdinfo: &str) -> Option<u32> {
    fdinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == "prog_id").then(|| v.trim().parse().ok())?
    })
}

/// Ids of the BPF programs some process holds a file descriptor to (program or link).
fn held_prog_ids() -> HashSet<u32> {
    let mut held = HashSet::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return held;
    };
    for p in procs.flatten() {
        let pid = p.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if t != "anon_inode:bpf-prog" && t != "anon_inode:bpf_link" {
                continue;
            }
            let info = p.path().join("fdinfo").join(fd.file_name());
            if let Some(id) = fs::read_to_string(info)
                .ok()
                .as_deref()
                .and_then(prog_id_of_fdinfo)
            {
                held.insert(id);
            }
        }
    }
    held
}

/// Names of the loaded BPF programs, by id.
fn program_names() -> HashMap<u32, String> {
    aya::programs::loaded_programs()
        .flatten()
        .map(|p| (p.id(), p.name_as_str().unwrap_or_default().to_string()))
        .collect()
}

fn is_capagent_prog(name: &str) -> bool {
    name == progs::INGRESS || name == progs::EGRESS
}

/// Removes the capagent filters whose capagent is gone from every interface of this network
/// namespace, and says so on stderr. Errors are reported as warnings: a failed sweep must not
/// keep a capture from starting.
pub fn sweep_leftovers() -> Vec<Removed> {
    let _span = tracing::debug_span!("sweep").entered();
    match sweep() {
        Ok(removed) => removed,
        Err(e) => {
            tracing::warn!("looking for filters left by a killed capagent failed: {e}");
            Vec::new()
        }
    }
}

fn sweep() -> io::Result<Vec<Removed>> {
    let mut nl = Socket::open(libc::NETLINK_ROUTE)?;
    let mut candidates = Vec::new();
    for (ifindex, name) in interfaces()? {
        for hook in [Hook::Ingress, Hook::Egress] {
            for f in tc::filters(&mut nl, ifindex, hook)? {
                // The filter's own name first (cheap), the program's real name below.
                if let (Some(fname), Some(id)) = (&f.bpf_name, f.bpf_id)
                    && is_capagent_prog(fname)
                {
                    candidates.push((name.clone(), hook, id, f));
                }
            }
        }
    }
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let names = program_names();
    let held = held_prog_ids();
    let mut removed = Vec::new();
    for (iface, hook, id, f) in candidates {
        let Some(prog) = names.get(&id).filter(|n| is_capagent_prog(n)) else {
            continue;
        };
        if held.contains(&id) {
            tracing::debug!(
                iface,
                hook = hook.name(),
                id,
                "in use by a running capagent"
            );
            continue;
        }
        match tc::delete_filter(&mut nl, &f) {
            Ok(()) => {
                eprintln!(
                    "capagent: removed a filter left by a capagent that is gone: {prog} (prog id {id}) on {iface} {} (pref {})",
                    hook.name(),
                    f.prio()
                );
                removed.push(Removed {
                    iface,
                    hook,
                    prog: prog.clone(),
                    prog_id: id,
                    prio: f.prio(),
                });
            }
            Err(e) => eprintln!(
                "capagent: could not remove the leftover filter {prog} (prog id {id}) on {iface} {}: {e}",
                hook.name()
            ),
        }
    }
    Ok(removed)
}

/// Deletes the clsact qdisc of `iface` (one capagent added) unless filters are on it; says
/// on stderr what it could not do.
pub fn remove_clsact_if_empty(iface: &str, ifindex: i32) {
    let result = (|| -> io::Result<bool> {
        let mut nl = Socket::open(libc::NETLINK_ROUTE)?;
        let mut left = tc::filters(&mut nl, ifindex, Hook::Ingress)?;
        left.extend(tc::filters(&mut nl, ifindex, Hook::Egress)?);
        if !left.is_empty() {
            return Ok(false);
        }
        match tc::delete_clsact(&mut nl, ifindex) {
            // Already gone (someone deleted it, or the interface): fine.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)
                ) =>
            {
                Ok(true)
            }
            r => r.map(|()| true),
        }
    })();
    match result {
        Ok(true) => tracing::debug!(iface, "clsact qdisc removed"),
        Ok(false) => eprintln!(
            "capagent: left the clsact qdisc it added on {iface}: other filters are on it now"
        ),
        Err(e) => eprintln!(
            "capagent: could not remove the clsact qdisc added on {iface} ({e}): run `tc qdisc del dev {iface} clsact`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_prog_id() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t3\n\
                    prog_jited:\t1\nprog_tag:\t0123456789abcdef\nmemlock:\t4096\nprog_id:\t77\n";
        assert_eq!(prog_id_of_fdinfo(prog), Some(77));
        let link = "link_type:\ttcx\nlink_id:\t5\nprog_tag:\tab\nprog_id:\t78\n";
        assert_eq!(prog_id_of_fdinfo(link), Some(78));
        assert_eq!(prog_id_of_fdinfo("pos:\t0\nflags:\t0\n"), None);
        assert_eq!(prog_id_of_fdinfo("prog_id:\tx\n"), None);
    }

    #[test]
    fn capagent_program_names() {
        assert!(is_capagent_prog("capture_ingress") && is_capagent_prog("capture_egress"));
        assert!(!is_capagent_prog("capture") && !is_capagent_prog("sys_enter"));
    }
}
