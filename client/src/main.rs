//! `desa`: parse the command line, run the command, turn its outcome into an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use desa_client::commands::{self, Io};
use desa_client::error::EXIT_FAILURE;
use desa_client::secrets::Terminal;
use desa_client::{Cli, Now};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Usage errors exit 1, not clap's 2: exit code 2 means "offline, try again later".
            return if e.use_stderr() {
                exit(EXIT_FAILURE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
    let result = commands::run(
        cli,
        &Now::current(),
        &mut Terminal,
        &mut Io {
            out: &mut stdout,
            err: &mut stderr,
        },
    );
    let _ = stdout.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(stderr, "{e}");
            exit(e.exit_code())
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
