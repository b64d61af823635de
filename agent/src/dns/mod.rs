//! The spoofing DNS server (`capagent dns`): answers A/AAAA queries for chosen names (or all)
//! with configured addresses, so that applications that resolve names come to capagent's
//! proxies; forwards the other queries to an upstream server, or answers them NXDOMAIN
//! (default) or REFUSED. UDP and TCP; every query and answer is recorded.
//!
//! - [`answer`]: the decisions and the answers, pure functions over message bytes;
//! - [`server`]: the UDP and TCP listeners, forwarding, records.

pub mod answer;
pub mod command;
pub mod server;

pub use answer::{Decision, Pattern, Policy, Unmatched, decide};
pub use server::{DnsOptions, run};
