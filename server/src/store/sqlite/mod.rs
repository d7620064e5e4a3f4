//! The embedded default store: one SQLite file in WAL mode, encrypted with SQLCipher
//! ([`Encryption`], `store/cipher.rs`).
//!
//! ## Why each write is crash-safe
//! * Every [`Store::commit`] is one SQLite transaction (`BEGIN IMMEDIATE … COMMIT`). WAL mode with
//!   `synchronous=FULL` fsyncs the WAL at each commit, so a commit that returned is on disk, and a
//!   commit interrupted by a crash or power loss is rolled back when the database is next opened:
//!   the changes, the materialized row, the receipts, the held set and the seq of an ingest appear
//!   together or not at all.
//! * The seq is not a separate counter: it is `max(last_seq)` over the rows, so it cannot drift
//!   from the data it numbers.
//! * Compaction (a new snapshot) happens inside the same transaction as the changes it absorbs: the
//!   snapshot replaces the old one and the absorbed changes lose their bytes (their receipts stay,
//!   for history) atomically.
//! * Inserting a change already stored is ignored, so replaying a commit cannot duplicate anything.

mod audit;
mod directory;
mod reports;
mod schema;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use sync_core::{DeviceId, ReportId, ReportKind, VillageCode};

pub use super::cipher::Encryption;
use super::{cipher, ReportRow, Sql, StoreError};
use crate::audit::AuditKey;
use audit::{Anchor, AuditSink};
use schema::{SCHEMA, SCHEMA_V2, SCHEMA_V3, SCHEMA_VERSION};

/// The SQLite store: one writer connection, a small pool of reader connections (WAL lets readers
/// proceed while a commit is under way).
pub struct SqliteStore {
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    path: std::path::PathBuf,
    audit: Option<AuditSink>,
    /// Every connection, the pooled readers included, is opened with it.
    encryption: Encryption,
}

fn open(path: &Path, encryption: &Encryption) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .sql()?;
    // Keyed (and the key checked) before any other statement, on every connection: the writer
    // and each pooled reader.
    cipher::unlock(&conn, path, encryption)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .sql()?;
    conn.pragma_update(None, "journal_mode", "WAL").sql()?;
    // FULL: a commit is fsynced before it returns — an acknowledged change survives power loss.
    conn.pragma_update(None, "synchronous", "FULL").sql()?;
    Ok(conn)
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path` and bring its schema up to date.
    ///
    /// With [`Encryption::Key`], a new database is created encrypted, a plaintext one from an
    /// older version is encrypted first (crash-safe, logged once), and a database the key does not
    /// open is refused with [`StoreError::WrongKey`] before anything is written.
    pub fn open(path: &Path, encryption: Encryption) -> Result<Self, StoreError> {
        cipher::encrypt_if_plaintext(path, &encryption)?;
        let mut conn = open(path, &encryption)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .sql()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::database_msg(format!(
                "database schema version {version} is newer than this server ({SCHEMA_VERSION})"
            )));
        }
        if version < SCHEMA_VERSION {
            // Every step from the stored version up, in one transaction: a crash leaves the old
            // version whole.
            let tx = conn.transaction().sql()?;
            let dropped: i64 = if version >= 1 {
                tx.query_row("SELECT count(*) FROM held", [], |r| r.get(0))
                    .sql()?
            } else {
                0
            };
            let steps: [(i64, &str); 3] = [(0, SCHEMA), (1, SCHEMA_V2), (2, SCHEMA_V3)];
            for (from, sql) in steps {
                if version <= from {
                    tx.execute_batch(sql).sql()?;
                }
            }
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "held changes stored without their uploader were dropped; devices send them again"
                );
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .sql()?;
            tx.commit().sql()?;
        }
        Ok(SqliteStore {
            writer: Mutex::new(conn),
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
            audit: None,
            encryption,
        })
    }

    /// Seal audit entries with `key`, and record the chain's head in `anchor` (a file outside the
    /// data directory) after each append. Without this, writing an audit event is an error.
    pub fn with_audit(mut self, key: AuditKey, anchor: Option<std::path::PathBuf>) -> Self {
        self.audit = Some(AuditSink {
            key,
            anchor: anchor.map(|path| Anchor {
                path,
                file: Mutex::new(None),
            }),
        });
        self
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.writer.lock().map_err(poisoned)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        let out = f(&tx)?;
        tx.commit().sql()?;
        Ok(out)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self.readers.lock().map_err(poisoned)?.pop();
        let conn = match pooled {
            Some(c) => c,
            None => open(&self.path, &self.encryption)?,
        };
        let result = f(&conn);
        let mut pool = self.readers.lock().map_err(poisoned)?;
        if pool.len() < 8 {
            pool.push(conn);
        }
        result
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> StoreError {
    StoreError::Poisoned
}

fn report_id(bytes: Vec<u8>) -> Result<ReportId, StoreError> {
    let arr: [u8; 16] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| StoreError::Corrupt {
            what: "report id".into(),
            detail: format!("{} bytes", bytes.len()),
        })?;
    Ok(ReportId::from_random(arr))
}

const ROW_COLUMNS: &str =
    "id, kind, village, status, title, created_at, updated_at, last_seq, json";

/// A `reports` row as SQLite returns it, before checking.
type RawRow = (
    Vec<u8>,
    String,
    i64,
    Option<String>,
    Option<String>,
    String,
    i64,
    i64,
    String,
);

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn parse_row(raw: RawRow) -> Result<ReportRow, StoreError> {
    let (id, kind, village, status, title, created_at, updated_at, last_seq, json) = raw;
    let id = report_id(id)?;
    let corrupt = |what: &str, detail: String| StoreError::Corrupt {
        what: format!("{what} of {id}"),
        detail,
    };
    Ok(ReportRow {
        id,
        kind: kind
            .parse::<ReportKind>()
            .map_err(|e| corrupt("kind", e.to_string()))?,
        village: VillageCode::from_u64(village as u64)
            .map_err(|e| corrupt("village", e.to_string()))?,
        status,
        title,
        created_at,
        updated_at,
        last_seq: last_seq as u64,
        json,
    })
}

fn device_id(bytes: &[u8], what: impl FnOnce() -> String) -> Result<DeviceId, StoreError> {
    let id: [u8; 16] = bytes.try_into().map_err(|_| StoreError::Corrupt {
        what: what(),
        detail: format!("device id of {} bytes", bytes.len()),
    })?;
    Ok(DeviceId::from_bytes(id))
}

fn bump_directory(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE directory SET version = version + 1 WHERE id = 0",
        [],
    )
    .sql()?;
    Ok(())
}
