//! The kernel half of `trace --tls`, without the attach manager: the trace object loaded in
//! this process, its TLS uprobes attached by hand (by symbol, with the contract's cookies)
//! to the system's libssl and libgnutls, and real clients (curl, wget, Python) against a
//! Python HTTPS server in a network namespace. The TLS records carry the exact
//! plaintext both ways, on the fd and socket of the syscall records of the same connection;
//! an executable mapping of a library not yet examined is reported with its file key and
//! stops the process until the agent continues it.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    time::{Duration, Instant},
};

use agent_common::{
    Config, FileKey, SockEvent, TlsEvent, flags, kind, sys, tls_cookie, tls_fn,
    trace::{maps, progs},
    traced,
};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, RingBuf},
    programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
};
use capagent::{
    kernel,
    process::{ChildStdout, HeldChild},
    trace::{
        decode::{self, Record},
        tls::{
            go::{self, ProbeAt},
            libs::{self, Prog, Verdict},
        },
    },
};
use capagent_testkit::*;

const LIBSSL: &str = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
const LIBGNUTLS: &str = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30";
const PORT: u16 = 4433;
/// The body of the server's `/big` (`i % 251` for each byte i).
const BIG: usize = 100_000;

/// What the kernel sent, in order, decoded (owned).
#[derive(Debug, Clone)]
enum Rec {
    Sock(SockEvent),
    Tls(TlsEvent, Vec<u8>),
    Proc,
    Data,
}

/// The programs' configuration: every socket syscall that matters here reported, `--tls`,
/// lossless (`pause`) or not, the whole payload of each call.
fn config(pause: bool) -> Config {
    let mut c = Config::new();
    c.offsets = kernel::btf::resolve_offsets().unwrap();
    c.self_pid = std::process::id();
    c.wakeup_bytes = 4096;
    c.tls = 1;
    c.pause = pause as u8;
    for (nr, id) in [
        (libc::SYS_connect, sys::CONNECT),
        (libc::SYS_accept, sys::ACCEPT),
        (libc::SYS_accept4, sys::ACCEPT4),
        (libc::SYS_read, sys::READ),
        (libc::SYS_write, sys::WRITE),
        (libc::SYS_sendto, sys::SENDTO),
        (libc::SYS_recvfrom, sys::RECVFROM),
        (libc::SYS_close, sys::CLOSE),
        (libc::SYS_mmap, sys::MMAP_EXEC),
    ] {
        c.sys_table[nr as usize] = id as u8;
    }
    c
}

/// The file key of `path`, as the kernel computes it.
fn file_key(path: &str) -> FileKey {
    let m = std::fs::metadata(path).unwrap();
    FileKey::new(libc::major(m.dev()), libc::minor(m.dev()), m.ino())
}

/// Attaches the TLS programs to `lib`: `rw` are the read/write functions and their
/// `tls_fn` ids, then SSL_set_fd-likes and SSL_free-likes.
fn attach_lib(
    ebpf: &mut Ebpf,
    lib: &str,
    rw: &[(&str, u16)],
    set_fd: &[(&str, u64)],
    free: &[&str],
) {
    fn at(sym: &str, cookie: u64) -> UProbeAttachPoint<'_> {
        UProbeAttachPoint {
            location: sym.into(),
            cookie: Some(cookie),
        }
    }
    let p = kernel::tls_programs(ebpf).unwrap();
    for &(sym, id) in rw {
        p.enter
            .attach(at(sym, u64::from(id)), lib, UProbeScope::AllProcesses)
            .unwrap_or_else(|e| panic!("uprobe {lib}:{sym}: {e}"));
        p.exit
            .attach(at(sym, u64::from(id)), lib, UProbeScope::AllProcesses)
            .unwrap_or_else(|e| panic!("uretprobe {lib}:{sym}: {e}"));
    }
    for &(sym, cookie) in set_fd {
        p.set_fd
            .attach(at(sym, cookie), lib, UProbeScope::AllProcesses)
            .unwrap();
    }
    for &sym in free {
        p.free
            .attach(at(sym, tls_cookie::FREE), lib, UProbeScope::AllProcesses)
            .unwrap();
    }
}

fn attach_openssl(ebpf: &mut Ebpf) {
    attach_lib(
        ebpf,
        LIBSSL,
        &[
            ("SSL_write", tls_fn::SSL_WRITE),
            ("SSL_read", tls_fn::SSL_READ),
            ("SSL_write_ex", tls_fn::SSL_WRITE_EX),
            ("SSL_read_ex", tls_fn::SSL_READ_EX),
        ],
        &[("SSL_set_fd", tls_cookie::OPENSSL_SET_FD)],
        &["SSL_free"],
    );
}

/// Attaches the hooks capagent plans for the system's libssl (`libs::examine`), by file
/// offset with their cookies: in Debian's build, `SSL_read`, `SSL_read_ex` and the SSL BIO
/// share one breakpoint on their inner function (`SSL_write` and co. theirs). Returns the
/// plan.
fn attach_openssl_as_planned(ebpf: &mut Ebpf) -> libs::TlsLib {
    let Verdict::Hook(lib) = libs::examine(LIBSSL.as_ref(), &std::fs::read(LIBSSL).unwrap()) else {
        panic!("{LIBSSL} not hookable")
    };
    let p = kernel::tls_programs(ebpf).unwrap();
    for h in &lib.hooks {
        let prog = match h.prog {
            Prog::Enter => &mut *p.enter,
            Prog::Exit => &mut *p.exit,
            Prog::SetFd => &mut *p.set_fd,
            Prog::Free => &mut *p.free,
        };
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(h.offset),
            cookie: Some(h.cookie),
        };
        prog.attach(point, LIBSSL, UProbeScope::AllProcesses)
            .unwrap_or_else(|e| panic!("uprobe {LIBSSL}:{h:?}: {e}"));
    }
    lib
}

