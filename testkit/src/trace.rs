//! `capagent trace` runs (to completion or in the background) and their output.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{TIMEOUT, TempDir, capagent, next_id, wait_timeout};

/// What a finished `capagent trace` run left behind.
pub struct TraceRun {
    /// The `-o` file's contents.
    pub output: String,
    /// Its lines parsed as JSON (empty for text output).
    pub events: Vec<Value>,
    /// capagent's stdout (where a `-- CMD` writes its own stdout), lossily as text...
    pub stdout: String,
    /// ... and as bytes.
    pub stdout_bytes: Vec<u8>,
    /// capagent's stderr (the summary, and the stderr of a `-- CMD`).
    pub stderr: String,
    pub status: ExitStatus,
    pub elapsed: Duration,
}

impl TraceRun {
    /// `(events, lost)` from the summary line `capagent: N events, M lost[ (B bytes)]`, and
    /// the bytes (0 when not shown).
    pub fn summary(&self) -> (u64, u64, u64) {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| l.starts_with("capagent: ") && l.contains(" events, "))
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "want one summary line in stderr {:?}",
            self.stderr
        );
        let rest = lines[0].strip_prefix("capagent: ").unwrap();
        let (events, rest) = rest.split_once(" events, ").unwrap();
        let (lost, rest) = rest.split_once(" lost").unwrap();
        let bytes = rest
            .strip_prefix(" (")
            .and_then(|r| r.strip_suffix(" bytes)"))
            .map_or(0, |b| b.parse().unwrap());
        (events.parse().unwrap(), lost.parse().unwrap(), bytes)
    }

    pub fn describe(&self) -> String {
        format!(
            "capagent {}; stderr:\n{}\noutput:\n{}",
            self.status,
            self.stderr,
            if self.output.len() > 20000 {
                &self.output[..20000]
            } else {
                &self.output
            }
        )
    }
}

/// `capagent trace -o FILE ARGS...` in the background (for `--pid`, `--comm`, `--all`).
pub struct LiveTrace {
    child: Child,
    out: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    started: Instant,
    json: bool,
}

fn trace_command(dir: &TempDir, args: &[String]) -> (Command, PathBuf, PathBuf, PathBuf) {
    let n = next_id();
    let out = dir.join(&format!("trace-{n}.out"));
    let so = dir.join(&format!("trace-{n}.stdout"));
    let se = dir.join(&format!("trace-{n}.stderr"));
    let mut cmd = Command::new(capagent());
    cmd.arg("trace").arg("-o").arg(&out).args(args);
    cmd.stdout(fs::File::create(&so).unwrap())
        .stderr(fs::File::create(&se).unwrap());
    (cmd, out, so, se)
}

