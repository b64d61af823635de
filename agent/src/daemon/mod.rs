//! `capagent daemon`: a configured set of jobs run unattended (systemd service).
//!
//! - [`config`]: the TOML file, each job as the command line it stands for.
//! - [`notify`]: sd_notify messages (READY, STOPPING, WATCHDOG, STATUS).

pub mod config;
pub mod notify;
