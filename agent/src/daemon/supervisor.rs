//! The daemon's main loop: runs every job in a thread of its own with its own stop token,
//! restarts failed jobs with exponential backoff, reloads the configuration on SIGHUP
//! (unchanged jobs untouched), stops everything on SIGTERM/SIGINT, and keeps systemd informed
//! (READY, STATUS, RELOADING, STOPPING, WATCHDOG from this loop, so a stuck loop stops the
//! pings).

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use super::{
    config::{Config, Job, Rotation},
    http::MetricsServer,
    jobs::{self, JobEnv},
    metrics::Registry,
    notify::{self, Notifier},
};
use crate::{
    control::Control,
    counters::{JobMetrics, JobState},
};

/// First wait before a failed job is started again; doubled at each failure in a row.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest wait; a job that ran this long before failing starts again from the minimum.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long the loop sleeps between two looks at its jobs.
const TICK: Duration = Duration::from_millis(200);
/// How long after a job starts the memory it freed is handed back (trace and capture parse
/// the kernel's BTF when they start: tens of megabytes for a moment, which the allocator
/// would otherwise keep in the job thread's arena).
const TRIM_AFTER: Duration = Duration::from_secs(3);
/// How long stopping jobs may take (at reload, at exit) before the loop goes on without them.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `path` and checks everything that can be checked without running the jobs; the
/// error is `FILE:LINE:COLUMN: message` (or `FILE: message` when it cannot be read).
pub fn load(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let located = |e: super::config::ConfigError| format!("{}:{e}", path.display());
    let config = Config::parse(&text).map_err(located)?;
    for job in &config.jobs {
        jobs::prepare(job).map_err(located)?;
    }
    Ok(config)
}

// ---------------------------------------------------------------------------------------------
// Jobs.

struct Running {
    ctl: Control,
    thread: JoinHandle<anyhow::Result<()>>,
    started: Instant,
}

/// A job of the configuration and its run.
struct Slot {
    job: Job,
    metrics: Arc<JobMetrics>,
    run: Option<Running>,
    /// When a failed job is started again.
    retry_at: Option<Instant>,
    /// Failures in a row.
    failures: u32,
}

/// What a job's identity is made of: a job whose key did not change keeps running at reload.
fn job_key(job: &Job, output_dir: &str, rotation: &Rotation) -> String {
    format!(
        "{:?}|{:?}|{:?}|{}|{output_dir}|{rotation:?}",
        job.kind, job.argv, job.record, job.stdout
    )
}

/// A job's argv for the log, credentials hidden (`--auth USER:PASS`, the user and password
/// of `--upstream-proxy socks5://USER:PASS@HOST:PORT`).
fn shown_argv(argv: &[String]) -> String {
    let mut out: Vec<String> = Vec::with_capacity(argv.len());
    for (i, a) in argv.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| argv[p].as_str());
        out.push(match prev {
            Some("--auth") => "(hidden)".to_string(),
            Some("--upstream-proxy") => match a.split_once("://").zip(a.rsplit_once('@')) {
                Some(((scheme, _), (_, host))) => format!("{scheme}://(hidden)@{host}"),
                None => a.clone(),
            },
            _ => a.clone(),
        });
    }
    out.join(" ")
}

/// The wait after `failures` failures in a row.
fn backoff(failures: u32) -> Duration {
    BACKOFF_MIN
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(BACKOFF_MAX)
}

struct Supervisor {
    config: Config,
    slots: Vec<Slot>,
    registry: Arc<Registry>,
    /// When to hand freed memory back to the system (a while after jobs started).
    trim_at: std::cell::Cell<Option<Instant>>,
}

impl Supervisor {
    fn env(&self, slot_metrics: &Arc<JobMetrics>) -> JobEnv {
        JobEnv {
            output_dir: PathBuf::from(&self.config.output_dir),
            rotation: self.config.rotation.clone(),
            metrics: slot_metrics.clone(),
        }
    }

    fn start(&self, slot: &mut Slot) {
        let ctl = Control::new();
        let env = self.env(&slot.metrics);
        let job = slot.job.clone();
        let thread_ctl = ctl.clone();
        slot.metrics.started(&ctl);
        slot.retry_at = None;
        self.trim_at.set(Some(Instant::now() + TRIM_AFTER));
        tracing::info!("job {}: starting ({})", job.name, shown_argv(&job.argv));
        let spawned = std::thread::Builder::new()
            .name(format!("job:{}", job.name))
            .spawn(move || jobs::run(&job, &env, &thread_ctl));
        match spawned {
            Ok(thread) => {
                slot.run = Some(Running {
                    ctl,
                    thread,
                    started: Instant::now(),
                })
            }
            Err(e) => self.failed(slot, format!("cannot start a thread: {e}"), Duration::ZERO),
        }
    }

    fn failed(&self, slot: &mut Slot, error: String, ran: Duration) {
        if ran >= BACKOFF_MAX {
            slot.failures = 0;
        }
        slot.failures += 1;
        let wait = backoff(slot.failures);
        tracing::error!(
            "job {}: {error}; retrying in {}s",
            slot.job.name,
            wait.as_secs()
        );
        slot.metrics.ended(Some(error));
        slot.retry_at = Some(Instant::now() + wait);
    }

