//! Root integration tests of `capagent trace --stack`: a small C program built at test time
//! (`cc`), traced by the real `capagent` binary through the real kernel, in a network
//! namespace of each test's own.
//!
//! Needs root and `cc`:
//! `cargo test -p capagent-tests --features root-tests --test stack -- --test-threads=1`.

use std::process::Command;

use capagent_testkit::*;
use serde_json::Value;

/// main → send_hello() → send() on a Unix socket pair, `argv[1]` times (default 1); the
/// peer reads every byte back and the exit status says whether it got them. With `-DPAD=N`
/// main's frame has N more bytes, written.
const HELLO_C: &str = r#"
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

__attribute__((noinline)) int send_hello(int fd) {
    const char *m = "hello";
    int r = send(fd, m, strlen(m), 0);
    __asm__ volatile("" ::: "memory");
    return r;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 1;
    int sv[2];
    char buf[8];
#ifdef PAD
    volatile char pad[PAD];
    memset((char *)pad, 1, sizeof pad);
#endif
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return 1;
    for (int i = 0; i < n; i++) {
        if (send_hello(sv[0]) != 5) return 2;
        if (recv(sv[1], buf, 5, MSG_WAITALL) != 5 || memcmp(buf, "hello", 5)) return 3;
    }
    return 0;
}
"#;

/// Builds [`HELLO_C`] with `flags` into `dir`; returns the program's path.
fn build(dir: &TempDir, name: &str, flags: &[&str]) -> String {
    let src = dir.write("hello.c", HELLO_C);
    let out = dir.join(name).to_string_lossy().into_owned();
    let st = Command::new("cc")
        .args(flags)
        .args(["-o", &out, &src])
        .status()
        .expect("cc");
    assert!(st.success(), "cc {flags:?} failed");
    out
}

/// The `stack: N captured, M dropped ...` summary line's first two numbers.
fn stack_summary(run: &TraceRun) -> (u64, u64) {
    let (captured, dropped, _, _) = stack_counts(run);
    (captured, dropped)
}

/// The summary line `capagent: stacks: N captured, M dropped (stack ring full), U unpaired,
/// F frames unresolved`: (N, M, U, F).
fn stack_counts(run: &TraceRun) -> (u64, u64, u64, u64) {
    let line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("capagent: stacks: "))
        .unwrap_or_else(|| panic!("no stacks summary line\n{}", run.stderr));
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert_eq!(nums.len(), 4, "{line}");
    (nums[0], nums[1], nums[2], nums[3])
}

/// The send events of the program (sendto on the socket pair).
fn sends(run: &TraceRun) -> Vec<&Value> {
    run.events
        .iter()
        .filter(|e| e.ty() == "data" && e.syscall() == "sendto")
        .collect()
}

#[test]
fn fp_build_send_stack_names_its_callers() {
    send_stack_names_its_callers("hello_fp", &["-g", "-O0", "-fno-omit-frame-pointer"]);
}

/// Without frame pointers (as Debian builds): unwound through DWARF CFI all the same.
#[test]
fn no_fp_build_send_stack_names_its_callers() {
    send_stack_names_its_callers("hello_nofp", &["-g", "-O1", "-fomit-frame-pointer"]);
}

