use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = capagent::cli::Cli::parse();
    // The daemon logs what its jobs do (started, failed, retried) at the info level.
    let daemon = matches!(&cli.command, capagent::cli::Command::Daemon(a) if !a.check);
    capagent::cmd::init_logging(cli.verbose + u8::from(daemon));
    match capagent::cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes.
            eprintln!("capagent: {err:#}");
            ExitCode::from(1)
        }
    }
}
