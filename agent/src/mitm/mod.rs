//! TLS interception: capagent's CA and the leaf certificates it issues ([`ca`]), and the
//! `capagent ca init|show|install|uninstall` commands ([`command`]) with the trust stores
//! they write ([`store`]: the system store, NSS databases, the JDK's cacerts).

pub mod ca;
pub mod command;
pub mod store;
