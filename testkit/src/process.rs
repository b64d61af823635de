//! Background processes whose output the tests read, killed on drop; bounded waits.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

/// A background process whose stdout lines arrive on a channel; killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Closed by the stderr reader at end of file (every writer gone).
    stderr_eof: Receiver<()>,
}

impl Proc {
    /// Spawns `cmd` with stdin from `/dev/null`.
    pub fn spawn(name: &str, cmd: Command) -> Proc {
        Proc::spawn_with(name, cmd, Stdio::null())
    }

    /// Spawns `cmd` with a pipe as stdin (`child.stdin`).
    pub fn spawn_piped(name: &str, cmd: Command) -> Proc {
        Proc::spawn_with(name, cmd, Stdio::piped())
    }

    fn spawn_with(name: &str, mut cmd: Command, stdin: Stdio) -> Proc {
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let (eof_tx, stderr_eof) = mpsc::channel::<()>();
        thread::spawn(move || {
            let _eof = eof_tx;
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            name: name.to_string(),
            child,
            lines: rx,
            seen: Vec::new(),
            stderr,
            stderr_eof,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line starting with `prefix` (earlier lines are skipped), without the
    /// prefix and the space after it. Panics after `timeout`.
    pub fn expect(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.strip_prefix(' ').unwrap_or(rest).to_string();
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line {prefix:?} within {timeout:?}; stdout so far {:?}; stderr {:?}",
                    self.name,
                    self.seen,
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: exited without printing {prefix:?}; stdout {:?}; stderr {:?}",
                    self.name,
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits until the process's stderr holds `what` at least `count` times, the line of the
    /// `count`-th complete; returns the stderr. Panics after `timeout`.
    pub fn wait_stderr(&self, what: &str, count: usize, timeout: Duration) -> String {
        crate::wait_for(timeout, || {
            let err = self.stderr();
            // The count-th match and the rest of its line: a line may arrive in pieces.
            let (at, _) = err.match_indices(what).nth(count.checked_sub(1)?)?;
            err[at..].contains('\n').then_some(err)
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no {count}x {what:?} on stderr within {timeout:?}: {}",
                self.name,
                self.stderr()
            )
        })
    }

    /// The complete lines (ended by a newline) of the process's stderr so far: the last one
    /// may still be arriving.
    pub fn stderr_lines(&self) -> Vec<String> {
        let err = self.stderr();
        let complete = err.rfind('\n').map_or("", |i| &err[..i]);
        complete.lines().map(str::to_string).collect()
    }

    /// Waits for a complete stderr line containing `what`; returns it. Panics after
    /// `timeout`.
    pub fn wait_stderr_line(&self, what: &str, timeout: Duration) -> String {
        crate::wait_for(timeout, || {
            self.stderr_lines().into_iter().find(|l| l.contains(what))
        })
        .unwrap_or_else(|| {
            panic!(
                "{}: no line {what:?} on stderr within {timeout:?}: {}",
                self.name,
                self.stderr()
            )
        })
    }

    /// Sends the signal `sig` to the process.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) of our child's pid (not reaped before drop, so not reused).
        let r = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(r, 0, "{}: cannot signal it", self.name);
    }

    /// Stops the process as its service manager would: SIGTERM, then it must exit 0 within
    /// `timeout`. Returns its stderr.
    pub fn terminate(&mut self, timeout: Duration) -> String {
        self.signal(libc::SIGTERM);
        let st = self.wait(timeout);
        let err = self.stderr();
        assert!(st.success(), "{} exited with {st}: {err}", self.name);
        err
    }

    /// Waits for the process to exit, and for the last of its stderr (the reader may still
    /// be copying it); kills it and panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match wait_timeout(&mut self.child, timeout) {
            Some(st) => {
                // End of file once no process holds the pipe (a child of it might: bounded).
                let _ = self.stderr_eof.recv_timeout(Duration::from_secs(5));
                st
            }
            None => panic!(
                "{} did not exit within {timeout:?}; stdout {:?}; stderr {:?}",
                self.name,
                self.seen,
                self.stderr()
            ),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `child` until it exits or `timeout` passes (then kills it and returns `None`).
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a short command to completion (stdin from /dev/null) and returns its stdout;
/// panics when it fails or takes longer than `timeout`.
pub fn run_output(name: &str, cmd: Command, timeout: Duration) -> String {
    let mut p = Proc::spawn(name, cmd);
    let st = p.wait(timeout);
    let mut out = Vec::new();
    while let Ok(l) = p.lines.recv_timeout(Duration::from_secs(2)) {
        out.push(l);
    }
    assert!(
        st.success(),
        "{name} failed ({st}): stdout {out:?}, stderr {:?}",
        p.stderr()
    );
    let mut s = out.join("\n");
    s.push('\n');
    s
}
