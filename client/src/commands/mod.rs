//! One module per command. Each does its work through the [`Store`] and returns plain data; the
//! `run` functions print it. Library users (and tests) call the data functions directly.

pub mod init;
pub mod list;
pub mod report;
pub mod show;
pub mod status;
pub mod sync;
pub mod token;

use std::io::Write;
use std::path::Path;

use crate::cli::{Cli, Command, TokenCommand};
use crate::clock::Now;
use crate::error::CliError;
use crate::secrets::{self, Secrets};
use crate::store::crypt::{self, Format};
use crate::store::Store;
use crate::transport::HttpTransport;

/// Where a command prints: results on `out`, progress and diagnostics on `err`.
pub struct Io<'a> {
    /// Results (stdout).
    pub out: &'a mut dyn Write,
    /// Progress (stderr).
    pub err: &'a mut dyn Write,
}

/// Run one parsed command line. Secrets (the token at `init` and `token set`, the store
/// passphrase) come from `sources`.
pub fn run(
    cli: Cli,
    now: &Now,
    sources: &mut dyn Secrets,
    io: &mut Io<'_>,
) -> Result<(), CliError> {
    let path = cli.store_path()?;
    match cli.command {
        Command::Init(args) => init::run(&path, &args, now, sources, io),
        // Reads the token before it opens the store, so that a malformed one changes nothing.
        Command::Token(TokenCommand::Set(source)) => token::run_set(&path, &source, sources, io),
        Command::New(args) => report::run_new(&mut open(&path, sources, io)?, &args, now, io.out),
        Command::Edit(args) => report::run_edit(&mut open(&path, sources, io)?, &args, now, io.out),
        Command::Show(args) => show::run(&open(&path, sources, io)?, args.id, args.json, io.out),
        Command::List(flag) => list::run(&open(&path, sources, io)?, flag.json, io.out),
        Command::Status(flag) => status::run(&open(&path, sources, io)?, flag.json, io.out),
        Command::Sync => {
            let mut store = open(&path, sources, io)?;
            let waiting: usize = store.waiting()?.iter().map(|(_, n)| n).sum();
            let token = store.token()?.ok_or(CliError::NoToken { waiting })?;
            let device = store.device()?;
            let ca = store.server_ca_pem()?;
            let transport = HttpTransport::new(&device.server, &token, ca.as_deref())
                .map_err(|e| sync::transport_error(e, waiting))?;
            sync::run(&mut store, &transport, now, io)
        }
    }
}

/// Open the store at `path`, asking for its passphrase only once the file is known to be there.
/// A store written before encryption is encrypted now, with a new passphrase (asked twice), and
/// the volunteer is told once.
pub fn open(path: &Path, sources: &mut dyn Secrets, io: &mut Io<'_>) -> Result<Store, CliError> {
    let passphrase = match crypt::format(path)? {
        Format::Encrypted { .. } => secrets::passphrase(sources, path)?,
        Format::Plaintext => secrets::new_passphrase(sources)?,
    };
    let store = Store::open(path, &passphrase)?;
    if store.encrypted_now() {
        writeln!(
            io.err,
            "the store at {} was not encrypted (an older desa made it): it is now, with your \
             passphrase. Every report and waiting change was kept.",
            path.display()
        )?;
    }
    Ok(store)
}
