//! `desa list`: every report on the device, oldest first.

use std::io::Write;

use crate::error::CliError;
use crate::store::{ReportSummary, Store};

/// Print the reports.
pub fn run(store: &Store, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let reports = store.summaries()?;
    if json {
        let rows: Vec<serde_json::Value> = reports.iter().map(json_row).collect();
        serde_json::to_writer(&mut *out, &rows).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    if reports.is_empty() {
        writeln!(out, "no reports on this device yet")?;
        return Ok(());
    }
    let id_width = reports
        .iter()
        .map(|r| r.id.to_string().len())
        .max()
        .unwrap_or(0);
    let dash = || "-".to_owned();
    writeln!(
        out,
        "{:id_width$}  {:16}  {:12}  {:7}  TITLE",
        "ID", "KIND", "STATUS", "WAITING"
    )?;
    for r in &reports {
        writeln!(
            out,
            "{:id_width$}  {:16}  {:12}  {:7}  {}",
            r.id.to_string(),
            r.kind.clone().unwrap_or_else(dash),
            r.status.clone().unwrap_or_else(dash),
            r.waiting,
            r.title.clone().unwrap_or_else(dash),
        )?;
    }
    Ok(())
}

fn json_row(r: &ReportSummary) -> serde_json::Value {
    serde_json::json!({
        "id": r.id.to_string(),
        "url": r.id.url(),
        "kind": r.kind,
        "title": r.title,
        "status": r.status,
        "created_at": r.created_at,
        "waiting": r.waiting,
    })
}
