//! `capagent trace`: per-process socket tracing.
//!
//! - `command`: `capagent trace ARGS`, its arguments and the options they make.
//! - `run`: the trace mode of a kernel session (config, programs, traced processes, records
//!   to events).
//! - `decode`: pure decoder of kernel records; `sockaddr`: pure sockaddr parser.
//! - `assemble`: payload chunks to whole calls (`model::Event`).
//! - `summary`: per-connection totals printed at exit.
//! - `stacks`: `--stack`, the stack records paired with their calls and unwound.
//! - `tls`: `--tls`, the plaintext inside TLS libraries (uprobes).
//! - `stack`: `--stack`, user stacks unwound (DWARF CFI, frame pointers) and symbolized.

pub mod assemble;
pub mod command;
pub mod decode;
pub mod run;
pub mod sockaddr;
pub mod stack;
pub mod stacks;
pub mod summary;
pub mod tls;
