//! capagent's test harness: what the integration tests in `tests/` (the `capagent-tests`
//! crate) and xtask's benchmarks share. Network namespaces, temporary directories, peer
//! processes with timeouts and their output, waiting for a condition, `capagent trace` runs
//! and their JSON events, the proxy tests' capagent process and servers, tshark, a terminal,
//! the Go test client built at test time.
//!
//! Every guard here cleans up in `Drop`, so a failing (panicking) test still kills its
//! processes and deletes its namespace and files.
//!
//! The capagent binary under test is the one in `CAPAGENT_BIN` (`cargo xtask test` builds it
//! and sets it): see [`capagent`].

use std::{
    path::Path,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

pub mod bpf;
pub mod bytes;
pub mod events;
pub mod go;
pub mod mitm;
pub mod netns;
pub mod openssl_wheels;
pub mod peers;
pub mod process;
pub mod proxy;
pub mod pty;
pub mod starttls;
pub mod tempdir;
pub mod tls;
pub mod tools;
pub mod trace;
pub mod tshark;
pub mod wait;

pub use bpf::*;
pub use bytes::*;
pub use events::*;
pub use go::*;
pub use netns::*;
pub use openssl_wheels::*;
pub use peers::*;
pub use process::*;
pub use pty::*;
pub use tempdir::*;
pub use tls::*;
pub use tools::*;
pub use trace::*;
pub use tshark::*;
pub use wait::*;

/// The `capagent` binary under test: `CAPAGENT_BIN`, which `cargo xtask test` sets to the
/// binary it built. The tests are a crate of their own (the product crate carries no test
/// features), so cargo does not build capagent for them: run them by hand with
/// `cargo build -p capagent` first and
/// `CAPAGENT_BIN=$PWD/target/debug/capagent cargo test -p capagent-tests --features ...`.
pub fn capagent() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = std::env::var("CAPAGENT_BIN").unwrap_or_else(|_| {
            panic!(
                "CAPAGENT_BIN is not set: run `cargo xtask test`, or `cargo build -p capagent` \
                 and set CAPAGENT_BIN=$PWD/target/debug/capagent"
            )
        });
        assert!(
            Path::new(&bin).is_file(),
            "CAPAGENT_BIN={bin} is not a file (build capagent first)"
        );
        bin
    })
}

/// Longest any single capagent run or peer may take before the test gives up on it.
pub const TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique in this process, for names of files and namespaces.
pub(crate) fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::SeqCst)
}

/// A name unique on this machine: `capagent-t-TAG-PID-N`.
pub(crate) fn unique(tag: &str) -> String {
    format!("capagent-t-{tag}-{}-{}", std::process::id(), next_id())
}
