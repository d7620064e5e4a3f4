//! One module per command. Each does its work through the [`Store`] and returns plain data; the
//! `run` functions print it. Library users (and tests) call the data functions directly.

pub mod init;
pub mod list;
pub mod report;
pub mod show;
pub mod status;
pub mod sync;

use std::io::Write;

use crate::cli::{Cli, Command};
use crate::clock::Now;
use crate::error::CliError;
use crate::store::Store;
use crate::transport::HttpTransport;

/// Where a command prints: results on `out`, progress and diagnostics on `err`.
pub struct Io<'a> {
    /// Results (stdout).
    pub out: &'a mut dyn Write,
    /// Progress (stderr).
    pub err: &'a mut dyn Write,
}

/// Run one parsed command line.
pub fn run(cli: Cli, now: &Now, io: &mut Io<'_>) -> Result<(), CliError> {
    let path = cli.store_path()?;
    match cli.command {
        Command::Init(args) => init::run(&path, &args, now, io.out),
        Command::New(args) => report::run_new(&mut Store::open(&path)?, &args, now, io.out),
        Command::Edit(args) => report::run_edit(&mut Store::open(&path)?, &args, now, io.out),
        Command::Show(args) => show::run(&Store::open(&path)?, args.id, args.json, io.out),
        Command::List(flag) => list::run(&Store::open(&path)?, flag.json, io.out),
        Command::Status(flag) => status::run(&Store::open(&path)?, flag.json, io.out),
        Command::Sync => {
            let mut store = Store::open(&path)?;
            let transport = HttpTransport::new(&store.device()?.server);
            sync::run(&mut store, &transport, now, io)
        }
    }
}
