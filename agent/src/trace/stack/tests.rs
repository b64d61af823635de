//! Real processes stopped in a syscall (ptrace, root only): their registers and 16 KiB of
//! stack make a [`Sample`] as the kernel would; the unwound frames are checked against the
//! program's source and against gdb's `bt` of the same process.

use std::{
    io::Write as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// What the kernel would capture: registers and stack of a thread stopped in a syscall.
struct Captured {
    ip: u64,
    sp: u64,
    bp: u64,
    stack: Vec<u8>,
}

impl Captured {
    fn sample(&self, pid: u32) -> Sample<'_> {
        Sample {
            pid,
            tid: pid,
            ip: self.ip,
            sp: self.sp,
            bp: self.bp,
            stack: &self.stack,
            ret_at_sp: false,
        }
    }
}

/// Waits until `pid` is blocked in one of `syscalls` (`/proc/PID/syscall`).
fn wait_in_syscall(pid: u32, syscalls: &[u64]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let nr = s.split(' ').next().and_then(|n| n.parse::<u64>().ok());
        if nr.is_some_and(|n| syscalls.contains(&n)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pid} never blocked in {syscalls:?}: {s}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Stops `pid` (PTRACE_SEIZE + PTRACE_INTERRUPT), reads its registers and up to 16 KiB of
/// stack at rsp from /proc/PID/mem, and lets it go on.
fn capture(pid: u32) -> Captured {
    let p = pid as libc::pid_t;
    // SAFETY: ptrace requests on a child of ours with valid arguments; `regs` is a
    // user_regs_struct PTRACE_GETREGS fills; waitpid gets a valid status pointer.
    unsafe {
        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, p, 0, 0), 0, "PTRACE_SEIZE");
        assert_eq!(libc::ptrace(libc::PTRACE_INTERRUPT, p, 0, 0), 0);
        let mut status = 0;
        assert_eq!(libc::waitpid(p, &mut status, libc::__WALL), p);
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        assert_eq!(
            libc::ptrace(libc::PTRACE_GETREGS, p, 0, &mut regs as *mut _),
            0
        );
        let mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
        let mut stack = vec![0u8; 16 * 1024];
        let mut got = 0;
        while got < stack.len() {
            match mem.read_at(&mut stack[got..], regs.rsp + got as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        stack.truncate(got);
        assert!(got >= 512, "read {got} bytes of stack");
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, p, 0, 0), 0);
        Captured {
            ip: regs.rip,
            sp: regs.rsp,
            bp: regs.rbp,
            stack,
        }
    }
}

/// One frame of gdb's `bt`: its pc (None for an inlined frame or a frame 0 at a line's
/// start), function, and `file:line` when gdb knows it.
#[derive(Debug)]
struct GdbFrame {
    pc: Option<u64>,
    function: String,
    at: Option<String>,
}

fn gdb_bt(pid: u32) -> Vec<GdbFrame> {
    let out = Command::new("gdb")
        .args(["-nx", "-p", &pid.to_string(), "-batch", "-ex", "bt"])
        .output()
        .expect("gdb");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut frames = Vec::new();
    for line in text.lines().filter(|l| l.starts_with('#')) {
        let rest = line.split_once(' ').map_or("", |(_, r)| r).trim_start();
        let (pc, rest) = match rest.strip_prefix("0x") {
            Some(r) => {
                let (hex, r) = r.split_once(" in ").unwrap();
                (Some(u64::from_str_radix(hex, 16).unwrap()), r)
            }
            None => (None, rest),
        };
        let function = rest.split(" (").next().unwrap().to_string();
        let at = rest.rsplit_once(" at ").map(|(_, a)| a.to_string());
        frames.push(GdbFrame { pc, function, at });
    }
    assert!(!frames.is_empty(), "gdb bt: {text}");
    frames
}

/// A libc function without its internal prefixes (`__GI___libc_read` → `read`).
fn norm(name: &str) -> &str {
    let mut n = name;
    loop {
        let m = n
            .trim_start_matches('_')
            .trim_start_matches("GI")
            .trim_start_matches("libc");
        if m == n {
            return n;
        }
        n = m;
    }
}

fn show(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| {
            format!(
                "{:#x} {}+{:#x} {}:{} ({})\n",
                f.addr,
                f.function.as_deref().unwrap_or("??"),
                f.offset,
                f.file.as_deref().unwrap_or("?"),
                f.line.unwrap_or(0),
                f.module.as_deref().unwrap_or("?")
            )
        })
        .collect()
}

