//! Encryption at rest for the SQLite store (SQLCipher): keying every connection, telling a wrong
//! key apart from a damaged file, and encrypting a plaintext database left by an older version.
//!
//! The records name possible trafficking victims; a copied data disk, a backup or a stolen server
//! must not yield them. With [`Encryption::Key`] every page SQLCipher writes — the database, its
//! WAL and its temporary files — is encrypted and authenticated (HMAC per page).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use zeroize::{Zeroize, Zeroizing};

use super::StoreError;

/// Serializes keying connections (see [`unlock`]).
static KEYING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How the database file is protected.
#[derive(Clone)]
pub enum Encryption {
    /// SQLCipher with this 256-bit raw key (the server derives it from its master key:
    /// [`crate::keys::SQLCIPHER_LABEL`]).
    Key([u8; 32]),
    /// No encryption. Only for tests (the negative control showing that the encrypted store hides
    /// what a plaintext one shows); the server's command line cannot select it.
    Plaintext,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encryption::Key(_) => f.write_str("Encryption::Key([redacted])"),
            Encryption::Plaintext => f.write_str("Encryption::Plaintext"),
        }
    }
}

impl Drop for Encryption {
    fn drop(&mut self) {
        if let Encryption::Key(key) = self {
            key.zeroize();
        }
    }
}

/// The first 16 bytes of every unencrypted SQLite database.
const PLAINTEXT_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// SQLCipher's raw-key literal, `x'<64 hex>'` (no passphrase derivation: the key is already
/// uniformly random).
fn raw_key(key: &[u8; 32]) -> Zeroizing<String> {
    let hex = crate::keys::hex(key);
    let mut text = Zeroizing::new(String::with_capacity(hex.len() + 3));
    text.push_str("x'");
    text.push_str(&hex);
    text.push('\'');
    text
}

/// Key a just-opened connection and check the key fits, before anything else touches the file.
///
/// Must run first on every connection: SQLCipher reads nothing until keyed, and a connection that
/// read with no key (or a wrong one) sees "file is not a database". The check only reads, so a
/// wrong key leaves every file as it was.
pub(crate) fn unlock(
    conn: &Connection,
    path: &Path,
    encryption: &Encryption,
) -> Result<(), StoreError> {
    if let Encryption::Key(key) = encryption {
        // SQLCipher logs a failed page HMAC ("ERROR CORE ... hmac check failed") to stderr; the
        // operator gets one clear message from us instead. (Process-wide, and only SQLCipher's own
        // log: SQLite's errors still come back as errors.)
        let sql = Zeroizing::new(format!("PRAGMA key = \"{}\";", &*raw_key(key)));
        // One connection keyed at a time in this process: SQLCipher sets up its crypto provider
        // as the first codec of a process appears and tears it down with the last, and a keying
        // that raced another connection's open or close was seen failing once (in CI, tests
        // opening and closing stores in parallel). Opening a connection is rare; the lock is cheap.
        let _keying = KEYING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conn.pragma_update(None, "cipher_log_level", "NONE")?;
        if let Err(first) = conn.execute_batch(&sql) {
            tracing::warn!(error = %first, "keying a database connection failed; trying once more");
            conn.execute_batch(&sql)?;
        }
    }
    // A connection that found a WAL left by a crash checkpoints it into the database when it
    // closes, even if its key could not read a page: no checkpoint on close until the key is
    // known to fit, so that a wrong key writes nothing.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)?;
            Ok(())
        }
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => {
            Err(StoreError::WrongKey {
                path: path.to_owned(),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` is an unencrypted SQLite database (an encrypted one starts with random bytes).
fn is_plaintext(path: &Path) -> Result<bool, StoreError> {
    let mut header = [0u8; 16];
    let read = File::open(path).and_then(|mut f| f.read_exact(&mut header));
    match read {
        Ok(()) => Ok(&header == PLAINTEXT_HEADER),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(io_error(path, e)),
    }
}

fn io_error(path: &Path, e: io::Error) -> StoreError {
    StoreError::Database(format!("{}: {e}", path.display()))
}

/// `path` with `suffix` appended to its file name (`db.sqlite3` → `db.sqlite3-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_error(path, e)),
        _ => Ok(()),
    }
}

/// If `encryption` has a key and `path` is a plaintext database (from a version before encryption
/// at rest), replace it with an encrypted copy holding exactly the same data. Returns whether it
/// did.
///
/// Crash-safe at every step: the plaintext file stays whole until the encrypted copy — complete,
/// fsynced — is renamed over it in one atomic step, and the plaintext WAL is emptied into the
/// plaintext file (checkpoint) before the copy is made, so once the rename is done no WAL frame of
/// the old file is still needed. A copy left by an interrupted run is discarded and made again.
pub(crate) fn encrypt_if_plaintext(
    path: &Path,
    encryption: &Encryption,
) -> Result<bool, StoreError> {
    let Encryption::Key(key) = encryption else {
        return Ok(false);
    };
    if !is_plaintext(path)? {
        return Ok(false);
    }
    let copy = with_suffix(path, ".encrypting");
    remove_if_present(&copy)?;
    remove_if_present(&with_suffix(&copy, "-journal"))?;
    {
        // CREATE: an attached database is opened with the main one's flags, and the copy is new.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err(StoreError::Database(format!(
                "{} is in use by another process; stop it before starting with encryption",
                path.display()
            )));
        }
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        let copy_name = copy.to_str().ok_or_else(|| {
            StoreError::Database(format!("{} is not a UTF-8 path", copy.display()))
        })?;
        {
            let _keying = KEYING
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            conn.execute(
                "ATTACH DATABASE ?1 AS encrypted KEY ?2",
                rusqlite::params![copy_name, &*raw_key(key)],
            )?;
        }
        conn.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
        // sqlcipher_export copies the schema and rows, not the header's user_version.
        conn.pragma_update(Some("encrypted"), "user_version", version)?;
        conn.execute("DETACH DATABASE encrypted", [])?;
    }
    File::open(&copy)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(&copy, e))?;
    fs::rename(&copy, path).map_err(|e| io_error(path, e))?;
    // Closing the plaintext connection removed its WAL and shared-memory files; anything still
    // there is stale (and plaintext).
    remove_if_present(&with_suffix(path, "-wal"))?;
    remove_if_present(&with_suffix(path, "-shm"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(dir, e))?;
    }
    tracing::warn!(
        db = %path.display(),
        "encrypted the existing plaintext database; the old plaintext pages may remain in free \
         space on the disk until overwritten"
    );
    Ok(true)
}
