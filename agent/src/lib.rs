//! capagent: a Linux traffic-capture agent.
//!
//! One module per capability; each declares its command-line arguments and turns them into
//! its options (`trace::command`, `capture::command`...), `cli` composes them and `cmd`
//! dispatches. Modules depend one way, lowest first: `model`, `signals`; `control`;
//! `counters`; `output`; `kernel`; `mitm`; `proxy`, `trace`; `capture`, `dns`, `intercept`; `cli`; `daemon`;
//! `cmd` (`cargo xtask layers` lists the edges and checks them).
//! - `trace`: per-process socket tracing with eBPF (syscall tracepoints, ring buffer).
//! - `capture`: packet capture on interfaces with TC eBPF programs (pcapng or text lines).
//! - `clock`: kernel (CLOCK_BOOTTIME) timestamps to wall-clock time.
//! - `control`: stopping and watching a running session (signals, or the daemon's jobs).
//! - `counters`: a session's counters and state (the status line, the daemon's metrics).
//! - `daemon`: the systemd service running configured jobs.
//! - `dns`: the spoofing DNS server (answers chosen names with chosen addresses).
//! - `http1`: HTTP/1.x heads and body framing, pure (the HTTP proxies and HTTP rules share them).
//! - `intercept`: transparent interception (nftables redirect/tproxy, per-process cgroup
//!   hooks) into a recording relay.
//! - `kernel`: loading the eBPF object, BTF offsets, capability checks, the session runtime
//!   of trace and capture (`kernel::session`).
//! - `mitm`: TLS interception (the CA, the interceptor, the sessions' key log).
//! - `proxy`: recording proxies (forwarder, SOCKS, HTTP forward and reverse) that relay and
//!   record client traffic.
//! - `signals`: SIGINT, SIGTERM and SIGHUP delivered to a `Control` (the one way to stop).
//! - `process`: pid and name checks, `-- CMD` held until the session is live.
//! - `model`: the records every mode produces.
//! - `tls_hello`: the TLS ClientHello parser (SNI, ALPN) trace and the proxies share.
//! - `netlink`: netlink messages and sockets (nftables, routing, tc, sock_diag).
//! - `output`: text, JSON lines (and pcapng) writers for those records.

pub mod capture;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod control;
pub mod counters;
pub mod daemon;
pub mod dns;
pub mod http1;
pub mod intercept;
pub mod kernel;
pub mod mitm;
pub mod model;
pub mod netlink;
pub mod output;
pub mod process;
pub mod proxy;
pub mod rewrite;
pub mod signals;
pub mod tls_hello;
pub mod trace;
