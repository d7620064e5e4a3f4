//! `desa status`: who this device is, what is waiting, when it last synced, and every refusal.

use std::io::Write;

use serde::Serialize;
use sync_core::protocol::Scope;

use crate::commands::report::plural;
use crate::error::CliError;
use crate::output::village_label;
use crate::store::Store;

/// Everything `desa status` shows (its `--json` form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusView {
    /// Who this device is.
    pub device: DeviceView,
    /// Device clock of the last committed sync round, if any.
    pub last_sync: Option<String>,
    /// Where the device stands in each village it follows.
    pub positions: Vec<PositionView>,
    /// Changes waiting to be sent, in all.
    pub waiting: usize,
    /// Changes waiting per report, in the order they will be sent.
    pub waiting_reports: Vec<WaitingReport>,
    /// Every refusal recorded, oldest first.
    pub refusals: Vec<RefusalView>,
}

/// The device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    /// The device id the server knows this store as: its token's device
    /// ([`Store::sync_device`]), the one the office looks up.
    pub id: String,
    /// The id this store's edits are written under (their automerge actor), given at `init`. The
    /// same as `id` unless `desa token set` installed a token for another device.
    pub actor: String,
    /// Device name.
    pub name: String,
    /// Village code.
    pub village: String,
    /// Village name.
    pub village_name: String,
    /// Server base URL.
    pub server: String,
    /// Whether the store holds the device token (the token itself is never shown).
    pub has_token: bool,
}

/// A position in one village's feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PositionView {
    /// Village code.
    pub village: String,
    /// Every update up to this server sequence number has been received.
    pub since: u64,
    /// A catch-up is under way (more pages to fetch).
    pub paging: bool,
}

/// Changes of one report waiting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingReport {
    /// The report id.
    pub report: String,
    /// How many changes.
    pub waiting: usize,
}

/// A refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefusalView {
    /// The report id.
    pub report: String,
    /// The refused change (hex hash).
    pub change: String,
    /// The refusal code.
    pub code: String,
    /// The server's sentence.
    pub detail: String,
    /// Device clock when it was recorded.
    pub recorded_at: String,
}

/// Gather the status.
pub fn gather(store: &Store) -> Result<StatusView, CliError> {
    let device = store.device()?;
    let waiting = store.waiting()?;
    Ok(StatusView {
        device: DeviceView {
            id: store.sync_device()?.to_string(),
            actor: device.id.to_string(),
            name: device.name,
            village: device.village.to_string(),
            village_name: device.village.village().name.clone(),
            server: device.server,
            has_token: store.token()?.is_some(),
        },
        last_sync: store.last_sync()?,
        positions: store
            .sync_state()?
            .positions()
            .iter()
            .map(|(scope, position)| match scope {
                Scope::Village(code) => PositionView {
                    village: format!("{code:010}"),
                    since: position.since,
                    paging: position.after.is_some(),
                },
            })
            .collect(),
        waiting: waiting.iter().map(|(_, n)| n).sum(),
        waiting_reports: waiting
            .into_iter()
            .map(|(id, waiting)| WaitingReport {
                report: id.to_string(),
                waiting,
            })
            .collect(),
        refusals: store
            .refusals()?
            .into_iter()
            .map(|r| RefusalView {
                report: r.report.to_string(),
                change: r.change.to_string(),
                code: r.code,
                detail: r.detail,
                recorded_at: r.recorded_at,
            })
            .collect(),
    })
}

/// Print the status.
pub fn run(store: &Store, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let status = gather(store)?;
    if json {
        serde_json::to_writer(&mut *out, &status).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    let d = &status.device;
    writeln!(out, "device:    {}", d.name)?;
    writeln!(out, "device id: {}", d.id)?;
    if d.actor != d.id {
        writeln!(
            out,
            "edits as:  {} (this store's own id, kept when its token was replaced)",
            d.actor
        )?;
    }
    writeln!(out, "village:   {}", village_label(&d.village))?;
    writeln!(out, "server:    {}", d.server)?;
    let token = if d.has_token {
        "kept in the store (never shown)"
    } else {
        "none: ask the office for a device token, then run desa token set"
    };
    writeln!(out, "token:     {token}")?;
    writeln!(out, "store:     {} (encrypted)", store.path().display())?;
    let last = status.last_sync.as_deref().unwrap_or("never");
    writeln!(out, "last sync: {last}")?;

    let total = status.waiting;
    writeln!(out, "\n{total} change{} waiting to be sent", plural(total))?;
    for row in &status.waiting_reports {
        writeln!(out, "  {}  {}", row.report, row.waiting)?;
    }

    if status.refusals.is_empty() {
        writeln!(out, "\nno refusals")?;
        return Ok(());
    }
    writeln!(out, "\nRefused by the server ({}):", status.refusals.len())?;
    for r in &status.refusals {
        writeln!(
            out,
            "  {}  report {}  change {}\n    {}: {}",
            r.recorded_at,
            r.report,
            r.change.get(..12).unwrap_or(&r.change),
            r.code,
            r.detail,
        )?;
    }
    Ok(())
}
