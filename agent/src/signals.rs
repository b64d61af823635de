//! SIGINT, SIGTERM and SIGHUP, delivered to one handler: signal-hook's handler only writes to
//! a pipe; a thread reads it and calls the handler given last. `Control::arm` makes a control
//! that handler, so every stop goes through a control (this module knows nothing of them).
//!
//! Until [`deliver_to`] is first called, the signals keep their default action (the process
//! ends); from then on they are caught for the life of the process.

use std::{
    io,
    sync::{Mutex, OnceLock},
};

pub use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

type Handler = Box<dyn Fn(i32) + Send>;

/// Where the signals go.
static HANDLER: Mutex<Option<Handler>> = Mutex::new(None);
/// The thread's start, once per process.
static STARTED: OnceLock<io::Result<()>> = OnceLock::new();

/// Catches SIGINT, SIGTERM and SIGHUP from now on and hands each to `handler` (instead of
/// the handler given before, if any).
pub fn deliver_to(handler: impl Fn(i32) + Send + 'static) -> io::Result<()> {
    *HANDLER.lock().expect("signal handler lock") = Some(Box::new(handler));
    let started = STARTED.get_or_init(|| {
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        std::thread::Builder::new()
            .name("capagent-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if let Some(h) = HANDLER.lock().expect("signal handler lock").as_ref() {
                        h(sig);
                    }
                }
            })
            .map(drop)
    });
    match started {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, time::Duration};

    use super::*;

    #[test]
    fn signals_reach_the_last_handler() {
        let (first, _) = mpsc::channel();
        deliver_to(move |sig| first.send(sig).unwrap()).unwrap();
        let (tx, rx) = mpsc::channel();
        deliver_to(move |sig| tx.send(sig).unwrap()).unwrap();
        for sig in [SIGHUP, SIGTERM, SIGINT] {
            // SAFETY: raise(3) has no memory effects; the signal is caught.
            unsafe { libc::raise(sig) };
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(sig));
        }
    }
}
