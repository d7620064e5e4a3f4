//! The store's tables and their versions (`PRAGMA user_version`).
//!
//! Each entry of `MIGRATIONS` takes the schema from version `i` to `i + 1` and runs in the same
//! transaction as the `user_version` bump, so a crash mid-upgrade leaves the previous version
//! intact. Never edit a released migration: add the next one.

use rusqlite::{Connection, TransactionBehavior};

use super::StoreError;

/// Version 1.
///
/// * `meta` — one row per device setting: `device_id`, `device_name`, `village`, `server_url`,
///   `created_at` (text), `sync_state` (the `DeviceSync` positions, postcard bytes), `last_sync`
///   (RFC 3339 of the last sync round that was committed), `token` (the device token's text;
///   absent in stores made before tokens until `desa token set`, and then possibly for another
///   device than `device_id`, which stays the actor of the store's edits) and `server_ca_pem`
///   (the office CA given at `init`, if any). The whole file is encrypted ([`super::crypt`]), so the token is never on disk in clear.
/// * `reports` — the device's copy of each report: `doc` is automerge `save()` output. `kind`,
///   `title`, `status`, `created_at` are a cache of the document for `desa list`, rewritten every
///   time `doc` is, never read back into the document.
/// * `generations` — the actor generation the device writes to a report under (absent = 0). Kept
///   apart from `reports` because it must outlive a report the server refused to create, and may
///   be asked for before the device holds a copy.
/// * `outbox` — changes the server has not acknowledged, in the order they were made (`n`);
///   `UNIQUE (report, hash)` makes re-queuing a change a no-op.
/// * `refusals` — every refusal the volunteer should see (`desa status`).
const V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
CREATE TABLE reports (
    id         BLOB PRIMARY KEY NOT NULL CHECK (length(id) = 16),
    doc        BLOB NOT NULL,
    kind       TEXT,
    title      TEXT,
    status     TEXT,
    created_at TEXT
);
CREATE TABLE generations (
    report     BLOB PRIMARY KEY NOT NULL CHECK (length(report) = 16),
    generation INTEGER NOT NULL
);
CREATE TABLE outbox (
    n      INTEGER PRIMARY KEY AUTOINCREMENT,
    report BLOB NOT NULL CHECK (length(report) = 16),
    hash   BLOB NOT NULL CHECK (length(hash) = 32),
    change BLOB NOT NULL,
    UNIQUE (report, hash)
);
CREATE TABLE refusals (
    n           INTEGER PRIMARY KEY AUTOINCREMENT,
    report      BLOB NOT NULL,
    change_hash BLOB NOT NULL,
    code        TEXT NOT NULL,
    detail      TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
";

/// Every migration, in order: `MIGRATIONS[i]` upgrades version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// The store's schema version (0: an empty database, not yet a store).
pub fn version(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

/// Bring the schema up to [`VERSION`]. Refuses a store written by a newer build rather than
/// guessing at tables it does not know.
pub fn migrate(conn: &mut Connection, path: &std::path::Path) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
    let found = version(&tx)?;
    if found > VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found,
            supported: VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", from as i64 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

/// Settings every connection needs.
///
/// WAL lets `desa show` read while a sync commits; `synchronous=FULL` makes a commit durable
/// before `desa` reports success (a phone loses power without warning, and an acknowledged edit
/// must survive it). The busy timeout lets a second `desa` wait for a running one instead of
/// failing at once.
pub fn configure(conn: &Connection) -> Result<(), StoreError> {
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Setup(format!(
            "SQLite would not use write-ahead logging (journal_mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}
