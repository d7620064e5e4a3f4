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
    // automerge panics on some hostile inputs; the server contains each such panic (the input is
    // refused, nothing stops), so one log line says what happened — a backtrace only when
    // RUST_BACKTRACE asks for it.
    std::panic::set_hook(Box::new(|info| {
        let backtrace = std::backtrace::Backtrace::capture();
        let what = "panic (contained where the input came from the network or the disk)";
        match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => {
                tracing::error!(panic = %info, %backtrace, "{what}")
            }
            _ => tracing::error!(panic = %info, "{what}"),
        }
    }));
    match cli.command {
        Command::Serve(settings) => serve(&settings),
        Command::User(UserCommand::Add {
            name,
            role,
            villages,
            store,
        }) => operate(&store, |s, _| {
            admin::add_user(s, &name, role, &parse_villages(&villages)?)
        }),
        Command::User(UserCommand::Set {
            name,
            role,
            villages,
            store,
        }) => operate(&store, |s, _| {
            admin::set_user(s, &name, role, &parse_villages(&villages)?)
        }),
        Command::User(UserCommand::Remove { name, store }) => {
            operate(&store, |s, _| admin::remove_user(s, &name))
        }
        Command::User(UserCommand::List { store }) => operate(&store, |s, _| admin::list_users(s)),
        Command::Device(DeviceCommand::List { user, store }) => {
            operate(&store, |s, _| admin::list_devices(s, user.as_deref()))
        }
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

fn parse_villages(villages: &[String]) -> Result<Vec<sync_core::VillageCode>, admin::AdminError> {
    villages
        .iter()
        .map(|v| sync_core::VillageCode::parse(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| admin::AdminError::Invalid(e.to_string()))
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