    /// Looks at every job: reaps ended runs, starts the retries that are due.
    fn tick(&mut self) {
        let mut slots = std::mem::take(&mut self.slots);
        for slot in &mut slots {
            if slot.run.as_ref().is_some_and(|r| r.thread.is_finished()) {
                let r = slot.run.take().expect("checked");
                let ran = r.started.elapsed();
                match r.thread.join() {
                    Ok(Ok(())) => {
                        tracing::info!("job {}: ended", slot.job.name);
                        slot.failures = 0;
                        slot.metrics.ended(None);
                    }
                    Ok(Err(e)) => self.failed(slot, format!("{e:#}"), ran),
                    Err(_) => self.failed(slot, "panicked".into(), ran),
                }
            }
            if slot.retry_at.is_some_and(|t| Instant::now() >= t) {
                slot.metrics.restarts.fetch_add(1, Ordering::Relaxed);
                self.start(slot);
            }
        }
        self.slots = slots;
    }

    /// Stops the runs of `slots` (all at once) and waits for them, up to STOP_TIMEOUT.
    fn stop(slots: &mut [Slot]) {
        for s in slots.iter() {
            if let Some(r) = &s.run {
                r.ctl.stop();
            }
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for s in slots.iter_mut() {
            let Some(r) = s.run.take() else { continue };
            while !r.thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if !r.thread.is_finished() {
                tracing::warn!(
                    "job {}: did not stop within {}s; left behind",
                    s.job.name,
                    STOP_TIMEOUT.as_secs()
                );
                continue;
            }
            match r.thread.join() {
                Ok(Ok(())) => tracing::info!("job {}: stopped", s.job.name),
                Ok(Err(e)) => tracing::warn!("job {}: stopped with an error: {e:#}", s.job.name),
                Err(_) => tracing::warn!("job {}: panicked while stopping", s.job.name),
            }
            s.metrics.ended(None);
            s.retry_at = None;
        }
    }

    /// Switches to `next`: jobs whose key did not change keep running untouched, the others
    /// are stopped, then the new and changed ones started.
    fn apply(&mut self, next: Config) {
        let old_keys: Vec<String> = self
            .slots
            .iter()
            .map(|s| job_key(&s.job, &self.config.output_dir, &self.config.rotation))
            .collect();
        let metrics = self.registry.set_jobs(
            &next
                .jobs
                .iter()
                .map(|j| (j.name.clone(), j.kind.clone()))
                .collect::<Vec<_>>(),
        );
        let mut old: Vec<Option<Slot>> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(Some)
            .collect();
        let mut keep: Vec<Option<Slot>> = Vec::new();
        for job in &next.jobs {
            let key = job_key(job, &next.output_dir, &next.rotation);
            let found = old
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.job.name == job.name));
            match found {
                Some(i) if old_keys[i] == key => {
                    let mut s = old[i].take().expect("found");
                    s.job = job.clone();
                    keep.push(Some(s));
                }
                _ => keep.push(None),
            }
        }
        let mut gone: Vec<Slot> = old.into_iter().flatten().collect();
        for s in &gone {
            tracing::info!("job {}: stopping (removed or changed)", s.job.name);
        }
        Self::stop(&mut gone);
        drop(gone);
        self.config = next;
        let jobs = self.config.jobs.clone();
        let mut slots = Vec::new();
        for ((job, kept), m) in jobs.into_iter().zip(keep).zip(metrics) {
            match kept {
                Some(mut s) => {
                    s.metrics = m;
                    slots.push(s);
                }
                None => {
                    let mut s = Slot {
                        job,
                        metrics: m,
                        run: None,
                        retry_at: None,
                        failures: 0,
                    };
                    self.start(&mut s);
                    slots.push(s);
                }
            }
        }
        self.slots = slots;
    }

    fn status(&self) -> String {
        let mut running = 0;
        let mut retrying = 0;
        let mut finished = 0;
        for s in &self.slots {
            match s.metrics.state().0 {
                JobState::Running => running += 1,
                JobState::Retrying => retrying += 1,
                JobState::Finished => finished += 1,
            }
        }
        let mut out = format!("{running} jobs running");
        if retrying > 0 {
            out.push_str(&format!(", {retrying} retrying"));
        }
        if finished > 0 {
            out.push_str(&format!(", {finished} finished"));
        }
        out
    }
}

fn log_notify(r: io::Result<()>) {
    if let Err(e) = r {
        tracing::warn!("sd_notify: {e}");
    }
}

fn bind_metrics(
    addr: Option<SocketAddr>,
    registry: &Arc<Registry>,
) -> anyhow::Result<Option<MetricsServer>> {
    addr.map(|a| {
        MetricsServer::start(a, registry.clone())
            .with_context(|| format!("cannot serve metrics on {a}"))
    })
    .transpose()
}

