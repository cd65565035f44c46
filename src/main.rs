use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    distillery::cli::main_with(distillery::cli::Cli::parse())
}
