//! strace-like text lines, one per event:
//!
//! ```text
//! 16:42:01.123456 python3[4242] socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 3
//! 16:42:01.123500 python3[4242] connect(3, 192.168.10.1:5555) = 0
//! 16:42:01.123600 python3[4242] sendto(3, 127.0.0.1:40112 -> 192.168.10.1:5555) = 12 "Hello World!"
//! 16:42:01.124000 python3[4242] recvfrom(3, 127.0.0.1:40112 <- 192.168.10.1:5555) = 4 "Boo!"
//! 16:42:01.124100 python3[4242] close(3) = 0 [127.0.0.1:40112 -> 192.168.10.1:5555]
//! 16:42:01.200000 curl[10/11] connect(5, 127.0.0.1:8000) = -1 ECONNREFUSED (Connection refused)
//! 16:42:01.300000 --- lost 12 events (34567 bytes): ring buffer full ---
//! 16:42:01.400000 curl[10] +++ exited with 7 +++
//! ```
//!
//! The process is `comm[pid]`, or `comm[pid/tid]` for a thread other than the main one.
//! Send/recv-type calls show `local -> remote` (send) or `local <- remote` (recv), the remote
//! being the datagram address when the call had one; `?` stands for an unknown end. The value
//! after `=` is the bytes transferred (per message for sendmmsg/recvmmsg, whose lines also say
//! `msg N`), then a quoted preview of the payload; a preview cut at
//! [`TextConfig::max_preview`] bytes or a payload not fully captured ends with `...`, and the
//! latter also says `(4096 of 100000 bytes captured)`.

use std::fmt::Write as _;
use std::io::{self, Write};

use agent_common::sys;

use crate::model::{Call, Detail, Direction, Endpoint, Event, SocketMeta};
use crate::output::escape;
use crate::output::num::{AddrStr, Dec};

/// Text output settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextConfig {
    /// Start each line with the time of day (`16:42:01.123456`).
    pub timestamps: bool,
    /// Times in UTC instead of local time.
    pub utc: bool,
    /// Most payload bytes shown per line.
    pub max_preview: usize,
}

impl Default for TextConfig {
    fn default() -> Self {
        TextConfig {
            timestamps: true,
            utc: false,
            max_preview: 64,
        }
    }
}

/// Writes one text line per event to `out` (which the caller buffers).
pub struct TextWriter<W: Write> {
    out: W,
    cfg: TextConfig,
    clock: Clock,
    line: String,
}

impl<W: Write> TextWriter<W> {
    pub fn new(out: W, cfg: TextConfig) -> Self {
        TextWriter {
            out,
            clock: Clock::new(cfg.utc),
            cfg,
            line: String::new(),
        }
    }

