//! TLS interception: capagent's CA and the certificates it signs, the interceptor the proxies
//! and `intercept` terminate TLS with, and the keys of the sessions it makes.
//!
//! - [`ca`]: capagent's CA and the leaf certificates it issues;
//! - [`command`]: `capagent ca init|show|install|uninstall`, with the trust stores they write
//!   ([`store`]: the system store, NSS databases, the JDK's cacerts);
//! - [`options`]: the flags every proxy shares; [`passthrough`]: the connections relayed
//!   untouched (patterns, clients that reject the CA); [`upstream`]: the connection to the real
//!   server; [`intercept`]: the interceptor that terminates the client's TLS with a leaf of
//!   the CA;
//! - [`keylog`]: the NSS key log (SSLKEYLOGFILE format) of those sessions, into a file and to
//!   whoever taps it (a pcapng writer's Decryption Secrets Blocks).

pub mod ca;
pub mod command;
pub mod intercept;
pub mod keylog;
pub mod options;
pub mod passthrough;
pub mod store;
pub mod upstream;
