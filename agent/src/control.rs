//! How whoever started a session stops it and watches it: the command line (one session per
//! process, stopped by SIGINT/SIGTERM/SIGHUP) or the daemon (many sessions, its jobs, each
//! stopped on its own; the daemon itself stopped and reloaded by signals).
//!
//! Every stop goes through a [`Control`], a cheap cloneable handle; signals reach one through
//! [`crate::signals`]. Sessions check [`Control::is_stopped`] between two polls of their ring
//! buffer (trace, capture), await [`Control::stopped`] (the async proxies and interception)
//! or block in [`Control::wait`] (the daemon's loop), and report the fill level of their
//! kernel ring buffer into it.

use std::{
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use thiserror::Error;
use tokio::sync::Notify;

use crate::signals;

/// What signals do to a control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnSignal {
    /// Nothing (a daemon job: the daemon stops it).
    Ignore,
    /// SIGINT, SIGTERM and SIGHUP stop it (a command-line session).
    Stop,
    /// SIGINT and SIGTERM stop it, SIGHUP asks for a reload (the daemon).
    StopOrReload,
}

struct Inner {
    stopped: AtomicBool,
    /// A reload was asked for (SIGHUP to the daemon) and not taken yet.
    reload: AtomicBool,
    notify: Notify,
    /// Wakes [`Control::wait`]: the flags are only set with its lock held.
    woken: (Mutex<()>, Condvar),
    /// What signals do once armed.
    signals: OnSignal,
    /// Fill level of the session's kernel ring buffer, in parts per million.
    ring_fill_ppm: AtomicU32,
    /// Longest wait for the ring buffer between two looks at the stop and the clock.
    poll_ms: i32,
}

/// Stop token and live gauges of one session.
#[derive(Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Default for Control {
    fn default() -> Self {
        Control::new()
    }
}

impl Control {
    fn with_signals(signals: OnSignal, poll_ms: i32) -> Control {
        Control {
            inner: Arc::new(Inner {
                stopped: AtomicBool::new(false),
                reload: AtomicBool::new(false),
                notify: Notify::new(),
                woken: (Mutex::new(()), Condvar::new()),
                signals,
                ring_fill_ppm: AtomicU32::new(0),
                poll_ms,
            }),
        }
    }

    /// A session stopped only by [`Control::stop`] (a daemon job). It looks at its ring
    /// buffer every 50 ms when the kernel does not wake it first (an idle daemon costs little;
    /// stopping and files lag by that much at most).
    pub fn new() -> Control {
        Control::with_signals(OnSignal::Ignore, 50)
    }

    /// A session that also stops on SIGINT, SIGTERM and SIGHUP (the command line), once
    /// [`Control::arm`]ed. It looks at its ring buffer every 10 ms.
    pub fn on_signals() -> Control {
        Control::with_signals(OnSignal::Stop, 10)
    }

    /// The daemon's own control, once [`Control::arm`]ed: stopped by SIGINT and SIGTERM,
    /// asked to reload by SIGHUP ([`Control::take_reload`]).
    pub fn daemon() -> Control {
        Control::with_signals(OnSignal::StopOrReload, 50)
    }

    /// How long a session's poll of its ring buffer may wait, in milliseconds (the kernel
    /// wakes it earlier once enough is waiting).
    pub fn poll_ms(&self) -> i32 {
        self.inner.poll_ms
    }

    /// Called once the session is live: from then on the signals go to this control (before
    /// this point they keep their default action: the process ends). Nothing for a daemon
    /// job.
    pub fn arm(&self) -> std::io::Result<()> {
        if self.inner.signals == OnSignal::Ignore {
            return Ok(());
        }
        let ctl = self.clone();
        signals::deliver_to(move |sig| ctl.on_signal(sig))
    }

    fn on_signal(&self, sig: i32) {
        match self.inner.signals {
            OnSignal::Ignore => {}
            OnSignal::StopOrReload if sig == signals::SIGHUP => self.request_reload(),
            OnSignal::Stop | OnSignal::StopOrReload => self.stop(),
        }
    }

    /// Asks the session to stop.
    pub fn stop(&self) {
        self.set(&self.inner.stopped);
        self.inner.notify.notify_waiters();
    }

    /// Asks for a reload (the daemon's SIGHUP); see [`Control::take_reload`].
    pub fn request_reload(&self) {
        self.set(&self.inner.reload);
    }

