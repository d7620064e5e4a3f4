//! Reading and writing single rows, shared by [`super::Store`] (reads) and [`super::StoreTx`]
//! (writes). Every value read from disk is checked; a damaged row is a [`StoreError::Corrupt`],
//! never a panic.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use sync_core::automerge::{Automerge, Change, ChangeHash};
use sync_core::protocol::device::DeviceSync;
use sync_core::ReportId;

use super::StoreError;

/// A report id read from a row.
pub fn report_id(bytes: &[u8]) -> Result<ReportId, StoreError> {
    let raw: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("report id of {} bytes", bytes.len())))?;
    Ok(ReportId::from_bytes(raw))
}

/// A change hash read from a row.
pub fn change_hash(bytes: &[u8]) -> Result<ChangeHash, StoreError> {
    let raw: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("change hash of {} bytes", bytes.len())))?;
    Ok(ChangeHash(raw))
}

/// A stored change.
pub fn change(report: ReportId, bytes: Vec<u8>) -> Result<Change, StoreError> {
    sync_core::guard::parse_change(bytes)
        .map_err(|e| StoreError::Corrupt(format!("a waiting change of report {report}: {e}")))
}

/// A text setting (`None` if absent).
pub fn meta_text(conn: &Connection, key: &str) -> Result<Option<String>, StoreError> {
    let value: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?;
    value
        .map(|v| {
            String::from_utf8(v)
                .map_err(|_| StoreError::Corrupt(format!("setting {key} is not text")))
        })
        .transpose()
}

/// A text setting that every store has.
pub fn required_text(conn: &Connection, key: &str) -> Result<String, StoreError> {
    meta_text(conn, key)?.ok_or_else(|| StoreError::Corrupt(format!("setting {key} is missing")))
}

/// Write a setting.
pub fn put_meta(conn: &Connection, key: &str, value: &[u8]) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

/// The stored sync positions.
pub fn sync_state(conn: &Connection) -> Result<DeviceSync, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'sync_state'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    let bytes = bytes.ok_or_else(|| StoreError::Corrupt("sync state is missing".into()))?;
    postcard::from_bytes(&bytes)
        .map_err(|e| StoreError::Corrupt(format!("sync state does not decode: {e}")))
}

/// Store the sync positions.
pub fn put_sync_state(conn: &Connection, sync: &DeviceSync) -> Result<(), StoreError> {
    let bytes = postcard::to_stdvec(sync)
        .map_err(|e| StoreError::Setup(format!("encoding the sync state: {e}")))?;
    put_meta(conn, "sync_state", &bytes)
}

/// The device's copy of a report.
pub fn load_doc(conn: &Connection, id: ReportId) -> Result<Option<Automerge>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .query_row(
            "SELECT doc FROM reports WHERE id = ?1",
            [id.as_bytes().as_slice()],
            |row| row.get(0),
        )
        .optional()?;
    bytes
        .map(|b| {
            sync_core::guard::load(&b)
                .map_err(|e| StoreError::Corrupt(format!("report {id} does not load: {e}")))
        })
        .transpose()
}

/// Replace the device's copy of a report, and the list columns derived from it.
pub fn put_doc(conn: &Connection, id: ReportId, doc: &Automerge) -> Result<(), StoreError> {
    let json = sync_core::view::materialize(doc);
    let text = |key: &str| json.get(key).and_then(Value::as_str).map(str::to_owned);
    conn.execute(
        "INSERT INTO reports (id, doc, kind, title, status, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, kind = excluded.kind,
             title = excluded.title, status = excluded.status, created_at = excluded.created_at",
        params![
            id.as_bytes().as_slice(),
            doc.save(),
            text("kind"),
            text("title"),
            text("status"),
            text("created_at"),
        ],
    )?;
    Ok(())
}

/// The actor generation the device writes to a report under.
pub fn generation(conn: &Connection, id: ReportId) -> Result<u32, StoreError> {
    let stored: Option<i64> = conn
        .query_row(
            "SELECT generation FROM generations WHERE report = ?1",
            [id.as_bytes().as_slice()],
            |row| row.get(0),
        )
        .optional()?;
    u32::try_from(stored.unwrap_or(0))
        .map_err(|_| StoreError::Corrupt(format!("generation of report {id} out of range")))
}

/// Record a new generation for a report.
pub fn put_generation(conn: &Connection, id: ReportId, generation: u32) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO generations (report, generation) VALUES (?1, ?2)
         ON CONFLICT (report) DO UPDATE SET generation = excluded.generation",
        params![id.as_bytes().as_slice(), generation],
    )?;
    Ok(())
}

/// One report's waiting changes, oldest first.
pub fn outbox_of(conn: &Connection, id: ReportId) -> Result<Vec<Change>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT change FROM outbox WHERE report = ?1 ORDER BY n")?;
    let rows = stmt.query_map([id.as_bytes().as_slice()], |row| row.get::<_, Vec<u8>>(0))?;
    rows.map(|bytes| change(id, bytes?)).collect()
}

/// Every waiting change, grouped per report: reports in the order of their oldest waiting
/// change, each report's changes in the order they were made.
pub fn outbox(conn: &Connection) -> Result<Vec<(ReportId, Vec<Change>)>, StoreError> {
    let mut stmt = conn.prepare_cached("SELECT report, change FROM outbox ORDER BY n")?;
    let mut rows = stmt.query([])?;
    let mut grouped: Vec<(ReportId, Vec<Change>)> = Vec::new();
    while let Some(row) = rows.next()? {
        let id = report_id(&row.get::<_, Vec<u8>>(0)?)?;
        let change = change(id, row.get(1)?)?;
        match grouped.iter_mut().find(|(r, _)| *r == id) {
            Some((_, changes)) => changes.push(change),
            None => grouped.push((id, vec![change])),
        }
    }
    Ok(grouped)
}

/// Queue a change at the end of the outbox (a no-op if it is already queued).
pub fn push_outbox(conn: &Connection, id: ReportId, change: &Change) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO outbox (report, hash, change) VALUES (?1, ?2, ?3)
         ON CONFLICT (report, hash) DO NOTHING",
        params![
            id.as_bytes().as_slice(),
            change.hash().0.as_slice(),
            change.raw_bytes()
        ],
    )?;
    Ok(())
}

/// Queue a change before every other waiting change (a no-op if it is already queued). Only
/// the order within one report matters, so going before everything is going before the report's.
pub fn push_front_outbox(
    conn: &Connection,
    id: ReportId,
    change: &Change,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO outbox (n, report, hash, change)
         VALUES ((SELECT COALESCE(MIN(n), 1) - 1 FROM outbox), ?1, ?2, ?3)
         ON CONFLICT (report, hash) DO NOTHING",
        params![
            id.as_bytes().as_slice(),
            change.hash().0.as_slice(),
            change.raw_bytes()
        ],
    )?;
    Ok(())
}

/// How many changes of a report are waiting.
pub fn waiting_for(conn: &Connection, id: ReportId) -> Result<usize, StoreError> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM outbox WHERE report = ?1",
        [id.as_bytes().as_slice()],
        |row| row.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(0))
}
