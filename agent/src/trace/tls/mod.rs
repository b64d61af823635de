//! `capagent trace --tls`: the plaintext inside the TLS libraries of the traced processes,
//! read by uprobes and attributed to the socket the library used.
//!
//! - `libs`: which TLS libraries a process has mapped (`/proc/PID/maps`, opened through
//!   `/proc/PID/root`), what they are (OpenSSL, GnuTLS, Go; version), and the offsets of the
//!   functions to hook (ELF symbols through the `object` crate). Pure over bytes.
//! - `go`: Go binaries: `crypto/tls.(*Conn).Read`/`Write` in `.gopclntab` (stripped ones
//!   too) and the RET instructions of a function (x86-64 decoder). Pure over bytes.
//! - `attach`: one uprobe attachment per library file (device, inode), the pid filter in the
//!   kernel; rescans on exec and executable mmaps; the per-process report for the summary.
//! - `conns`: which connections carry TLS (a ClientHello, or plaintext seen on them), for
//!   the marker on their ciphertext records, `--tls-only` and the summary.

pub mod attach;
pub mod conns;
pub mod go;
pub mod libs;