    pub fn write_event(&mut self, ev: &Event) -> io::Result<()> {
        self.line.clear();
        if self.cfg.timestamps {
            self.clock.time_of_day(ev.ts_ns, &mut self.line);
            self.line.push(' ');
        }
        format_into(&mut self.line, ev, &self.cfg);
        self.line.push('\n');
        if let Some(frames) = &ev.stack {
            for (i, f) in frames.iter().enumerate() {
                self.line.push_str("    ");
                frame_line(&mut self.line, i, f);
                self.line.push('\n');
            }
        }
        self.out.write_all(self.line.as_bytes())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One frame of a call stack (`trace --stack`), without indent and newline:
/// `#0  libc.so.6!__send+0x17 (/usr/lib/x86_64-linux-gnu/libc.so.6) 0x7f.. at file:line`
/// (`?` for an unknown module or function).
pub fn frame_line(s: &mut String, i: usize, f: &crate::model::Frame) {
    let base = f
        .module
        .as_deref()
        .map(|m| m.rsplit('/').next().unwrap_or(m))
        .unwrap_or("?");
    let _ = write!(s, "#{i:<2} {base}!");
    match &f.function {
        Some(func) => {
            let _ = write!(s, "{func}+{:#x}", f.offset);
        }
        None => s.push('?'),
    }
    if let Some(m) = &f.module {
        let _ = write!(s, " ({m})");
    }
    let _ = write!(s, " {:#x}", f.addr);
    if let Some(file) = &f.file {
        let _ = write!(s, " at {file}");
        if let Some(line) = f.line {
            let _ = write!(s, ":{line}");
        }
    }
}

/// The line for `ev` without timestamp and newline.
pub fn format_event(ev: &Event, cfg: &TextConfig) -> String {
    let mut s = String::new();
    format_into(&mut s, ev, cfg);
    s
}

fn format_into(s: &mut String, ev: &Event, cfg: &TextConfig) {
    if let Detail::Lost { events, bytes } = &ev.detail {
        let _ = write!(
            s,
            "--- lost {events} events ({bytes} bytes): ring buffer full ---"
        );
        return;
    }
    // The process name may come from /proc: keep control characters off the terminal.
    let comm = &ev.task.comm;
    if comm.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        s.push_str(comm);
    } else {
        for c in comm.chars() {
            if c.is_control() {
                let mut buf = [0u8; 4];
                escape::escape_into(s, c.encode_utf8(&mut buf).as_bytes());
            } else {
                s.push(c);
            }
        }
    }
    s.push('[');
    s.push_str(Dec::u64(u64::from(ev.task.pid)).as_str());
    if ev.task.tid != ev.task.pid {
        s.push('/');
        s.push_str(Dec::u64(u64::from(ev.task.tid)).as_str());
    }
    s.push_str("] ");
    match &ev.detail {
        Detail::Sock { args, addr } => sock_line(s, ev, args, addr.as_ref()),
        Detail::Data {
            dir,
            total,
            payload,
            truncated,
            addr,
            msg_index,
        } => {
            s.push_str(ev.syscall_name());
            s.push('(');
            push_i64(s, i64::from(ev.fd));
            if let Call::Tls { func, conn } = ev.call
                && ev.sock.is_none()
            {
                // The socket is not known: the library's connection object tells the
                // records of one TLS connection apart.
                s.push_str(", ");
                s.push_str(tls_object_name(func));
                let _ = write!(s, "={conn:#x}");
            }
            let remote = addr.map(Endpoint::Inet);
            let remote = remote
                .as_ref()
                .or(ev.sock.as_ref().and_then(|m| m.remote.as_ref()));
            let local = ev.sock.as_ref().and_then(|m| m.local.as_ref());
            if local.is_some() || remote.is_some() {
                s.push_str(", ");
                push_endpoint(s, local);
                s.push_str(match dir {
                    Direction::Send => " -> ",
                    Direction::Recv => " <- ",
                });
                push_endpoint(s, remote);
            }
            if matches!(ev.shown_as(), sys::SENDMMSG | sys::RECVMMSG) {
                s.push_str(", msg ");
                s.push_str(Dec::u64(u64::from(*msg_index)).as_str());
            }
            s.push(')');
            if let Call::Tls { func, .. } = ev.call
                && ev.ret < 0
            {
                // The library's own failure value, not an errno.
                s.push_str(" = ");
                push_i64(s, ev.ret);
                if let Some(name) = agent_common::tls_fn::error_name(func, ev.ret) {
                    s.push(' ');
                    s.push_str(name);
                }
            } else if ev.ret < 0 {
                ret_into(s, ev.ret);
            } else if ev.unfinished {
                // Like strace's `= ?`: the call never returned (its process exited).
                s.push_str(" = ? ");
                escape::preview_into(s, payload, cfg.max_preview);
            } else {
                s.push_str(" = ");
                s.push_str(Dec::u64(*total).as_str());
                s.push(' ');
                escape::preview_into(s, payload, cfg.max_preview);
            }
            if *truncated && ev.ret >= 0 {
                if payload.len() <= cfg.max_preview {
                    s.push_str("...");
                }
                s.push_str(" (");
                s.push_str(Dec::u64(payload.len() as u64).as_str());
                s.push_str(" of ");
                s.push_str(Dec::u64(*total).as_str());
                s.push_str(" bytes captured)");
            }
            if ev.unfinished && ev.ret >= 0 {
                s.push_str(" [unfinished]");
            }
            if ev.tls_ciphertext {
                s.push_str(" [tls]");
            } else if ev.tls_plaintext {
                s.push_str(" [tls plaintext]");
            }
        }
        Detail::Fork { child_pid } => {
            let _ = write!(s, "+++ forked child {child_pid} +++");
        }
        Detail::Exec => s.push_str("+++ exec +++"),
        Detail::Edit {
            dir,
            rule,
            offset,
            before,
            after,
        } => {
            // edit(7, 127.0.0.1:40112 <- 10.0.0.5:80) s2c:/Boo!/Yay!/ at 4: "Boo!" -> "Yay!"
            push_relay_note(s, "edit", ev, *dir);
            escape::escape_into(s, rule.as_bytes());
            s.push_str(" at ");
            s.push_str(Dec::u64(*offset).as_str());
            s.push_str(": \"");
            escape::escape_into(s, before);
            s.push_str("\" -> \"");
            escape::escape_into(s, after);
            s.push('"');
        }
        Detail::Decoded {
            dir,
            offset,
            encoding,
            payload,
            truncated,
        } => {
            // decoded(7, 127.0.0.1:40112 <- 10.0.0.5:80) gzip at 120: 11 bytes "hello world"
            push_relay_note(s, "decoded", ev, *dir);
            escape::escape_into(s, encoding.as_bytes());
            s.push_str(" at ");
            s.push_str(Dec::u64(*offset).as_str());
            s.push_str(": ");
            s.push_str(Dec::u64(payload.len() as u64).as_str());
            s.push_str(" bytes \"");
            escape::escape_into(s, payload);
            s.push('"');
            if *truncated {
                s.push_str(" (truncated at --decode-bodies-max)");
            }
        }
        Detail::Open {
            proxy,
            listen,
            target,
            resolved,
            tls,
        } => {
            // open(7, socks5 connect, 127.0.0.1:40112 -> example.com:80 = 93.184.216.34:80,
            //      via 127.0.0.1:1080) = 0
            s.push_str("open(");
            push_i64(s, i64::from(ev.fd));
            s.push_str(", ");
            escape::escape_into(s, proxy.as_bytes());
            s.push_str(", ");
            push_endpoint(s, ev.sock.as_ref().and_then(|m| m.local.as_ref()));
            s.push_str(" -> ");
            escape::escape_into(s, target.as_bytes());
            if let Some(r) = resolved {
                s.push_str(" = ");
                s.push_str(AddrStr::new(r).as_str());
            }
            if let Some(l) = listen {
                s.push_str(", via ");
                s.push_str(AddrStr::new(l).as_str());
            }
            s.push(')');
            ret_into(s, ev.ret);
            if let Some(t) = tls {
                push_intercepted(s, t);
            }
        }
        Detail::Exit => {
            // The wait status.
            let status = ev.ret as i32;
            let sig = status & 0x7f;
            if sig == 0 {
                let _ = write!(s, "+++ exited with {} +++", (status >> 8) & 0xff);
            } else {
                let core = if status & 0x80 != 0 {
                    " (core dumped)"
                } else {
                    ""
                };
                let _ = write!(s, "+++ killed by {}{core} +++", signal_name(sig));
            }
        }
        Detail::Lost { .. } => unreachable!("handled above"),
    }
}

/// What a TLS library calls its connection object, for `ssl=0x...` in a record whose socket
/// is not known.
/// ` [tls client TLSv1.3 TLS13_AES_128_GCM_SHA256 h2, server ..., sni NAME, cert SUBJECT]`
/// (what is known) of an intercepted connection's `open` record, and `, failed: REASON`.
/// A connection passed through: ` [tls passthrough: REASON, sni NAME]`.
fn push_intercepted(s: &mut String, t: &crate::model::TlsIntercepted) {
    if let Some(reason) = &t.passthrough {
        s.push_str(" [tls passthrough: ");
        escape::escape_into(s, reason.as_bytes());
        if let Some(sni) = &t.client.sni {
            s.push_str(", sni ");
            escape::escape_into(s, sni.as_bytes());
        }
        s.push(']');
        return;
    }
    let leg = |s: &mut String, name: &str, l: &crate::model::TlsLeg| {
        s.push_str(name);
        for v in [&l.version, &l.cipher, &l.alpn].into_iter().flatten() {
            s.push(' ');
            escape::escape_into(s, v.as_bytes());
        }
    };
    leg(s, " [tls client", &t.client);
    leg(s, ", server", &t.server);
    for (name, v) in [
        (", sni ", &t.client.sni),
        (", cert ", &t.server_cert),
        (", failed: ", &t.error),
    ] {
        if let Some(v) = v {
            s.push_str(name);
            escape::escape_into(s, v.as_bytes());
        }
    }
    s.push(']');
}

fn tls_object_name(func: u16) -> &'static str {
    match agent_common::tls_fn::lib(func) {
        Some("gnutls") => "session",
        Some("go") => "conn",
        _ => "ssl",
    }
}

fn push_i64(s: &mut String, n: i64) {
    if n < 0 {
        s.push('-');
    }
    s.push_str(Dec::u64(n.unsigned_abs()).as_str());
}