/// The trace object, loaded with `config`, its syscall and process programs attached.
fn load(config: Config) -> Ebpf {
    let mut ebpf = kernel::load(&config, 1 << 22, 0).unwrap();
    for (prog, cat, tp) in [
        (progs::TASK_NEWTASK, "task", "task_newtask"),
        (progs::SCHED_PROCESS_EXEC, "sched", "sched_process_exec"),
        (progs::SCHED_PROCESS_EXIT, "sched", "sched_process_exit"),
    ] {
        kernel::attach_tracepoint(&mut ebpf, prog, cat, tp).unwrap();
    }
    kernel::attach_raw_tracepoint(&mut ebpf, progs::SYS_ENTER, "sys_enter").unwrap();
    kernel::attach_raw_tracepoint(&mut ebpf, progs::SYS_EXIT, "sys_exit").unwrap();
    ebpf
}

/// The process's state letter in /proc/PID/stat (`T`: stopped).
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    after.trim_start().chars().next().unwrap_or('?')
}

/// The process's state once it settled: a process the kernel stops at a record is still
/// running (`R`, on its way back to user mode, where the SIGSTOP takes it) for a moment
/// after the record can be read; so wait until it is no longer running or in the kernel
/// (`R`, `D`), at most 2 s (a busy process that is not stopped stays `R`).
fn settled_state(pid: u32) -> char {
    let mut s = state(pid);
    let deadline = Instant::now() + Duration::from_secs(2);
    while matches!(s, 'R' | 'D') && Instant::now() < deadline {
        std::thread::yield_now();
        s = state(pid);
    }
    s
}

/// A traced run: the session's maps, the records, the processes stopped at an executable
/// mapping (with their state when the record came).
struct Run {
    ring: RingBuf<MapData>,
    traced: BpfHashMap<MapData, u32, u8>,
    paused: BpfHashMap<MapData, u32, u8>,
    seen: BpfHashMap<MapData, FileKey, u8>,
    recs: Vec<Rec>,
    /// (pid, key, state at the record) of every MMAP_EXEC record.
    mmaps: Vec<(u32, FileKey, char)>,
    /// (pid, state at the record) of every EXEC record.
    execs: Vec<(u32, char)>,
    /// Processes found in PAUSED.
    paused_seen: usize,
}

impl Run {
    fn new(ebpf: &mut Ebpf) -> Run {
        Run {
            ring: kernel::take_map(ebpf, maps::EVENTS).unwrap(),
            traced: kernel::take_map(ebpf, maps::TRACED).unwrap(),
            paused: kernel::take_map(ebpf, maps::PAUSED).unwrap(),
            seen: kernel::take_map(ebpf, maps::TLS_SEEN).unwrap(),
            recs: Vec::new(),
            mmaps: Vec::new(),
            execs: Vec::new(),
            paused_seen: 0,
        }
    }

    fn trace(&mut self, pid: u32) {
        self.traced.insert(pid, traced::ROOT, 0).unwrap();
    }

    /// Drains the ring; examines the mapped files (all "seen"); then continues the paused
    /// processes, as the agent does.
    fn drain(&mut self) {
        while let Some(r) = self.ring.next() {
            let rec = match decode::decode(&r).unwrap() {
                Record::Sock(e) => Rec::Sock(e),
                Record::Tls { ev, payload } => Rec::Tls(ev, payload.to_vec()),
                Record::Proc(e) => {
                    if e.hdr.syscall == sys::MMAP_EXEC {
                        let key = FileKey {
                            dev: u64::from(e.child_pid),
                            ino: e.hdr.sock.ino,
                        };
                        self.mmaps.push((e.hdr.pid, key, settled_state(e.hdr.pid)));
                        self.seen.insert(key, 1, 0).unwrap();
                    } else if e.hdr.syscall == sys::EXEC {
                        self.execs.push((e.hdr.pid, settled_state(e.hdr.pid)));
                        let key = FileKey {
                            dev: u64::from(e.child_pid),
                            ino: e.hdr.sock.ino,
                        };
                        assert_ne!(key.ino, 0, "{e:?}");
                        self.seen.insert(key, 1, 0).unwrap();
                    }
                    Rec::Proc
                }
                Record::Data { .. } => Rec::Data,
            };
            self.recs.push(rec);
        }
        let pids: Vec<(u32, u8)> = self.paused.iter().filter_map(Result::ok).collect();
        self.paused_seen += pids.len();
        for (pid, why) in pids {
            // Every stop here is --tls's (the ring never fills up).
            assert_eq!(why, agent_common::paused::TLS, "pid {pid}");
            let _ = self.paused.remove(&pid);
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
        }
    }

    /// Starts `argv` traced from its first instruction.
    fn start_traced(&mut self, argv: &[String]) -> HeldChild {
        let mut child = HeldChild::spawn(argv, ChildStdout::Stderr).unwrap();
        self.trace(child.pid());
        child.release().unwrap();
        child
    }

