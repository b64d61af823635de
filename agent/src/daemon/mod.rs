//! `capagent daemon`: a configured set of jobs run unattended (systemd service).
//!
//! - [`config`]: the TOML file, each job as the command line it stands for.
//! - [`jobs`]: one run of a job: its options (as the command makes them), outputs, session.
//! - [`supervisor`]: the main loop: threads, restarts with backoff, reload, stop, sd_notify.
//! - [`rotate`], [`outputs`]: rotating output files and the writers into them.
//! - [`metrics`], [`http`]: per-job counters and the Prometheus endpoint; [`promtext`] and
//!   [`status`]: reading them back (`capagent status`).
//! - [`notify`]: sd_notify messages (READY, STOPPING, WATCHDOG, STATUS).

pub mod config;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod outputs;
pub mod promtext;
pub mod rotate;
pub mod status;
pub mod supervisor;

use std::{net::SocketAddr, path::Path};

/// `capagent daemon --check --config FILE`: `Ok(summary)`, or the located error
/// (`FILE:LINE:COLUMN: message`).
pub fn check(path: &Path) -> Result<String, String> {
    let config = supervisor::load(path)?;
    Ok(format!(
        "{}: OK, {} job{}",
        path.display(),
        config.jobs.len(),
        if config.jobs.len() == 1 { "" } else { "s" }
    ))
}

pub use crate::cli::DEFAULT_CONFIG;

/// Where `capagent status` finds the metrics: `--metrics`, else the `[daemon] metrics` of
/// the configuration file (`--config`, else the default one when it exists), else the
/// default address.
pub fn status_addr(metrics: Option<&str>, config: Option<&Path>) -> anyhow::Result<SocketAddr> {
    if let Some(m) = metrics {
        return m
            .parse()
            .map_err(|_| anyhow::anyhow!("--metrics {m:?}: expected IP:PORT"));
    }
    let default = config::DEFAULT_METRICS.parse().expect("valid default");
    let path = match config {
        Some(p) => Some(p),
        None => Some(Path::new(DEFAULT_CONFIG)).filter(|p| p.exists()),
    };
    if let Some(p) = path {
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            // The default file is readable by root only: others get the default address.
            Err(_) if config.is_none() => return Ok(default),
            Err(e) => anyhow::bail!("{}: cannot read: {e}", p.display()),
        };
        let c = config::Config::parse(&text).map_err(|e| anyhow::anyhow!("{}:{e}", p.display()))?;
        return c.metrics.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: metrics = false: the daemon serves no metrics",
                p.display()
            )
        });
    }
    Ok(default)
}

/// `capagent status`: the jobs of the running daemon, as a table.
pub fn status(addr: SocketAddr) -> anyhow::Result<String> {
    let body = http::fetch(addr).map_err(|e| {
        anyhow::anyhow!("cannot read the daemon's metrics at http://{addr}/metrics: {e:#}")
    })?;
    Ok(status::render(&promtext::parse(&body)))
}