/// `capagent daemon --config FILE`: runs until SIGTERM or SIGINT.
pub fn run(path: &Path) -> anyhow::Result<()> {
    limit_arenas();
    let notifier = Notifier::from_env().context("NOTIFY_SOCKET")?;
    let config = load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    // SIGTERM and SIGINT stop the daemon, SIGHUP reloads it.
    let ctl = Control::daemon();
    ctl.arm().context("installing signal handlers")?;
    let registry = Arc::new(Registry::default());
    registry.daemon.start_time.store(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        Ordering::Relaxed,
    );
    let mut server = bind_metrics(config.metrics, &registry)?;
    if let Some(s) = &server {
        tracing::info!("metrics on http://{}/metrics", s.addr);
    }
    let mut sup = Supervisor {
        config: Config {
            jobs: Vec::new(),
            ..config.clone()
        },
        slots: Vec::new(),
        registry: registry.clone(),
        trim_at: std::cell::Cell::new(None),
    };
    sup.apply(config);
    let mut status = sup.status();
    log_notify(notifier.ready(&status));
    tracing::info!("{} started: {status}", path.display());
    let watchdog = notify::watchdog_interval();
    let mut last_ping = Instant::now();
    if watchdog.is_some() {
        log_notify(notifier.watchdog());
    }
    let mut reload_error: Option<String> = None;
    loop {
        ctl.wait(TICK);
        if ctl.is_stopped() {
            break;
        }
        if ctl.take_reload() {
            log_notify(notifier.reloading());
            match load(path) {
                Ok(next) => {
                    if next.metrics != server.as_ref().map(|s| s.addr).or(sup.config.metrics) {
                        match bind_metrics(next.metrics, &registry) {
                            Ok(s) => {
                                drop(server.take());
                                server = s;
                            }
                            Err(e) => {
                                tracing::error!("reload: {e:#}; metrics stay where they were")
                            }
                        }
                    }
                    sup.apply(next);
                    reload_error = None;
                    registry.daemon.reloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("reloaded {}", path.display());
                }
                Err(e) => {
                    tracing::error!("reload rejected, the running configuration stays: {e}");
                    registry
                        .daemon
                        .reload_failures
                        .fetch_add(1, Ordering::Relaxed);
                    reload_error = Some(e);
                }
            }
            status = String::new();
            log_notify(notifier.ready(&status_line(&sup, &reload_error)));
        }
        sup.tick();
        if sup.trim_at.get().is_some_and(|t| Instant::now() >= t) {
            sup.trim_at.set(None);
            trim_memory();
        }
        let now = status_line(&sup, &reload_error);
        if now != status {
            log_notify(notifier.status(&now));
            status = now;
        }
        if let Some(iv) = watchdog
            && last_ping.elapsed() >= iv
        {
            last_ping = Instant::now();
            log_notify(notifier.watchdog());
        }
    }
    tracing::info!("stopping");
    log_notify(notifier.stopping());
    log_notify(notifier.status("stopping"));
    Supervisor::stop(&mut sup.slots);
    drop(server);
    tracing::info!("stopped");
    Ok(())
}

/// Limits the allocator to two arenas (unless `MALLOC_ARENA_MAX` says otherwise), before
/// any thread starts. glibc gives threads arenas of their own, up to 8 per CPU; memory a job
/// thread freed (the BTF parsed when trace and capture start) stays spread through its arena
/// for good. With the example configuration: about 54 MiB resident with the default, 37 MiB
/// with two arenas (one arena: 28 MiB, but every thread then shares one lock).
fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called while this is the only thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Hands the allocator's free memory, in every thread's arena, back to the system.
fn trim_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn status_line(sup: &Supervisor, reload_error: &Option<String>) -> String {
    match reload_error {
        Some(e) => format!("{}; reload rejected: {e}", sup.status()),
        None => sup.status(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_stay_out_of_the_log() {
        let argv: Vec<String> = [
            "proxy",
            "socks",
            "--auth",
            "me:secret",
            "--upstream-proxy",
            "socks5://u:p@10.0.0.1:1080",
            "--listen",
            "127.0.0.1:1080",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            shown_argv(&argv),
            "proxy socks --auth (hidden) --upstream-proxy socks5://(hidden)@10.0.0.1:1080 --listen 127.0.0.1:1080"
        );
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(1000), BACKOFF_MAX);
    }

    #[test]
    fn keys_change_with_the_command_and_the_outputs() {
        let c = Config::parse(
            "[[job]]\nname = \"a\"\nkind = \"dns\"\nanswer = \"127.0.0.1\"\n[[job]]\nname = \"b\"\nkind = \"dns\"\nanswer = \"127.0.0.2\"\nstdout = true\n",
        )
        .unwrap();
        let r = Rotation::default();
        let k = |j: &Job| job_key(j, "/x", &r);
        assert_ne!(k(&c.jobs[0]), k(&c.jobs[1]));
        let mut moved = c.jobs[0].clone();
        moved.at = (40, 1);
        assert_eq!(k(&c.jobs[0]), k(&moved));
        assert_ne!(k(&c.jobs[0]), job_key(&c.jobs[0], "/y", &r));
    }
}