/// `NAME(FD, LOCAL -> REMOTE) ` (`<-` for data received) of an `edit` or `decoded` line.
fn push_relay_note(s: &mut String, name: &str, ev: &Event, dir: Direction) {
    s.push_str(name);
    s.push('(');
    push_i64(s, i64::from(ev.fd));
    let local = ev.sock.as_ref().and_then(|m| m.local.as_ref());
    let remote = ev.sock.as_ref().and_then(|m| m.remote.as_ref());
    if local.is_some() || remote.is_some() {
        s.push_str(", ");
        push_endpoint(s, local);
        s.push_str(match dir {
            Direction::Send => " -> ",
            Direction::Recv => " <- ",
        });
        push_endpoint(s, remote);
    }
    s.push_str(") ");
}

/// An endpoint as `Display` writes it, `?` when unknown.
fn push_endpoint(s: &mut String, e: Option<&Endpoint>) {
    match e {
        None => s.push('?'),
        Some(Endpoint::Inet(a)) => s.push_str(AddrStr::new(a).as_str()),
        Some(Endpoint::Unix(p)) if p.is_empty() => s.push_str("unix:(unnamed)"),
        Some(Endpoint::Unix(p)) => {
            s.push_str("unix:");
            s.push_str(p);
        }
    }
}

fn or_unknown(e: Option<&Endpoint>) -> String {
    e.map_or_else(|| "?".to_string(), Endpoint::to_string)
}

fn sock_line(s: &mut String, ev: &Event, args: &[u64; 4], addr: Option<&Endpoint>) {
    let name = ev.syscall_name();
    let fd = match ev.call {
        // The record's fd is the new socket's (the connection's records go by it); the call
        // used the listening one, in args[1].
        Call::Syscall(sys::ACCEPT | sys::ACCEPT4) if ev.ret >= 0 => args[1] as i32,
        _ => ev.fd,
    };
    match ev.shown_as() {
        sys::SOCKET => {
            let domain = args[0] as u32;
            let _ = write!(
                s,
                "socket({}, {}, {})",
                domain_name(domain),
                sock_type_name(args[1] as u32),
                protocol_name(domain, args[2] as u32)
            );
        }
        sys::SOCKETPAIR => {
            let domain = args[0] as u32;
            let _ = write!(
                s,
                "socketpair({}, {}, {}, ",
                domain_name(domain),
                sock_type_name(args[1] as u32),
                protocol_name(domain, args[2] as u32)
            );
            match ev.socketpair_fds() {
                Some([a, b]) => {
                    let _ = write!(s, "[{a}, {b}])");
                }
                None => s.push_str("?)"),
            }
        }
        sys::CONNECT | sys::BIND | sys::ACCEPT => {
            let _ = write!(s, "{name}({fd}, {})", or_unknown(addr));
        }
        sys::ACCEPT4 => {
            let _ = write!(
                s,
                "{name}({fd}, {}, {})",
                or_unknown(addr),
                sock_flags(args[0] as u32)
            );
        }
        sys::LISTEN => {
            let _ = write!(s, "{name}({fd}, {})", args[0] as i32);
        }
        sys::SHUTDOWN => {
            let how = match args[0] {
                0 => "SHUT_RD".to_string(),
                1 => "SHUT_WR".to_string(),
                2 => "SHUT_RDWR".to_string(),
                n => n.to_string(),
            };
            let _ = write!(s, "{name}({fd}, {how})");
        }
        _ => {
            let _ = write!(s, "{name}({fd})");
        }
    }
    ret_into(s, ev.ret);
    if matches!(ev.shown_as(), sys::CLOSE | sys::SHUTDOWN | sys::LISTEN)
        && let Some(ends) = ev.sock.as_ref().and_then(ends)
    {
        let _ = write!(s, " [{ends}]");
    }
}

/// `local -> remote`, `local`, or `? -> remote`; `None` when neither is known.
fn ends(m: &SocketMeta) -> Option<String> {
    match (&m.local, &m.remote) {
        (None, None) => None,
        (Some(l), None) => Some(l.to_string()),
        (l, Some(r)) => Some(format!("{} -> {r}", or_unknown(l.as_ref()))),
    }
}

fn ret_into(s: &mut String, ret: i64) {
    if ret < 0 {
        let e = ret.unsigned_abs();
        match errno(e) {
            Some((name, desc)) => {
                let _ = write!(s, " = -1 {name} ({desc})");
            }
            None => {
                let _ = write!(s, " = -1 ERRNO_{e} (Unknown error {e})");
            }
        }
    } else {
        s.push_str(" = ");
        s.push_str(Dec::u64(ret.unsigned_abs()).as_str());
    }
}

/// The errno name of a negative return value (`-111` → `ECONNREFUSED`; `ERRNO_N` when
/// unknown); `None` for a non-negative one.
pub fn errno_name(ret: i64) -> Option<String> {
    if ret >= 0 {
        return None;
    }
    let e = ret.unsigned_abs();
    Some(errno(e).map_or_else(|| format!("ERRNO_{e}"), |(n, _)| n.to_string()))
}

/// (name, description) of errno `e`, as glibc's strerror and strace print them.
pub fn errno(e: u64) -> Option<(&'static str, &'static str)> {
    ERRNOS
        .iter()
        .find(|(n, _, _)| *n == e)
        .map(|&(_, name, desc)| (name, desc))
}

