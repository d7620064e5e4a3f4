//! The audit trail in SQLite: entries sealed in the same transaction as the write they record, and
//! the chain's head anchored in a file outside the data directory.

use std::sync::Mutex;

use rusqlite::{params, OptionalExtension};

use super::{poisoned, SqliteStore};
use crate::audit::{self, AuditEntry, AuditEvent, AuditKey, Head};
use crate::store::Sql;
use crate::store::{AuditStore, StoreError};

/// Where audit entries are sealed and their head anchored.
pub(super) struct AuditSink {
    pub(super) key: AuditKey,
    pub(super) anchor: Option<Anchor>,
}

/// The anchor file, kept open.
pub(super) struct Anchor {
    pub(super) path: std::path::PathBuf,
    pub(super) file: Mutex<Option<std::fs::File>>,
}

/// Append `events` to the audit trail inside `tx`, reading the chain's tail in the same
/// transaction (another process — the `desa-server user` commands — may have appended since).
pub(super) fn append_audit_tx(
    tx: &rusqlite::Transaction<'_>,
    sink: Option<&AuditSink>,
    events: &[AuditEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let sink = sink.ok_or_else(|| StoreError::Audit("no audit key configured".into()))?;
    let tail: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT seq, mac FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .sql()?;
    let tail = match tail {
        Some((seq, mac)) => Some(Head {
            seq: seq as u64,
            mac: mac.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                what: format!("audit entry {seq}"),
                detail: "MAC is not 32 bytes".into(),
            })?,
        }),
        None => None,
    };
    let entries = audit::seal_after(&sink.key, tail, events);
    for e in &entries {
        tx.prepare_cached("INSERT INTO audit (seq, record, mac) VALUES (?1, ?2, ?3)")
            .sql()?
            .execute(params![e.seq as i64, e.record, &e.mac[..]])
            .sql()?;
    }
    if let (Some(anchor), Some(last)) = (&sink.anchor, entries.last()) {
        // Written while the write lock is held, so anchors from two processes cannot cross.
        let failed =
            |e: std::io::Error| StoreError::Audit(format!("anchor {}: {e}", anchor.path.display()));
        let mut file = anchor.file.lock().map_err(poisoned)?;
        if file.is_none() {
            *file = Some(audit::anchor::open_file(&anchor.path).map_err(failed)?);
        }
        if let Some(file) = file.as_ref() {
            let head = Head {
                seq: last.seq,
                mac: last.mac,
            };
            audit::anchor::store(&head, file).map_err(failed)?;
        }
    }
    Ok(())
}

impl AuditStore for SqliteStore {
    fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.write(|tx| append_audit_tx(tx, self.audit.as_ref(), events))
    }

    fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, record, mac FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )
                .sql()?;
            let raws = stmt
                .query_map(params![after as i64, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })
                .sql()?
                .collect::<Result<Vec<_>, _>>()
                .sql()?;
            raws.into_iter()
                .map(|(seq, record, mac)| {
                    // A damaged MAC is reported by verification, not as a read error.
                    let mac = mac.as_slice().try_into().unwrap_or([0; 32]);
                    Ok(AuditEntry {
                        seq: seq as u64,
                        record,
                        mac,
                    })
                })
                .collect()
        })
    }
}