    /// Runs `argv` traced from its first instruction, draining until it exits.
    fn run_traced(&mut self, argv: &[String]) -> u32 {
        let mut child = self.start_traced(argv);
        let pid = child.pid();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            self.drain();
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "{argv:?}: {status}");
                break;
            }
            assert!(Instant::now() < deadline, "{argv:?} did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
        pid
    }

    /// Drains until `cond` holds on the records.
    fn drain_until(&mut self, what: &str, cond: impl Fn(&[Rec]) -> bool) {
        let ok = wait_until(TIMEOUT, || {
            self.drain();
            cond(&self.recs)
        });
        assert!(ok, "no {what} in {:#?}", self.recs);
    }

    fn tls(&self, pid: u32) -> Vec<(TlsEvent, Vec<u8>)> {
        self.recs
            .iter()
            .filter_map(|r| match r {
                Rec::Tls(e, p) if e.hdr.pid == pid => Some((*e, p.clone())),
                _ => None,
            })
            .collect()
    }

    /// The `calls` (connect, accept) SOCK records of `pid` that made a connection.
    fn socks(&self, pid: u32, calls: &[u16]) -> Vec<SockEvent> {
        self.recs
            .iter()
            .filter_map(|r| match r {
                // (curl's non-blocking connect returns EINPROGRESS)
                Rec::Sock(e)
                    if e.hdr.pid == pid
                        && calls.contains(&e.hdr.syscall)
                        && (e.hdr.ret >= 0 || e.hdr.ret == -i64::from(libc::EINPROGRESS)) =>
                {
                    Some(*e)
                }
                _ => None,
            })
            .collect()
    }
}

/// The plaintext of the reads or writes in `recs`, in order, and the first record of each
/// call. A call's chunks come in order (FIRST at offset 0, contiguous offsets, LAST), agree
/// on its total and return value, and (unless TRUNCATED) carry all of it.
fn stream(recs: &[(TlsEvent, Vec<u8>)], writes: bool) -> (Vec<u8>, Vec<TlsEvent>) {
    let mut out = Vec::new();
    let mut calls = Vec::new();
    // The first record of the call in progress, and the offset its next chunk must have.
    let mut open: Option<(TlsEvent, u64)> = None;
    for (e, p) in recs
        .iter()
        .filter(|(e, _)| tls_fn::is_write(e.hdr.syscall) == writes)
    {
        assert_eq!(e.len as usize, p.len(), "{e:?}");
        assert!(p.len() <= agent_common::CHUNK_MAX);
        let first = e.hdr.flags & flags::FIRST != 0;
        assert_eq!(first, open.is_none(), "a call's chunks in order: {e:?}");
        if first {
            open = Some((*e, 0));
            calls.push(*e);
        }
        let (start, next) = open.as_mut().unwrap();
        assert_eq!(e.offset, *next, "{e:?}");
        assert_eq!(
            (e.total, e.hdr.ret, e.conn, e.hdr.tid),
            (start.total, start.hdr.ret, start.conn, start.hdr.tid)
        );
        assert_eq!(e.total, e.hdr.ret.max(0) as u64, "{e:?}");
        *next += p.len() as u64;
        out.extend_from_slice(p);
        if e.hdr.flags & flags::LAST != 0 {
            if e.hdr.flags & flags::TRUNCATED == 0 {
                assert_eq!(*next, e.total, "{e:?}");
            }
            open = None;
        }
    }
    assert!(open.is_none(), "a call without its LAST chunk");
    (out, calls)
}

