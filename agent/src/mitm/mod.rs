//! TLS interception: capagent's CA and the leaf certificates it issues ([`ca`]), and the
//! `capagent ca init|show|install|uninstall` commands ([`command`]) with the trust stores
//! they write ([`store`]: the system store, NSS databases, the JDK's cacerts); the flags
//! every proxy shares ([`options`]), the connection to the real server ([`upstream`]) and
//! the interceptor that terminates the client's TLS with a leaf of the CA ([`intercept`]).

pub mod ca;
pub mod command;
pub mod intercept;
pub mod options;
pub mod store;
pub mod upstream;
