//! A report's state in memory, as the server works on it: the document and what a store keeps
//! beside it.

use automerge::{Automerge, Change};

use super::{EngineError, Receipt, Recent};
use crate::store::{ReportRow, StoredDoc};
use crate::{DeviceId, ReportId, ReportKind, VillageCode};

/// A report's working state.
#[derive(Clone, Default)]
pub struct Working {
    /// The merged document (accepted changes only).
    pub doc: Automerge,
    /// The changes of the last few commits, to answer devices that are nearly up to date.
    pub recent: Recent,
    /// What each commit of the report left its heads at.
    pub receipts: Vec<Receipt>,
    /// Changes stored since the last snapshot.
    pub tail_len: usize,
    /// Changes waiting for their dependencies.
    pub held: Vec<HeldChange>,
    /// Whether the report exists (has been committed once).
    pub exists: bool,
}

/// A change held for its dependencies, with the device that uploaded it.
#[derive(Clone, Debug)]
pub struct HeldChange {
    /// The change.
    pub change: Change,
    /// The device that uploaded it: its access judges the change when it can be applied.
    pub device: DeviceId,
    /// When it was uploaded (server clock, unix ms).
    pub since: i64,
}

/// Load stored bytes into a working state. Stored bytes are checked like network bytes: a damaged
/// row is an error, never a panic. A held change that no longer parses (it did when it was held)
/// is left out rather than making the whole report unwritable: its device still has it and sends
/// it again.
pub fn load_working(id: &ReportId, stored: &StoredDoc) -> Result<Working, EngineError> {
    let corrupt = |e: String| EngineError::Corrupt(*id, e);
    let mut doc = if stored.snapshot.is_empty() {
        Automerge::new()
    } else {
        crate::guard::load(&stored.snapshot).map_err(|e| corrupt(e.to_string()))?
    };
    let tail = stored
        .tail
        .iter()
        .map(|b| crate::guard::parse_change(b.clone()).map_err(|e| corrupt(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let tail_len = tail.len();
    crate::guard::apply(&mut doc, tail).map_err(|e| corrupt(e.to_string()))?;
    let held = stored
        .held
        .iter()
        .filter_map(|row| {
            let change = crate::guard::parse_change(row.bytes.clone()).ok()?;
            Some(HeldChange {
                change,
                device: row.device,
                since: row.since,
            })
        })
        .collect();
    Ok(Working {
        recent: Recent::new(stored.last_seq),
        exists: stored.last_seq > 0,
        doc,
        receipts: stored.receipts.clone(),
        tail_len,
        held,
    })
}

/// The indexed row of a report from its merged JSON (already validated against its schema).
pub fn materialized_row(
    id: ReportId,
    state: &serde_json::Value,
    seq: u64,
    now: i64,
) -> Result<ReportRow, EngineError> {
    let corrupt =
        |what: &str| EngineError::Corrupt(id, format!("merged state has no valid {what}"));
    let text = |key: &str| state.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let kind: ReportKind = text("kind")
        .and_then(|k| k.parse().ok())
        .ok_or_else(|| corrupt("kind"))?;
    let village = text("village")
        .and_then(|v| VillageCode::parse(&v).ok())
        .ok_or_else(|| corrupt("village"))?;
    Ok(ReportRow {
        id,
        kind,
        village,
        status: text("status"),
        title: text("title"),
        created_at: text("created_at").unwrap_or_default(),
        updated_at: now,
        last_seq: seq,
        json: state.to_string(),
    })
}
