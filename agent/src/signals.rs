//! Stopping on SIGINT, SIGTERM and SIGHUP: the handler only raises a flag that the session
//! loops (trace, capture) check between two polls of their ring buffer.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Clears the flag and installs the handler.
pub fn install() {
    STOP.store(false, Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// True once one of the signals has arrived.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_raises_the_flag() {
        install();
        assert!(!stop_requested());
        unsafe { libc::raise(libc::SIGHUP) };
        assert!(stop_requested());
        install();
        assert!(!stop_requested());
    }
}
