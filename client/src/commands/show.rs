//! `desa show`: one report as the device holds it, with its conflicts and what is waiting.

use std::io::Write;

use serde_json::Value;
use sync_core::view::Conflict;
use sync_core::{ReportId, ReportKind};

use crate::error::CliError;
use crate::output;
use crate::store::Store;

/// A report as `desa show --json` prints it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ReportView {
    /// The id.
    pub id: String,
    /// The `automerge:` URL.
    pub url: String,
    /// The kind.
    pub kind: ReportKind,
    /// The merged document.
    pub document: Value,
    /// Fields with concurrent values, each with the device that wrote it and the one shown.
    pub conflicts: Vec<Conflict>,
    /// Changes of this report waiting to be sent.
    pub waiting: usize,
}

/// Read a report.
pub fn view(store: &Store, id: ReportId) -> Result<ReportView, CliError> {
    let report = store.report(id)?.ok_or(CliError::NoSuchReport(id))?;
    Ok(ReportView {
        id: id.to_string(),
        url: id.url(),
        kind: report.kind(),
        document: report.to_json(),
        conflicts: report.conflicts(),
        waiting: store.waiting_for(id)?,
    })
}

/// Print a report.
pub fn run(store: &Store, id: ReportId, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let view = view(store, id)?;
    if json {
        serde_json::to_writer(&mut *out, &view).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    let device = store.device()?;
    writeln!(out, "{} {}", view.kind, view.id)?;
    writeln!(out, "{}\n", view.url)?;
    let text = output::report_text(
        &view.document,
        view.kind.narrative_field(),
        &view.conflicts,
        view.waiting,
        device.id,
    );
    out.write_all(text.as_bytes())?;
    Ok(())
}
