//! `desa-server`: see `desa-server --help`.

use std::process::ExitCode;

/// mimalloc rather than the system allocator: a server that admits bursts of documents then
/// drops them should give the memory back; glibc's per-thread arenas kept a 100,000-report
/// server at over 1 GiB after a bulk upload (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use desa_server::admin;
use desa_server::config::{AuditCommand, Cli, Command, DeviceCommand, StoreArgs, UserCommand};
use desa_server::startup::{open_store, Application};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The server reports what it does; the operator commands only warnings (their outcome goes to
    // stdout). RUST_LOG overrides both.
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Serve(settings) => serve(&settings),
        Command::User(UserCommand::Add {
            name,
            role,
            villages,
            store,
        }) => operate(&store, |s, _| {
            let villages = villages
                .iter()
                .map(|v| sync_core::VillageCode::parse(v))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| admin::AdminError::Invalid(e.to_string()))?;
            admin::add_user(s, &name, role, &villages)
        }),
        Command::User(UserCommand::List { store }) => operate(&store, |s, _| admin::list_users(s)),
        Command::Device(DeviceCommand::Add { user, store }) => operate(&store, |s, _| {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| {
                admin::AdminError::Invalid(format!("no random source for a token: {e}"))
            })?;
            admin::add_device(s, &user, secret)
        }),
        Command::Device(DeviceCommand::Revoke { device, store }) => {
            operate(&store, |s, _| admin::revoke_device(s, &device))
        }
        Command::Audit(AuditCommand::Verify { store }) => operate(&store, |s, args| {
            let (key, anchor) = desa_server::startup::audit_key(args)
                .map_err(|e| admin::AdminError::Invalid(e.to_string()))?;
            admin::verify_audit(s, &key, Some(&anchor))
        }),
    }
}

/// Run an operator command on the database of `args`; print its outcome.
fn operate(
    args: &StoreArgs,
    command: impl FnOnce(
        &dyn desa_server::store::Store,
        &StoreArgs,
    ) -> Result<String, admin::AdminError>,
) -> ExitCode {
    let outcome = open_store(args)
        .map_err(|e| e.to_string())
        .and_then(|(store, _)| command(&store, args).map_err(|e| e.to_string()));
    match outcome {
        Ok(text) => {
            println!("{}", text.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("desa-server: {e}");
            ExitCode::FAILURE
        }
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
