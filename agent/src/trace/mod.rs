//! `capagent trace`: per-process socket tracing.

pub mod assemble;
pub mod decode;
pub mod sockaddr;
