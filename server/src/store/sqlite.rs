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

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use sync_core::protocol::Position;
use sync_core::{ReportId, ReportKind, VillageCode};

pub use super::cipher::Encryption;
use super::{
    cipher, decode_receipts, encode_receipts, seq_check, ChangeReceipt, Commit, DeviceRecord,
    FeedRow, HeldRow, ReportQuery, ReportRow, Store, StoreError, StoredDoc, Uploader, UserRecord,
    VillageCount,
};
use std::collections::HashMap;

use crate::audit::{self, AuditEntry, AuditEvent, AuditKey, Head};
use sync_core::{DeviceId, Role, Verifier};

/// Schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 3;

/// Version 3: who uploaded each change, held changes with their uploader, actors bound to their
/// first uploader, removed users.
///
/// Held changes stored by version 2 carry no uploader, and judging them with the access of
/// whoever completes them is exactly what version 3 forbids: they are dropped. Nothing is lost —
/// a device keeps a held change in its outbox and sends it again with its dependencies.
const SCHEMA_V3: &str = r#"
ALTER TABLE changes ADD COLUMN device BLOB;
ALTER TABLE changes ADD COLUMN user TEXT;
DROP TABLE held;
CREATE TABLE held (
    report      BLOB NOT NULL,
    hash        BLOB NOT NULL,
    device      BLOB NOT NULL,
    since       INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    PRIMARY KEY (report, hash)
);
CREATE INDEX held_device ON held (device);
CREATE TABLE actors (
    actor       BLOB PRIMARY KEY,
    user        TEXT NOT NULL,
    device      BLOB NOT NULL,
    bound_at    INTEGER NOT NULL
);
ALTER TABLE users ADD COLUMN removed_at INTEGER;
"#;

