//! The `portcullis` binary: flags, logs, then one subcommand. Exit codes:
//! 0 ok, 1 failure, 2 usage or configuration error.

use std::process::ExitCode;

use clap::Parser as _;
use portcullis::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(message) = portcullis::init_logs(cli.log_format, cli.log_filter()) {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Serve(command) => command.execute(),
        Command::Certs(command) => command.execute(),
        Command::Eval(command) => command.execute(),
        Command::Test(command) => command.execute(),
        Command::New(command) => command.execute(),
        Command::Push(command) => command.execute(),
        Command::Pull(command) => command.execute(),
        Command::Sign(command) => command.execute(),
        Command::Keygen(command) => command.execute(),
        Command::Promote(command) => command.execute(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {:#}", err.error);
            ExitCode::from(err.code)
        }
    }
}
