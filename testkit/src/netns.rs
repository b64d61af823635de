//! Network namespaces, deleted (with every process left in them) on drop.

use std::{
    ffi::OsStr,
    io,
    process::{Command, Stdio},
};

use crate::unique;

/// A network namespace of its own with only `lo`, up; deleted on drop.
pub struct Netns {
    pub name: String,
}

/// Runs `cmd` to completion; an error says what failed (with its stderr).
fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Netns {
    /// A new namespace named `capagent-t-TAG-PID-N`; panics when `ip` fails.
    pub fn new(tag: &str) -> Netns {
        Netns::try_new(tag).unwrap_or_else(|e| panic!("cannot create a netns: {e}"))
    }

    /// [`Netns::new`] for callers that report errors (the benchmarks).
    pub fn try_new(tag: &str) -> io::Result<Netns> {
        let name = unique(tag);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NS ARGS...`, to completion.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// `ip netns exec NS prog`, to add arguments to.
    pub fn cmd(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog);
        c
    }

    /// The argv of `ip netns exec NS args...`, for `capagent trace -- ...`.
    pub fn argv(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The guards owning the test's processes are dropped before this one (declared
        // after it) and kill theirs. A process they do not own, such as the command of a
        // capagent run that timed out, would keep the namespace alive: every process still
        // in the namespace was started by this test, so it is killed too.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<libc::pid_t>() {
                    // SAFETY: kill(2) has no memory-safety preconditions; the pid is a
                    // process in this test's own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}