/// A separate debug file as Debian's `-dbg`/`-dbgsym` packages install one: the program is
/// stripped of its debug sections, which go to `/usr/lib/debug/.build-id/XX/REST.debug`
/// (its build-id), named by the program's `.gnu_debuglink`. file:line come from that file.
#[test]
fn separate_debug_file_under_usr_lib_debug_build_id() {
    /// Removes the debug file (and its directory when empty) however the test ends.
    struct Installed(std::path::PathBuf);
    impl Drop for Installed {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
            if let Some(d) = self.0.parent() {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let ns = Netns::new("stkdbg");
    let dir = TempDir::new("stkdbg");
    let prog = build(&dir, "hello_dbg", &["-g", "-O1", "-fomit-frame-pointer"]);
    let output = |cmd: &mut Command| {
        let out = cmd.output().expect("binutils");
        assert!(out.status.success(), "{cmd:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let notes = output(Command::new("readelf").args(["-n", &prog]));
    let build_id = notes
        .lines()
        .find_map(|l| l.trim().strip_prefix("Build ID: "))
        .expect("a build-id")
        .to_string();
    let debug_dir = std::path::Path::new("/usr/lib/debug/.build-id").join(&build_id[..2]);
    std::fs::create_dir_all(&debug_dir).unwrap();
    let name = format!("{}.debug", &build_id[2..]);
    let installed = Installed(debug_dir.join(&name));
    let run_tool = |cmd: &mut Command| {
        let st = cmd.status().expect("binutils");
        assert!(st.success(), "{cmd:?}");
    };
    run_tool(
        Command::new("objcopy")
            .args(["--only-keep-debug", &prog])
            .arg(&installed.0),
    );
    run_tool(Command::new("strip").args(["--strip-debug", &prog]));
    // (objcopy computes the link's CRC from the file, found relative to where it runs.)
    run_tool(
        Command::new("objcopy")
            .current_dir(&debug_dir)
            .arg(format!("--add-gnu-debuglink={name}"))
            .arg(&prog),
    );
    let sections = output(Command::new("readelf").args(["-S", &prog]));
    assert!(!sections.contains(".debug_info"), "{sections}");
    let args = ["--format", "json", "--stack", "--events", "send"];
    let run = trace(&dir, &with_cmd(&args, &ns.argv(&[&prog])), None);
    assert!(run.status.success(), "{}", run.describe());
    let s = sends(&run);
    assert_eq!(s.len(), 1, "{}", run.describe());
    let stack = s[0]["stack"].as_array().expect("a stack array");
    let frame = |name: &str| {
        stack
            .iter()
            .find(|f| f["function"] == name)
            .unwrap_or_else(|| panic!("no {name} in {stack:?}"))
    };
    for (func, line) in [
        ("send_hello", line_of("int r = send(")),
        ("main", line_of("if (send_hello(")),
    ] {
        let f = frame(func);
        assert_eq!(f["module"], prog.as_str(), "{f}");
        assert!(
            f["file"].as_str().unwrap_or_default().ends_with("hello.c"),
            "{f}"
        );
        assert_eq!(f["line"], line, "{f}");
    }
    drop(installed);
}

/// A program that sends `ping` on a socket pair for each line of its stdin, and `last` then
/// exits for a line starting with `q`.
const EXIT_C: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

__attribute__((noinline)) int send_msg(int fd, const char *m) {
    int r = send(fd, m, strlen(m), 0);
    __asm__ volatile("" ::: "memory");
    return r;
}

int main(void) {
    int sv[2];
    char line[16], buf[8];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return 1;
    while (fgets(line, sizeof line, stdin)) {
        const char *m = line[0] == 'q' ? "last" : "ping";
        if (send_msg(sv[0], m) != 4) return 2;
        if (recv(sv[1], buf, 4, MSG_WAITALL) != 4) return 3;
        if (line[0] == 'q') return 0;
    }
    return 4;
}
"#;

/// A process that has exited before capagent reads its records is still symbolized: capagent
/// (tracing it by `--pid`) is stopped while the program makes its last send and exits, and
/// only then continued.
#[test]
fn a_process_gone_before_its_records_are_read_is_symbolized() {
    use std::io::Write as _;
    let dir = TempDir::new("stkexit");
    let src = dir.write("exit.c", EXIT_C);
    let prog = dir.join("stk_exit").to_string_lossy().into_owned();
    let st = Command::new("cc")
        .args(["-g", "-O1", "-fomit-frame-pointer", "-o", &prog, &src])
        .status()
        .expect("cc");
    assert!(st.success());
    let mut child = Command::new(&prog)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut live = LiveTrace::spawn(
        &dir,
        &strings(&[
            "--format",
            "json",
            "--stack",
            "--events",
            "send",
            "--pid",
            &pid.to_string(),
        ]),
    );
    // Pings until capagent reports one: it has attached.
    live.poke_until(
        TIMEOUT,
        || stdin.write_all(b"p\n").unwrap(),
        |e| e.pid() == pid && e.syscall() == "sendto",
    );
    let signal = |sig: &str| {
        let st = Command::new("kill")
            .args([sig, &live.pid().to_string()])
            .status()
            .unwrap();
        assert!(st.success(), "kill {sig}");
    };
    signal("-STOP");
    stdin.write_all(b"q\n").unwrap();
    drop(stdin);
    let st = child.wait().unwrap();
    signal("-CONT");
    assert!(st.success(), "{st}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the program is gone"
    );
    let run = live.stop();
    let last = run
        .events
        .iter()
        .find(|e| e.syscall() == "sendto" && e.payload() == b"last")
        .unwrap_or_else(|| panic!("no send of `last`\n{}", run.describe()));
    let stack = last["stack"].as_array().expect("a stack array");
    let funcs: Vec<&str> = stack
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?"))
        .collect();
    let at = |name: &str| {
        funcs
            .iter()
            .position(|f| *f == name)
            .unwrap_or_else(|| panic!("no {name} in {funcs:?}"))
    };
    let (send_msg, main) = (at("send_msg"), at("main"));
    assert!(send_msg < main, "{funcs:?}");
    for i in [send_msg, main] {
        assert_eq!(stack[i]["module"], prog.as_str(), "{}", stack[i]);
        let file = stack[i]["file"].as_str().unwrap_or_default();
        assert!(file.ends_with("exit.c"), "{}", stack[i]);
    }
}

/// The 1-based line of [`HELLO_C`] containing `what`.
fn line_of(what: &str) -> u64 {
    line_of_in(HELLO_C, what)
}

fn send_stack_names_its_callers(name: &str, flags: &[&str]) {
    let ns = Netns::new("stkfp");
    let dir = TempDir::new("stkfp");
    let prog = build(&dir, name, flags);
    let args = ["--format", "json", "--stack", "--events", "send"];
    let run = trace(&dir, &with_cmd(&args, &ns.argv(&[&prog])), None);
    assert!(run.status.success(), "{}", run.describe());
    let s = sends(&run);
    assert_eq!(s.len(), 1, "{}", run.describe());
    let ev = s[0];
    assert_eq!(ev.payload(), b"hello");
    let stack = ev["stack"].as_array().expect("a stack array");
    // Shape: every frame an object with exactly these members, numbered from 0.
    for (i, f) in stack.iter().enumerate() {
        let keys: Vec<&str> = f.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "addr", "file", "frame", "function", "line", "module", "offset"
            ],
            "{f}"
        );
        assert_eq!(f["frame"], i as u64, "{f}");
        let addr = f["addr"].as_str().unwrap();
        assert!(addr.starts_with("0x") && u64::from_str_radix(&addr[2..], 16).is_ok());
        assert!(f["offset"].is_u64(), "{f}");
    }
    // send_hello then main, both in the program itself.
    let funcs: Vec<&str> = stack
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?"))
        .collect();
    let at = |name: &str| {
        funcs
            .iter()
            .position(|f| *f == name)
            .unwrap_or_else(|| panic!("no {name} in {funcs:?}"))
    };
    let (hello, main) = (at("send_hello"), at("main"));
    assert!(0 < hello && hello < main, "{funcs:?}");
    for i in [hello, main] {
        assert_eq!(stack[i]["module"], prog.as_str(), "{}", stack[i]);
        let file = stack[i]["file"].as_str().unwrap_or_default();
        assert!(file.ends_with("hello.c"), "{}", stack[i]);
    }
    // The lines of the calls (debug info of the -g build).
    assert_eq!(
        stack[hello]["line"],
        line_of("int r = send("),
        "{}",
        stack[hello]
    );
    assert_eq!(
        stack[main]["line"],
        line_of("if (send_hello("),
        "{}",
        stack[main]
    );
    assert_eq!(stack_summary(&run), (1, 0), "{}", run.stderr);
}

#[test]
fn no_stack_member_without_the_flag() {
    let ns = Netns::new("stkno");
    let dir = TempDir::new("stkno");
    let prog = build(&dir, "hello", &["-O0"]);
    let args = ["--format", "json", "--events", "send"];
    let run = trace(&dir, &with_cmd(&args, &ns.argv(&[&prog])), None);
    assert!(run.status.success(), "{}", run.describe());
    assert_eq!(sends(&run).len(), 1, "{}", run.describe());
    assert!(run.events.iter().all(|e| e.get("stack").is_none()));
    assert!(!run.stderr.contains("capagent: stacks: "), "{}", run.stderr);
}

#[test]
fn full_stack_ring_drops_stacks_never_records() {
    // A 4 KiB stack ring cannot hold one 16 KiB stack: every stack is dropped and counted,
    // while every send is reported with its payload and nothing is lost. (The copy ends at
    // the first page never touched: the kernel leaves a random gap of up to 8 KiB under the
    // arguments and environment at exec. A main frame of 8 KiB, written, keeps the copy
    // longer than the ring whatever that gap.)
    const N: usize = 50;
    let ns = Netns::new("stkfull");
    let dir = TempDir::new("stkfull");
    let prog = build(
        &dir,
        "hello",
        &["-O0", "-fno-omit-frame-pointer", "-DPAD=8192"],
    );
    let args = [
        "--format",
        "json",
        "--stack",
        "--stack-ring-kib",
        "4",
        "--events",
        "send",
    ];
    let run = trace(
        &dir,
        &with_cmd(&args, &ns.argv(&[&prog, &N.to_string()])),
        None,
    );
    assert!(run.status.success(), "{}", run.describe());
    let s = sends(&run);
    assert_eq!(s.len(), N, "{}", run.describe());
    for e in &s {
        assert_eq!(e.payload(), b"hello");
        assert!(e.get("stack").is_none(), "{e}");
    }
    let (_, lost, _) = run.summary();
    assert_eq!(lost, 0, "{}", run.stderr);
    assert_eq!(stack_summary(&run), (0, N as u64), "{}", run.stderr);
}

#[test]
fn every_send_of_a_busy_thread_has_its_stack() {
    // Default sizes (16 KiB stacks, 8 MiB stack ring), lossless: 20 000 sends as fast as the
    // program can make them. The agent reads the stack ring at every poll, and the kernel
    // pauses the process while that ring is more than half full (as for the main ring), so
    // a single thread never finds it full: every send has its stack, none is dropped.
    // (With many threads in calls at once, each may add one stack past the half before it
    // stops: stacks are then dropped only if they outnumber half the ring; counted.)
    const N: usize = 20_000;
    let ns = Netns::new("stkbusy");
    let dir = TempDir::new("stkbusy");
    let prog = build(&dir, "hello", &["-O1", "-fomit-frame-pointer"]);
    let args = ["--format", "json", "--stack", "--events", "send"];
    let run = trace(
        &dir,
        &with_cmd(&args, &ns.argv(&[&prog, &N.to_string()])),
        None,
    );
    assert!(run.status.success(), "{}", run.describe());
    let s = sends(&run);
    assert_eq!(s.len(), N, "{}", run.stderr);
    for e in &s {
        assert_eq!(e.payload(), b"hello");
        let funcs: Vec<&str> = e["stack"]
            .as_array()
            .unwrap_or_else(|| panic!("no stack: {e}"))
            .iter()
            .filter_map(|f| f["function"].as_str())
            .collect();
        assert!(funcs.contains(&"send_hello"), "{funcs:?}");
        assert!(funcs.contains(&"main"), "{funcs:?}");
    }
    let (_, lost, _) = run.summary();
    assert_eq!(lost, 0, "{}", run.stderr);
    assert_eq!(stack_summary(&run), (N as u64, 0), "{}", run.stderr);
}

/// (module file name, function) of each frame of event `e`'s stack (`?` when unknown).
fn frames_of(e: &Value) -> Vec<(String, String)> {
    e["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack: {e}"))
        .iter()
        .map(|f| {
            let module = f["module"].as_str().unwrap_or("?");
            let name = module.rsplit('/').next().unwrap_or(module);
            let func = f["function"].as_str().unwrap_or("?");
            (name.to_string(), func.to_string())
        })
        .collect()
}

/// The index of the first frame of `frames` whose function is one of `names`.
fn position_of(frames: &[(String, String)], names: &[&str]) -> Option<usize> {
    frames.iter().position(|(_, f)| names.contains(&f.as_str()))
}

/// `--tls --stack`: each TLS call's record carries the stack at the call's entry. curl
/// (Debian's: OpenSSL, no frame pointers anywhere) against `openssl s_server`: its
/// `SSL_write` was called from libcurl, under `curl_easy_perform`/`curl_multi_perform`.
/// The stacks of the `sendto`s made inside `SSL_write` go through it to curl too (the
/// return address the uretprobe replaced is read from the call's entry stack).
#[test]
fn tls_call_records_carry_the_stack_at_the_call() {
    let ns = Netns::new("stktls");
    let dir = TempDir::new("stktls");
    let certs = Certs::localhost();
    let srv = OpensslServer::start(&ns, &certs);
    let curl = Curl::new(&dir, &certs, &srv.url(), &[]);
    let args = ["--tls", "--stack", "--format", "json", "--events", "sendto"];
    let run = trace(&dir, &with_cmd(&args, &curl.argv(&ns)), None);
    assert!(run.status.success(), "{}", run.describe());
    let tls: Vec<&Value> = run
        .events
        .iter()
        .filter(|e| e.ty() == "data" && e["tls"]["lib"] == "openssl")
        .collect();
    let writes: Vec<&&Value> = tls.iter().filter(|e| e["dir"] == "send").collect();
    assert!(!writes.is_empty(), "{}", run.describe());
    assert!(writes[0].payload().starts_with(b"GET / HTTP/1.1\r\n"));
    for e in &tls {
        let frames = frames_of(e);
        let call = e.syscall();
        // The hooked function (or the libssl function it wraps) is innermost; the call's
        // own name is among the first frames, in libssl.
        assert!(frames[0].0.starts_with("libssl"), "{call}: {frames:?}");
        let at = position_of(
            &frames,
            &[call, "SSL_write", "SSL_write_ex", "SSL_read", "SSL_read_ex"],
        )
        .unwrap_or_else(|| panic!("{call} not in {frames:?}"));
        assert!(at <= 1, "{call}: {frames:?}");
        assert!(frames[at].0.starts_with("libssl"), "{frames:?}");
        let perform = position_of(&frames, &["curl_easy_perform", "curl_multi_perform"])
            .unwrap_or_else(|| panic!("no curl_*_perform in {frames:?}"));
        // Called from libcurl: every frame between is libcurl's.
        assert!(at + 1 < perform, "{frames:?}");
        for (module, _) in &frames[at + 1..perform] {
            assert!(module.starts_with("libcurl"), "{frames:?}");
        }
        // And below: curl's main.
        assert!(
            frames[perform..].iter().any(|(m, _)| m == "curl"),
            "{frames:?}"
        );
    }
    let sends = sends(&run);
    assert!(sends.len() >= 2, "{}\n{}", run.describe(), run.stdout);
    let mut in_ssl_write = 0;
    for e in &sends {
        let frames = frames_of(e);
        let perform = position_of(&frames, &["curl_easy_perform", "curl_multi_perform"])
            .unwrap_or_else(|| panic!("no curl_*_perform in {frames:?}"));
        assert!(
            frames[..perform].iter().all(|(m, _)| m != "?"),
            "{frames:?}"
        );
        in_ssl_write += usize::from(position_of(&frames, &["SSL_write"]).is_some());
    }
    // The request's record went out inside SSL_write (the others in the handshake).
    assert!(in_ssl_write >= 1, "{}", run.describe());
    assert_eq!(stack_summary(&run).1, 0, "{}", run.stderr);
}

/// A frame as both unwinders name it: the module's file name and the address's offset in
/// its page (ASLR moves mappings by whole pages: two runs of a program agree on it), of
/// the instruction pointer for the innermost frame and of the call (return address - 1)
/// for the others.
type Site = (String, u64);

/// capagent's frames of event `e` as [`Site`]s.
fn sites_of(e: &Value) -> Vec<Site> {
    e["stack"]
        .as_array()
        .unwrap_or_else(|| panic!("no stack: {e}"))
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let module = f["module"].as_str().unwrap_or("?");
            let addr = f["addr"].as_str().unwrap();
            let addr = u64::from_str_radix(addr.trim_start_matches("0x"), 16).unwrap();
            let name = module.rsplit('/').next().unwrap_or(module).to_string();
            (name, (addr - u64::from(i > 0)) & 0xfff)
        })
        .collect()
}

