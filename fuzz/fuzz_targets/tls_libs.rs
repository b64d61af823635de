//! Arbitrary bytes as what `capagent trace --tls` reads: the text of `/proc/PID/maps` and
//! the contents of a mapped file. Neither parser panics; every mapping parsed is an
//! executable file mapping with an absolute path; every hook of a hookable file lies inside
//! the file (a uprobe offset is a file offset).
#![no_main]

use std::path::Path;

use capagent::trace::tls::libs::{self, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for m in libs::exec_mappings(data) {
        assert!(m.path.is_absolute());
        assert_ne!(m.inode, 0);
    }
    for name in [
        "/usr/lib/libssl.so.3",
        "/usr/lib/libgnutls.so.30",
        "/usr/bin/app",
    ] {
        if let Verdict::Hook(lib) = libs::examine(Path::new(name), data) {
            assert!(!lib.hooks.is_empty());
            for h in &lib.hooks {
                assert!(h.offset < data.len() as u64, "{h:?} outside the file");
            }
        }
    }
    let _ = libs::openssl_version(data);
    let _ = libs::gnutls_symbol_version(data);
});