    /// True once per [`Control::request_reload`].
    pub fn take_reload(&self) -> bool {
        self.inner.reload.swap(false, Ordering::SeqCst)
    }

    fn set(&self, flag: &AtomicBool) {
        let (lock, cv) = &self.inner.woken;
        let _held = lock.lock().expect("control lock");
        flag.store(true, Ordering::SeqCst);
        cv.notify_all();
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }

    /// Blocks until the session is stopped, a reload is asked for, or `timeout` has passed.
    pub fn wait(&self, timeout: Duration) {
        let (lock, cv) = &self.inner.woken;
        let held = lock.lock().expect("control lock");
        let _ = cv
            .wait_timeout_while(held, timeout, |_| {
                !self.inner.stopped.load(Ordering::SeqCst)
                    && !self.inner.reload.load(Ordering::SeqCst)
            })
            .expect("control lock");
    }

    /// Resolves once the session is stopped.
    pub async fn stopped(&self) {
        loop {
            // Registered before the check, so a stop() in between is not missed.
            let notified = self.inner.notify.notified();
            if self.inner.stopped.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }

    /// Records how full the session's ring buffer is: `used` of `size` bytes.
    pub fn set_ring_fill(&self, used: u64, size: u64) {
        let ppm = if size == 0 {
            0
        } else {
            (used.min(size) as u128 * 1_000_000 / size as u128) as u32
        };
        self.inner.ring_fill_ppm.store(ppm, Ordering::Relaxed);
    }

    /// The last fill level reported, from 0.0 to 1.0.
    pub fn ring_fill(&self) -> f64 {
        f64::from(self.inner.ring_fill_ppm.load(Ordering::Relaxed)) / 1e6
    }
}

/// A `--duration SECS` (trace, capture, intercept) that is not a positive number of seconds.
#[derive(Debug, Error, PartialEq)]
#[error("--duration must be a positive number of seconds, not {0}")]
pub struct BadDuration(pub f64);

/// How long a session runs before it stops by itself, from its `--duration SECS` (`None`
/// when not given: until stopped).
pub fn duration_limit(secs: Option<f64>) -> Result<Option<Duration>, BadDuration> {
    match secs {
        Some(d) if !(d.is_finite() && d > 0.0) => Err(BadDuration(d)),
        Some(d) => Ok(Some(Duration::from_secs_f64(d))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_limits_are_positive_seconds() {
        assert_eq!(duration_limit(None), Ok(None));
        assert_eq!(
            duration_limit(Some(0.25)),
            Ok(Some(Duration::from_millis(250)))
        );
        for bad in [0.0, -1.0, f64::INFINITY] {
            assert_eq!(duration_limit(Some(bad)), Err(BadDuration(bad)));
        }
        assert!(duration_limit(Some(f64::NAN)).is_err());
        assert_eq!(
            BadDuration(-1.0).to_string(),
            "--duration must be a positive number of seconds, not -1"
        );
    }

    #[test]
    fn stop_wakes_waiters_and_fill_is_a_ratio() {
        let c = Control::new();
        assert!(!c.is_stopped());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let c2 = c.clone();
        let waiter = std::thread::spawn(move || {
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), c2.stopped())
                    .await
                    .is_ok()
            })
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        c.stop();
        assert!(waiter.join().unwrap(), "stopped() did not resolve");
        assert!(c.is_stopped());
        c.set_ring_fill(1 << 20, 4 << 20);
        assert_eq!(c.ring_fill(), 0.25);
        c.set_ring_fill(9, 0);
        assert_eq!(c.ring_fill(), 0.0);
        // A stopped control does not block its waiters.
        c.wait(std::time::Duration::from_secs(10));
        assert!(!Control::new().is_stopped());
    }

    #[test]
    fn signals_stop_or_reload() {
        let session = Control::on_signals();
        session.on_signal(signals::SIGHUP);
        assert!(session.is_stopped() && !session.take_reload());

        let daemon = Control::daemon();
        daemon.on_signal(signals::SIGHUP);
        daemon.wait(std::time::Duration::from_secs(10));
        assert!(!daemon.is_stopped());
        assert!(daemon.take_reload());
        assert!(!daemon.take_reload(), "one reload per SIGHUP taken");
        daemon.on_signal(signals::SIGTERM);
        daemon.wait(std::time::Duration::from_secs(10));
        assert!(daemon.is_stopped());

        let job = Control::new();
        job.on_signal(signals::SIGTERM);
        assert!(!job.is_stopped(), "the daemon stops its jobs itself");
    }
}