/// One sample of `perf script`: (event name, its arguments, [(site, symbol)]).
type PerfSample = (String, String, Vec<(Site, String)>);

/// The samples of `perf script -F comm,event,trace,ip,sym,symoff,dso --no-inline` of
/// program `comm`.
fn perf_samples(script: &str, comm: &str) -> Vec<PerfSample> {
    let mut out = Vec::new();
    for block in script.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(head) = lines.next() else { continue };
        let mut words = head.split_whitespace();
        if words.next() != Some(comm) {
            continue;
        }
        let event = words.next().unwrap_or_default().trim_end_matches(':');
        let args = words.collect::<Vec<_>>().join(" ");
        let frames = lines
            .map(|l| {
                // `ADDR SYM+OFF (DSO)`, ADDR relative to the DSO.
                let l = l.trim();
                let (addr, rest) = l.split_once(' ').unwrap();
                let (sym, dso) = rest.rsplit_once(" (").unwrap();
                let dso = dso.trim_end_matches(')');
                let dso = dso.rsplit('/').next().unwrap_or(dso).to_string();
                let addr = u64::from_str_radix(addr, 16).unwrap();
                let sym = sym.rsplit_once('+').map_or(sym, |(s, _)| s).to_string();
                ((dso, addr & 0xfff), sym)
            })
            .collect();
        out.push((event.to_string(), args, frames));
    }
    out
}

