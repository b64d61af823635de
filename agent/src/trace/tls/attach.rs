//! The attach manager of `--tls`: finds the TLS libraries of the traced processes
//! (`/proc/PID/maps`, files opened through `/proc/PID/root` for containers), attaches the
//! TLS programs ONCE per library file (device, inode) for every process (the kernel keeps
//! to the traced ones with `TRACED`), records every file it examined in the kernel's
//! `TLS_SEEN` (the kernel pauses a traced process that maps an unseen executable file, so
//! that a `dlopen`ed library is hooked before it runs) and keeps one [`LibReport`] per
//! process and TLS library for the summary, hooked or not (and why).
//!
//! The links are owned here: dropping the manager detaches every uprobe. They are perf
//! links (`perf_event_open` of the `uprobe` PMU, not `uprobe_events` entries), so they also
//! die with capagent if it is killed.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData},
    programs::uprobe::{UProbe, UProbeAttachLocation, UProbeAttachPoint, UProbeLink, UProbeScope},
};

use agent_common::{
    FileKey,
    trace::{maps, progs},
};

use super::go::{self, GoError, GoProbe, ProbeAt};
use super::libs::{self, Hook, Mapping, Prog, Verdict};
use crate::{
    kernel::{self, KernelError},
    process,
};

/// One TLS library of one traced process, for the summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibReport {
    pub pid: u32,
    pub comm: String,
    /// The path as the process sees it.
    pub path: PathBuf,
    /// `"openssl"`, `"gnutls"`, `"go"` (or, not hooked: `"nss"`, `"java"`, `"rustls"`).
    pub lib: &'static str,
    pub version: Option<String>,
    /// The number of plaintext functions hooked, or why the library is not hooked.
    pub outcome: Result<usize, String>,
}

/// What came of a library file (once per file).
#[derive(Debug, Clone)]
enum FileOutcome {
    /// Not a TLS library.
    NotTls,
    /// A TLS library: hooked (N functions) or not (why).
    Tls {
        lib: &'static str,
        version: Option<String>,
        outcome: Result<usize, String>,
    },
}

/// The attach manager (see the module's documentation).
pub struct TlsAttach {
    /// Every uprobe attached (dropped first: detached before the programs go).
    links: Vec<UProbeLink>,
    /// The loaded object: the TLS programs are attached from it.
    ebpf: Ebpf,
    /// `TLS_SEEN`: the files examined, so that the kernel does not pause for them again.
    seen: BpfHashMap<MapData, FileKey, u8>,
    /// What came of every file examined, by (device, inode).
    files: HashMap<(u64, u64), FileOutcome>,
    /// (pid, file) pairs already reported.
    reported: HashSet<(u32, (u64, u64))>,
    /// Processes scanned since their last exec once their libraries were loaded (at their
    /// first TLS call).
    loaded: HashSet<u32>,
    reports: Vec<LibReport>,
}

impl TlsAttach {
    /// A manager for the object `ebpf` (loaded, with the TLS programs and `TLS_SEEN`): the
    /// TLS programs loaded into the kernel, nothing attached yet.
    pub fn new(mut ebpf: Ebpf) -> Result<Self, KernelError> {
        kernel::tls_programs(&mut ebpf)?;
        let seen = kernel::take_map(&mut ebpf, maps::TLS_SEEN)?;
        Ok(TlsAttach {
            links: Vec::new(),
            ebpf,
            seen,
            files: HashMap::new(),
            reported: HashSet::new(),
            loaded: HashSet::new(),
            reports: Vec::new(),
        })
    }

