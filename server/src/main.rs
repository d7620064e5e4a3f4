//! `desa-server`: see `desa-server --help`.

use std::process::ExitCode;

/// mimalloc rather than the system allocator: a server that admits bursts of documents then
/// drops them should give the memory back; glibc's per-thread arenas kept a 100,000-report
/// server at over 1 GiB after a bulk upload (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use desa_server::config::{Cli, Command};
use desa_server::startup::Application;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(settings) => serve(&settings),
    }
}

fn serve(settings: &desa_server::config::Settings) -> ExitCode {
    let result = actix_web::rt::System::new().block_on(async {
        let app = Application::build(settings).map_err(|e| e.to_string())?;
        // One line on stdout once the port is bound, for scripts and tests that start us on port 0.
        println!(
            "listening on {}://{}:{}",
            app.scheme(),
            settings.bind.ip(),
            app.port()
        );
        app.run_until_stopped().await.map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("desa-server: {e}");
            ExitCode::FAILURE
        }
    }
}
