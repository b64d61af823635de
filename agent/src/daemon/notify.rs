//! systemd's notification protocol (`sd_notify`): datagrams of `KEY=VALUE` lines to the Unix
//! socket named by `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket). Without the
//! variable (not started by systemd as `Type=notify`) every call does nothing.

use std::{
    io,
    os::unix::net::{SocketAddr, UnixDatagram},
    time::Duration,
};

/// A connection to systemd's notification socket.
pub struct Notifier {
    sock: Option<(UnixDatagram, SocketAddr)>,
}

/// The address `$NOTIFY_SOCKET` names.
pub fn notify_addr(var: &str) -> io::Result<SocketAddr> {
    if let Some(name) = var.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt as _;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if var.starts_with('/') {
        SocketAddr::from_pathname(var)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET={var:?}: neither a path nor @abstract"),
        ))
    }
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`.
    pub fn from_env() -> io::Result<Notifier> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(v) if !v.is_empty() => Ok(Notifier {
                sock: Some((UnixDatagram::unbound()?, notify_addr(&v)?)),
            }),
            _ => Ok(Notifier { sock: None }),
        }
    }

    pub fn enabled(&self) -> bool {
        self.sock.is_some()
    }

    /// Sends `state` (newline-separated `KEY=VALUE`s).
    pub fn send(&self, state: &str) -> io::Result<()> {
        if let Some((sock, addr)) = &self.sock {
            sock.send_to_addr(state.as_bytes(), addr)?;
        }
        Ok(())
    }

    pub fn ready(&self, status: &str) -> io::Result<()> {
        self.send(&format!(
            "READY=1\nSTATUS={status}\nMAINPID={}",
            std::process::id()
        ))
    }

    pub fn reloading(&self) -> io::Result<()> {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()))
    }

    pub fn stopping(&self) -> io::Result<()> {
        self.send("STOPPING=1")
    }

    pub fn watchdog(&self) -> io::Result<()> {
        self.send("WATCHDOG=1")
    }

    pub fn status(&self, status: &str) -> io::Result<()> {
        self.send(&format!("STATUS={status}"))
    }
}

/// The watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this process), halved as
/// sd_watchdog_enabled() users do.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("capagent-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        let n = Notifier {
            sock: Some((
                UnixDatagram::unbound().unwrap(),
                notify_addr(dir.to_str().unwrap()).unwrap(),
            )),
        };
        n.ready("2 jobs").unwrap();
        n.stopping().unwrap();
        let mut buf = [0u8; 256];
        let k = listener.recv(&mut buf).unwrap();
        let msg = std::str::from_utf8(&buf[..k]).unwrap();
        assert_eq!(
            msg,
            format!("READY=1\nSTATUS=2 jobs\nMAINPID={}", std::process::id())
        );
        let k = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"STOPPING=1");
        let _ = std::fs::remove_file(&dir);
        assert!(notify_addr("relative").is_err());
        assert!(notify_addr("@abstract-name").is_ok());
        let off = Notifier { sock: None };
        assert!(!off.enabled());
        off.ready("x").unwrap();
    }
}