    /// Examines the executable mappings of process `pid` and attaches the TLS libraries
    /// not attached yet. A process gone meanwhile is not an error (nothing to hook).
    pub fn scan(&mut self, pid: u32) {
        let Ok(maps) = std::fs::read(format!("/proc/{pid}/maps")) else {
            tracing::debug!(pid, "tls: no maps (process gone)");
            return;
        };
        let mappings = libs::exec_mappings(&maps);
        let mut comm = None;
        let mut done = HashSet::new();
        for m in &mappings {
            let key = m.file_key();
            if !done.insert(key) {
                continue;
            }
            if !self.files.contains_key(&key) {
                let started = std::time::Instant::now();
                let outcome = self.examine(pid, m);
                tracing::debug!(
                    path = %m.path.display(),
                    us = started.elapsed().as_micros() as u64,
                    ?outcome,
                    "tls: examined"
                );
                self.files.insert(key, outcome);
                let k = FileKey::new(m.dev.0, m.dev.1, m.inode);
                if let Err(e) = self.seen.insert(k, 1, 0) {
                    tracing::warn!("tls: TLS_SEEN: {e}");
                }
            }
            if let Some(FileOutcome::Tls {
                lib,
                version,
                outcome,
            }) = self.files.get(&key)
                && self.reported.insert((pid, key))
            {
                let comm = comm
                    .get_or_insert_with(|| process::process_comm(pid).unwrap_or_default())
                    .clone();
                tracing::info!(pid, comm, path = %m.path.display(), lib, ?version, ?outcome, "tls library");
                self.reports.push(LibReport {
                    pid,
                    comm,
                    path: m.path.clone(),
                    lib,
                    version: version.clone(),
                    outcome: outcome.clone(),
                });
            }
        }
        self.fill_openssl_versions(pid, &mappings);
    }

    /// OpenSSL 3's libssl has no version string, its libcrypto has; the dynamic loader maps
    /// libssl before the libcrypto it needs, so the version is filled in by a later scan.
    fn fill_openssl_versions(&mut self, pid: u32, mappings: &[Mapping]) {
        let missing = |r: &LibReport| r.pid == pid && r.lib == "openssl" && r.version.is_none();
        if !self.reports.iter().any(missing) {
            return;
        }
        let Some(version) = libcrypto_version(pid, mappings) else {
            return;
        };
        for r in self.reports.iter_mut().filter(|r| missing(r)) {
            r.version = Some(version.clone());
        }
        // The next processes of the same libssl get it at once.
        for m in mappings {
            if let Some(FileOutcome::Tls {
                lib: "openssl",
                version: v @ None,
                ..
            }) = self.files.get_mut(&m.file_key())
            {
                *v = Some(version.clone());
            }
        }
    }

    /// Notes in `TLS_SEEN` the file of an exec or mmap record (`key`, as the kernel saw the
    /// fd's inode), examined by the scan that handled the record: on overlayfs that key may
    /// differ from the one of `/proc/PID/maps` (the lower file's), and the kernel would
    /// pause at each mapping of the file.
    pub fn seen(&mut self, key: FileKey) {
        if key != FileKey::default()
            && let Err(e) = self.seen.insert(key, 1, 0)
        {
            tracing::warn!("tls: TLS_SEEN: {e}");
        }
    }

    /// Process `pid` exec'd: its new executable (and loader) are examined now, the libraries
    /// the loader maps next as they come (their mmap records) or at its first TLS call.
    pub fn exec(&mut self, pid: u32) {
        self.loaded.remove(&pid);
        self.scan(pid);
    }

    /// Process `pid` made a TLS call: the first one after its exec rescans it, so that the
    /// summary names its libraries also when they were all examined for other processes
    /// already (then the kernel did not stop it for them).
    pub fn tls_call(&mut self, pid: u32) {
        if self.loaded.insert(pid) {
            tracing::debug!(pid, "tls: first TLS call since exec: rescan");
            self.scan(pid);
        }
    }

