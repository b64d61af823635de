//! HTTP proxies: the forward proxy (`capagent proxy http`: absolute-URI requests and CONNECT
//! tunnels) in [`server`], and the reverse proxy (`capagent proxy reverse`: origin-form
//! requests sent to a fixed server or routed by Host) in [`reverse`].
//!
//! - [`head`]: request and response heads (httparse) with the size limits, and [`body`]:
//!   message framing and the incremental chunked decoder (both in `crate::http1`, which
//!   `rewrite::http` shares);
//! - [`message`]: targets, hop-by-hop fields, Basic proxy authentication, generated responses;
//! - [`exchange`]: reading heads from clients, one request/response exchange with a server
//!   connection, and what gets recorded;
//! - [`stream`]: the connections HTTP goes over (TCP, or TLS with `proxy reverse --tls`).
//!
//! The first three are pure functions over bytes (fuzzed in `fuzz/fuzz_targets/http_*`); only
//! [`exchange`], [`server`] and [`reverse`] do I/O.

pub use crate::http1::{body, head};
pub mod exchange;
pub mod message;
pub mod reverse;
pub mod rules;
pub mod server;
pub mod stream;