/// Version 2: users, devices and the audit trail.
const SCHEMA_V2: &str = r#"
CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    role        TEXT NOT NULL,
    villages    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE devices (
    id          BLOB PRIMARY KEY,
    user        TEXT NOT NULL REFERENCES users (name),
    verifier    BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
-- Bumped by every user or device change; servers poll it to notice revocations.
CREATE TABLE directory (
    id          INTEGER PRIMARY KEY CHECK (id = 0),
    version     INTEGER NOT NULL
);
INSERT INTO directory (id, version) VALUES (0, 0);
-- The audit trail: a keyed hash chain (server/src/audit.rs). Append-only: the triggers stop a
-- mistaken UPDATE or DELETE; the chain and its anchor catch a deliberate one.
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY,
    record      TEXT NOT NULL,
    mac         BLOB NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END;
"#;

/// Where audit entries are sealed and their head anchored.
struct AuditSink {
    key: AuditKey,
    anchor: Option<Anchor>,
}

/// The anchor file, kept open.
struct Anchor {
    path: std::path::PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

/// Append `events` to the audit trail inside `tx`, reading the chain's tail in the same
/// transaction (another process — the `desa-server user` commands — may have appended since).
fn append_audit_tx(
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
        .optional()?;
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
        tx.prepare_cached("INSERT INTO audit (seq, record, mac) VALUES (?1, ?2, ?3)")?
            .execute(params![e.seq as i64, e.record, &e.mac[..]])?;
    }
    if let (Some(anchor), Some(last)) = (&sink.anchor, entries.last()) {
        // Written while the write lock is held, so anchors from two processes cannot cross.
        let failed =
            |e: std::io::Error| StoreError::Audit(format!("anchor {}: {e}", anchor.path.display()));
        let mut file = anchor.file.lock().map_err(poisoned)?;
        if file.is_none() {
            *file = Some(Head::open_file(&anchor.path).map_err(failed)?);
        }
        if let Some(file) = file.as_ref() {
            Head {
                seq: last.seq,
                mac: last.mac,
            }
            .store(file)
            .map_err(failed)?;
        }
    }
    Ok(())
}

const SCHEMA: &str = r#"
CREATE TABLE reports (
    id          BLOB PRIMARY KEY,
    kind        TEXT NOT NULL,
    village     INTEGER NOT NULL,
    district    INTEGER NOT NULL,
    status      TEXT,
    title       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    last_seq    INTEGER NOT NULL,
    json        TEXT NOT NULL,
    snapshot    BLOB NOT NULL,
    receipts    BLOB NOT NULL
);
CREATE INDEX reports_seq ON reports (last_seq, id);
CREATE INDEX reports_village ON reports (village, last_seq, id);
CREATE INDEX reports_village_status ON reports (village, status, last_seq, id);
CREATE INDEX reports_district ON reports (district, last_seq, id);
-- Every update rewrites each index that holds last_seq, so there are only as many as the device
-- feed and the common coordinator filters (village, village + status, district) need; kind, status
-- alone and updated_since filter along reports_seq.

-- Every accepted change: when it was received, and its bytes until a snapshot absorbs it.
CREATE TABLE changes (
    report      BLOB NOT NULL,
    hash        BLOB NOT NULL,
    seq         INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    bytes       BLOB,
    PRIMARY KEY (report, hash)
);
CREATE INDEX changes_tail ON changes (report) WHERE bytes IS NOT NULL;

-- automerge sync states of automerge-repo peers that have a storage id (bandwidth, not data).
CREATE TABLE peer_sync (
    storage_id  TEXT NOT NULL,
    report      BLOB NOT NULL,
    state       BLOB NOT NULL,
    PRIMARY KEY (storage_id, report)
);

-- Changes waiting for dependencies (replaced by version 3).
CREATE TABLE held (
    report      BLOB NOT NULL,
    n           INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    PRIMARY KEY (report, n)
);
"#;

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
    )?;
    // Keyed (and the key checked) before any other statement, on every connection: the writer
    // and each pooled reader.
    cipher::unlock(&conn, path, encryption)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is fsynced before it returns — an acknowledged change survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
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
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Database(format!(
                "database schema version {version} is newer than this server ({SCHEMA_VERSION})"
            )));
        }
        if version < SCHEMA_VERSION {
            // Every step from the stored version up, in one transaction: a crash leaves the old
            // version whole.
            let tx = conn.transaction()?;
            let dropped: i64 = if version >= 1 {
                tx.query_row("SELECT count(*) FROM held", [], |r| r.get(0))?
            } else {
                0
            };
            let steps: [(i64, &str); 3] = [(0, SCHEMA), (1, SCHEMA_V2), (2, SCHEMA_V3)];
            for (from, sql) in steps {
                if version <= from {
                    tx.execute_batch(sql)?;
                }
            }
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    "held changes stored without their uploader were dropped; devices send them again"
                );
            }
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            tx.commit()?;
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
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
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
    StoreError::Database("a database connection lock was poisoned by a panic".into())
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