    /// What a file mapped by `pid` is, its uprobes attached when it is a TLS library.
    fn examine(&mut self, pid: u32, m: &Mapping) -> FileOutcome {
        let (path, file) = match open_mapped(pid, m) {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(pid, path = %m.path.display(), "tls: cannot open: {e}");
                // Only a file that names itself a TLS library is worth a report.
                return match libs::examine(&m.path, b"") {
                    Verdict::Unhookable { lib, .. } => FileOutcome::Tls {
                        lib,
                        version: None,
                        outcome: Err(format!("cannot open: {e}")),
                    },
                    _ => FileOutcome::NotTls,
                };
            }
        };
        // SAFETY: a read-only private mapping of a file; libraries and executables are
        // replaced (renamed over), not written in place, while processes run them, and a
        // concurrent write could only make the ELF parser see other bytes (no memory of
        // ours is involved).
        let data = match unsafe { memmap2::Mmap::map(&file) } {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(path = %path.display(), "tls: cannot map: {e}");
                return FileOutcome::NotTls;
            }
        };
        match libs::examine(&m.path, &data) {
            Verdict::NotTls => FileOutcome::NotTls,
            Verdict::Unhookable { lib, why } => FileOutcome::Tls {
                lib,
                version: None,
                outcome: Err(why),
            },
            Verdict::Go => self.examine_go(&m.path, &path, &data),
            Verdict::Hook(lib) => {
                let version = lib
                    .version
                    .clone()
                    .or_else(|| sibling_libcrypto_version(&path));
                let outcome = self.attach(&path, &lib.hooks).map(|()| lib.functions());
                if let Err(e) = &outcome {
                    tracing::warn!(path = %m.path.display(), "tls: {e}");
                }
                FileOutcome::Tls {
                    lib: lib.lib,
                    version,
                    outcome,
                }
            }
        }
    }

    /// A Go binary (`path` as the process names it, `target` as opened): its
    /// `crypto/tls.(*Conn).Write`/`Read` hooked (entry and every RET), or why not. A Go
    /// program without `crypto/tls` is no TLS user (no report).
    fn examine_go(&mut self, path: &Path, target: &Path, data: &[u8]) -> FileOutcome {
        let hooks = match go::tls_hooks(data) {
            Ok(Some(h)) => h,
            Ok(None) | Err(GoError::Missing(_)) => return FileOutcome::NotTls,
            Err(e) => {
                tracing::debug!(path = %path.display(), "tls: Go binary not hooked: {e}");
                return FileOutcome::Tls {
                    lib: "go",
                    version: None,
                    outcome: Err(e.to_string()),
                };
            }
        };
        let probes = hooks.probes();
        let functions = probes.iter().filter(|p| p.at == ProbeAt::Entry).count();
        let outcome = self.attach_go(target, &probes).map(|()| functions);
        if let Err(e) = &outcome {
            tracing::warn!(path = %path.display(), "tls: {e}");
        }
        FileOutcome::Tls {
            lib: "go",
            version: Some(hooks.info.version),
            outcome,
        }
    }

    /// Attaches every hook of one file, for all processes; all or nothing.
    fn attach(&mut self, target: &Path, hooks: &[Hook]) -> Result<(), String> {
        let mut links = Vec::with_capacity(hooks.len());
        let tls = kernel::tls_programs(&mut self.ebpf).map_err(|e| e.to_string())?;
        for h in hooks {
            let (name, prog) = match h.prog {
                Prog::Enter => (progs::TLS_ENTER, &mut *tls.enter),
                Prog::Exit => (progs::TLS_EXIT, &mut *tls.exit),
                Prog::SetFd => (progs::TLS_SET_FD, &mut *tls.set_fd),
                Prog::Free => (progs::TLS_FREE, &mut *tls.free),
            };
            links.push(attach_at(prog, name, target, h.func, h.offset, h.cookie)?);
        }
        self.links.extend(links);
        Ok(())
    }

    /// Attaches the Go uprobes of one binary (`go_tls_enter` at each function's entry,
    /// `go_tls_ret` at each of its RETs; never a uretprobe), for all processes; all or
    /// nothing.
    fn attach_go(&mut self, target: &Path, probes: &[GoProbe]) -> Result<(), String> {
        let mut links = Vec::with_capacity(probes.len());
        let p = kernel::go_tls_programs(&mut self.ebpf).map_err(|e| e.to_string())?;
        for probe in probes {
            let (name, prog) = match probe.at {
                ProbeAt::Entry => (progs::GO_TLS_ENTER, &mut *p.enter),
                ProbeAt::Ret => (progs::GO_TLS_RET, &mut *p.ret),
            };
            let func = agent_common::tls_fn::name(probe.func);
            let cookie = u64::from(probe.func);
            links.push(attach_at(prog, name, target, func, probe.offset, cookie)?);
        }
        self.links.extend(links);
        Ok(())
    }

    /// The reports so far, in the order the libraries were found.
    pub fn reports(&self) -> &[LibReport] {
        &self.reports
    }

    /// The number of uprobes attached.
    pub fn attached(&self) -> usize {
        self.links.len()
    }

    /// Scans the processes `live` (still running: their libraries are in the summary even
    /// without a TLS call), then detaches every uprobe and unloads the programs; returns
    /// the reports.
    pub fn finish(mut self, live: impl Iterator<Item = u32>) -> Vec<LibReport> {
        for pid in live {
            if !self.loaded.contains(&pid) {
                self.scan(pid);
            }
        }
        let TlsAttach {
            links,
            ebpf,
            reports,
            ..
        } = self;
        let started = std::time::Instant::now();
        let n = links.len();
        detach_all(links);
        let detached = started.elapsed();
        drop(ebpf);
        tracing::debug!(
            uprobes = n,
            ms = detached.as_millis() as u64,
            unload_ms = (started.elapsed() - detached).as_millis() as u64,
            "tls: detached"
        );
        reports
    }
}