const ERRNOS: &[(u64, &str, &str)] = &[
    (1, "EPERM", "Operation not permitted"),
    (2, "ENOENT", "No such file or directory"),
    (3, "ESRCH", "No such process"),
    (4, "EINTR", "Interrupted system call"),
    (5, "EIO", "Input/output error"),
    (6, "ENXIO", "No such device or address"),
    (7, "E2BIG", "Argument list too long"),
    (8, "ENOEXEC", "Exec format error"),
    (9, "EBADF", "Bad file descriptor"),
    (10, "ECHILD", "No child processes"),
    (11, "EAGAIN", "Resource temporarily unavailable"),
    (12, "ENOMEM", "Cannot allocate memory"),
    (13, "EACCES", "Permission denied"),
    (14, "EFAULT", "Bad address"),
    (15, "ENOTBLK", "Block device required"),
    (16, "EBUSY", "Device or resource busy"),
    (17, "EEXIST", "File exists"),
    (18, "EXDEV", "Invalid cross-device link"),
    (19, "ENODEV", "No such device"),
    (20, "ENOTDIR", "Not a directory"),
    (21, "EISDIR", "Is a directory"),
    (22, "EINVAL", "Invalid argument"),
    (23, "ENFILE", "Too many open files in system"),
    (24, "EMFILE", "Too many open files"),
    (25, "ENOTTY", "Inappropriate ioctl for device"),
    (26, "ETXTBSY", "Text file busy"),
    (27, "EFBIG", "File too large"),
    (28, "ENOSPC", "No space left on device"),
    (29, "ESPIPE", "Illegal seek"),
    (30, "EROFS", "Read-only file system"),
    (31, "EMLINK", "Too many links"),
    (32, "EPIPE", "Broken pipe"),
    (33, "EDOM", "Numerical argument out of domain"),
    (34, "ERANGE", "Numerical result out of range"),
    (35, "EDEADLK", "Resource deadlock avoided"),
    (36, "ENAMETOOLONG", "File name too long"),
    (37, "ENOLCK", "No locks available"),
    (38, "ENOSYS", "Function not implemented"),
    (39, "ENOTEMPTY", "Directory not empty"),
    (40, "ELOOP", "Too many levels of symbolic links"),
    (61, "ENODATA", "No data available"),
    (62, "ETIME", "Timer expired"),
    (71, "EPROTO", "Protocol error"),
    (74, "EBADMSG", "Bad message"),
    (75, "EOVERFLOW", "Value too large for defined data type"),
    (77, "EBADFD", "File descriptor in bad state"),
    (
        84,
        "EILSEQ",
        "Invalid or incomplete multibyte or wide character",
    ),
    (88, "ENOTSOCK", "Socket operation on non-socket"),
    (89, "EDESTADDRREQ", "Destination address required"),
    (90, "EMSGSIZE", "Message too long"),
    (91, "EPROTOTYPE", "Protocol wrong type for socket"),
    (92, "ENOPROTOOPT", "Protocol not available"),
    (93, "EPROTONOSUPPORT", "Protocol not supported"),
    (94, "ESOCKTNOSUPPORT", "Socket type not supported"),
    (95, "EOPNOTSUPP", "Operation not supported"),
    (96, "EPFNOSUPPORT", "Protocol family not supported"),
    (
        97,
        "EAFNOSUPPORT",
        "Address family not supported by protocol",
    ),
    (98, "EADDRINUSE", "Address already in use"),
    (99, "EADDRNOTAVAIL", "Cannot assign requested address"),
    (100, "ENETDOWN", "Network is down"),
    (101, "ENETUNREACH", "Network is unreachable"),
    (102, "ENETRESET", "Network dropped connection on reset"),
    (103, "ECONNABORTED", "Software caused connection abort"),
    (104, "ECONNRESET", "Connection reset by peer"),
    (105, "ENOBUFS", "No buffer space available"),
    (106, "EISCONN", "Transport endpoint is already connected"),
    (107, "ENOTCONN", "Transport endpoint is not connected"),
    (
        108,
        "ESHUTDOWN",
        "Cannot send after transport endpoint shutdown",
    ),
    (109, "ETOOMANYREFS", "Too many references: cannot splice"),
    (110, "ETIMEDOUT", "Connection timed out"),
    (111, "ECONNREFUSED", "Connection refused"),
    (112, "EHOSTDOWN", "Host is down"),
    (113, "EHOSTUNREACH", "No route to host"),
    (114, "EALREADY", "Operation already in progress"),
    (115, "EINPROGRESS", "Operation now in progress"),
    (116, "ESTALE", "Stale file handle"),
    (121, "EREMOTEIO", "Remote I/O error"),
    (122, "EDQUOT", "Disk quota exceeded"),
    (125, "ECANCELED", "Operation canceled"),
    // Kernel-internal values a syscall exit tracepoint can see when a signal interrupts.
    (512, "ERESTARTSYS", "To be restarted if SA_RESTART is set"),
    (513, "ERESTARTNOINTR", "To be restarted"),
    (514, "ERESTARTNOHAND", "To be restarted if no handler"),
    (516, "ERESTART_RESTARTBLOCK", "Interrupted by signal"),
];

/// `SIGKILL` for 9; `SIG<n>` when unknown.
pub fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match usize::try_from(sig) {
        Ok(i @ 1..=31) => NAMES[i].to_string(),
        _ => format!("SIG{sig}"),
    }
}

const SOCK_NONBLOCK: u32 = 0o4000;
const SOCK_CLOEXEC: u32 = 0o2000000;

fn domain_name(d: u32) -> String {
    match d {
        0 => "AF_UNSPEC",
        1 => "AF_UNIX",
        2 => "AF_INET",
        10 => "AF_INET6",
        16 => "AF_NETLINK",
        17 => "AF_PACKET",
        40 => "AF_VSOCK",
        44 => "AF_XDP",
        _ => return d.to_string(),
    }
    .to_string()
}

fn sock_type_name(t: u32) -> String {
    let base = match t & 0xf {
        1 => "SOCK_STREAM".to_string(),
        2 => "SOCK_DGRAM".to_string(),
        3 => "SOCK_RAW".to_string(),
        4 => "SOCK_RDM".to_string(),
        5 => "SOCK_SEQPACKET".to_string(),
        6 => "SOCK_DCCP".to_string(),
        10 => "SOCK_PACKET".to_string(),
        n => n.to_string(),
    };
    let flags = t & !0xf;
    if flags == 0 {
        base
    } else {
        format!("{base}|{}", sock_flags(flags))
    }
}

/// SOCK_NONBLOCK|SOCK_CLOEXEC (accept4's flags, socket's type flags); `0` when none.
fn sock_flags(f: u32) -> String {
    let mut parts = Vec::new();
    if f & SOCK_NONBLOCK != 0 {
        parts.push("SOCK_NONBLOCK".to_string());
    }
    if f & SOCK_CLOEXEC != 0 {
        parts.push("SOCK_CLOEXEC".to_string());
    }
    let rest = f & !(SOCK_NONBLOCK | SOCK_CLOEXEC);
    if rest != 0 || parts.is_empty() {
        parts.push(if rest == 0 {
            "0".to_string()
        } else {
            format!("{rest:#x}")
        });
    }
    parts.join("|")
}

fn protocol_name(domain: u32, p: u32) -> String {
    if domain != 2 && domain != 10 {
        return p.to_string();
    }
    match p {
        0 => "IPPROTO_IP",
        1 => "IPPROTO_ICMP",
        6 => "IPPROTO_TCP",
        17 => "IPPROTO_UDP",
        58 => "IPPROTO_ICMPV6",
        132 => "IPPROTO_SCTP",
        136 => "IPPROTO_UDPLITE",
        255 => "IPPROTO_RAW",
        262 => "IPPROTO_MPTCP",
        _ => return p.to_string(),
    }
    .to_string()
}

/// Formats times of day, in UTC or local time (the UTC offset is looked up once per second).
struct Clock {
    utc: bool,
    /// (second, UTC offset in seconds at that second).
    cached: Option<(i64, i64)>,
}

impl Clock {
    fn new(utc: bool) -> Self {
        Clock { utc, cached: None }
    }

    fn offset(&mut self, secs: i64) -> i64 {
        if self.utc {
            return 0;
        }
        if let Some((s, off)) = self.cached
            && s == secs
        {
            return off;
        }
        let off = local_utc_offset(secs);
        self.cached = Some((secs, off));
        off
    }

