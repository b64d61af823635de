//! A terminal for capagent's stderr.

use std::process::Command;

use crate::{TIMEOUT, python, run_output, unhex};

/// Runs `argv[1:]` with its stderr on a pseudo-terminal (stdin from /dev/null, stdout to
/// /dev/null) and reads the terminal until `argv[0]` status lines (`\rcapagent: `) were
/// drawn, or the program ended; then interrupts it (SIGINT) and reads the rest. Prints the
/// terminal's bytes in hex, then `EXIT <returncode>`.
const PTY_STDERR_PY: &str = r#"
import os, pty, signal, subprocess, sys, time
want, argv = int(sys.argv[1]), sys.argv[2:]
m, s = pty.openpty()
p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=s)
os.close(s)
out = b""
deadline = time.time() + 30
def read():
    global out
    try:
        d = os.read(m, 65536)
    except OSError:
        return False
    out += d
    return bool(d)
while out.count(b"\rcapagent: ") < want and time.time() < deadline and read():
    pass
p.send_signal(signal.SIGINT)
while read():
    pass
print(out.hex())
print("EXIT", p.wait())
"#;

/// What capagent (`argv`, run as is) wrote on its stderr when that was a terminal, after
/// `draws` status lines were drawn (or it ended), and its exit code.
pub fn stderr_on_a_terminal(argv: &[String], draws: usize) -> (String, i32) {
    let mut cmd = Command::new(python());
    cmd.arg("-c")
        .arg(PTY_STDERR_PY)
        .arg(draws.to_string())
        .args(argv);
    let out = run_output("pty driver", cmd, TIMEOUT * 2);
    let mut lines = out.lines();
    let text = String::from_utf8_lossy(&unhex(lines.next().unwrap_or(""))).into_owned();
    let code = lines
        .next()
        .and_then(|l| l.strip_prefix("EXIT "))
        .and_then(|c| c.parse().ok())
        .unwrap_or(-1);
    (text, code)
}

/// The status lines drawn on a terminal (`\rcapagent: ...\x1b[K`), in order.
pub fn status_lines(terminal: &str) -> Vec<String> {
    terminal
        .split('\r')
        .filter_map(|part| part.strip_suffix("\x1b[K"))
        .filter(|l| l.starts_with("capagent: "))
        .map(str::to_string)
        .collect()
}