/// Attaches `prog` (named `name`) at file offset `offset` of `target` (function `func`)
/// with bpf cookie `cookie`, for all processes; returns the link.
fn attach_at(
    prog: &mut UProbe,
    name: &str,
    target: &Path,
    func: &str,
    offset: u64,
    cookie: u64,
) -> Result<UProbeLink, String> {
    let point = UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(offset),
        cookie: Some(cookie),
    };
    let id = prog
        .attach(point, target, UProbeScope::AllProcesses)
        .map_err(|e| format!("attaching {name} to {func} failed: {e}"))?;
    let link = prog.take_link(id).map_err(|e| e.to_string())?;
    tracing::debug!(func, offset, prog = name, "tls: attached");
    Ok(link)
}

/// Detaches uprobe links from up to 32 threads: the kernel takes a grace period for each
/// uprobe that goes (about 140 ms each on the 2-core build VM, 2.6 s for curl's 18 one after
/// the other); from 18 threads, 1.6 s (the kernel serialises part of it). A link whose thread
/// cannot start is detached right there.
fn detach_all(mut links: Vec<UProbeLink>) {
    const THREADS: usize = 32;
    let per = links.len().div_ceil(THREADS).max(1);
    std::thread::scope(|s| {
        while !links.is_empty() {
            let chunk: Vec<UProbeLink> = links.drain(..per.min(links.len())).collect();
            // On error the closure, and so the chunk, is dropped: detached here.
            let _ = std::thread::Builder::new()
                .name("tls-detach".into())
                .spawn_scoped(s, move || drop(chunk));
        }
    });
}

/// Opens the file of mapping `m` of process `pid` as that process sees it: through
/// `/proc/PID/root` (its mount namespace: containers), or, when the path now names another
/// file or none (deleted, replaced), through `/proc/PID/map_files/`. Returns the path
/// opened (what the uprobe is attached to) and the file.
pub(crate) fn open_mapped(pid: u32, m: &Mapping) -> std::io::Result<(PathBuf, File)> {
    let same = |f: &File| {
        f.metadata().is_ok_and(|st| {
            st.ino() == m.inode
                && (libc::major(st.dev()), libc::minor(st.dev())) == (m.dev.0, m.dev.1)
        })
    };
    if !m.deleted {
        let rel = m.path.strip_prefix("/").unwrap_or(&m.path);
        let path = Path::new("/proc")
            .join(pid.to_string())
            .join("root")
            .join(rel);
        if let Ok(f) = File::open(&path)
            && same(&f)
        {
            return Ok((path, f));
        }
    }
    let path = PathBuf::from(format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end));
    let f = File::open(&path)?;
    if !same(&f) {
        return Err(std::io::Error::other("the mapped file changed"));
    }
    Ok((path, f))
}

/// The OpenSSL version of the libcrypto next to a libssl opened at `libssl`
/// (`/proc/PID/root/usr/lib/x86_64-linux-gnu/libssl.so.3` → `.../libcrypto.so.3`): OpenSSL
/// 3's libssl has no version string, its libcrypto has.
fn sibling_libcrypto_version(libssl: &Path) -> Option<String> {
    let name = libssl.file_name()?.to_str()?;
    let crypto = libssl.with_file_name(format!("libcrypto{}", name.strip_prefix("libssl")?));
    let file = File::open(crypto).ok()?;
    // SAFETY: as in `TlsAttach::examine`.
    let data = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    libs::openssl_version(&data)
}

