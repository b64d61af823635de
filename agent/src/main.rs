use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = capagent::cli::Cli::parse();
    capagent::cmd::init_logging(cli.verbose);
    match capagent::cmd::run(cli) {
        Ok(code) => code,
        Err(err) => {
            // One line: the error and its causes.
            eprintln!("capagent: {err:#}");
            ExitCode::from(1)
        }
    }
}