impl LiveTrace {
    /// capagent's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn spawn(dir: &TempDir, args: &[String]) -> LiveTrace {
        let (mut cmd, out, stdout, stderr) = trace_command(dir, args);
        cmd.stdin(Stdio::null());
        let child = cmd.spawn().expect("cannot start capagent");
        LiveTrace {
            child,
            out,
            stdout,
            stderr,
            started: Instant::now(),
            json: args
                .windows(2)
                .any(|w| w[0] == "--format" && w[1] == "json"),
        }
    }

    /// The complete JSON lines written so far (capagent flushes its output at most every
    /// 200 ms, and only when an event arrives).
    pub fn events_so_far(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        parse_json_lines(complete)
    }

    /// Repeats `poke` (which makes the traced processes do something) every 100 ms until the
    /// output holds an event for which `pred` holds; returns the events so far. This is how
    /// the tests know that capagent has attached: it reports no readiness otherwise.
    pub fn poke_until(
        &mut self,
        timeout: Duration,
        mut poke: impl FnMut(),
        pred: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!(
                    "capagent exited early ({st}): {}",
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            let evs = self.events_so_far();
            if evs.iter().any(&pred) {
                return evs;
            }
            assert!(
                Instant::now() < deadline,
                "capagent reported no expected event within {timeout:?}; stderr {:?}; output {:?}",
                fs::read_to_string(&self.stderr).unwrap_or_default(),
                fs::read_to_string(&self.out).unwrap_or_default()
            );
            poke();
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGINT (as Ctrl-C does) and waits for capagent to finish.
    pub fn stop(self) -> TraceRun {
        // SAFETY: kill(2) of our child's pid (not yet reaped, so not reused).
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(r, 0, "cannot signal capagent");
        self.finish(TIMEOUT)
    }

    /// Waits for capagent to finish by itself.
    pub fn finish(mut self, timeout: Duration) -> TraceRun {
        let status = wait_timeout(&mut self.child, timeout).unwrap_or_else(|| {
            panic!(
                "capagent did not exit within {timeout:?}; stderr {:?}",
                fs::read_to_string(&self.stderr).unwrap_or_default()
            )
        });
        collect(
            status,
            self.started.elapsed(),
            &self.out,
            &self.stdout,
            &self.stderr,
            self.json,
        )
    }
}

impl Drop for LiveTrace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(
    status: ExitStatus,
    elapsed: Duration,
    out: &Path,
    stdout: &Path,
    stderr: &Path,
    json: bool,
) -> TraceRun {
    let output = fs::read_to_string(out).unwrap_or_default();
    let stderr = fs::read_to_string(stderr).unwrap();
    let events = if json {
        parse_json_lines(&output)
    } else {
        Vec::new()
    };
    let stdout_bytes = fs::read(stdout).unwrap();
    TraceRun {
        output,
        events,
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stdout_bytes,
        stderr,
        status,
        elapsed,
    }
}

/// Runs `capagent trace -o FILE ARGS...` to completion (killed and a panic after
/// [`TIMEOUT`]); `stdin` is fed to it (and so to a `-- CMD`).
pub fn trace(dir: &TempDir, args: &[String], stdin: Option<&[u8]>) -> TraceRun {
    let (mut cmd, out, so, se) = trace_command(dir, args);
    let json = args
        .windows(2)
        .any(|w| w[0] == "--format" && w[1] == "json");
    let input = match stdin {
        Some(data) => {
            let p = dir.join(&format!("stdin-{}", next_id()));
            fs::write(&p, data).unwrap();
            p
        }
        None => PathBuf::from("/dev/null"),
    };
    // A pipe, not the file itself, so that the traced command reads its stdin from a pipe.
    let mut feeder = Command::new("cat")
        .arg(&input)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    cmd.stdin(feeder.stdout.take().unwrap());
    let started = Instant::now();
    let mut child = cmd.spawn().expect("cannot start capagent");
    drop(cmd);
    let status = wait_timeout(&mut child, TIMEOUT);
    let _ = feeder.kill();
    let _ = feeder.wait();
    let elapsed = started.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "capagent did not finish within {TIMEOUT:?}; stderr {:?}; output {:?}",
            fs::read_to_string(&se).unwrap_or_default(),
            fs::read_to_string(&out).unwrap_or_default()
        )
    });
    collect(status, elapsed, &out, &so, &se, json)
}

/// `args` then `--` and `cmd`, as owned strings.
pub fn with_cmd(args: &[&str], cmd: &[String]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.push("--".into());
    v.extend(cmd.iter().cloned());
    v
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The JSON lines records in file `path`.
pub fn records(path: impl AsRef<std::path::Path>) -> Vec<Value> {
    parse_json_lines(&fs::read_to_string(path).unwrap())
}

/// Parses JSON lines; every line must be one JSON object.
pub fn parse_json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert!(v.is_object(), "not a JSON object: {l:?}");
            v
        })
        .collect()
}

/// The note capagent prints once when a `-- CMD`'s stdout goes to its stderr.
pub fn stdout_note(cmd: &str) -> String {
    format!("capagent: {cmd}'s stdout goes to stderr (capagent's stdout carries the records)")
}