/// curl's `connect` and `sendto` stacks (Debian's curl and libcurl: no frame pointers)
/// name `curl_easy_perform` and `curl_multi_perform` over libcurl's connect and send paths,
/// frame for frame as `perf record --call-graph dwarf` unwinds the same calls of the same
/// program (perf's frames: the same modules at the same offsets within their pages).
#[test]
fn curl_connect_and_send_stacks_match_perf() {
    let ns = Netns::new("stkperf");
    let dir = TempDir::new("stkperf");
    let _srv = python_http_server(&ns, &dir.join("."), "127.0.0.1", 8080);
    let url = "http://127.0.0.1:8080/";
    let curl = ["curl", "-sS", "-o", "/dev/null", url];
    let args = ["--format", "json", "--stack", "--events", "connect,sendto"];
    let run = trace(&dir, &with_cmd(&args, &ns.argv(&curl)), None);
    assert!(run.status.success(), "{}", run.describe());
    let connect = run
        .events
        .iter()
        .find(|e| e.syscall() == "connect" && e["remote"] == "127.0.0.1:8080")
        .unwrap_or_else(|| panic!("no connect\n{}", run.stdout));
    let send = run
        .events
        .iter()
        .find(|e| e.syscall() == "sendto" && e["remote"] == "127.0.0.1:8080")
        .unwrap_or_else(|| panic!("no sendto\n{}", run.stdout));
    assert!(send.payload().starts_with(b"GET / HTTP/1.1\r\n"));

    // perf, on the same command.
    let data = dir.join("perf.data").to_string_lossy().into_owned();
    let mut perf = vec![
        "perf",
        "record",
        "-q",
        "-o",
        &data,
        "-e",
        "syscalls:sys_enter_connect",
        "-e",
        "syscalls:sys_enter_sendto",
        "--call-graph",
        "dwarf",
        "--",
    ];
    perf.extend(curl);
    let st = ns.cmd(perf[0]).args(&perf[1..]).status().expect("perf");
    assert!(st.success(), "perf record failed");
    let out = Command::new("perf")
        .args(["script", "-i", &data, "--no-inline"])
        .args(["-F", "comm,event,trace,ip,sym,symoff,dso"])
        .output()
        .expect("perf script");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = String::from_utf8_lossy(&out.stdout);
    let samples = perf_samples(&script, "curl");
    // The connect to the server (an IPv4 address: 16 bytes), and the request's send.
    let perf_connect = samples
        .iter()
        .find(|(ev, args, _)| {
            ev.ends_with("sys_enter_connect") && args.contains("addrlen: 0x00000010")
        })
        .unwrap_or_else(|| panic!("no connect in perf's\n{script}"));
    let perf_send = samples
        .iter()
        .find(|(ev, _, _)| ev.ends_with("sys_enter_sendto"))
        .unwrap_or_else(|| panic!("no sendto in perf's\n{script}"));

    // The summary counts the stacks and the frames without a name (curl and libcurl are
    // stripped: most of theirs).
    let stacks: Vec<&Value> = run
        .events
        .iter()
        .filter(|e| e.get("stack").is_some())
        .collect();
    let unnamed = stacks
        .iter()
        .flat_map(|e| e["stack"].as_array().unwrap())
        .filter(|f| f["function"].is_null())
        .count() as u64;
    assert!(unnamed > 0);
    assert_eq!(
        stack_counts(&run),
        (stacks.len() as u64, 0, 0, unnamed),
        "{}",
        run.stderr
    );

    for (ours, (_, _, theirs)) in [(connect, perf_connect), (send, perf_send)] {
        let funcs = frames_of(ours);
        let perform = position_of(&funcs, &["curl_multi_perform"])
            .unwrap_or_else(|| panic!("no curl_multi_perform in {funcs:?}"));
        assert_eq!(funcs[perform + 1].1, "curl_easy_perform", "{funcs:?}");
        // libcurl's own path to it, from the libc wrapper.
        assert!(funcs[0].0.starts_with("libc.so"), "{funcs:?}");
        assert!(perform >= 3, "{funcs:?}");
        assert!(
            funcs[1..perform]
                .iter()
                .all(|(m, _)| m.starts_with("libcurl")),
            "{funcs:?}"
        );
        // Frame for frame what perf found.
        let sites = sites_of(ours);
        let perf_sites: Vec<Site> = theirs.iter().map(|(s, _)| s.clone()).collect();
        assert_eq!(sites, perf_sites, "capagent {funcs:?}\nperf {theirs:?}");
        // And perf names curl's entry points where capagent does.
        for (i, (_, f)) in funcs.iter().enumerate() {
            if f.starts_with("curl_") {
                assert_eq!(&theirs[i].1, f, "{theirs:?}");
            }
        }
    }
}

