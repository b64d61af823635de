//! Helpers shared by the tasks: running commands, finding tools, building binaries.
use std::{
    collections::HashMap,
    env,
    ffi::OsStr,
    io::{BufRead, BufReader, Read},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo`, the same one that runs xtask when started through `cargo xtask`, run from the
/// workspace root.
pub fn cargo() -> Command {
    let program = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The path of `name` as `command -v` would find it in PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A command line as a shell user would type it (for messages).
pub fn display(cmd: &Command) -> String {
    let program = cmd.get_program();
    let program = if env::var_os("CARGO").is_some_and(|c| c == program) {
        "cargo".into()
    } else {
        program.to_string_lossy()
    };
    let mut parts = vec![program.into_owned()];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio, echoing it first; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", display(cmd), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds the given binaries of `package` (`cargo build -p PACKAGE --bin ...`) and returns
/// their paths, read from cargo's JSON messages (so CARGO_TARGET_DIR is honoured).
pub fn build_bins(package: &str, bins: &[&str], release: bool) -> Result<HashMap<String, PathBuf>> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        package,
        "--message-format=json-render-diagnostics",
    ]);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    if release {
        cmd.arg("--release");
    }
    eprintln!("+ {}", display(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", display(&cmd)))?;
    let mut found = HashMap::new();
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        if bins.contains(&name) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(&cmd));
    }
    for bin in bins {
        if !found.contains_key(*bin) {
            bail!("cargo built no executable named {bin}");
        }
    }
    Ok(found)
}

/// What a captured run produced.
pub struct Captured {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Captured {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// The last `n` lines of stderr, for failure messages.
    pub fn stderr_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n    ");
        let mut msg = match (self.timed_out, self.status) {
            (true, _) => "timed out".to_string(),
            (false, Some(s)) => format!("{s}"),
            (false, None) => "did not finish".to_string(),
        };
        if !tail.is_empty() {
            msg.push_str(":\n    ");
            msg.push_str(&tail);
        }
        msg
    }
}

/// Runs `cmd` in its own process group with stdout and stderr captured, killing the group if
/// it runs longer than `timeout`.
pub fn run_captured(cmd: &mut Command, timeout: Duration) -> Result<Captured> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", display(cmd)))?;
    let out = drain(child.stdout.take().expect("piped"));
    let err = drain(child.stderr.take().expect("piped"));
    let (status, timed_out) = wait_timeout(&mut child, timeout, true)?;
    Ok(Captured {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    })
}

fn drain(mut r: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Waits for `child` up to `timeout`; then kills it (its process group when `group`, which
/// must be a group it leads) with SIGKILL and reaps it. Returns (status, timed out).
pub fn wait_timeout(
    child: &mut Child,
    timeout: Duration,
    group: bool,
) -> Result<(Option<ExitStatus>, bool)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((Some(status), false));
        }
        if Instant::now() >= deadline {
            kill(child, group);
            let status = child.wait().ok();
            return Ok((status, true));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGKILL to a child we started (and its process group when it leads one).
pub fn kill(child: &mut Child, group: bool) {
    let pid = child.id() as libc::pid_t;
    if group {
        // SAFETY: plain syscall; the group is the one created for this child.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
}
