//! The command line, as clap parses it. Values that have a domain type are parsed into it here
//! ([`ReportId`], [`ReportKind`], [`Assignment`], [`FieldPath`], [`DeviceToken`]), so a malformed
//! one is a usage error before any command runs. Free text (titles, notes, narratives, names) and
//! the server's address and the village code stay strings: the report schema, the rules and the
//! commands that use them check them.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use sync_core::{DeviceToken, FieldPath, ReportId, ReportKind};

use crate::args::Assignment;
use crate::error::CliError;
use crate::secrets::{self, SecretError, Secrets};

/// desa: the field volunteer's tool. Works offline; `desa sync` exchanges with the server when
/// there is a connection.
#[derive(Debug, Parser)]
#[command(name = "desa", version)]
pub struct Cli {
    /// The store file [default: $HOME/.desa/store.db].
    #[arg(long, global = true, env = "DESA_STORE", value_name = "PATH")]
    pub store: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create this device's encrypted store. The device token comes from --token-file, else
    /// DESA_TOKEN, else a prompt; the store passphrase from DESA_PASSPHRASE, else a prompt (twice).
    Init(InitArgs),
    /// The device token the office issued: `desa token set` installs a new one.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Create a report (incident, outreach, foreigner_report); prints its id on the last line.
    New(NewArgs),
    /// Change a report: all the given edits become one change, applied in this order: --set,
    /// --remove, --add, --note, --append-narrative.
    Edit(EditArgs),
    /// Show a report: its fields, narrative, conflicts, and what is waiting to be sent.
    Show(ShowArgs),
    /// List every report on this device.
    List(JsonFlag),
    /// Send waiting changes to the server and receive what is new.
    Sync,
    /// What is waiting, when the last sync was, and every refusal.
    Status(JsonFlag),
}

/// `desa init`. The token is deliberately not an option value ([`TokenSource`]).
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The server's base URL, e.g. https://desa.example.org or http://192.168.1.10:8080.
    #[arg(long, value_name = "URL")]
    pub server: String,
    /// The village this device reports in (10-digit code, e.g. 6302010001).
    #[arg(long, value_name = "CODE")]
    pub village: String,
    /// Your name for this device: the author of its notes (at most 64 characters).
    #[arg(long)]
    pub name: String,
    /// Where the device token comes from.
    #[command(flatten)]
    pub token: TokenSource,
    /// The office's own CA certificate (PEM), for an https:// server whose certificate no public
    /// CA signed. Only this CA is then trusted for the server.
    #[arg(long, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
}

