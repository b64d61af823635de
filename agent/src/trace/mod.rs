//! `capagent trace`: per-process socket tracing.
//!
//! - `run`: the session (load, attach, choose processes, drain the ring buffer).
//! - `decode`: pure decoder of kernel records; `sockaddr`: pure sockaddr parser.
//! - `assemble`: payload chunks to whole calls (`model::Event`).
//! - `summary`: per-connection totals printed at exit.

pub mod assemble;
pub mod decode;
pub mod run;
pub mod sockaddr;
pub mod summary;
