//! Dispatches the command line to the capabilities: each turns its own arguments into its
//! options and runs (`trace::command`, `capture::command`...); the daemon's commands go to
//! `daemon`.

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAPAGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Trace(args) => Ok(exit_code_of(crate::trace::command::run(&args)?)),
        Command::Capture(args) => Ok(exit_code_of(crate::capture::command::run(&args)?)),
        Command::Proxy(args) => {
            crate::proxy::command::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dns(args) => {
            crate::dns::command::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Intercept(args) => Ok(exit_code_of(crate::intercept::command::run(&args)?)),
        Command::Ca(args) => {
            crate::mitm::command::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cleanup => {
            crate::intercept::cleanup_command()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(args) if args.check => match crate::daemon::check(&args.config) {
            Ok(summary) => {
                println!("{summary}");
                Ok(ExitCode::SUCCESS)
            }
            Err(located) => {
                eprintln!("{located}");
                Ok(ExitCode::from(1))
            }
        },
        Command::Daemon(args) => {
            crate::daemon::supervisor::run(&args.config)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status(args) => {
            let addr = crate::daemon::status_addr(args.metrics.as_deref(), args.config.as_deref())?;
            print!("{}", crate::daemon::status(addr)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Our exit code: that of the `-- CMD` when there was one (its exit code, or 128 + signal
/// number), else success.
fn exit_code_of(status: Option<std::process::ExitStatus>) -> ExitCode {
    use std::os::unix::process::ExitStatusExt as _;
    let Some(status) = status else {
        return ExitCode::SUCCESS;
    };
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        _ => ExitCode::FAILURE,
    }
}