/// Where the device token comes from, the same for `init` and `token set`: `--token-file`, else
/// `DESA_TOKEN`, else a prompt that does not echo ([`crate::secrets::token`]). Deliberately never
/// an option value: the shell history and `ps` would keep it.
#[derive(Debug, Clone, Default, Args)]
pub struct TokenSource {
    /// A file holding the device token that `desa-server device add` showed (otherwise
    /// DESA_TOKEN, otherwise you are asked). Delete the file afterwards: the token is kept in the
    /// encrypted store.
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

/// `desa token …`.
#[derive(Debug, Clone, Subcommand)]
pub enum TokenCommand {
    /// Install a new device token from the office in this store: for a store an older desa made
    /// (it has none), or when the office revoked this device's token and issued a new one. Every
    /// report and waiting change is kept and sent with the new token at the next sync.
    Set(TokenSource),
}

/// Field edits shared by `new` and `edit`.
#[derive(Debug, Clone, Default, Args)]
pub struct FieldEdits {
    /// Set a field: `title=Agent at harbour`, `location.lat=-3.25`. The value is JSON if it parses
    /// as JSON, text otherwise (quote text that looks like JSON: `title="123"`).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<Assignment>,
    /// Append an item to a list: `people={"role":"witness","name":"Siti"}`.
    #[arg(long = "add", value_name = "LIST=VALUE")]
    pub add: Vec<Assignment>,
    /// Add a note (signed with this device's name and the time).
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

/// `desa new`.
#[derive(Debug, Clone, Args)]
pub struct NewArgs {
    /// incident, outreach or foreigner_report.
    #[arg(value_name = "KIND")]
    pub kind: ReportKind,
    /// The fields.
    #[command(flatten)]
    pub fields: FieldEdits,
    /// The first paragraph of the narrative.
    #[arg(long, value_name = "TEXT")]
    pub narrative: Option<String>,
}

/// `desa edit`.
#[derive(Debug, Clone, Args)]
pub struct EditArgs {
    /// The report: its id or its automerge:ID URL.
    #[arg(value_name = "ID")]
    pub id: ReportId,
    /// The fields.
    #[command(flatten)]
    pub fields: FieldEdits,
    /// Remove an optional field or a list item: `risk`, `people.1`.
    #[arg(long, value_name = "PATH")]
    pub remove: Vec<FieldPath>,
    /// Append a paragraph to the narrative.
    #[arg(long, value_name = "TEXT")]
    pub append_narrative: Option<String>,
}

/// `desa show`.
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The report: its id or its automerge:ID URL.
    #[arg(value_name = "ID")]
    pub id: ReportId,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--json` alone.
#[derive(Debug, Clone, Args)]
pub struct JsonFlag {
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    /// The store path: `--store`, else `DESA_STORE` (both handled by clap), else
    /// `$HOME/.desa/store.db`.
    pub fn store_path(&self) -> Result<PathBuf, CliError> {
        if let Some(path) = &self.store {
            return Ok(path.clone());
        }
        std::env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .map(|home| PathBuf::from(home).join(".desa").join("store.db"))
            .ok_or(CliError::NoStorePath)
    }
}

impl TokenSource {
    /// The token, from the file, else `DESA_TOKEN`, else the terminal. A malformed token is an
    /// error that names where it came from and never repeats it.
    pub fn read(&self, sources: &mut dyn Secrets) -> Result<DeviceToken, SecretError> {
        secrets::token(self.token_file.as_deref(), sources)
    }

    /// Once the token is in the encrypted store: ask the volunteer to delete the file it came
    /// from, which holds it in clear.
    pub fn remind_to_delete(&self, err: &mut dyn Write) -> std::io::Result<()> {
        match &self.token_file {
            Some(file) => writeln!(
                err,
                "the device token is now kept in the encrypted store: delete {}",
                file.display()
            ),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use serde_json::json;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("desa").chain(args.iter().copied()))
    }

    #[test]
    fn ids_are_accepted_in_both_forms() {
        let id = ReportId::from_random([3; 16]);
        for text in [id.to_string(), id.url()] {
            let cli = parse(&["show", &text]).unwrap();
            let Command::Show(show) = cli.command else {
                panic!("not show")
            };
            assert_eq!(show.id, id);
        }
        let err = parse(&["show", "not-an-id"]).unwrap_err();
        assert!(err.to_string().contains("not a report id"), "{err}");
    }

    #[test]
    fn new_collects_typed_edits() {
        let cli = parse(&[
            "--store",
            "/tmp/x.db",
            "new",
            "incident",
            "--set",
            "title=Agent at harbour",
            "--set",
            "location.lat=-3.25",
            "--add",
            r#"people={"role":"witness"}"#,
            "--narrative",
            "Seen at dawn.",
        ])
        .unwrap();
        assert_eq!(cli.store_path().unwrap(), PathBuf::from("/tmp/x.db"));
        let Command::New(new) = cli.command else {
            panic!("not new")
        };
        assert_eq!(new.kind, ReportKind::Incident);
        assert_eq!(new.fields.set[0].value, json!("Agent at harbour"));
        assert_eq!(new.fields.set[1].value, json!(-3.25));
        assert_eq!(new.fields.add[0].value, json!({"role": "witness"}));
        assert_eq!(new.narrative.as_deref(), Some("Seen at dawn."));
    }

    #[test]
    fn token_set_takes_a_file_never_the_token_itself() {
        let cli = parse(&["token", "set", "--token-file", "ani.token"]).unwrap();
        let Command::Token(TokenCommand::Set(source)) = cli.command else {
            panic!("not token set")
        };
        assert_eq!(source.token_file, Some(PathBuf::from("ani.token")));
        assert!(parse(&["token", "set", "desa_abc"]).is_err());
        assert!(parse(&["token", "set", "--token", "desa_abc"]).is_err());
        assert!(parse(&["token"]).is_err());
    }

    #[test]
    fn bad_values_are_usage_errors() {
        let err = parse(&["new", "incident", "--set", "title"]).unwrap_err();
        assert!(err.to_string().contains("PATH=VALUE"), "{err}");
        let err = parse(&["new", "report"]).unwrap_err();
        assert!(err.to_string().contains("unknown report kind"), "{err}");
    }
}
