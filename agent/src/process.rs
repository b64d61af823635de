//! Processes a session works with (trace, capture, intercept): pid and name checks, and
//! starting `-- CMD` held before `exec` until the session is live, so it is seen from its
//! first syscall or packet.

use std::{
    ffi::CString,
    fs,
    io::{self, Read as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::ExitStatusExt as _,
    },
    process::ExitStatus,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("no such process: {0}")]
    NoSuchProcess(u32),
    #[error("process name {0:?} is longer than the kernel's 15 characters")]
    CommTooLong(String),
    #[error("cannot start {cmd}")]
    Spawn { cmd: String, source: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Where a started command's stdout goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ChildStdout {
    /// capagent's stdout, as the command would have it without capagent.
    #[default]
    Inherit,
    /// capagent's stderr: capagent's stdout carries records or a capture, which the
    /// command's output would corrupt. Said once on stderr once the command has started.
    Stderr,
}

/// A process started by `-- CMD`, held before `exec` until [`HeldChild::release`], so
/// the caller can mark it traced first.
///
/// `std::process::Command::spawn` cannot do this: it waits for the child's `exec`.
pub struct HeldChild {
    pid: libc::pid_t,
    release: Option<OwnedFd>,
    /// Reports a failed `exec` (errno); closed by a successful one.
    exec_status: Option<OwnedFd>,
    argv0: String,
    stdout: ChildStdout,
    status: Option<ExitStatus>,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl HeldChild {
    /// Forks `argv`; the child waits before `exec` until [`HeldChild::release`]. Its
    /// stdout is capagent's, or capagent's stderr (see [`ChildStdout`]).
    pub fn spawn(argv: &[String], stdout: ChildStdout) -> Result<Self, TargetError> {
        let spawn_err = |source| TargetError::Spawn {
            cmd: argv[0].clone(),
            source,
        };
        let cargs: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|e| spawn_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let mut ptrs: Vec<*const libc::c_char> = cargs.iter().map(|c| c.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        let (go_rd, go_wr) = pipe()?;
        let (st_rd, st_wr) = pipe()?;
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(spawn_err(io::Error::last_os_error()));
        }
        if pid == 0 {
            // Child: only async-signal-safe calls until exec.
            unsafe {
                libc::close(go_wr.as_raw_fd());
                libc::close(st_rd.as_raw_fd());
                if stdout == ChildStdout::Stderr
                    && libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) < 0
                {
                    let err = *libc::__errno_location();
                    libc::write(st_wr.as_raw_fd(), (&err as *const i32).cast(), 4);
                    libc::_exit(127);
                }
                let mut b = 0u8;
                while libc::read(go_rd.as_raw_fd(), (&mut b as *mut u8).cast(), 1) < 0
                    && *libc::__errno_location() == libc::EINTR
                {}
                libc::execvp(ptrs[0], ptrs.as_ptr());
                let err = *libc::__errno_location();
                libc::write(st_wr.as_raw_fd(), (&err as *const i32).cast(), 4);
                libc::_exit(127);
            }
        }
        drop(go_rd);
        drop(st_wr);
        Ok(HeldChild {
            pid,
            release: Some(go_wr),
            exec_status: Some(st_rd),
            argv0: argv[0].clone(),
            stdout,
            status: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Lets the child go on to `exec`, and reports whether the `exec` worked.
    pub fn release(&mut self) -> Result<(), TargetError> {
        if let Some(wr) = self.release.take() {
            let mut f = fs::File::from(wr);
            io::Write::write_all(&mut f, b"g")?;
        }
        if let Some(rd) = self.exec_status.take() {
            let mut f = fs::File::from(rd);
            let mut errno = [0u8; 4];
            if f.read_exact(&mut errno).is_ok() {
                let _ = self.wait();
                return Err(TargetError::Spawn {
                    cmd: self.argv0.clone(),
                    source: io::Error::from_raw_os_error(i32::from_ne_bytes(errno)),
                });
            }
            if self.stdout == ChildStdout::Stderr {
                eprintln!(
                    "capagent: {}'s stdout goes to stderr (capagent's stdout carries the records)",
                    self.argv0
                );
            }
        }
        Ok(())
    }

    fn waitpid(&mut self, flags: libc::c_int) -> io::Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let mut status = 0;
        loop {
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            if r == self.pid {
                self.status = Some(ExitStatus::from_raw(status));
                return Ok(self.status);
            }
            if r == 0 {
                return Ok(None);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// The exit status, if the child has ended (reaps it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        self.waitpid(libc::WNOHANG)
    }

    /// Waits for the child to end.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        Ok(self
            .waitpid(0)?
            .expect("waitpid without WNOHANG returns a status"))
    }
}

impl Drop for HeldChild {
    /// A child never released is killed (and reaped): without this, closing the pipe it
    /// waits on would let it go on to `exec`, unwatched, after the session failed to start.
    fn drop(&mut self) {
        if self.release.is_some() && self.status.is_none() {
            // SAFETY: kill(2) on our own child, which has not exec'ed yet.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
            let _ = self.wait();
        }
    }
}

/// Fails unless /proc/PID exists.
pub fn check_pid(pid: u32) -> Result<(), TargetError> {
    if fs::metadata(format!("/proc/{pid}")).is_ok() {
        Ok(())
    } else {
        Err(TargetError::NoSuchProcess(pid))
    }
}

/// True while `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The process name (thread group leader's comm) of `pid`.
pub fn process_comm(pid: u32) -> Option<String> {
    let mut s = String::new();
    fs::File::open(format!("/proc/{pid}/comm"))
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    Some(s.trim_end_matches('\n').to_string())
}

/// The comm filter as the kernel stores it: at most 15 bytes, NUL padded.
pub fn comm_filter(name: &str) -> Result<[u8; 16], TargetError> {
    if name.len() > 15 {
        return Err(TargetError::CommTooLong(name.to_string()));
    }
    let mut out = [0u8; 16];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

/// Running processes whose name is `name`.
pub fn pids_by_comm(name: &str) -> Vec<u32> {
    proc_pids()
        .filter(|&pid| process_comm(pid).as_deref() == Some(name))
        .collect()
}

/// Every running process but this one.
pub fn all_pids() -> Vec<u32> {
    let me = std::process::id();
    proc_pids().filter(|&pid| pid != me).collect()
}

fn proc_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

impl ChildStdout {
    /// Where a `-- CMD`'s stdout goes: to stderr when capagent's stdout carries the records.
    pub fn for_records(records_on_stdout: bool) -> ChildStdout {
        if records_on_stdout {
            ChildStdout::Stderr
        } else {
            ChildStdout::Inherit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_filter_pads_and_limits() {
        assert_eq!(&comm_filter("curl").unwrap()[..5], b"curl\0");
        assert!(comm_filter("a-very-long-process-name").is_err());
        assert_eq!(comm_filter("123456789012345").unwrap()[15], 0);
    }

    #[test]
    fn finds_own_process_by_name() {
        let me = std::process::id();
        let name = process_comm(me).unwrap();
        assert!(pids_by_comm(&name).contains(&me));
    }

    #[test]
    fn held_child_runs_only_after_release() {
        let dir = std::env::temp_dir().join(format!("capagent-held-{}", std::process::id()));
        let marker = dir.to_str().unwrap().to_string();
        let mut held = HeldChild::spawn(
            &["sh".into(), "-c".into(), format!("echo ran > {marker}")],
            ChildStdout::Inherit,
        )
        .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!dir.exists(), "child ran before release");
        held.release().unwrap();
        assert!(held.wait().unwrap().success());
        assert_eq!(fs::read_to_string(&dir).unwrap(), "ran\n");
        fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn held_child_dropped_unreleased_never_runs() {
        let dir = std::env::temp_dir().join(format!("capagent-dropped-{}", std::process::id()));
        let held = HeldChild::spawn(
            &[
                "sh".into(),
                "-c".into(),
                format!("echo ran > {}", dir.display()),
            ],
            ChildStdout::Inherit,
        )
        .unwrap();
        let pid = held.pid();
        drop(held);
        // Reaped by the drop: the pid is gone, and the command never ran.
        assert!(!fs::exists(format!("/proc/{pid}")).unwrap());
        assert!(!dir.exists(), "the dropped child ran");
    }

    #[test]
    fn exit_code_and_exec_failure_are_reported() {
        let mut held = HeldChild::spawn(
            &["sh".into(), "-c".into(), "exit 7".into()],
            ChildStdout::Inherit,
        )
        .unwrap();
        held.release().unwrap();
        assert_eq!(held.wait().unwrap().code(), Some(7));
        let mut missing =
            HeldChild::spawn(&["/nonexistent/capagent-test".into()], ChildStdout::Inherit).unwrap();
        let err = missing.release().unwrap_err();
        assert_eq!(err.to_string(), "cannot start /nonexistent/capagent-test");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("No such file"), "{cause}");
    }
}
