//! SIGINT, SIGTERM and SIGHUP, delivered to a [`Control`]: the one way capagent is stopped
//! from outside. signal-hook's handler only writes to a pipe; a thread reads it and stops the
//! control that listens (a command-line session, or the daemon, which reloads on SIGHUP).
//!
//! Until [`deliver_to`] is first called, the signals keep their default action (the process
//! ends); from then on they are caught for the life of the process.

use std::{
    io,
    sync::{Mutex, OnceLock},
};

use signal_hook::{
    consts::{SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::control::Control;

/// What SIGHUP does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hangup {
    /// Stops, like SIGINT and SIGTERM (a session: the terminal went away).
    Stop,
    /// Asks for a reload ([`Control::take_reload`]): the daemon.
    Reload,
}

/// The control the signals go to.
static LISTENER: Mutex<Option<(Control, Hangup)>> = Mutex::new(None);
/// The thread's start, once per process.
static STARTED: OnceLock<io::Result<()>> = OnceLock::new();

/// Catches SIGINT, SIGTERM and SIGHUP from now on and delivers them to `ctl` (instead of
/// the control they went to before, if any).
pub fn deliver_to(ctl: &Control, hangup: Hangup) -> io::Result<()> {
    *LISTENER.lock().expect("signal listener lock") = Some((ctl.clone(), hangup));
    let started = STARTED.get_or_init(|| {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        std::thread::Builder::new()
            .name("capagent-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    deliver(sig);
                }
            })
            .map(drop)
    });
    match started {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

fn deliver(sig: i32) {
    let listener = LISTENER.lock().expect("signal listener lock");
    match listener.as_ref() {
        Some((ctl, Hangup::Reload)) if sig == SIGHUP => ctl.request_reload(),
        Some((ctl, _)) => ctl.stop(),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn signals_stop_or_reload_the_listening_control() {
        let session = Control::on_signals();
        deliver_to(&session, Hangup::Stop).unwrap();
        assert!(!session.is_stopped());
        // SAFETY: raise(3) has no memory effects; the signal is caught.
        unsafe { libc::raise(libc::SIGHUP) };
        session.wait(Duration::from_secs(10));
        assert!(session.is_stopped());

        let daemon = Control::new();
        deliver_to(&daemon, Hangup::Reload).unwrap();
        unsafe { libc::raise(libc::SIGHUP) };
        daemon.wait(Duration::from_secs(10));
        assert!(daemon.take_reload() && !daemon.is_stopped());
        assert!(!daemon.take_reload(), "one reload per SIGHUP");
        unsafe { libc::raise(libc::SIGTERM) };
        daemon.wait(Duration::from_secs(10));
        assert!(daemon.is_stopped());
    }
}