/// A Python HTTPS server (its `_ssl` on the system's libssl: `SSL_read_ex`/`SSL_write_ex`)
/// in `ns`, on a certificate made now, traced from its start (so is its `accept`). (`openssl
/// s_server -www` would not do: it reads and writes through an SSL BIO, which calls
/// OpenSSL's internal functions, not `SSL_read`.)
fn https_server(ns: &Netns, dir: &TempDir, run: &mut Run) -> HeldChild {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        // Go checks the alternative names (never the CN): the Go client's 127.0.0.1.
        .args([
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let script = dir.write(
        "server.py",
        format!(
            r#"
import http.server, ssl
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello over TLS\n"
        if self.path == "/big":
            body = bytes(i % 251 for i in range({BIG}))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("{cert}", "{key}")
srv = http.server.HTTPServer(("127.0.0.1", {PORT}), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#,
            cert = cert.display(),
            key = key.display(),
            BIG = BIG,
        ),
    );
    let server = run.start_traced(&ns.argv(&[python(), &script]));
    // It stops at each library it maps until examined: drain meanwhile.
    let up = wait_until(TIMEOUT, || {
        run.drain();
        listening(server.pid(), PORT)
    });
    assert!(up, "the server does not listen");
    server
}

/// A test's world: a netns, the trace object loaded with a config and attached by `attach`,
/// its maps, and the Python HTTPS server running traced.
struct Fixture {
    run: Run,
    /// The server's pid.
    server: u32,
    ns: Netns,
    dir: TempDir,
    _server: HeldChild,
    _ebpf: Ebpf,
}

impl Fixture {
    fn new(tag: &str, config: Config, attach: impl FnOnce(&mut Ebpf)) -> Fixture {
        let ns = Netns::new(tag);
        let dir = TempDir::new(tag);
        let mut ebpf = load(config);
        attach(&mut ebpf);
        let mut run = Run::new(&mut ebpf);
        let server = https_server(&ns, &dir, &mut run);
        Fixture {
            run,
            server: server.pid(),
            ns,
            dir,
            _server: server,
            _ebpf: ebpf,
        }
    }
}

/// The socket of every TLS record of `pid` is the one its `calls` (connect or accept)
/// made: same fd, same `struct sock`, same ports.
fn assert_on_socket(run: &Run, pid: u32, calls: &[u16], evs: &[TlsEvent]) {
    let socks = run.socks(pid, calls);
    assert_eq!(socks.len(), 1, "{socks:#?}");
    let s = &socks[0];
    let fd = if calls.contains(&sys::CONNECT) {
        s.hdr.fd
    } else {
        s.hdr.ret as i32
    };
    for e in evs {
        assert_eq!(e.hdr.fd, fd, "{e:?}");
        assert_ne!(e.hdr.flags & flags::SOCK_VALID, 0);
        assert_eq!(e.hdr.sock.sk, s.hdr.sock.sk);
        assert_eq!(e.hdr.sock.ino, s.hdr.sock.ino);
        assert_eq!(
            (e.hdr.sock.lport, e.hdr.sock.rport),
            (s.hdr.sock.lport, s.hdr.sock.rport)
        );
        assert_eq!(e.hdr.kind, kind::TLS);
    }
    assert!(evs.iter().all(|e| e.conn == evs[0].conn && e.conn != 0));
}

/// curl (SSL_write/SSL_read) against a Python HTTPS server (SSL_read_ex/SSL_write_ex), both
/// traced: what curl's SSL_write handed over is exactly the request, byte for byte what the
/// server's SSL_read_ex returned; what the server's SSL_write_ex handed over is what curl's
/// SSL_read returned; every record is on the socket of its side's connect/accept. The
/// server's mapping of libssl was reported with libssl's file key while it was stopped;
/// curl was stopped at its exec.
#[test]
fn curl_and_python_plaintext_on_their_sockets() {
    let mut f = Fixture::new("tlsk", config(true), attach_openssl);

    let mut cmd = std::process::Command::new("curl");
    cmd.arg("--version");
    let version = run_output("curl", cmd, TIMEOUT);
    let version = version.split_whitespace().nth(1).unwrap().to_string();
    let url = format!("https://127.0.0.1:{PORT}/");
    let curl = f.run.run_traced(
        &f.ns
            .argv(&["curl", "-sk", "--http1.1", "-o", "/dev/null", &url]),
    );
    f.run.drain_until("server reply", |recs| {
        recs.iter()
            .any(|r| matches!(r, Rec::Tls(e, _) if e.hdr.pid == f.server && tls_fn::is_write(e.hdr.syscall)))
    });

    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUser-Agent: curl/{version}\r\nAccept: */*\r\n\r\n"
    );
    let client = f.run.tls(curl);
    let (sent, sent_evs) = stream(&client, true);
    assert_eq!(String::from_utf8_lossy(&sent), request);
    assert!(sent_evs.iter().all(|e| e.hdr.comm.starts_with(b"curl\0")));
    let (got, got_evs) = stream(&client, false);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200 OK\r\nServer: BaseHTTP/"),
        "{text:?}"
    );
    assert!(
        text.ends_with("\r\nContent-Length: 15\r\n\r\nhello over TLS\n"),
        "{text:?}"
    );

    let srv = f.run.tls(f.server);
    let (srv_got, srv_got_evs) = stream(&srv, false);
    let (srv_sent, srv_sent_evs) = stream(&srv, true);
    assert_eq!(srv_got, sent, "the server read what curl wrote");
    assert_eq!(srv_sent, got, "curl read what the server wrote");
    let fns = |evs: &[TlsEvent]| -> Vec<u16> { evs.iter().map(|e| e.hdr.syscall).collect() };
    assert!(fns(&srv_got_evs).iter().all(|&f| f == tls_fn::SSL_READ_EX));
    assert!(
        fns(&srv_sent_evs)
            .iter()
            .all(|&f| f == tls_fn::SSL_WRITE_EX)
    );
    assert!(fns(&sent_evs).iter().all(|&f| f == tls_fn::SSL_WRITE));

    let mut curl_evs = sent_evs;
    curl_evs.extend(got_evs.iter().filter(|e| e.hdr.ret > 0));
    assert_on_socket(&f.run, curl, &[sys::CONNECT], &curl_evs);
    let mut srv_evs = srv_got_evs;
    srv_evs.extend(srv_sent_evs);
    srv_evs.retain(|e| e.hdr.ret > 0);
    assert_on_socket(&f.run, f.server, &[sys::ACCEPT, sys::ACCEPT4], &srv_evs);

    // The server's mapping of libssl (by its dlopen of `_ssl`): reported with libssl's key
    // (as stat names it), the server stopped meanwhile.
    let libssl = file_key(LIBSSL);
    let hit: Vec<_> = f.run.mmaps.iter().filter(|m| m.1 == libssl).collect();
    assert_eq!(hit.len(), 1, "{:#?}", f.run.mmaps);
    assert_eq!(hit[0].0, f.server);
    assert_eq!(
        hit[0].2, 'T',
        "the server ran on while its mapping was examined"
    );
    assert!(f.run.mmaps.iter().all(|m| m.2 == 'T'));
    // Each file once: once seen, its mappings go unreported (curl's libssl included).
    let mut per_file: HashMap<FileKey, u32> = HashMap::new();
    for m in &f.run.mmaps {
        *per_file.entry(m.1).or_default() += 1;
    }
    assert!(per_file.values().all(|&n| n == 1), "{per_file:?}");
    assert!(
        f.run.mmaps.iter().any(|m| m.0 == curl),
        "curl's own libraries"
    );
    // Stopped at exec too (before its first instruction), until continued.
    assert!(f.run.execs.contains(&(curl, 'T')), "{:?}", f.run.execs);
    // Once every file it maps has been seen, curl runs again without a stop.
    let (mmaps, execs) = (f.run.mmaps.len(), f.run.execs.len());
    let again =
        f.run.run_traced(
            &f.ns
                .argv(&["curl", "-sk", "--http1.1", "-o", "/dev/null", &url]),
        );
    assert_eq!(f.run.mmaps.len(), mmaps, "{:?}", &f.run.mmaps[mmaps..]);
    let later = &f.run.execs[execs..];
    assert!(later.iter().any(|e| e.0 == again), "{later:?}");
    assert!(later.iter().all(|e| e.1 != 'T'), "{later:?}");
    assert_eq!(stream(&f.run.tls(again), true).0, request.as_bytes());
    let data = f.run.recs.iter().filter(|r| matches!(r, Rec::Data)).count();
    assert!(data > 0, "the ciphertext syscalls are reported too");
}

/// wget (GnuTLS: `gnutls_record_send`, a tail jump into `gnutls_record_send2`, both hooked)
/// against the Python server: each write is recorded once (what wget wrote is exactly what
/// the server read), each on wget's socket; what the server wrote is what wget read. Not
/// lossless (as with `--all`, `--allow-loss`): the mappings are reported, nobody stopped.
#[test]
fn wget_gnutls_writes_count_once() {
    let mut f = Fixture::new("tlsg", config(false), |ebpf| {
        attach_openssl(ebpf);
        attach_lib(
            ebpf,
            LIBGNUTLS,
            &[
                ("gnutls_record_send", tls_fn::GNUTLS_RECORD_SEND),
                ("gnutls_record_send2", tls_fn::GNUTLS_RECORD_SEND),
                ("gnutls_record_recv", tls_fn::GNUTLS_RECORD_RECV),
            ],
            &[
                ("gnutls_transport_set_int2", tls_cookie::GNUTLS_SET_INT2),
                // wget: gnutls_transport_set_ptr(session, (void *) fd)
                ("gnutls_transport_set_ptr", tls_cookie::OPENSSL_SET_FD),
            ],
            &["gnutls_deinit"],
        )
    });
    let url = format!("https://127.0.0.1:{PORT}/");
    let wget = f.run.run_traced(&f.ns.argv(&[
        "wget",
        "-q",
        "--no-check-certificate",
        "-O",
        "/dev/null",
        &url,
    ]));
    f.run.drain_until("server reply", |recs| {
        recs.iter().any(
            |r| matches!(r, Rec::Tls(e, _) if e.hdr.pid == f.server && tls_fn::is_write(e.hdr.syscall)),
        )
    });
    let client = f.run.tls(wget);
    let (sent, sent_evs) = stream(&client, true);
    let (got, got_evs) = stream(&client, false);
    let srv = f.run.tls(f.server);
    let (srv_got, _) = stream(&srv, false);
    let (srv_sent, _) = stream(&srv, true);
    let text = String::from_utf8_lossy(&sent);
    assert!(
        text.starts_with("GET / HTTP/1.1\r\n") && text.ends_with("\r\n\r\n"),
        "{text:?}"
    );
    assert_eq!(
        sent, srv_got,
        "each wget write once: the server read what wget wrote"
    );
    assert_eq!(got, srv_sent, "wget read what the server wrote");
    assert!(
        sent_evs
            .iter()
            .all(|e| e.hdr.syscall == tls_fn::GNUTLS_RECORD_SEND)
    );
    assert!(
        got_evs
            .iter()
            .all(|e| e.hdr.syscall == tls_fn::GNUTLS_RECORD_RECV)
    );
    let mut evs = sent_evs;
    evs.extend(got_evs.into_iter().filter(|e| e.hdr.ret > 0));
    assert_on_socket(&f.run, wget, &[sys::CONNECT], &evs);
    let libgnutls = file_key(LIBGNUTLS);
    assert!(f.run.mmaps.iter().any(|m| m.0 == wget && m.1 == libgnutls));
    assert!(f.run.mmaps.iter().all(|m| m.2 != 'T'), "{:?}", f.run.mmaps);
    assert!(f.run.execs.iter().any(|e| e.0 == wget));
    assert!(f.run.execs.iter().all(|e| e.1 != 'T'), "{:?}", f.run.execs);
    assert_eq!(f.run.paused_seen, 0);
}

/// A 100000-byte `SSL_write_ex` (the server's `/big` body, to curl): in chunks of at most 16
/// KiB in order, the whole body exactly; with a snaplen of 1000, one TRUNCATED record of its
/// first 1000 bytes that still says 100000 were written (as for a syscall's payload).
#[test]
fn large_call_chunked_and_cut_to_snaplen() {
    let body: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    for snaplen in [0u32, 1000] {
        let mut c = config(true);
        c.snaplen = snaplen;
        let mut f = Fixture::new("tlsb", c, attach_openssl);
        let url = format!("https://127.0.0.1:{PORT}/big");
        let curl = f
            .run
            .run_traced(&f.ns.argv(&["curl", "-sk", "-o", "/dev/null", &url]));
        let is_body = |e: &TlsEvent| e.total == BIG as u64;
        f.run.drain_until("the body's write", |recs| {
            recs.iter()
                .any(|r| matches!(r, Rec::Tls(e, _) if e.hdr.pid == f.server && is_body(e)))
        });
        let srv = f.run.tls(f.server);
        let body_recs: Vec<_> = srv.iter().filter(|(e, _)| is_body(e)).cloned().collect();
        let (sent, calls) = stream(&body_recs, true);
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].hdr.syscall, tls_fn::SSL_WRITE_EX);
        let (srv_sent, _) = stream(&srv, true);
        let (got, _) = stream(&f.run.tls(curl), false);
        if snaplen == 0 {
            assert_eq!(body_recs.len(), BIG.div_ceil(agent_common::CHUNK_MAX));
            assert!(
                body_recs
                    .iter()
                    .all(|(e, _)| e.hdr.flags & flags::TRUNCATED == 0)
            );
            assert!(sent == body, "the body, exactly");
            assert!(got == srv_sent, "curl read what the server wrote");
            assert!(got.ends_with(&body));
        } else {
            assert_eq!(body_recs.len(), 1);
            let e = &body_recs[0].0;
            assert_eq!(
                e.hdr.flags & (flags::FIRST | flags::LAST | flags::TRUNCATED),
                flags::FIRST | flags::LAST | flags::TRUNCATED
            );
            assert_eq!((e.len, e.hdr.ret), (1000, BIG as i64));
            assert!(sent == body[..1000], "the body's first 1000 bytes");
            let reads = f.run.tls(curl);
            assert!(reads.iter().all(|(e, p)| p.len() <= 1000 && e.len <= 1000));
        }
    }
}

/// A Python client reading 5 bytes at a time: the first read receives the record (a syscall
/// inside the call names the fd), the second is served from OpenSSL's buffer with no syscall
/// (the connection's cached fd, its socket unchanged), and once another socket has been
/// dup2'ed onto that fd, the third, also from the buffer, says fd -1: never a wrong fd.
#[test]
fn reads_from_the_buffer_use_the_cached_fd_only_while_it_holds_the_socket() {
    let mut f = Fixture::new("tlsc", config(true), attach_openssl);
    let client = f.dir.write(
        "client.py",
        format!(
            r#"
import os, socket, ssl
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(socket.create_connection(("127.0.0.1", {PORT})))
t.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
a = t.recv(5)
b = t.recv(5)
other = socket.socket()
os.dup2(other.fileno(), t.fileno())
c = t.recv(5)
assert a + b + c == b"HTTP/1.1 200 OK", a + b + c
"#
        ),
    );
    let py = f.run.run_traced(&f.ns.argv(&[python(), &client]));
    f.run.drain();
    let (got, reads) = stream(&f.run.tls(py), false);
    assert_eq!(got, b"HTTP/1.1 200 OK");
    assert_eq!(reads.len(), 3, "{reads:#?}");
    assert!(reads.iter().all(|e| e.hdr.syscall == tls_fn::SSL_READ_EX));
    assert!(reads.iter().all(|e| e.conn == reads[0].conn));
    assert_on_socket(&f.run, py, &[sys::CONNECT], &reads[..2]);
    let third = &reads[2];
    assert_eq!(third.hdr.fd, -1, "{third:?}");
    assert_eq!(third.hdr.flags & flags::SOCK_VALID, 0);
    assert_eq!(third.hdr.sock, agent_common::SockInfo::default());
}

/// Without `SSL_set_fd` hooked, the fd comes from the syscalls made inside the calls only:
/// with the send/recv syscalls entered for that alone (`SYS_TLS_ONLY`, as `--events connect
/// --tls` has them) every record of curl names its socket and no DATA record is made; with
/// those syscalls not looked at, the records say fd -1 rather than guess.
#[test]
fn fd_from_unreported_syscalls_else_unknown() {
    let data = [
        (libc::SYS_read, sys::READ),
        (libc::SYS_write, sys::WRITE),
        (libc::SYS_sendto, sys::SENDTO),
        (libc::SYS_recvfrom, sys::RECVFROM),
    ];
    for looked_at in [true, false] {
        let mut c = config(true);
        for (nr, id) in data {
            c.sys_table[nr as usize] = if looked_at {
                id as u8 | agent_common::SYS_TLS_ONLY
            } else {
                0
            };
        }
        let mut f = Fixture::new("tlso", c, |ebpf| {
            attach_lib(
                ebpf,
                LIBSSL,
                &[
                    ("SSL_write", tls_fn::SSL_WRITE),
                    ("SSL_read", tls_fn::SSL_READ),
                    ("SSL_write_ex", tls_fn::SSL_WRITE_EX),
                    ("SSL_read_ex", tls_fn::SSL_READ_EX),
                ],
                &[],
                &[],
            )
        });
        let url = format!("https://127.0.0.1:{PORT}/");
        let curl =
            f.run.run_traced(
                &f.ns
                    .argv(&["curl", "-sk", "--http1.1", "-o", "/dev/null", &url]),
            );
        f.run.drain();
        assert!(!f.run.recs.iter().any(|r| matches!(r, Rec::Data)));
        let (sent, writes) = stream(&f.run.tls(curl), true);
        assert!(sent.starts_with(b"GET / HTTP/1.1\r\n"));
        let (_, reads) = stream(&f.run.tls(curl), false);
        let mut evs = writes;
        evs.extend(reads.into_iter().filter(|e| e.hdr.ret > 0));
        if looked_at {
            assert_on_socket(&f.run, curl, &[sys::CONNECT], &evs);
        } else {
            for e in &evs {
                assert_eq!(
                    (e.hdr.fd, e.hdr.flags & flags::SOCK_VALID),
                    (-1, 0),
                    "{e:?}"
                );
            }
        }
    }
}

/// A Go client (`crypto/tls`, its `(*Conn).Write` and `Read` hooked at their entry and on
/// every RET, found through `.symtab` or, stripped, `.gopclntab`) making 20 requests on one
/// connection to the traced Python server: what Go wrote is exactly what the server read
/// (its requests), what Go read exactly what the server wrote; every Go record with bytes is
/// on the socket of its connect.
fn go_client_plaintext_on_its_socket(build: GoBuild) {
    let bin_dir = TempDir::new("tlsgo-bin");
    let bin = go_tls_client(&bin_dir, build);
    let hooks = go::tls_hooks(&std::fs::read(&bin).unwrap())
        .unwrap()
        .expect("a Go binary");
    let mut f = Fixture::new("tlsgo", config(false), |ebpf| {
        attach_openssl(ebpf);
        let p = kernel::go_tls_programs(ebpf).unwrap();
        for probe in hooks.probes() {
            let prog = match probe.at {
                ProbeAt::Entry => &mut *p.enter,
                ProbeAt::Ret => &mut *p.ret,
            };
            let point = UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(probe.offset),
                cookie: Some(u64::from(probe.func)),
            };
            prog.attach(point, &bin, UProbeScope::AllProcesses)
                .unwrap_or_else(|e| panic!("uprobe {bin}:{probe:?}: {e}"));
        }
    });
    let ca = f.dir.join("cert.pem");
    let url = format!("https://127.0.0.1:{PORT}/");
    let n = 20;
    let client = f.run.run_traced(&f.ns.argv(&[
        &bin,
        "-ca",
        ca.to_str().unwrap(),
        "-n",
        &n.to_string(),
        &url,
    ]));
    f.run.drain();

    let recs = f.run.tls(client);
    let (sent, sent_evs) = stream(&recs, true);
    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUser-Agent: Go-http-client/1.1\r\n\
         Accept-Encoding: gzip\r\n\r\n"
    );
    assert_eq!(String::from_utf8_lossy(&sent), request.repeat(n));
    assert_eq!(sent_evs.len(), n, "one Write per request");
    let (got, got_evs) = stream(&recs, false);
    let srv = f.run.tls(f.server);
    let (srv_got, _) = stream(&srv, false);
    let (srv_sent, _) = stream(&srv, true);
    assert_eq!(sent, srv_got, "the server read what Go wrote");
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&srv_sent),
        "Go read what the server wrote"
    );
    let text = String::from_utf8_lossy(&got);
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), n, "{text:?}");
    assert!(text.ends_with("\r\nContent-Length: 15\r\n\r\nhello over TLS\n"));
    assert!(sent_evs.iter().all(|e| e.hdr.syscall == tls_fn::GO_WRITE));
    assert!(got_evs.iter().all(|e| e.hdr.syscall == tls_fn::GO_READ));
    let mut evs = sent_evs;
    evs.extend(got_evs.into_iter().filter(|e| e.hdr.ret > 0));
    assert_on_socket(&f.run, client, &[sys::CONNECT], &evs);
}

#[test]
fn go_client_plaintext_on_its_socket_normal_build() {
    go_client_plaintext_on_its_socket(GoBuild::Normal);
}

#[test]
fn go_client_plaintext_on_its_socket_stripped_build() {
    go_client_plaintext_on_its_socket(GoBuild::Stripped);
}

/// The `tls_fn` ids of `evs`, in order.
fn fns(evs: &[TlsEvent]) -> Vec<u16> {
    evs.iter().map(|e| e.hdr.syscall).collect()
}

/// With the hooks as capagent plans them (one breakpoint on the inner function for
/// `SSL_write` and `SSL_write_ex`, one for the reads): curl's calls are named `SSL_write` and
/// `SSL_read`, the Python server's and a Python urllib client's `SSL_write_ex` and
/// `SSL_read_ex` (each by its caller's return address), each call recorded once: what each
/// side wrote is exactly what the other read, byte for byte, and curl's one request is one
/// `SSL_write` of exactly its bytes.
#[test]
fn shared_inner_hook_names_each_caller() {
    let mut f = Fixture::new("tlsi", config(true), |ebpf| {
        let lib = attach_openssl_as_planned(ebpf);
        // The shared hooks are what is attached (else this test tests nothing new).
        assert!(
            lib.hooks
                .iter()
                .any(|h| h.func == "SSL_read" && h.also == ["SSL_read_ex"]),
            "{lib:?}"
        );
    });
    let mut cmd = std::process::Command::new("curl");
    cmd.arg("--version");
    let version = run_output("curl", cmd, TIMEOUT);
    let version = version.split_whitespace().nth(1).unwrap().to_string();
    let url = format!("https://127.0.0.1:{PORT}/");
    let curl = f.run.run_traced(
        &f.ns
            .argv(&["curl", "-sk", "--http1.1", "-o", "/dev/null", &url]),
    );
    let srv_wrote = |recs: &[Rec], n: usize| {
        recs.iter()
            .filter(|r| matches!(r, Rec::Tls(e, _) if e.hdr.pid == f.server && tls_fn::is_write(e.hdr.syscall)))
            .count()
            >= n
    };
    f.run.drain_until("server reply", |recs| srv_wrote(recs, 1));

    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUser-Agent: curl/{version}\r\nAccept: */*\r\n\r\n"
    );
    let client = f.run.tls(curl);
    let (sent, sent_evs) = stream(&client, true);
    assert_eq!(String::from_utf8_lossy(&sent), request);
    assert_eq!(fns(&sent_evs), [tls_fn::SSL_WRITE], "one SSL_write");
    assert_eq!(sent_evs[0].hdr.ret, request.len() as i64);
    let (got, got_evs) = stream(&client, false);
    assert!(got_evs.iter().all(|e| e.hdr.syscall == tls_fn::SSL_READ));
    assert!(
        String::from_utf8_lossy(&got).ends_with("\r\nContent-Length: 15\r\n\r\nhello over TLS\n")
    );
    // SSL_read's return values: bytes read, else SSL_read's own (0 or -1), never SSL_read_ex's.
    assert!(got_evs.iter().all(|e| e.hdr.ret >= -1));

    let srv = f.run.tls(f.server);
    let (srv_got, srv_got_evs) = stream(&srv, false);
    let (srv_sent, srv_sent_evs) = stream(&srv, true);
    assert_eq!(srv_got, sent, "the server read what curl wrote, once");
    assert_eq!(srv_sent, got, "curl read what the server wrote, once");
    assert!(fns(&srv_got_evs).iter().all(|&f| f == tls_fn::SSL_READ_EX));
    assert!(
        fns(&srv_sent_evs)
            .iter()
            .all(|&f| f == tls_fn::SSL_WRITE_EX)
    );
    // SSL_read_ex's return values: bytes read or 0.
    assert!(srv_got_evs.iter().all(|e| e.hdr.ret >= 0));
    let mut curl_evs = sent_evs;
    curl_evs.extend(got_evs.iter().filter(|e| e.hdr.ret > 0));
    assert_on_socket(&f.run, curl, &[sys::CONNECT], &curl_evs);

    // Python urllib: SSL_write_ex and SSL_read_ex, at the same breakpoints.
    let script = f.dir.write(
        "urllib_client.py",
        format!(
            r#"
import ssl, urllib.request
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
body = urllib.request.urlopen("https://127.0.0.1:{PORT}/", context=ctx).read()
assert body == b"hello over TLS\n", body
"#
        ),
    );
    let before = srv_sent_evs.len();
    let py = f.run.run_traced(&f.ns.argv(&[python(), &script]));
    f.run
        .drain_until("server reply", |recs| srv_wrote(recs, before + 1));
    let client = f.run.tls(py);
    let (py_sent, py_sent_evs) = stream(&client, true);
    let (py_got, py_got_evs) = stream(&client, false);
    assert!(fns(&py_sent_evs).iter().all(|&f| f == tls_fn::SSL_WRITE_EX));
    assert!(fns(&py_got_evs).iter().all(|&f| f == tls_fn::SSL_READ_EX));
    let text = String::from_utf8_lossy(&py_sent);
    assert!(text.starts_with("GET / HTTP/1.1\r\n"), "{text:?}");
    let srv = f.run.tls(f.server);
    let (srv_got, _) = stream(&srv, false);
    let (srv_sent, _) = stream(&srv, true);
    assert_eq!(srv_got, [sent.clone(), py_sent].concat());
    assert_eq!(srv_sent, [got.clone(), py_got.clone()].concat());
    assert!(py_got.ends_with(b"\r\n\r\nhello over TLS\n"));
    let mut py_evs = py_sent_evs;
    py_evs.extend(py_got_evs.into_iter().filter(|e| e.hdr.ret > 0));
    assert_on_socket(&f.run, py, &[sys::CONNECT], &py_evs);
}

/// `openssl s_server -www`, traced, reads and writes through an SSL BIO (`BIO_f_ssl`),
/// which calls the inner functions of `SSL_read`/`SSL_write` itself: with the hooks as
/// capagent plans them its calls are named `BIO_read` and `BIO_write`: what it read is
/// exactly curl's request, what it wrote exactly what curl read (curl's calls still
/// `SSL_write`/`SSL_read`), each on its side's socket.
#[test]
fn ssl_bio_calls_are_named_bio_read_and_write() {
    let ns = Netns::new("tlsbio");
    let certs = Certs::new(&["localhost", "127.0.0.1"]);
    let mut ebpf = load(config(true));
    attach_openssl_as_planned(&mut ebpf);
    let mut run = Run::new(&mut ebpf);
    let port = PORT.to_string();
    let (cert, key) = (certs.cert.to_str().unwrap(), certs.key.to_str().unwrap());
    let server = run.start_traced(&ns.argv(&[
        "openssl", "s_server", "-www", "-quiet", "-accept", &port, "-cert", cert, "-key", key,
    ]));
    let spid = server.pid();
    let up = wait_until(TIMEOUT, || {
        run.drain();
        listening(spid, PORT)
    });
    assert!(up, "s_server does not listen");
    let mut cmd = std::process::Command::new("curl");
    cmd.arg("--version");
    let version = run_output("curl", cmd, TIMEOUT);
    let version = version.split_whitespace().nth(1).unwrap().to_string();
    let url = format!("https://127.0.0.1:{PORT}/");
    let curl = run.run_traced(&ns.argv(&["curl", "-sk", "--http1.1", "-o", "/dev/null", &url]));
    run.drain_until("s_server's reply", |recs| {
        recs.iter().any(
            |r| matches!(r, Rec::Tls(e, _) if e.hdr.pid == spid && tls_fn::is_write(e.hdr.syscall)),
        )
    });

    let request = format!(
        "GET / HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nUser-Agent: curl/{version}\r\nAccept: */*\r\n\r\n"
    );
    let srv = run.tls(spid);
    let (srv_got, srv_got_evs) = stream(&srv, false);
    let (srv_sent, srv_sent_evs) = stream(&srv, true);
    assert_eq!(String::from_utf8_lossy(&srv_got), request);
    assert!(!srv_got_evs.is_empty() && !srv_sent_evs.is_empty());
    assert!(
        fns(&srv_got_evs).iter().all(|&f| f == tls_fn::BIO_READ),
        "{srv_got_evs:#?}"
    );
    assert!(
        fns(&srv_sent_evs).iter().all(|&f| f == tls_fn::BIO_WRITE),
        "{srv_sent_evs:#?}"
    );
    assert_eq!(
        (
            tls_fn::name(tls_fn::BIO_READ),
            tls_fn::lib(tls_fn::BIO_READ)
        ),
        ("BIO_read", Some("openssl"))
    );
    assert!(
        String::from_utf8_lossy(&srv_sent).starts_with("HTTP/1.0 200 ok\r\n"),
        "{:?}",
        String::from_utf8_lossy(&srv_sent)
    );
    let client = run.tls(curl);
    let (sent, sent_evs) = stream(&client, true);
    let (got, got_evs) = stream(&client, false);
    assert_eq!(sent, srv_got, "s_server read what curl wrote, once");
    assert_eq!(got, srv_sent, "curl read what s_server wrote, once");
    assert_eq!(fns(&sent_evs), [tls_fn::SSL_WRITE]);
    assert!(got_evs.iter().all(|e| e.hdr.syscall == tls_fn::SSL_READ));
    let mut evs = srv_got_evs;
    evs.extend(srv_sent_evs);
    evs.retain(|e| e.hdr.ret > 0);
    assert_on_socket(&run, spid, &[sys::ACCEPT, sys::ACCEPT4], &evs);
    drop(server);
}
