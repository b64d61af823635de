//! TLS interception: capagent's CA and the leaf certificates it issues ([`ca`]).

pub mod ca;
