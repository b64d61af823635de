//! TLS interception: the flags every proxy shares ([`options`]), the connection to the real
//! server ([`upstream`]) and the interceptor that terminates the client's TLS with a
//! certificate of capagent's CA ([`intercept`]).

pub mod options;
pub mod upstream;