/// Python: `send_hello` sends on a Unix socket pair with `socket.send`.
const PY_SEND: &str = r#"
import socket

def send_hello(s):
    return s.send(b"hello")

a, b = socket.socketpair()
assert send_hello(a) == 5
assert b.recv(5) == b"hello"
"#;

/// The stack of the one `send` of `python ARGS... PY_SEND` (its frames' module file names
/// and functions).
fn python_send_stack(tag: &str, python: &str, args: &[&str]) -> Vec<(String, String)> {
    let ns = Netns::new(tag);
    let dir = TempDir::new(tag);
    let script = dir.write("send.py", PY_SEND);
    let mut cmd = vec![python];
    cmd.extend(args);
    cmd.push(&script);
    let trace_args = ["--format", "json", "--stack", "--events", "send"];
    let run = trace(&dir, &with_cmd(&trace_args, &ns.argv(&cmd)), None);
    assert!(run.status.success(), "{}", run.describe());
    let s = sends(&run);
    assert_eq!(s.len(), 1, "{}", run.describe());
    assert_eq!(s[0].payload(), b"hello");
    frames_of(s[0])
}

/// Debian's python3 (stripped; `_socket` built into the executable): the exported
/// functions of the interpreter on the way from `main` to libc's `send`.
#[test]
fn debian_python_send_stack() {
    let frames = python_send_stack("stkpy", "/usr/bin/python3", &[]);
    assert!(frames[0].0.starts_with("libc.so"), "{frames:?}");
    let main = position_of(&frames, &["Py_BytesMain"])
        .unwrap_or_else(|| panic!("no Py_BytesMain in {frames:?}"));
    // Every frame in between is the interpreter's (the executable, or a libpython).
    for (m, _) in &frames[1..=main] {
        assert!(
            m.starts_with("python3") || m.starts_with("libpython3"),
            "{frames:?}"
        );
    }
    let at = |f: &str| position_of(&frames, &[f]).unwrap_or_else(|| panic!("no {f} in {frames:?}"));
    let eval = at("_PyEval_EvalFrameDefault");
    assert!(at("PyObject_Vectorcall") < eval, "{frames:?}");
    assert!(eval < at("PyEval_EvalCode"), "{frames:?}");
    assert!(at("PyEval_EvalCode") < at("Py_RunMain"), "{frames:?}");
}

