//! TLS interception: capagent's CA and the certificates it signs, the interceptor the proxies
//! and `intercept` terminate TLS with, and the keys of the sessions it makes.
//!
//! - `keylog`: the NSS key log (SSLKEYLOGFILE format) of those sessions, into a file and to
//!   whoever taps it (a pcapng writer's Decryption Secrets Blocks).

pub mod keylog;