    /// `HH:MM:SS.uuuuuu`.
    fn time_of_day(&mut self, ts_ns: u64, s: &mut String) {
        let secs = (ts_ns / 1_000_000_000) as i64;
        let micros = (ts_ns % 1_000_000_000) / 1_000;
        let local = secs + self.offset(secs);
        let day = local.rem_euclid(86_400) as u64;
        let mut buf = [0u8; 15];
        let digits = |buf: &mut [u8], mut n: u64| {
            for b in buf.iter_mut().rev() {
                *b = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        digits(&mut buf[0..2], day / 3600);
        buf[2] = b':';
        digits(&mut buf[3..5], day / 60 % 60);
        buf[5] = b':';
        digits(&mut buf[6..8], day % 60);
        buf[8] = b'.';
        digits(&mut buf[9..15], micros);
        // Digits, colons and a dot: ASCII.
        s.push_str(std::str::from_utf8(&buf).unwrap_or_default());
    }
}

/// The local time zone's UTC offset (seconds) at `secs` since the epoch; 0 if unknown.
fn local_utc_offset(secs: i64) -> i64 {
    let t: libc::time_t = secs;
    // SAFETY: localtime_r writes into the zeroed `tm` we own; `t` is a valid time_t.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{SocketMeta, Task, Transport};
    use bytes::Bytes;

    pub(crate) fn ep(s: &str) -> Option<Endpoint> {
        Some(Endpoint::Inet(s.parse().unwrap()))
    }

    pub(crate) fn tcp(local: &str, remote: &str) -> Option<SocketMeta> {
        Some(SocketMeta {
            sk: 0xffff_8881_0203_0400,
            ino: 31337,
            transport: Transport::Tcp,
            local: ep(local),
            remote: ep(remote),
        })
    }

    /// 2023-11-14T22:13:20.123456789Z
    pub(crate) const TS: u64 = 1_700_000_000_123_456_789;

    pub(crate) fn ev(syscall: u16, fd: i32, ret: i64, detail: Detail) -> Event {
        Event {
            ts_ns: TS,
            task: Task {
                pid: 4242,
                tid: 4242,
                comm: "python3".into(),
            },
            call: Call::Syscall(syscall),
            fd,
            ret,
            sock: tcp("127.0.0.1:40112", "192.168.10.1:5555"),
            detail,
            tls_ciphertext: false,
            tls_eof: false,
            tls_plaintext: false,
            unfinished: false,
            stack: None,
        }
    }

    pub(crate) fn sock(args: [u64; 4], addr: Option<Endpoint>) -> Detail {
        Detail::Sock { args, addr }
    }

    pub(crate) fn data(
        dir: Direction,
        total: u64,
        payload: &'static [u8],
        truncated: bool,
    ) -> Detail {
        Detail::Data {
            dir,
            total,
            payload: Bytes::from_static(payload),
            truncated,
            addr: None,
            msg_index: 0,
        }
    }

    fn line(e: &Event) -> String {
        format_event(e, &TextConfig::default())
    }

    #[test]
    fn connect() {
        let e = ev(sys::CONNECT, 3, 0, sock([0; 4], ep("192.168.10.1:5555")));
        assert_eq!(line(&e), "python3[4242] connect(3, 192.168.10.1:5555) = 0");
    }

    #[test]
    fn send_and_recv() {
        let e = ev(
            sys::SENDTO,
            3,
            12,
            data(Direction::Send, 12, b"Hello World!", false),
        );
        assert_eq!(
            line(&e),
            "python3[4242] sendto(3, 127.0.0.1:40112 -> 192.168.10.1:5555) = 12 \"Hello World!\""
        );
        let e = ev(
            sys::RECVFROM,
            3,
            4,
            data(Direction::Recv, 4, b"Boo!", false),
        );
        assert_eq!(
            line(&e),
            "python3[4242] recvfrom(3, 127.0.0.1:40112 <- 192.168.10.1:5555) = 4 \"Boo!\""
        );
    }

    /// A proxy's `edit` and `decoded` records (the relay step shown as the send or receive).
    #[test]
    fn edit_and_decoded() {
        let mut e = ev(
            sys::RECVFROM,
            3,
            0,
            Detail::Edit {
                dir: Direction::Recv,
                rule: "s2c:/Boo!/Yay!/".into(),
                offset: 4,
                before: Bytes::from_static(b"Boo!"),
                after: Bytes::from_static(b"Yay!"),
            },
        );
        assert_eq!(
            line(&e),
            "python3[4242] edit(3, 127.0.0.1:40112 <- 192.168.10.1:5555) s2c:/Boo!/Yay!/ at 4: \"Boo!\" -> \"Yay!\""
        );
        e.detail = Detail::Decoded {
            dir: Direction::Recv,
            offset: 120,
            encoding: "br, gzip".into(),
            payload: Bytes::from_static(b"hello\n"),
            truncated: false,
        };
        assert_eq!(
            line(&e),
            "python3[4242] decoded(3, 127.0.0.1:40112 <- 192.168.10.1:5555) br, gzip at 120: 6 bytes \"hello\\n\""
        );
        if let Detail::Decoded { truncated, .. } = &mut e.detail {
            *truncated = true;
        }
        assert!(line(&e).ends_with(" 6 bytes \"hello\\n\" (truncated at --decode-bodies-max)"));
    }

    #[test]
    fn tls_records() {
        use agent_common::tls_fn;
        let req = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        let mut e = ev(
            tls_fn::SSL_WRITE,
            5,
            req.len() as i64,
            data(Direction::Send, req.len() as u64, req, false),
        );
        e.call = Call::Tls {
            func: tls_fn::SSL_WRITE,
            conn: 0x55d0_c0a1_b2c0,
        };
        e.task.comm = "curl".into();
        e.sock = tcp("127.0.0.1:40112", "93.184.216.34:443");
        assert_eq!(
            line(&e),
            r#"curl[4242] SSL_write(5, 127.0.0.1:40112 -> 93.184.216.34:443) = 37 "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n""#
        );
        // The socket not known: the library's object instead.
        e.fd = -1;
        e.sock = None;
        e.call = Call::Tls {
            func: tls_fn::SSL_READ_EX,
            conn: 0x55d0_c0a1_b2c0,
        };
        e.detail = data(Direction::Recv, 4, b"HTTP", false);
        e.ret = 4;
        assert_eq!(
            line(&e),
            r#"curl[4242] SSL_read_ex(-1, ssl=0x55d0c0a1b2c0) = 4 "HTTP""#
        );
        e.call = Call::Tls {
            func: tls_fn::GNUTLS_RECORD_RECV,
            conn: 0x10,
        };
        assert_eq!(
            line(&e),
            r#"curl[4242] gnutls_record_recv(-1, session=0x10) = 4 "HTTP""#
        );
        // A failure is the library's value, not an errno (GnuTLS's -28 is not ENOSPC).
        e.detail = data(Direction::Recv, 0, b"", false);
        e.ret = -28;
        assert_eq!(
            line(&e),
            "curl[4242] gnutls_record_recv(-1, session=0x10) = -28 GNUTLS_E_AGAIN"
        );
        e.call = Call::Tls {
            func: tls_fn::SSL_READ,
            conn: 0x10,
        };
        e.ret = -1;
        assert_eq!(line(&e), "curl[4242] SSL_read(-1, ssl=0x10) = -1");
        // Ciphertext of a connection known to carry TLS, also when the call failed.
        let mut e = ev(
            sys::WRITE,
            5,
            3,
            data(Direction::Send, 3, b"\x16\x03\x01", false),
        );
        e.tls_ciphertext = true;
        assert_eq!(
            line(&e),
            r#"python3[4242] write(5, 127.0.0.1:40112 -> 192.168.10.1:5555) = 3 "\x16\x03\x01" [tls]"#
        );
        e.ret = -11;
        assert_eq!(
            line(&e),
            "python3[4242] write(5, 127.0.0.1:40112 -> 192.168.10.1:5555) = -1 EAGAIN (Resource temporarily unavailable) [tls]"
        );
    }

    #[test]
    fn thread_and_errno() {
        let mut e = ev(sys::CONNECT, 5, -111, sock([0; 4], ep("127.0.0.1:8000")));
        e.task = Task {
            pid: 10,
            tid: 11,
            comm: "curl".into(),
        };
        assert_eq!(
            line(&e),
            "curl[10/11] connect(5, 127.0.0.1:8000) = -1 ECONNREFUSED (Connection refused)"
        );
        e.ret = -115;
        assert!(line(&e).ends_with("= -1 EINPROGRESS (Operation now in progress)"));
        e.ret = -4095;
        assert!(line(&e).ends_with("= -1 ERRNO_4095 (Unknown error 4095)"));
    }

    #[test]
    fn failed_recv_has_no_payload() {
        let e = ev(sys::RECVFROM, 3, -11, data(Direction::Recv, 0, b"", false));
        assert_eq!(
            line(&e),
            "python3[4242] recvfrom(3, 127.0.0.1:40112 <- 192.168.10.1:5555) = -1 EAGAIN \
             (Resource temporarily unavailable)"
        );
        let e = ev(sys::READ, 3, 0, data(Direction::Recv, 0, b"", false));
        assert_eq!(
            line(&e),
            "python3[4242] read(3, 127.0.0.1:40112 <- 192.168.10.1:5555) = 0 \"\""
        );
    }

    #[test]
    fn socket_args() {
        let mut e = ev(sys::SOCKET, 3, 3, sock([2, 1 | 0o2000000, 6, 0], None));
        e.sock = None;
        assert_eq!(
            line(&e),
            "python3[4242] socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC, IPPROTO_TCP) = 3"
        );
        e.detail = sock([10, 2 | 0o4000 | 0o2000000, 0, 0], None);
        assert_eq!(
            line(&e),
            "python3[4242] socket(AF_INET6, SOCK_DGRAM|SOCK_NONBLOCK|SOCK_CLOEXEC, IPPROTO_IP) = 3"
        );
        e.detail = sock([1, 5, 0, 0], None);
        assert_eq!(
            line(&e),
            "python3[4242] socket(AF_UNIX, SOCK_SEQPACKET, 0) = 3"
        );
        e.detail = sock([99, 0x4000_0007, 300, 0], None);
        e.ret = -97;
        assert_eq!(
            line(&e),
            "python3[4242] socket(99, 7|0x40000000, 300) = -1 EAFNOSUPPORT (Address family not \
             supported by protocol)"
        );
    }

    #[test]
    fn socketpair_fds() {
        let fds = 3 | (4 << 32);
        let mut e = ev(sys::SOCKETPAIR, 3, 0, sock([1, 1, 0, fds], None));
        e.sock = None;
        assert_eq!(
            line(&e),
            "python3[4242] socketpair(AF_UNIX, SOCK_STREAM, 0, [3, 4]) = 0"
        );
        e.detail = sock([1, 2 | 0o2000000, 0, 7 | (12 << 32)], None);
        assert_eq!(
            line(&e),
            "python3[4242] socketpair(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC, 0, [7, 12]) = 0"
        );
        e.detail = sock([2, 1, 0, u64::MAX], None);
        e.fd = -1;
        e.ret = -95;
        assert_eq!(
            line(&e),
            "python3[4242] socketpair(AF_INET, SOCK_STREAM, IPPROTO_IP, ?) = -1 EOPNOTSUPP \
             (Operation not supported)"
        );
    }

    #[test]
    fn accept_bind_listen() {
        // The record's fd is the new socket; the listening one is in args[1].
        let e = ev(sys::ACCEPT, 5, 5, sock([0, 3, 0, 0], ep("10.0.0.5:51234")));
        assert_eq!(line(&e), "python3[4242] accept(3, 10.0.0.5:51234) = 5");
        let e = ev(
            sys::ACCEPT4,
            5,
            5,
            sock([0o2000000, 3, 0, 0], ep("10.0.0.5:51234")),
        );
        assert_eq!(
            line(&e),
            "python3[4242] accept4(3, 10.0.0.5:51234, SOCK_CLOEXEC) = 5"
        );
        let e = ev(sys::ACCEPT4, 3, -11, sock([0; 4], None));
        assert_eq!(
            line(&e),
            "python3[4242] accept4(3, ?, 0) = -1 EAGAIN (Resource temporarily unavailable)"
        );
        let e = ev(sys::BIND, 3, 0, sock([0; 4], ep("0.0.0.0:8080")));
        assert_eq!(line(&e), "python3[4242] bind(3, 0.0.0.0:8080) = 0");
        let mut e = ev(sys::LISTEN, 3, 0, sock([128, 0, 0, 0], None));
        e.sock = tcp("0.0.0.0:8080", "0.0.0.0:0");
        e.sock.as_mut().unwrap().remote = None;
        assert_eq!(line(&e), "python3[4242] listen(3, 128) = 0 [0.0.0.0:8080]");
    }

    #[test]
    fn close_and_shutdown_show_endpoints() {
        let e = ev(sys::CLOSE, 3, 0, sock([0; 4], None));
        assert_eq!(
            line(&e),
            "python3[4242] close(3) = 0 [127.0.0.1:40112 -> 192.168.10.1:5555]"
        );
        let e = ev(sys::SHUTDOWN, 3, 0, sock([1, 0, 0, 0], None));
        assert_eq!(
            line(&e),
            "python3[4242] shutdown(3, SHUT_WR) = 0 [127.0.0.1:40112 -> 192.168.10.1:5555]"
        );
        let mut e = ev(sys::CLOSE, 3, 0, sock([0; 4], None));
        e.sock = None;
        assert_eq!(line(&e), "python3[4242] close(3) = 0");
        let mut e = ev(sys::CLOSE, 7, 0, sock([0; 4], None));
        e.sock = Some(SocketMeta {
            sk: 1,
            ino: 2,
            transport: Transport::UnixStream,
            local: None,
            remote: Some(Endpoint::Unix("/run/app.sock".into())),
        });
        assert_eq!(
            line(&e),
            "python3[4242] close(7) = 0 [? -> unix:/run/app.sock]"
        );
        e.sock.as_mut().unwrap().remote = None;
        assert_eq!(line(&e), "python3[4242] close(7) = 0");
    }

    #[test]
    fn datagram_address() {
        let detail = Detail::Data {
            dir: Direction::Send,
            total: 4,
            payload: Bytes::from_static(b"\x12\x34\x01\x00"),
            truncated: false,
            addr: "127.0.0.1:53".parse().ok(),
            msg_index: 0,
        };
        let mut e = ev(sys::SENDTO, 4, 4, detail);
        e.sock = tcp("0.0.0.0:5353", "0.0.0.0:0");
        e.sock.as_mut().unwrap().remote = None;
        assert_eq!(
            line(&e),
            "python3[4242] sendto(4, 0.0.0.0:5353 -> 127.0.0.1:53) = 4 \"\\x124\\x01\\x00\""
        );
        // Unknown socket, no address: only the fd.
        e.sock = None;
        if let Detail::Data { addr, .. } = &mut e.detail {
            *addr = None;
        }
        assert_eq!(line(&e), "python3[4242] sendto(4) = 4 \"\\x124\\x01\\x00\"");
    }

    #[test]
    fn mmsg() {
        let mut e = ev(
            sys::SENDMMSG,
            4,
            2,
            Detail::Data {
                dir: Direction::Send,
                total: 3,
                payload: Bytes::from_static(b"two"),
                truncated: false,
                addr: "[::1]:53".parse().ok(),
                msg_index: 1,
            },
        );
        e.sock.as_mut().unwrap().local = None;
        assert_eq!(
            line(&e),
            "python3[4242] sendmmsg(4, ? -> [::1]:53, msg 1) = 3 \"two\""
        );
    }

    #[test]
    fn truncated_payloads() {
        let e = ev(
            sys::READ,
            3,
            100_000,
            data(Direction::Recv, 100_000, b"GET / HTTP/1.1\r\n", true),
        );
        assert_eq!(
            line(&e),
            "python3[4242] read(3, 127.0.0.1:40112 <- 192.168.10.1:5555) = 100000 \
             \"GET / HTTP/1.1\\r\\n\"... (16 of 100000 bytes captured)"
        );
        let cfg = TextConfig {
            max_preview: 3,
            ..TextConfig::default()
        };
        assert_eq!(
            format_event(&e, &cfg),
            "python3[4242] read(3, 127.0.0.1:40112 <- 192.168.10.1:5555) = 100000 \
             \"GET\"... (16 of 100000 bytes captured)"
        );
        // Cut by the preview length only.
        let e = ev(
            sys::WRITE,
            3,
            16,
            data(Direction::Send, 16, b"GET / HTTP/1.1\r\n", false),
        );
        assert_eq!(
            format_event(&e, &cfg),
            "python3[4242] write(3, 127.0.0.1:40112 -> 192.168.10.1:5555) = 16 \"GET\"..."
        );
    }

    #[test]
    fn proc_lines() {
        let mut e = ev(sys::FORK, -1, 4243, Detail::Fork { child_pid: 4243 });
        e.sock = None;
        assert_eq!(line(&e), "python3[4242] +++ forked child 4243 +++");
        e.detail = Detail::Exec;
        e.call = Call::Syscall(sys::EXEC);
        assert_eq!(line(&e), "python3[4242] +++ exec +++");
        e.detail = Detail::Exit;
        e.call = Call::Syscall(sys::EXIT);
        e.ret = 0;
        assert_eq!(line(&e), "python3[4242] +++ exited with 0 +++");
        e.ret = 7 << 8;
        assert_eq!(line(&e), "python3[4242] +++ exited with 7 +++");
        e.ret = 9;
        assert_eq!(line(&e), "python3[4242] +++ killed by SIGKILL +++");
        e.ret = 11 | 0x80;
        assert_eq!(
            line(&e),
            "python3[4242] +++ killed by SIGSEGV (core dumped) +++"
        );
    }

    #[test]
    fn lost_line() {
        let e = crate::trace::assemble::lost_event(TS, 12, 34567);
        assert_eq!(
            line(&e),
            "--- lost 12 events (34567 bytes): ring buffer full ---"
        );
    }

    #[test]
    fn comm_control_chars_escaped() {
        let mut e = ev(sys::CONNECT, 3, 0, sock([0; 4], ep("192.168.10.1:5555")));
        e.task.comm = "ev\x1b[1mil".into();
        assert_eq!(
            line(&e),
            "ev\\x1b[1mil[4242] connect(3, 192.168.10.1:5555) = 0"
        );
    }

    #[test]
    fn writer_with_utc_timestamps() {
        let mut w = TextWriter::new(
            Vec::new(),
            TextConfig {
                utc: true,
                ..TextConfig::default()
            },
        );
        w.write_event(&ev(
            sys::CONNECT,
            3,
            0,
            sock([0; 4], ep("192.168.10.1:5555")),
        ))
        .unwrap();
        w.write_event(&crate::trace::assemble::lost_event(TS + 1_000, 1, 2))
            .unwrap();
        w.flush().unwrap();
        assert_eq!(
            String::from_utf8(w.into_inner()).unwrap(),
            "22:13:20.123456 python3[4242] connect(3, 192.168.10.1:5555) = 0\n\
             22:13:20.123457 --- lost 1 events (2 bytes): ring buffer full ---\n"
        );
    }

    #[test]
    fn writer_without_timestamps() {
        let mut w = TextWriter::new(
            Vec::new(),
            TextConfig {
                timestamps: false,
                ..TextConfig::default()
            },
        );
        w.write_event(&ev(
            sys::CONNECT,
            3,
            0,
            sock([0; 4], ep("192.168.10.1:5555")),
        ))
        .unwrap();
        assert_eq!(
            w.get_ref().as_slice(),
            b"python3[4242] connect(3, 192.168.10.1:5555) = 0\n"
        );
    }

    #[test]
    fn local_time_is_well_formed() {
        let mut c = Clock::new(false);
        let mut s = String::new();
        c.time_of_day(TS, &mut s);
        assert_eq!(s.len(), 15);
        assert!(s.ends_with(":20.123456"), "{s}");
    }

    /// The `core::fmt` code this module replaced: the reference for byte identity.
    fn reference_line(ev: &Event, cfg: &TextConfig) -> String {
        fn or_unknown(e: Option<&Endpoint>) -> String {
            e.map_or_else(|| "?".to_string(), Endpoint::to_string)
        }
        fn ret_into(s: &mut String, ret: i64) {
            if ret < 0 {
                let e = ret.unsigned_abs();
                match errno(e) {
                    Some((name, desc)) => {
                        let _ = write!(s, " = -1 {name} ({desc})");
                    }
                    None => {
                        let _ = write!(s, " = -1 ERRNO_{e} (Unknown error {e})");
                    }
                }
            } else {
                let _ = write!(s, " = {ret}");
            }
        }
        let mut s = String::new();
        let s = &mut s;
        let Detail::Data {
            dir,
            total,
            payload,
            truncated,
            addr,
            msg_index,
        } = &ev.detail
        else {
            return format_event(ev, cfg);
        };
        for c in ev.task.comm.chars() {
            if c.is_control() {
                let mut buf = [0u8; 4];
                escape::escape_into(s, c.encode_utf8(&mut buf).as_bytes());
            } else {
                s.push(c);
            }
        }
        if ev.task.tid == ev.task.pid {
            let _ = write!(s, "[{}] ", ev.task.pid);
        } else {
            let _ = write!(s, "[{}/{}] ", ev.task.pid, ev.task.tid);
        }
        let name = ev.syscall_name();
        let _ = write!(s, "{name}({}", ev.fd);
        if let Call::Tls { func, conn } = ev.call
            && ev.sock.is_none()
        {
            let obj = match agent_common::tls_fn::lib(func) {
                Some("gnutls") => "session",
                Some("go") => "conn",
                _ => "ssl",
            };
            let _ = write!(s, ", {obj}={conn:#x}");
        }
        let remote = addr.map(Endpoint::Inet);
        let remote = remote
            .as_ref()
            .or(ev.sock.as_ref().and_then(|m| m.remote.as_ref()));
        let local = ev.sock.as_ref().and_then(|m| m.local.as_ref());
        if local.is_some() || remote.is_some() {
            let arrow = match dir {
                Direction::Send => "->",
                Direction::Recv => "<-",
            };
            let _ = write!(s, ", {} {arrow} {}", or_unknown(local), or_unknown(remote));
        }
        if matches!(ev.shown_as(), sys::SENDMMSG | sys::RECVMMSG) {
            let _ = write!(s, ", msg {msg_index}");
        }
        s.push(')');
        let tls = if ev.tls_ciphertext { " [tls]" } else { "" };
        if let Call::Tls { func, .. } = ev.call
            && ev.ret < 0
        {
            let name = agent_common::tls_fn::error_name(func, ev.ret);
            let _ = write!(s, " = {}", ev.ret);
            if let Some(name) = name {
                let _ = write!(s, " {name}");
            }
            return format!("{s}{tls}");
        }
        if ev.ret < 0 {
            ret_into(s, ev.ret);
            return format!("{s}{tls}");
        }
        if ev.unfinished {
            s.push_str(" = ? ");
        } else {
            let _ = write!(s, " = {total} ");
        }
        s.push_str(&escape::preview(payload, cfg.max_preview));
        if *truncated {
            if payload.len() <= cfg.max_preview {
                s.push_str("...");
            }
            let _ = write!(s, " ({} of {total} bytes captured)", payload.len());
        }
        let unfinished = if ev.unfinished { " [unfinished]" } else { "" };
        format!("{s}{unfinished}{tls}")
    }

    #[test]
    fn identical_to_fmt_reference() {
        let mut rng = crate::output::json::tests::Rng(0x1234_5678_9abc_def1);
        for i in 0..20_000 {
            let mut e = rng.event();
            if i % 2 == 0 {
                e.call =
                    Call::Syscall([sys::SENDMMSG, sys::RECVMMSG, sys::READ, sys::WRITE][i % 4]);
            }
            let cfg = TextConfig {
                timestamps: false,
                utc: true,
                max_preview: [0, 3, 16, 64, 1000][i % 5],
            };
            assert_eq!(format_event(&e, &cfg), reference_line(&e, &cfg), "{e:?}");
        }
        let mut c = Clock::new(true);
        for ts in [
            0,
            1,
            TS,
            u64::MAX,
            86_399_999_999_999,
            951_782_400_000_000_000,
        ] {
            let mut s = String::new();
            c.time_of_day(ts, &mut s);
            let secs = (ts / 1_000_000_000) as i64;
            let day = secs.rem_euclid(86_400);
            let want = format!(
                "{:02}:{:02}:{:02}.{:06}",
                day / 3600,
                day / 60 % 60,
                day % 60,
                (ts % 1_000_000_000) / 1_000
            );
            assert_eq!(s, want);
        }
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(0), None);
        assert_eq!(errno_name(5), None);
        assert_eq!(errno_name(-1).as_deref(), Some("EPERM"));
        assert_eq!(errno_name(-104).as_deref(), Some("ECONNRESET"));
        assert_eq!(errno_name(-600).as_deref(), Some("ERRNO_600"));
        assert_eq!(
            errno_name(i64::MIN).as_deref(),
            Some("ERRNO_9223372036854775808")
        );
        // Every required name is there.
        for n in [
            "EPERM",
            "ERANGE",
            "EAGAIN",
            "EINPROGRESS",
            "EALREADY",
            "ECONNREFUSED",
            "ECONNRESET",
            "ECONNABORTED",
            "ENOTCONN",
            "EPIPE",
            "ETIMEDOUT",
            "EHOSTUNREACH",
            "ENETUNREACH",
            "EADDRINUSE",
            "EADDRNOTAVAIL",
            "EAFNOSUPPORT",
            "ENOTSOCK",
            "EBADF",
            "EINTR",
            "EMSGSIZE",
            "EISCONN",
            "EOPNOTSUPP",
            "EPROTONOSUPPORT",
            "ENOBUFS",
            "ENOMEM",
        ] {
            assert!(ERRNOS.iter().any(|(_, name, _)| *name == n), "{n}");
        }
        // EPERM..ERANGE without holes, and no duplicates anywhere.
        for e in 1..=34 {
            assert!(errno(e).is_some(), "{e}");
        }
        for (i, a) in ERRNOS.iter().enumerate() {
            assert!(ERRNOS[i + 1..].iter().all(|b| b.0 != a.0 && b.1 != a.1));
        }
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(31), "SIGSYS");
        assert_eq!(signal_name(34), "SIG34");
    }
}
