//! Taking a sync [`Outcome`] into a device store: acknowledgements, held changes, refusals and
//! rebuilds, incoming deltas — the same steps for every device shell (the `desa` CLI's SQLite store,
//! the in-memory [`crate::sim::MemoryDevice`]).
//!
//! The store is a narrow, fallible trait. The shell wraps [`absorb`] in one transaction and stores
//! the new positions in the same transaction, so a crash leaves either the old state (the sync is
//! simply repeated) or the new one.

use std::collections::{HashMap, HashSet};

use automerge::{Automerge, Change, ChangeHash, ReadDoc};

use super::device::{apply_delta, ApplyError, Outcome};
use super::rebuild::rebuild;
use crate::report::Writer;
use crate::rules::{Refusal, RefusalCode};
use crate::ReportId;

/// A refusal as the device keeps it for the volunteer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRefusal {
    /// The report.
    pub report: ReportId,
    /// The refused (or not re-applied) change.
    pub change: ChangeHash,
    /// Why.
    pub refusal: Refusal,
}

/// What a device store must offer the sync steps. Every method may fail; errors are returned.
pub trait DeviceStore {
    /// The store's error.
    type Error: std::fmt::Display;

    /// The device's copy of a report, if it has one.
    fn load(&mut self, id: ReportId) -> Result<Option<Automerge>, Self::Error>;
    /// Replace the device's copy of a report.
    fn store(&mut self, id: ReportId, doc: &Automerge) -> Result<(), Self::Error>;
    /// Forget a report (its creation was refused).
    fn forget(&mut self, id: ReportId) -> Result<(), Self::Error>;
    /// The report's changes not yet acknowledged, in the order they were made.
    fn unacknowledged(&mut self, id: ReportId) -> Result<Vec<Change>, Self::Error>;
    /// Drop acknowledged changes from the outbox.
    fn acknowledge(&mut self, changes: &[(ReportId, ChangeHash)]) -> Result<(), Self::Error>;
    /// Put a change the server is missing at the front of the report's outbox (no-op if queued).
    fn requeue(&mut self, id: ReportId, change: Change) -> Result<(), Self::Error>;
    /// Replace the report's outbox.
    fn replace_outbox(&mut self, id: ReportId, changes: Vec<Change>) -> Result<(), Self::Error>;
    /// Move the report to its next actor generation and return the writer to use under it.
    fn next_writer(&mut self, id: ReportId) -> Result<Writer, Self::Error>;
    /// Keep a refusal for the volunteer.
    fn record_refusal(&mut self, refusal: RecordedRefusal) -> Result<(), Self::Error>;
}

/// Why absorbing an outcome failed. Nothing is half-applied if the shell wraps [`absorb`] in a
/// transaction.
#[derive(Debug, thiserror::Error)]
pub enum AbsorbError<E: std::fmt::Display> {
    /// The store failed.
    #[error("device store: {0}")]
    Store(E),
    /// A delta from the server does not apply.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// The server's state of a refused report does not load.
    #[error("rebuilding {report}: {message}")]
    Rebuild {
        /// The report.
        report: ReportId,
        /// Why.
        message: String,
    },
}

/// What absorbing changed, for the volunteer's progress line.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Absorbed {
    /// Changes acknowledged.
    pub acknowledged: usize,
    /// Changes refused (directly).
    pub refused: usize,
    /// Changes held by the server.
    pub held: usize,
    /// Reports received or updated.
    pub received: usize,
    /// Local edits re-applied after a refusal (now waiting to be sent).
    pub reapplied: usize,
}

/// Apply a sync outcome to a device store.
pub fn absorb<S: DeviceStore>(
    store: &mut S,
    outcome: Outcome,
) -> Result<Absorbed, AbsorbError<S::Error>> {
    let mut summary = Absorbed {
        acknowledged: outcome.acknowledged.len(),
        held: outcome.held.len(),
        received: outcome.incoming.len(),
        ..Absorbed::default()
    };
    store
        .acknowledge(&outcome.acknowledged)
        .map_err(AbsorbError::Store)?;

    for (report, _, missing) in &outcome.held {
        let Some(doc) = store.load(*report).map_err(AbsorbError::Store)? else {
            continue;
        };
        for hash in missing {
            if let Some(change) = doc.get_change_by_hash(hash) {
                store.requeue(*report, change).map_err(AbsorbError::Store)?;
            }
        }
    }

    // Changes refused for a reason of their own are dropped; those refused only because they build
    // on one are re-applied by the rebuild below.
    let mut direct: HashMap<ReportId, HashSet<ChangeHash>> = HashMap::new();
    let mut all_refused: HashMap<ReportId, HashSet<ChangeHash>> = HashMap::new();
    for (report, hash, refusal) in outcome.refused {
        all_refused.entry(report).or_default().insert(hash);
        if refusal.code != RefusalCode::DependsOnRefused {
            summary.refused += 1;
            direct.entry(report).or_default().insert(hash);
            store
                .record_refusal(RecordedRefusal {
                    report,
                    change: hash,
                    refusal,
                })
                .map_err(AbsorbError::Store)?;
        }
    }

    // A report the server sent nothing back for (one it will not show this device: another
    // village's, or one it does not have): nothing can be rebuilt, so the refused changes, and
    // what builds on them, leave the outbox; the local copy stays as it is.
    let rebuilt: HashSet<ReportId> = outcome.rebuilds.iter().map(|(r, _)| *r).collect();
    for (report, refused) in &all_refused {
        if rebuilt.contains(report) {
            continue;
        }
        let waiting = store.unacknowledged(*report).map_err(AbsorbError::Store)?;
        let mut gone = refused.clone();
        let kept: Vec<Change> = waiting
            .into_iter()
            .filter(|c| {
                let out = gone.contains(&c.hash()) || c.deps().iter().any(|d| gone.contains(d));
                if out {
                    gone.insert(c.hash());
                }
                !out
            })
            .collect();
        store
            .replace_outbox(*report, kept)
            .map_err(AbsorbError::Store)?;
    }

    for (report, snapshot) in &outcome.rebuilds {
        let local = store
            .load(*report)
            .map_err(AbsorbError::Store)?
            .unwrap_or_default();
        let unacked = store.unacknowledged(*report).map_err(AbsorbError::Store)?;
        let writer = store.next_writer(*report).map_err(AbsorbError::Store)?;
        let refused = direct.remove(report).unwrap_or_default();
        let rebuilt =
            rebuild(*report, &local, snapshot, &unacked, &refused, &writer).map_err(|message| {
                AbsorbError::Rebuild {
                    report: *report,
                    message,
                }
            })?;
        for (change, refusal) in rebuilt.dropped {
            store
                .record_refusal(RecordedRefusal {
                    report: *report,
                    change,
                    refusal,
                })
                .map_err(AbsorbError::Store)?;
        }
        match &rebuilt.report {
            Some(r) => store.store(*report, r.doc()).map_err(AbsorbError::Store)?,
            None => store.forget(*report).map_err(AbsorbError::Store)?,
        }
        summary.reapplied += rebuilt.reapplied.len();
        store
            .replace_outbox(*report, rebuilt.reapplied)
            .map_err(AbsorbError::Store)?;
    }

    for item in &outcome.incoming {
        let local = store.load(item.report).map_err(AbsorbError::Store)?;
        let doc = apply_delta(local, item)?;
        store.store(item.report, &doc).map_err(AbsorbError::Store)?;
    }
    Ok(summary)
}