/// Our frames against gdb's, frame by frame, for gdb's frames up to `last` (inlined frames
/// of gdb, which share their caller's pc, left out): same return address, and where gdb
/// names the function, the same name; where gdb has file:line, the same.
fn compare_with_gdb(ours: &[Frame], gdb: &[GdbFrame], last: Option<&str>) {
    let gdb: Vec<&GdbFrame> = gdb
        .iter()
        .enumerate()
        .filter(|(i, f)| *i == 0 || f.pc.is_some())
        .map(|(_, f)| f)
        .collect();
    let end = match last {
        Some(last) => gdb
            .iter()
            .position(|f| f.function == last)
            .unwrap_or_else(|| panic!("{last} not in gdb's bt {gdb:?}")),
        None => gdb.len() - 1,
    };
    assert!(ours.len() > end, "ours:\n{}gdb: {gdb:?}", show(ours));
    for (i, g) in gdb[..=end].iter().enumerate() {
        let o = &ours[i];
        if let Some(pc) = g.pc {
            assert_eq!(o.addr, pc, "frame {i}: ours\n{}gdb {gdb:?}", show(ours));
        }
        if let Some((file, line)) = g.at.as_deref().and_then(|a| a.rsplit_once(':')) {
            let file = file.trim_start_matches("../").trim_start_matches("./");
            assert!(
                o.file.as_deref().is_some_and(|f| f.ends_with(file)),
                "frame {i}: ours\n{}gdb {gdb:?}",
                show(ours)
            );
            assert_eq!(o.line, line.parse().ok(), "frame {i}: {}", show(ours));
        }
        if g.function != "??" {
            let f = o.function.as_deref().unwrap_or("??");
            assert_eq!(
                norm(f),
                norm(&g.function),
                "frame {i}: ours\n{}gdb {gdb:?}",
                show(ours)
            );
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("capagent-stack-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const PROGRAM: &str = r#"#include <stdio.h>
#include <unistd.h>

__attribute__((noinline)) int b(int fd) {
    char c;
    int n = read(fd, &c, 1); /* b calls read */
    return n + 1;
}

__attribute__((noinline)) int a(int fd) {
    int r = b(fd); /* a calls b */
    return r * 3;
}

int main(void) {
    int r = a(0); /* main calls a */
    printf("%d\n", r);
    return r;
}
"#;

fn line_of(marker: &str) -> u32 {
    PROGRAM.lines().position(|l| l.contains(marker)).unwrap() as u32 + 1
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The C program built with `flags`, stopped in its read(): b, a, main with their
/// file:line under libc's read; the same frames as gdb; and the same again once the
/// process has exited (noted while alive).
fn c_program(flags: &str) {
    if !root() {
        eprintln!("skipped: needs root (ptrace, /proc/PID/mem)");
        return;
    }
    let dir = scratch(flags);
    let src = dir.join("prog.c");
    std::fs::write(&src, PROGRAM).unwrap();
    let exe = dir.join("prog");
    let st = Command::new("cc")
        .args(["-g", "-O1", flags, "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .expect("cc");
    assert!(st.success());
    let child = Command::new(&exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_in_syscall(pid, &[libc::SYS_read as u64]);
    let mut stacks = Stacks::new();
    let mut after_exit = Stacks::new();
    after_exit.note_process(pid);
    let cap = capture(pid);
    let frames = stacks.unwind(&cap.sample(pid));
    let gdb = gdb_bt(pid);
    kill(child);
    eprintln!("{flags}:\n{}gdb: {gdb:#?}", show(&frames));

    let names: Vec<&str> = frames
        .iter()
        .map(|f| f.function.as_deref().unwrap_or("??"))
        .collect();
    assert_eq!(norm(names[0]), "read", "{}", show(&frames));
    assert!(frames[0].module.as_deref().unwrap().contains("libc.so"));
    let i = names.iter().position(|&n| n == "b").expect("b");
    for (f, name, marker) in [
        (&frames[i], "b", "b calls read"),
        (&frames[i + 1], "a", "a calls b"),
        (&frames[i + 2], "main", "main calls a"),
    ] {
        assert_eq!(f.function.as_deref(), Some(name), "{}", show(&frames));
        assert!(
            f.file.as_deref().unwrap().ends_with("prog.c"),
            "{}",
            show(&frames)
        );
        assert_eq!(f.line, Some(line_of(marker)), "{name}: {}", show(&frames));
        assert_eq!(f.module.as_deref(), Some(exe.to_str().unwrap()));
    }
    compare_with_gdb(&frames, &gdb, Some("main"));
    assert!(frames.len() <= MAX_FRAMES);

    // The process is gone (reaped): what was noted while it lived still unwinds it.
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    let later = after_exit.unwind(&cap.sample(pid));
    assert_eq!(later, frames);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn c_program_without_frame_pointers() {
    c_program("-fomit-frame-pointer");
}

#[test]
fn c_program_with_frame_pointers() {
    c_program("-fno-omit-frame-pointer");
}

#[test]
fn demangles_only_mangled_names() {
    assert_eq!(demangle("b"), "b");
    assert_eq!(demangle("main"), "main");
    assert_eq!(demangle("_ZN3foo3barEv"), "foo::bar()");
    assert_eq!(
        demangle("_ZN4core3fmt5write17h0123456789abcdefE"),
        "core::fmt::write"
    );
}

/// Debian's curl (no frame pointers, libcurl and libc without them either), blocked waiting
/// for an HTTP answer from a local listener that never answers: frames through libc's poll
/// into libcurl (curl_easy_perform) and curl's main, as gdb sees them.
#[test]
fn curl_waiting_for_an_answer() {
    if !root() {
        eprintln!("skipped: needs root (ptrace, /proc/PID/mem)");
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let child = Command::new("curl")
        .args(["-s", "--max-time", "60"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::null())
        .spawn()
        .expect("curl");
    let pid = child.id();
    let (mut conn, _) = listener.accept().unwrap();
    let waits = [
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
    ];
    wait_in_syscall(pid, &waits.map(|n| n as u64));
    let mut stacks = Stacks::new();
    let cap = capture(pid);
    let cold = Instant::now();
    let frames = stacks.unwind(&cap.sample(pid));
    let cold = cold.elapsed();
    let warm = Instant::now();
    assert_eq!(stacks.unwind(&cap.sample(pid)), frames);
    eprintln!("curl: unwind {:?} cold, {:?} cached", cold, warm.elapsed());
    let gdb = gdb_bt(pid);
    conn.flush().unwrap();
    kill(child);
    eprintln!("curl:\n{}gdb: {gdb:#?}", show(&frames));
    let names: Vec<&str> = frames
        .iter()
        .map(|f| f.function.as_deref().unwrap_or("??"))
        .collect();
    assert!(names.contains(&"curl_easy_perform"), "{}", show(&frames));
    assert!(names.contains(&"curl_multi_poll"), "{}", show(&frames));
    let easy = names
        .iter()
        .position(|&n| n == "curl_easy_perform")
        .unwrap();
    assert!(frames[easy].module.as_deref().unwrap().contains("libcurl"));
    // Below it, curl itself (stripped: no names) and libc's start.
    assert_eq!(frames[easy + 1].module.as_deref(), Some("/usr/bin/curl"));
    assert!(
        names[easy..].contains(&"__libc_start_main_impl"),
        "{}",
        show(&frames)
    );
    assert_eq!(norm(names[0]), "poll", "{}", show(&frames));
    assert!(frames[0].module.as_deref().unwrap().contains("libc.so"));
    // gdb's whole bt, frame by frame (same return addresses; same names where gdb has one).
    compare_with_gdb(&frames, &gdb, None);
}

/// A stack of frame-pointer frames at `sp`, one per return address of `returns`, each
/// frame 0x20 bytes: `[bp] = next bp, [bp + 8] = return address`. Returns (bp, bytes).
fn fp_stack(sp: u64, returns: &[u64]) -> (u64, Vec<u8>) {
    let mut bytes = vec![0u8; 0x10 + 0x20 * returns.len() + 0x10];
    for (i, r) in returns.iter().enumerate() {
        let at = 0x10 + 0x20 * i;
        let next = if i + 1 < returns.len() {
            sp + at as u64 + 0x20
        } else {
            0
        };
        bytes[at..at + 8].copy_from_slice(&next.to_le_bytes());
        bytes[at + 8..at + 16].copy_from_slice(&r.to_le_bytes());
    }
    (sp + 0x10, bytes)
}

/// Code in no file (JIT): unwound through frame pointers, named by /tmp/perf-PID.map;
/// an address nothing names is counted unresolved.
#[test]
fn jit_frames_by_frame_pointer_and_perf_map() {
    let pid = std::process::id();
    let perf_map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    std::fs::write(&perf_map, "1000 100 jit::f\n2000 100 jit::g\n").unwrap();
    let mut stacks = Stacks::new();
    stacks.note_process(pid);
    std::fs::remove_file(&perf_map).unwrap();
    let sp = 0x7000_0000_0000;
    let (bp, stack) = fp_stack(sp, &[0x2010, 0x5555]);
    let s = Sample {
        pid,
        tid: pid,
        ip: 0x1010,
        sp,
        bp,
        stack: &stack,
        ret_at_sp: false,
    };
    let frames = stacks.unwind(&s);
    let got: Vec<(u64, Option<&str>, u64)> = frames
        .iter()
        .map(|f| (f.addr, f.function.as_deref(), f.offset))
        .collect();
    assert_eq!(
        got,
        [
            (0x1010, Some("jit::f"), 0x10),
            (0x2010, Some("jit::g"), 0x10),
            (0x5555, None, 0)
        ]
    );
    assert!(
        frames
            .iter()
            .all(|f| f.module.is_none() && f.file.is_none())
    );
    assert_eq!(stacks.unresolved(), 1);
}

/// A stack taken at a function's first instruction (a uprobe): the return address is at
/// sp, the frame pointer still the caller's. Code without unwind information is then walked
/// from the word at sp, not from bp (which would skip the caller).
#[test]
fn at_a_function_entry_the_return_address_is_at_sp() {
    let pid = std::process::id();
    let perf_map = PathBuf::from(format!("/tmp/perf-{pid}.map"));
    std::fs::write(
        &perf_map,
        "1000 100 jit::f\n2000 100 jit::g\n3000 100 jit::h\n",
    )
    .unwrap();
    let mut stacks = Stacks::new();
    stacks.note_process(pid);
    std::fs::remove_file(&perf_map).unwrap();
    let sp = 0x7000_0000_0000;
    // [sp]: the return address into g; g's frame (bp) returns into h.
    let (bp, mut stack) = fp_stack(sp, &[0x3010]);
    stack[0..8].copy_from_slice(&0x2010u64.to_le_bytes());
    let sample = |ret_at_sp| Sample {
        pid,
        tid: pid,
        ip: 0x1000,
        sp,
        bp,
        stack: &stack,
        ret_at_sp,
    };
    let names = |stacks: &mut Stacks, s: &Sample| -> Vec<Option<String>> {
        stacks
            .unwind(s)
            .iter()
            .map(|f| f.function.as_deref().map(str::to_string))
            .collect()
    };
    let f = |n: &str| Some(n.to_string());
    assert_eq!(
        names(&mut stacks, &sample(true)),
        [f("jit::f"), f("jit::g"), f("jit::h")]
    );
    // Read as if in the middle of f, the frame pointer skips g.
    assert_eq!(
        names(&mut stacks, &sample(false)),
        [f("jit::f"), f("jit::h")]
    );
}

/// At most MAX_FRAMES frames, and garbage (a frame-pointer loop, random bytes) ends the
/// stack without error.
#[test]
fn bounded_and_stops_on_garbage() {
    let pid = std::process::id();
    let mut stacks = Stacks::new();
    stacks.note_process(pid);
    let sp = 0x7000_0000_0000;
    let returns: Vec<u64> = (0..300).map(|i| 0x10000 + i * 0x10).collect();
    let (bp, stack) = fp_stack(sp, &returns);
    let s = Sample {
        pid,
        tid: pid,
        ip: 0x1000,
        sp,
        bp,
        stack: &stack,
        ret_at_sp: false,
    };
    let frames = stacks.unwind(&s);
    assert_eq!(frames.len(), MAX_FRAMES);
    assert_eq!(frames[1].addr, 0x10000);
    assert_eq!(frames[127].addr, 0x10000 + 126 * 0x10);

    // bp pointing at itself: the stack pointer would not grow.
    let mut looped = vec![0u8; 64];
    looped[0..8].copy_from_slice(&sp.to_le_bytes());
    looped[8..16].copy_from_slice(&0x4000u64.to_le_bytes());
    let s = Sample {
        bp: sp,
        stack: &looped,
        ..s
    };
    assert!(stacks.unwind(&s).len() < 4);

    // Random words (xorshift), random registers.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..50 {
        let stack: Vec<u8> = (0..512).flat_map(|_| next().to_le_bytes()).collect();
        let s = Sample {
            pid,
            tid: pid,
            ip: next(),
            sp,
            bp: sp + (next() % 4096),
            stack: &stack,
            ret_at_sp: false,
        };
        assert!(stacks.unwind(&s).len() <= MAX_FRAMES);
    }
    // An empty stack: the ip alone.
    let s = Sample {
        pid,
        tid: pid,
        ip: 0x1000,
        sp,
        bp: sp,
        stack: &[],
        ret_at_sp: false,
    };
    assert_eq!(stacks.unwind(&s).len(), 1);
}