/// The OpenSSL version of the libcrypto mapped by the same process (when libssl has no
/// libcrypto next to it).
fn libcrypto_version(pid: u32, all: &[Mapping]) -> Option<String> {
    let m = all.iter().find(|m| {
        m.path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libcrypto"))
    })?;
    let (_, file) = open_mapped(pid, m).ok()?;
    // SAFETY: as in `TlsAttach::examine`.
    let data = unsafe { memmap2::Mmap::map(&file) }.ok()?;
    libs::openssl_version(&data)
}

/// The summary's lines about the TLS libraries: one per process and library (hooked, with
/// how many functions, or why not), at most `max_rows` (the summary's limit, passed in: the
/// summary module uses this one), or one saying none was found.
pub fn render_reports(reports: &[LibReport], max_rows: usize) -> String {
    let mut s = String::new();
    if reports.is_empty() {
        s.push_str("capagent: --tls: no TLS library found in the traced processes\n");
        return s;
    }
    for r in reports.iter().take(max_rows) {
        let _ = write!(
            s,
            "tls: {}[{}] {} {}",
            r.comm,
            r.pid,
            r.path.display(),
            r.lib
        );
        if let Some(v) = &r.version {
            let _ = write!(s, " {v}");
        }
        match &r.outcome {
            Ok(1) => s.push_str(": hooked 1 function\n"),
            Ok(n) => {
                let _ = writeln!(s, ": hooked {n} functions");
            }
            Err(why) => {
                let _ = writeln!(s, ": not hooked: {why}");
            }
        }
    }
    if reports.len() > max_rows {
        let more = reports.len() - max_rows;
        let _ = writeln!(s, "tls: ... and {more} more libraries");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines() {
        const ROWS: usize = 100;
        let r = |lib, version: Option<&str>, outcome| LibReport {
            pid: 42,
            comm: "curl".into(),
            path: "/usr/lib/x86_64-linux-gnu/libssl.so.3".into(),
            lib,
            version: version.map(String::from),
            outcome,
        };
        assert_eq!(
            render_reports(
                &[
                    r("openssl", Some("3.0.19"), Ok(4)),
                    r(
                        "openssl",
                        None,
                        Err("no SSL_read/SSL_write symbols (stripped)".into())
                    ),
                ],
                ROWS
            ),
            "tls: curl[42] /usr/lib/x86_64-linux-gnu/libssl.so.3 openssl 3.0.19: hooked 4 functions\n\
             tls: curl[42] /usr/lib/x86_64-linux-gnu/libssl.so.3 openssl: not hooked: no SSL_read/SSL_write symbols (stripped)\n"
        );
        let many = vec![r("openssl", None, Ok(4)); ROWS + 2];
        let text = render_reports(&many, ROWS);
        assert_eq!(text.lines().count(), ROWS + 1);
        assert!(text.ends_with("tls: ... and 2 more libraries\n"), "{text}");
        assert_eq!(
            render_reports(&[], ROWS),
            "capagent: --tls: no TLS library found in the traced processes\n"
        );
    }

    #[test]
    fn openssl_version_from_the_libcrypto_next_to_libssl() {
        let libssl = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        assert_eq!(sibling_libcrypto_version(libssl).as_deref(), Some("3.0.19"));
        assert_eq!(sibling_libcrypto_version(Path::new("/usr/bin/node")), None);
    }

    #[test]
    fn mapped_files_open_through_proc() {
        let maps = std::fs::read("/proc/self/maps").unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let all = libs::exec_mappings(&maps);
        let me = all.iter().find(|m| m.path == exe).unwrap();
        let pid = std::process::id();
        let (path, _) = open_mapped(pid, me).unwrap();
        assert_eq!(
            path,
            Path::new(&format!("/proc/{pid}/root")).join(exe.strip_prefix("/").unwrap())
        );
        // Deleted: through map_files (root only).
        let gone = Mapping {
            deleted: true,
            ..me.clone()
        };
        if unsafe { libc::geteuid() } == 0 {
            let (path, _) = open_mapped(pid, &gone).unwrap();
            assert!(
                path.starts_with(format!("/proc/{pid}/map_files/")),
                "{path:?}"
            );
        }
        // Another file at that path: refused.
        let other = Mapping {
            inode: me.inode + 1,
            ..me.clone()
        };
        assert!(open_mapped(pid, &other).is_err());
    }
}
