//! One job run: its command line made into the options the command would use (the same
//! functions as `capagent KIND ARGS`), its outputs, and the mode's session with the job's own
//! stop token ([`Control`]) and metrics.
//!
//! [`prepare`] is what `daemon --check` (and every start) verifies without touching the
//! system: the flags (by the CLI parser), the options they make, the outputs the kind can
//! write. What only running can tell (a port in use, an interface missing, a bad filter
//! expression, a process gone) fails the run, which the supervisor retries.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;

use super::{
    config::{ConfigError, Job, Record, Rotation},
    outputs,
};
use crate::{
    capture::{self, CaptureOptions, session::SessionOptions},
    cli::Command,
    control::Control,
    counters::JobMetrics,
    intercept::{InterceptOptions, RelayOptions},
    output::{EventWriter, FLUSH_EVERY, FanOut, FlushEvery},
    proxy::{self, Recorder, command::Service},
    trace::run::{self as trace_run, TraceOptions},
};

/// A job's command, checked and made into options.
pub enum Prepared {
    Trace {
        opts: TraceOptions,
        preview: usize,
    },
    Capture {
        opts: CaptureOptions,
        session: SessionOptions,
    },
    Service {
        opts: proxy::Options,
        service: Service,
        preview: usize,
    },
    Intercept {
        opts: InterceptOptions,
        relay: RelayOptions,
    },
}

/// Checks `job` and makes its options (no side effects).
pub fn prepare(job: &Job) -> Result<Prepared, ConfigError> {
    let command = super::config::check_job(job)?;
    let fail = |m: String| ConfigError {
        line: job.at.0,
        column: job.at.1,
        message: format!("job {:?}: {m}", job.name),
    };
    let records_events = !matches!(command, Command::Capture(_));
    if !records_events {
        if let Some(r) = job.record.iter().find(|r| **r == Record::Json) {
            return Err(fail(format!(
                "a capture records \"pcapng\" or \"text\", not {:?} (JSON lines are for the jobs that record events)",
                r.name()
            )));
        }
        if job.stdout {
            return Err(fail(
                "stdout = true copies JSON lines, which a capture does not make".into(),
            ));
        }
    }
    let prepared = match command {
        Command::Trace(a) => Prepared::Trace {
            opts: a.options().map_err(|e| fail(format!("{e:#}")))?,
            preview: a.preview,
        },
        Command::Capture(a) => {
            let (opts, session) = a.options().map_err(|e| fail(format!("{e:#}")))?;
            Prepared::Capture { opts, session }
        }
        Command::Proxy(a) => {
            let (opts, service) = a.service().map_err(|e| fail(format!("{e:#}")))?;
            let preview = opts.record.preview;
            Prepared::Service {
                opts,
                service,
                preview,
            }
        }
        Command::Dns(a) => {
            let (opts, service) = a.service().map_err(|e| fail(format!("{e:#}")))?;
            let preview = opts.record.preview;
            Prepared::Service {
                opts,
                service,
                preview,
            }
        }
        Command::Intercept(a) => {
            let (opts, relay) = a.options().map_err(|e| fail(format!("{e:#}")))?;
            crate::intercept::check(&opts, &relay).map_err(|e| fail(format!("{e:#}")))?;
            Prepared::Intercept { opts, relay }
        }
        _ => {
            return Err(fail(format!(
                "{} cannot run as a job",
                job.argv.first().map_or("?", String::as_str)
            )));
        }
    };
    Ok(prepared)
}

/// Where a job's files go and what it counts into.
pub struct JobEnv {
    pub output_dir: PathBuf,
    pub rotation: Rotation,
    pub metrics: Arc<JobMetrics>,
}

/// Runs `job` until `ctl` is stopped (or the job ends by itself: its command exited...).
pub fn run(job: &Job, env: &JobEnv, ctl: &Control) -> anyhow::Result<()> {
    let _span = tracing::info_span!("job", name = %job.name).entered();
    let prepared = prepare(job).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    match prepared {
        Prepared::Trace { opts, preview } => run_trace(job, env, ctl, &opts, preview),
        Prepared::Capture { opts, session } => run_capture(job, env, ctl, &opts, session),
        Prepared::Service {
            opts,
            service,
            preview,
        } => run_service(job, env, ctl, &opts, service, preview),
        Prepared::Intercept { opts, relay } => run_intercept(job, env, ctl, &opts, &relay),
    }
}

fn writers(
    job: &Job,
    env: &JobEnv,
    preview: usize,
) -> anyhow::Result<Vec<Box<dyn EventWriter + Send>>> {
    outputs::event_writers(
        &env.output_dir,
        &job.name,
        &job.record,
        job.stdout,
        &env.rotation,
        preview,
        &env.metrics,
    )
    .with_context(|| {
        format!(
            "cannot create the output directory in {}",
            env.output_dir.display()
        )
    })
}

fn run_trace(
    job: &Job,
    env: &JobEnv,
    ctl: &Control,
    opts: &TraceOptions,
    preview: usize,
) -> anyhow::Result<()> {
    let mut out = FlushEvery::new(FanOut(writers(job, env, preview)?), FLUSH_EVERY);
    let outcome = trace_run::run(opts, ctl, &mut out);
    out.flush().context("writing output")?;
    let outcome = outcome?;
    match outcome.exit_status {
        Some(st) => tracing::info!("traced command ended: {st}"),
        None if !ctl.is_stopped() => tracing::info!("the traced processes are gone"),
        None => {}
    }
    Ok(())
}