impl Store for SqliteStore {
    fn load(&self, id: &ReportId) -> Result<Option<StoredDoc>, StoreError> {
        self.read(|conn| {
            let key = &id.as_bytes()[..];
            let head: Option<(Vec<u8>, Vec<u8>, i64)> = conn
                .query_row(
                    "SELECT snapshot, receipts, last_seq FROM reports WHERE id = ?1",
                    [key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let mut stmt = conn.prepare_cached(
                "SELECT hash, bytes, device, since FROM held WHERE report = ?1 ORDER BY since, hash",
            )?;
            let held = stmt
                .query_map([key], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .map(|(hash, bytes, device, since)| {
                    let what = || format!("held change of {id}");
                    Ok(HeldRow {
                        hash: hash.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                            what: what(),
                            detail: format!("hash of {} bytes", hash.len()),
                        })?,
                        bytes,
                        device: device_id(&device, what)?,
                        since,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let Some((snapshot, receipts, last_seq)) = head else {
                return Ok((!held.is_empty()).then(|| StoredDoc {
                    held,
                    ..StoredDoc::default()
                }));
            };
            let mut stmt = conn.prepare_cached(
                "SELECT bytes FROM changes WHERE report = ?1 AND bytes IS NOT NULL ORDER BY rowid",
            )?;
            let tail = stmt
                .query_map([key], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(StoredDoc {
                snapshot,
                tail,
                receipts: decode_receipts(id, &receipts)?,
                held,
                last_seq: last_seq as u64,
            }))
        })
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let seq: Option<i64> =
                conn.query_row("SELECT max(last_seq) FROM reports", [], |r| r.get(0))?;
            Ok(seq.unwrap_or(0) as u64)
        })
    }

    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().map_err(poisoned)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let last: Option<i64> =
            tx.query_row("SELECT max(last_seq) FROM reports", [], |r| r.get(0))?;
        seq_check(last.unwrap_or(0) as u64, commit)?;
        for write in &commit.writes {
            let row = &write.row;
            let key = &row.id.as_bytes()[..];
            for change in &write.changes {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO changes (report, hash, seq, received_at, bytes, device, user)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    key,
                    &change.hash[..],
                    commit.seq as i64,
                    commit.received_at,
                    change.bytes,
                    &change.uploader.device.as_bytes()[..],
                    change.uploader.user
                ])?;
            }
            let params_common = params![
                key,
                row.kind.as_str(),
                row.village.as_u64() as i64,
                i64::from(row.village.district().as_u32()),
                row.status,
                row.title,
                row.created_at,
                commit.received_at,
                commit.seq as i64,
                row.json,
                encode_receipts(&write.receipts)?,
            ];
            match &write.snapshot {
                Some(snapshot) => {
                    // The new snapshot contains every change so far: drop their bytes, keep
                    // their receipts.
                    tx.prepare_cached(
                        "UPDATE changes SET bytes = NULL WHERE report = ?1 AND bytes IS NOT NULL",
                    )?
                    .execute([key])?;
                    tx.prepare_cached(
                        "INSERT INTO reports (id, kind, village, district, status, title, created_at, updated_at, last_seq, json, receipts, snapshot)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                         ON CONFLICT (id) DO UPDATE SET status = excluded.status, title = excluded.title,
                           updated_at = excluded.updated_at, last_seq = excluded.last_seq, json = excluded.json,
                           receipts = excluded.receipts, snapshot = excluded.snapshot",
                    )?
                    .execute(rusqlite::params_from_iter(
                        params_common.iter().copied().chain(std::iter::once(snapshot as &dyn rusqlite::ToSql)),
                    ))?;
                }
                None => {
                    // The snapshot stays as it is (not read, not rewritten); the row must exist,
                    // since a report's first write always carries a snapshot.
                    let updated = tx
                        .prepare_cached(
                            "UPDATE reports SET status = ?5, title = ?6, updated_at = ?8, last_seq = ?9,
                               json = ?10, receipts = ?11
                             WHERE id = ?1 AND kind = ?2 AND village = ?3 AND district = ?4 AND created_at = ?7",
                        )?
                        .execute(params_common)?;
                    if updated != 1 {
                        return Err(StoreError::Database(format!(
                            "update of report {} without a snapshot, but no such report",
                            row.id
                        )));
                    }
                }
            }
        }
        for (id, held) in &commit.held {
            let key = &id.as_bytes()[..];
            tx.prepare_cached("DELETE FROM held WHERE report = ?1")?
                .execute([key])?;
            for row in held {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO held (report, hash, device, since, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                )?
                .execute(params![key, &row.hash[..], &row.device.as_bytes()[..], row.since, row.bytes])?;
            }
        }
        for b in &commit.bindings {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO actors (actor, user, device, bound_at) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![b.actor, b.user, &b.device.as_bytes()[..], b.at])?;
        }
        append_audit_tx(&tx, self.audit.as_ref(), &commit.audit)?;
        tx.commit()?;
        Ok(())
    }

    fn feed(
        &self,
        village: VillageCode,
        position: &Position,
        limit: usize,
    ) -> Result<Vec<FeedRow>, StoreError> {
        self.read(|conn| {
            let village = village.as_u64() as i64;
            let since = position.since as i64;
            let mut rows = Vec::new();
            let mut push = |r: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
                rows.push((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?));
                Ok(())
            };
            match position.after {
                None => {
                    let mut stmt = conn.prepare_cached(
                        "SELECT id, last_seq FROM reports WHERE village = ?1 AND last_seq > ?2
                         ORDER BY last_seq, id LIMIT ?3",
                    )?;
                    let mut q = stmt.query(params![village, since, limit as i64])?;
                    while let Some(r) = q.next()? {
                        push(r)?;
                    }
                }
                Some(mark) => {
                    let mut stmt = conn.prepare_cached(
                        "SELECT id, last_seq FROM reports WHERE village = ?1 AND last_seq > ?2
                         AND (last_seq, id) > (?3, ?4) ORDER BY last_seq, id LIMIT ?5",
                    )?;
                    let mut q = stmt.query(params![
                        village,
                        since,
                        mark.seq as i64,
                        &mark.report.as_bytes()[..],
                        limit as i64
                    ])?;
                    while let Some(r) = q.next()? {
                        push(r)?;
                    }
                }
            }
            rows.into_iter()
                .map(|(id, seq)| {
                    Ok(FeedRow {
                        id: report_id(id)?,
                        last_seq: seq as u64,
                    })
                })
                .collect()
        })
    }

    fn row(&self, id: &ReportId) -> Result<Option<ReportRow>, StoreError> {
        self.read(|conn| {
            let raw = conn
                .query_row(
                    &format!("SELECT {ROW_COLUMNS} FROM reports WHERE id = ?1"),
                    [&id.as_bytes()[..]],
                    row_from,
                )
                .optional()?;
            raw.map(parse_row).transpose()
        })
    }

    fn query(&self, query: &ReportQuery) -> Result<Vec<ReportRow>, StoreError> {
        let mut sql = format!("SELECT {ROW_COLUMNS} FROM reports WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(v) = query.village {
            arg(&mut sql, " AND village = ?", (v.as_u64() as i64).into());
        }
        if let Some(d) = query.district {
            arg(&mut sql, " AND district = ?", i64::from(d.as_u32()).into());
        }
        if let Some(k) = query.kind {
            arg(&mut sql, " AND kind = ?", k.as_str().to_owned().into());
        }
        if let Some(s) = &query.status {
            arg(&mut sql, " AND status = ?", s.clone().into());
        }
        if let Some(t) = query.updated_since {
            arg(&mut sql, " AND updated_at > ?", t.into());
        }
        if let Some((seq, id)) = query.after {
            arg(&mut sql, " AND (last_seq > ?", (seq as i64).into());
            arg(&mut sql, " OR (last_seq = ?", (seq as i64).into());
            arg(&mut sql, " AND id > ?))", id.as_bytes().to_vec().into());
        }
        arg(
            &mut sql,
            " ORDER BY last_seq, id LIMIT ?",
            (query.limit as i64).into(),
        );
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let raws = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), row_from)?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(parse_row).collect()
        })
    }

    fn change_receipts(&self, id: &ReportId) -> Result<Vec<ChangeReceipt>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT hash, seq, received_at, device, user FROM changes WHERE report = ?1 ORDER BY seq, rowid",
            )?;
            let raws = stmt
                .query_map([&id.as_bytes()[..]], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter()
                .map(|(hash, seq, received_at, device, user)| {
                    let uploader = match (device, user) {
                        (Some(device), Some(user)) => Some(Uploader {
                            device: device_id(&device, || format!("uploader of a change of {id}"))?,
                            user,
                        }),
                        _ => None,
                    };
                    let hash: [u8; 32] =
                        hash.as_slice()
                            .try_into()
                            .map_err(|_| StoreError::Corrupt {
                                what: format!("change hash of {id}"),
                                detail: format!("{} bytes", hash.len()),
                            })?;
                    Ok(ChangeReceipt {
                        hash,
                        seq: seq as u64,
                        received_at,
                        uploader,
                    })
                })
                .collect()
        })
    }

    fn village_counts(&self) -> Result<Vec<VillageCount>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT village, kind, count(*) FROM reports GROUP BY village, kind ORDER BY village, kind")?;
            let raws = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter()
                .map(|(village, kind, count)| {
                    let corrupt = |detail: String| StoreError::Corrupt {
                        what: "village counts".into(),
                        detail,
                    };
                    Ok(VillageCount {
                        village: VillageCode::from_u64(village as u64).map_err(|e| corrupt(e.to_string()))?,
                        kind: kind.parse().map_err(|e: sync_core::kind::UnknownKind| corrupt(e.to_string()))?,
                        count: count as u64,
                    })
                })
                .collect()
        })
    }

    fn peer_sync_states(&self, storage_id: &str) -> Result<Vec<(ReportId, Vec<u8>)>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT report, state FROM peer_sync WHERE storage_id = ?1")?;
            let raws = stmt
                .query_map([storage_id], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter()
                .map(|(id, state)| Ok((report_id(id)?, state)))
                .collect()
        })
    }

    fn save_peer_sync_states(
        &self,
        storage_id: &str,
        states: &[(ReportId, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().map_err(poisoned)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (id, state) in states {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO peer_sync (storage_id, report, state) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![storage_id, &id.as_bytes()[..], state])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn add_user(&self, user: &UserRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.write(|tx| {
            let villages: Vec<String> = user.villages.iter().map(ToString::to_string).collect();
            let added = tx.execute(
                "INSERT OR IGNORE INTO users (name, role, villages, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![user.name, user.role.as_str(), villages.join(","), user.created_at],
            )?;
            if added == 0 {
                let removed: Option<i64> = tx
                    .query_row("SELECT removed_at FROM users WHERE name = ?1", [&user.name], |r| r.get(0))
                    .optional()?
                    .flatten();
                return Err(StoreError::Conflict(match removed {
                    Some(_) => format!(
                        "user {:?} was removed; a name is never given to someone else, so that \
                         history keeps naming one person: choose another name",
                        user.name
                    ),
                    None => format!("user {:?} already exists", user.name),
                }));
            }
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))
        })
    }

    fn add_device(&self, device: &DeviceRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.write(|tx| {
            let user: Option<String> = tx
                .query_row(
                    "SELECT name FROM users WHERE name = ?1 AND removed_at IS NULL",
                    [&device.user],
                    |r| r.get(0),
                )
                .optional()?;
            if user.is_none() {
                return Err(StoreError::Conflict(format!(
                    "no user {:?} (unknown, or removed)",
                    device.user
                )));
            }
            let added = tx.execute(
                "INSERT OR IGNORE INTO devices (id, user, verifier, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    &device.id.as_bytes()[..],
                    device.user,
                    &device.verifier.0[..],
                    device.created_at,
                    device.revoked_at
                ],
            )?;
            if added == 0 {
                return Err(StoreError::Conflict(format!("device {} already exists", device.id)));
            }
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))
        })
    }

    fn revoke_device(&self, id: DeviceId, at: i64, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.write(|tx| {
            let revoked = tx.execute(
                "UPDATE devices SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![&id.as_bytes()[..], at],
            )?;
            if revoked == 0 {
                return Ok(false);
            }
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))?;
            Ok(true)
        })
    }

    fn update_user(
        &self,
        name: &str,
        role: Role,
        villages: &[VillageCode],
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let villages: Vec<String> = villages.iter().map(ToString::to_string).collect();
            let updated = tx.execute(
                "UPDATE users SET role = ?2, villages = ?3 WHERE name = ?1 AND removed_at IS NULL",
                params![name, role.as_str(), villages.join(",")],
            )?;
            if updated == 0 {
                return Ok(false);
            }
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))?;
            Ok(true)
        })
    }

    fn remove_user(&self, name: &str, at: i64, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.write(|tx| {
            let removed = tx.execute(
                "UPDATE users SET removed_at = ?2 WHERE name = ?1 AND removed_at IS NULL",
                params![name, at],
            )?;
            if removed == 0 {
                return Ok(false);
            }
            tx.execute(
                "UPDATE devices SET revoked_at = ?2 WHERE user = ?1 AND revoked_at IS NULL",
                params![name, at],
            )?;
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))?;
            Ok(true)
        })
    }

    fn held_usage(
        &self,
        devices: &[DeviceId],
    ) -> Result<HashMap<DeviceId, (usize, usize)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT count(*), coalesce(sum(length(bytes)), 0) FROM held WHERE device = ?1",
            )?;
            let mut out = HashMap::new();
            for device in devices {
                let (n, bytes): (i64, i64) =
                    stmt.query_row([&device.as_bytes()[..]], |r| Ok((r.get(0)?, r.get(1)?)))?;
                out.insert(*device, (n as usize, bytes as usize));
            }
            Ok(out)
        })
    }

    fn reports_with_held_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ReportId>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT DISTINCT report FROM held WHERE since < ?1 LIMIT ?2")?;
            let raws = stmt
                .query_map(params![before, limit as i64], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(report_id).collect()
        })
    }

    fn actor_owners(&self, actors: &[Vec<u8>]) -> Result<HashMap<Vec<u8>, String>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT user FROM actors WHERE actor = ?1")?;
            let mut out = HashMap::new();
            for actor in actors {
                if let Some(user) = stmt
                    .query_row([actor], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    out.insert(actor.clone(), user);
                }
            }
            Ok(out)
        })
    }

    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT name, role, villages, created_at, removed_at FROM users ORDER BY name",
            )?;
            let raws = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter()
                .map(|(name, role, villages, created_at, removed_at)| {
                    let corrupt = |detail: String| StoreError::Corrupt {
                        what: format!("user {name:?}"),
                        detail,
                    };
                    let role = role.parse().map_err(corrupt)?;
                    let villages = villages
                        .split(',')
                        .filter(|v| !v.is_empty())
                        .map(|v| VillageCode::parse(v).map_err(|e| corrupt(e.to_string())))
                        .collect::<Result<_, _>>()?;
                    Ok(UserRecord {
                        name,
                        role,
                        villages,
                        created_at,
                        removed_at,
                    })
                })
                .collect()
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, user, verifier, created_at, revoked_at FROM devices ORDER BY created_at, id",
            )?;
            let raws = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            raws.into_iter()
                .map(|(id, user, verifier, created_at, revoked_at)| {
                    let corrupt = |detail: &str| StoreError::Corrupt {
                        what: format!("a device of {user:?}"),
                        detail: detail.into(),
                    };
                    let id: [u8; 16] = id.as_slice().try_into().map_err(|_| corrupt("id"))?;
                    let verifier: [u8; 32] =
                        verifier.as_slice().try_into().map_err(|_| corrupt("verifier"))?;
                    Ok(DeviceRecord {
                        id: DeviceId::from_bytes(id),
                        user,
                        verifier: Verifier(verifier),
                        created_at,
                        revoked_at,
                    })
                })
                .collect()
        })
    }

    fn directory_version(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let v: i64 = conn
                .prepare_cached("SELECT version FROM directory WHERE id = 0")?
                .query_row([], |r| r.get(0))?;
            Ok(v as u64)
        })
    }

    fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.write(|tx| append_audit_tx(tx, self.audit.as_ref(), events))
    }

    fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT seq, record, mac FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?;
            let raws = stmt
                .query_map(params![after as i64, limit as i64], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()?;
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
    )?;
    Ok(())
}
