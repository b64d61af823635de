//! tshark, the judge of every pcapng file the tests write.

use std::{
    io::Read as _,
    process::{Command, Stdio},
    thread,
};

use crate::{TIMEOUT, unhex, wait_timeout};

/// The one line tshark always prints on stderr when run as root; anything else on stderr is
/// a complaint about the file.
pub const ROOT_WARNING: &str =
    "Running as user \"root\" and group \"root\". This could be dangerous.";

/// Runs tshark with `args` (stdin from `input` when given); returns its stdout after checking
/// it exited 0 with nothing on stderr but the root warning.
pub fn tshark(args: &[&str], input: Option<Stdio>) -> String {
    let mut cmd = Command::new("tshark");
    cmd.args(args)
        .stdin(input.unwrap_or(Stdio::null()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cannot run tshark");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = wait_timeout(&mut child, TIMEOUT).expect("tshark did not finish");
    let complaints: Vec<&str> = err
        .lines()
        .filter(|l| !l.is_empty() && *l != ROOT_WARNING)
        .collect();
    assert!(st.success(), "tshark {args:?} failed ({st}): {err}");
    assert!(
        complaints.is_empty(),
        "tshark {args:?} complained: {complaints:?}"
    );
    out
}

/// `tshark -r FILE ARGS...`.
pub fn tshark_r(file: &str, args: &[&str]) -> String {
    let mut a = vec!["-r", file];
    a.extend_from_slice(args);
    tshark(&a, None)
}

/// The two directions of `follow,tcp,raw,N`: (node 0 → node 1, node 1 → node 0).
pub fn follow_raw(out: &str) -> (Vec<u8>, Vec<u8>) {
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut body = false;
    for line in out.lines() {
        if line.starts_with("Node 1:") {
            body = true;
            continue;
        }
        if !body {
            continue;
        }
        if line.starts_with("====") {
            break;
        }
        match line.strip_prefix('\t') {
            Some(hex) => b.extend(unhex(hex.trim())),
            None => a.extend(unhex(line.trim())),
        }
    }
    (a, b)
}

/// Runs capagent (`cmd`, writing pcapng to its stdout) with its stdout piped straight into
/// `tshark -r - TSHARK_ARGS` (which must read it without complaint); returns tshark's output
/// and capagent's stderr once capagent has exited 0.
pub fn capagent_into_tshark(mut cmd: Command, tshark_args: &[&str]) -> (String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cap = cmd.spawn().expect("cannot start capagent");
    let pipe = cap.stdout.take().unwrap();
    let mut err_pipe = cap.stderr.take().unwrap();
    let err_reader = thread::spawn(move || {
        let mut err = String::new();
        let _ = err_pipe.read_to_string(&mut err);
        err
    });
    let mut args = vec!["-r", "-"];
    args.extend_from_slice(tshark_args);
    let out = tshark(&args, Some(Stdio::from(pipe)));
    let st = wait_timeout(&mut cap, TIMEOUT).expect("capagent did not finish");
    let err = err_reader.join().unwrap();
    assert!(st.success(), "capagent {st}: {err}");
    (out, err)
}
