//! Removing what a stopped agent left behind (`capagent cleanup`, and at every start of
//! `capagent intercept`), and nothing else:
//!
//! - nftables tables named `capagent-PID` (any family) without the owner flag whose agent
//!   is gone (a table with the flag is the kernel's to remove, and is removed with its
//!   socket);
//! - policy routing rules and routes whose table is capagent's ([`route::owner_of`]) and
//!   whose protocol is capagent's, when that agent is gone;
//! - cgroup BPF links of programs named `capagent_*` that no live process holds (links
//!   made by an agent go with its file descriptors, so only pinned ones could remain).
//!
//! "Gone" means: no process with that pid whose name is `capagent`.

use std::fs;

use super::nft::{self, Nft};
use super::route;
use crate::netlink;

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Report {
    pub removed: Vec<String>,
    pub errors: Vec<String>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.errors.is_empty()
    }

    /// One line per removal and error.
    pub fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.removed
            .iter()
            .map(|r| format!("removed {r}"))
            .chain(self.errors.iter().map(|e| format!("error: {e}")))
    }
}

/// True while agent `pid` runs.
pub fn agent_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let named =
        fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "capagent");
    // A killed agent not yet reaped is a zombie: its file descriptors are closed already.
    let zombie = fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    });
    named && !zombie
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Removes everything stopped agents left; never fails, reports instead.
pub fn sweep() -> Report {
    sweep_with(&agent_alive)
}

pub fn sweep_with(alive: &dyn Fn(u32) -> bool) -> Report {
    let mut report = Report::default();
    sweep_tables(alive, &mut report);
    sweep_routing(alive, &mut report);
    sweep_cgroup_links(&mut report);
    report
}

fn sweep_tables(alive: &dyn Fn(u32) -> bool, report: &mut Report) {
    let mut n = match Nft::open() {
        Ok(n) => n,
        Err(e) => {
            report.errors.push(chain(&e));
            return;
        }
    };
    let tables = match n.tables() {
        Ok(t) => t,
        Err(e) => {
            report.errors.push(chain(&e));
            return;
        }
    };
    for t in tables {
        if !t.name.starts_with("capagent") || t.flags & nft::NFT_TABLE_F_OWNER != 0 {
            continue;
        }
        if nft::table_owner(&t.name).is_some_and(alive) {
            continue;
        }
        match n.delete_family(t.family, &t.name) {
            Ok(()) => report.removed.push(format!("nftables table {}", t.name)),
            Err(e) => report.errors.push(chain(&e)),
        }
    }
}

fn sweep_routing(alive: &dyn Fn(u32) -> bool, report: &mut Report) {
    let mut sock = match netlink::Socket::open(libc::NETLINK_ROUTE) {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(format!("routing netlink socket: {e}"));
            return;
        }
    };
    let dead = |t: u32| route::owner_of(t).is_some_and(|pid| !alive(pid));
    match route::dump_rules(&mut sock) {
        Ok(rules) => {
            for r in rules
                .iter()
                .filter(|r| route::is_capagent_rule(r) && dead(r.table))
            {
                let seq = sock.next_seq();
                let what = format!(
                    "rule `fwmark {:#x} lookup {}` ({})",
                    r.fwmark.unwrap_or(0),
                    r.table,
                    if r.family as i32 == libc::AF_INET6 {
                        "IPv6"
                    } else {
                        "IPv4"
                    }
                );
                match sock.transact(&route::delete_rule_message(r, seq), &[seq]) {
                    Ok(()) => report.removed.push(what),
                    Err(e) => report.errors.push(format!("removing {what}: {e}")),
                }
            }
        }
        Err(e) => report.errors.push(format!("listing rules: {e}")),
    }
    match route::dump_routes(&mut sock) {
        Ok(routes) => {
            for r in routes
                .iter()
                .filter(|r| route::is_capagent_route(r) && dead(r.table))
            {
                let seq = sock.next_seq();
                let what = format!("route in table {}", r.table);
                match sock.transact(&route::delete_route_message(r, seq), &[seq]) {
                    Ok(()) => report.removed.push(what),
                    Err(e) => report.errors.push(format!("removing {what}: {e}")),
                }
            }
        }
        Err(e) => report.errors.push(format!("listing routes: {e}")),
    }
}

/// Program ids that some process holds, as a program or through a link (fdinfo's
/// `prog_id:` lines), and whether that is certain: false when the file descriptors of a
/// process named `capagent` could not be read (only capagent holds capagent's programs).
fn held_prog_ids() -> (std::collections::HashSet<u32>, bool) {
    let mut out = std::collections::HashSet::new();
    let mut certain = true;
    let Ok(procs) = fs::read_dir("/proc") else {
        return (out, false);
    };
    for p in procs.flatten() {
        if !p
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let fds = match fs::read_dir(p.path().join("fdinfo")) {
            Ok(f) => f,
            Err(_) => {
                let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                if comm.trim_end() == "capagent" {
                    certain = false;
                }
                continue;
            }
        };
        for fd in fds.flatten() {
            let Ok(info) = fs::read_to_string(fd.path()) else {
                continue;
            };
            for line in info.lines() {
                if let Some(id) = line.strip_prefix("prog_id:")
                    && let Ok(id) = id.trim().parse()
                {
                    out.insert(id);
                }
            }
        }
    }
    (out, certain)
}

fn bpf_link_detach_by_id(id: u32) -> std::io::Result<()> {
    // union bpf_attr: BPF_LINK_GET_FD_BY_ID takes link_id at offset 0; BPF_LINK_DETACH
    // takes link_fd at offset 0.
    const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: bpf(2) with a zeroed attr of sufficient size.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_GET_FD_BY_ID, attr.as_ptr(), 128) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut attr = [0u8; 128];
    attr[..4].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: as above.
    let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_ptr(), 128) };
    let err = std::io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd as libc::c_int) };
    if r < 0 { Err(err) } else { Ok(()) }
}

fn sweep_cgroup_links(report: &mut Report) {
    use aya::programs::{links::LinkType, loaded_links, loaded_programs};
    let names: std::collections::HashMap<u32, String> = loaded_programs()
        .flatten()
        .filter_map(|p| {
            let name = p.name_as_str()?.to_string();
            name.starts_with(super::cgroup::PROG_PREFIX)
                .then_some((p.id(), name))
        })
        .collect();
    if names.is_empty() {
        return;
    }
    let (held, certain) = held_prog_ids();
    if !certain {
        report.errors.push(
            "cannot read every capagent process's file descriptors: cgroup links left alone".into(),
        );
        return;
    }
    for l in loaded_links().flatten() {
        if !matches!(l.link_type(), Ok(LinkType::Cgroup)) {
            continue;
        }
        let Some(name) = names.get(&l.program_id()) else {
            continue;
        };
        if held.contains(&l.program_id()) {
            continue;
        }
        match bpf_link_detach_by_id(l.id()) {
            Ok(()) => report
                .removed
                .push(format!("cgroup link {} of program {name}", l.id())),
            Err(e) => report
                .errors
                .push(format!("detaching cgroup link {} ({name}): {e}", l.id())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness() {
        assert!(agent_alive(std::process::id()));
        // pid 1 is never capagent.
        assert!(!agent_alive(1));
        assert!(!agent_alive(u32::MAX));
    }

    #[test]
    fn report_lines() {
        let r = Report {
            removed: vec!["nftables table capagent-1".into()],
            errors: vec!["x".into()],
        };
        let lines: Vec<_> = r.lines().collect();
        assert_eq!(lines, ["removed nftables table capagent-1", "error: x"]);
        assert!(Report::default().is_empty());
    }
}
