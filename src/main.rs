use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    match distillery::cli::Cli::try_parse() {
        Ok(cli) => distillery::cli::main_with(cli),
        Err(e) => {
            // --help and --version are successes; a bad flag is invalid input (exit 1, not clap's 2).
            let code = if e.use_stderr() { 1 } else { 0 };
            let _ = e.print();
            ExitCode::from(code)
        }
    }
}