/// A Python 3.12+ of pyenv's, if there is one.
fn python312() -> Option<String> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let mut found: Vec<(u32, String)> = std::fs::read_dir(format!("{home}/.pyenv/versions"))
        .ok()?
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let minor: u32 = name.strip_prefix("3.")?.split('.').next()?.parse().ok()?;
            let bin = format!("{home}/.pyenv/versions/{name}/bin/python3");
            (minor >= 12 && std::path::Path::new(&bin).exists()).then_some((minor, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// Python 3.12+ with `-X perf`: `_socket`'s `sock_send`, libpython's evaluation loop, and
/// the script's own function named from the interpreter's perf map (`py::send_hello`,
/// written at the function's first call: the map is read again for it).
#[test]
fn python_x_perf_names_the_script_function() {
    let Some(python) = python312() else {
        eprintln!("skipped: no Python 3.12+ under ~/.pyenv/versions");
        return;
    };
    let frames = python_send_stack("stkpyx", &python, &["-X", "perf"]);
    assert!(frames[0].0.starts_with("libc.so"), "{frames:?}");
    let sock_send = position_of(&frames, &["sock_send"])
        .unwrap_or_else(|| panic!("no sock_send in {frames:?}"));
    assert!(frames[sock_send].0.starts_with("_socket."), "{frames:?}");
    let eval = position_of(&frames, &["_PyEval_EvalFrameDefault"])
        .unwrap_or_else(|| panic!("no _PyEval_EvalFrameDefault in {frames:?}"));
    assert!(
        sock_send < eval && frames[eval].0.starts_with("libpython3"),
        "{frames:?}"
    );
    let py = frames
        .iter()
        .position(|(m, f)| m == "?" && f.starts_with("py::send_hello:") && f.contains("send.py"))
        .unwrap_or_else(|| panic!("no py::send_hello in {frames:?}"));
    assert!(eval < py, "{frames:?}");
}

/// main → send_ping() → sendto() of a UDP datagram "ping N" to 127.0.0.1:9, twice.
const UDP_C: &str = r#"
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

__attribute__((noinline)) int send_ping(int fd, struct sockaddr_in *to, int n) {
    char m[16];
    int len = snprintf(m, sizeof m, "ping %d", n);
    int r = sendto(fd, m, len, 0, (struct sockaddr *)to, sizeof *to);
    __asm__ volatile("" ::: "memory");
    return r;
}

int main(void) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    for (int n = 1; n <= 2; n++)
        if (send_ping(fd, &to, n) != 6) return 1;
    return 0;
}
"#;

/// pcapng: a UDP datagram's packet comment carries the frames of its call (each sendto a
/// call of its own), as TCP's first segment of a call does.
#[test]
fn udp_datagram_comment_carries_the_stack() {
    let ns = Netns::new("stkudp");
    let dir = TempDir::new("stkudp");
    let src = dir.write("udp.c", UDP_C);
    let prog = dir.join("udp").to_string_lossy().into_owned();
    let st = Command::new("cc")
        .args(["-g", "-O1", "-fomit-frame-pointer", "-o", &prog, &src])
        .status()
        .expect("cc");
    assert!(st.success());
    let pcap = dir.join("udp.pcapng").to_string_lossy().into_owned();
    let args = ["--stack", "--events", "sendto", "-w", &pcap];
    let run = trace(&dir, &with_cmd(&args, &ns.argv(&[&prog])), None);
    assert!(run.status.success(), "{}", run.describe());
    let out = tshark_r(
        &pcap,
        &["-T", "fields", "-e", "udp.payload", "-e", "frame.comment"],
    );
    let rows: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    let line = line_of_in(UDP_C, "int r = sendto(");
    for (n, row) in rows.iter().enumerate() {
        let (payload, comment) = row.split_once('\t').unwrap_or_else(|| panic!("{row}"));
        assert_eq!(payload, hex(format!("ping {}", n + 1).as_bytes()), "{row}");
        // tshark shows the comment's line breaks as `\n`.
        let frames: Vec<&str> = comment.split("\\n").skip(1).map(str::trim).collect();
        assert!(frames[0].starts_with("#0  libc.so.6!"), "{comment}");
        let ping = frames
            .iter()
            .position(|f| f.contains("udp!send_ping+"))
            .unwrap_or_else(|| panic!("no send_ping in {comment}"));
        assert!(
            frames[ping].ends_with(&format!("udp.c:{line}")),
            "{comment}"
        );
        assert!(frames[ping + 1].contains("udp!main+"), "{comment}");
    }
}

/// The 1-based line of `src` containing `what`.
fn line_of_in(src: &str, what: &str) -> u64 {
    src.lines()
        .position(|l| l.contains(what))
        .expect("in the source") as u64
        + 1
}

/// `--tls --stack` on a Go client (crypto/tls; no `.eh_frame`: frame pointers): a
/// `(*Conn).Write` record's stack is taken at the function's RET (on the thread that
/// reports it) and returns through the word at sp to its caller, net/http's write loop; a
/// `(*Conn).Read`'s to the read loop.
#[test]
fn go_tls_call_records_carry_the_callers_stack() {
    let ns = Netns::new("stkgo");
    let dir = TempDir::new("stkgo");
    let certs = Certs::localhost();
    let bin = go_tls_client(&dir, GoBuild::Normal);
    let srv = HttpsServer::start(&ns, &dir, &certs);
    let cmd = ns.argv(&[
        &bin,
        "-ca",
        certs.ca_str(),
        "-data",
        "hello go",
        &srv.url("/go"),
    ]);
    let args = [
        "--tls", "--stack", "--format", "json", "--events", "connect",
    ];
    let run = trace(&dir, &with_cmd(&args, &cmd), None);
    assert!(run.status.success(), "{}", run.describe());
    let tls: Vec<&Value> = run
        .events
        .iter()
        .filter(|e| e.ty() == "data" && e["tls"]["lib"] == "go")
        .collect();
    assert!(tls.iter().any(|e| e["dir"] == "send"), "{}", run.describe());
    assert!(tls.iter().any(|e| e["dir"] == "recv"), "{}", run.describe());
    for e in &tls {
        let frames = frames_of(e);
        let (func, caller) = if e["dir"] == "send" {
            (
                "crypto/tls.(*Conn).Write",
                "net/http.(*persistConn).writeLoop",
            )
        } else {
            (
                "crypto/tls.(*Conn).Read",
                "net/http.(*persistConn).readLoop",
            )
        };
        assert_eq!(frames[0].1, func, "{frames:?}");
        let at =
            position_of(&frames, &[caller]).unwrap_or_else(|| panic!("no {caller} in {frames:?}"));
        // Every frame up to there is the program's own, with a name.
        for (m, f) in &frames[..=at] {
            assert!(m == "tlsclient" && f != "?", "{frames:?}");
        }
    }
}