fn run_capture(
    job: &Job,
    env: &JobEnv,
    ctl: &Control,
    opts: &CaptureOptions,
    mut session: SessionOptions,
) -> anyhow::Result<()> {
    for &pid in &opts.select.pids {
        crate::process::check_pid(pid)?;
    }
    session.write = None;
    session.no_summary = true;
    let files = outputs::capture_files(
        &env.output_dir,
        &job.name,
        &job.record,
        &env.rotation,
        &env.metrics,
    )
    .with_context(|| {
        format!(
            "cannot create the output directory in {}",
            env.output_dir.display()
        )
    })?;
    let outcome = capture::session::run_with(opts, &session, ctl, Some(files))?;
    if let Some(st) = outcome.exit_status {
        tracing::info!("capture command ended: {st}");
    }
    Ok(())
}

fn run_service(
    job: &Job,
    env: &JobEnv,
    ctl: &Control,
    opts: &proxy::Options,
    service: Service,
    preview: usize,
) -> anyhow::Result<()> {
    refuse_raw_tls(opts.tls.as_ref())?;
    let (recorder, handle) = Recorder::with_writers(writers(job, env, preview)?)?;
    // `replace = [...]`: the job's relays apply the rules, as `--replace` does.
    let recorder = recorder.with_rules(&opts.record.replace);
    proxy::run_until(opts, recorder, handle, ctl, |ctx| service.serve(ctx))
}

/// The jobs' rotating pcapng files have no raw TLS legs (yet): refused, not ignored. (Their
/// pcapng writer is one of [`writers`], not the recorder's separate raw-legs writer fed the
/// TLS secrets, and a file started by rotation would need again the secrets of the sessions
/// that go on in it, to decrypt alone.)
fn refuse_raw_tls(tls: Option<&crate::mitm::options::TlsOptions>) -> anyhow::Result<()> {
    if tls.is_some_and(|t| t.pcap_tls == crate::mitm::options::PcapTls::Raw) {
        anyhow::bail!("--pcap-tls raw in a daemon job: not implemented yet");
    }
    Ok(())
}

fn run_intercept(
    job: &Job,
    env: &JobEnv,
    ctl: &Control,
    opts: &InterceptOptions,
    relay: &RelayOptions,
) -> anyhow::Result<()> {
    refuse_raw_tls(relay.tls.as_ref())?;
    let (recorder, handle) = Recorder::with_writers(writers(job, env, relay.record.preview)?)?;
    let recorder = recorder.with_rules(&relay.record.replace);
    let outcome = crate::intercept::run_until(opts, relay, recorder, handle, ctl)?;
    if let Some(st) = outcome.exit_status {
        tracing::info!("intercepted command ended: {st}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Config;

    fn one(toml: &str) -> Result<Prepared, ConfigError> {
        let c = Config::parse(toml).unwrap();
        prepare(&c.jobs[0])
    }

    #[test]
    fn prepare_checks_options_and_outputs() {
        assert!(matches!(
            one("[[job]]\nname = \"t\"\nkind = \"trace\"\ncomm = \"curl\"\n"),
            Ok(Prepared::Trace { .. })
        ));
        let e = one("[[job]]\nname = \"t\"\nkind = \"trace\"\n")
            .err()
            .unwrap();
        assert!(e.message.contains("nothing to trace"), "{e}");
        let e = one("\n[[job]]\nname = \"c\"\nkind = \"capture\"\ninterface = \"lo\"\nrecord = [\"json\"]\n")
            .err()
            .unwrap();
        assert_eq!((e.line, e.column), (2, 1));
        assert!(e.message.contains("not \"json\""), "{e}");
        let e =
            one("[[job]]\nname = \"c\"\nkind = \"capture\"\ninterface = \"lo\"\nstdout = true\n")
                .err()
                .unwrap();
        assert!(e.message.contains("stdout"), "{e}");
        let e = one("[[job]]\nname = \"r\"\nkind = \"proxy reverse\"\n")
            .err()
            .unwrap();
        assert!(e.message.contains("give --to"), "{e}");
        let e = one("[[job]]\nname = \"d\"\nkind = \"dns\"\nanswer = \"127.0.0.1\"\nupstream = \"nowhere\"\n")
            .err()
            .unwrap();
        assert!(e.message.contains("--upstream"), "{e}");
        assert!(matches!(
            one(
                "[[job]]\nname = \"s\"\nkind = \"proxy socks\"\nlisten = \"127.0.0.1:1080\"\nrecord = [\"pcapng\", \"text\"]\nstdout = true\n"
            ),
            Ok(Prepared::Service { .. })
        ));
        assert!(matches!(
            one(
                "[[job]]\nname = \"i\"\nkind = \"intercept\"\nmode = \"tproxy\"\niface = \"eth1\"\nudp = true\n"
            ),
            Ok(Prepared::Intercept { .. })
        ));
        let e = one("[[job]]\nname = \"i\"\nkind = \"intercept\"\nmode = \"redirect\"\n")
            .err()
            .unwrap();
        assert!(e.message.contains("--iface"), "{e}");
    }
}
