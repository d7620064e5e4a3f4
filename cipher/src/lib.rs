//! # desa-cipher: SQLCipher, keyed the same way by the server and the `desa` CLI
//!
//! Both the server's database and every device store are SQLCipher databases (AES-256, an HMAC per
//! page) keyed with a **raw key** — 32 uniformly random bytes, never a passphrase that SQLCipher
//! would stretch again: the server derives its key from its master key, a device from the
//! volunteer's passphrase with argon2id. This crate holds what both need:
//!
//! * [`Key`] — the key as SQLCipher's raw-key literal, optionally with the salt SQLCipher writes as
//!   the file's first 16 bytes (a device keeps its argon2 salt there); zeroed when dropped.
//! * [`key_connection`] — key a just-opened connection, one at a time per process, with SQLCipher's
//!   own stderr log turned off (a wrong key would otherwise print `ERROR CORE … hmac check failed`
//!   lines over the one message the person needs).
//! * [`encrypt_in_place`] — turn a plaintext database left by an older version into an encrypted
//!   one holding exactly the same rows, crash-safe at every step.
//! * [`header`], [`PLAINTEXT_HEADER`] — tell a plaintext database from an encrypted one.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use zeroize::Zeroizing;

/// The first 16 bytes of every unencrypted SQLite database (an encrypted one starts with its
/// salt).
pub const PLAINTEXT_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// A SQLCipher raw key, as the SQL literal `x'<hex key>[<hex salt>]'`. Zeroed when dropped; no
/// `Debug`, no `Display`.
pub struct Key {
    literal: Zeroizing<String>,
    /// The salt SQLCipher writes as the file's first 16 bytes, when the key names one.
    salt: Option<[u8; 16]>,
}

impl Key {
    /// A 256-bit raw key; SQLCipher writes a random salt of its own in the file header.
    pub fn raw(key: &[u8; 32]) -> Key {
        Key {
            literal: literal(key.iter()),
            salt: None,
        }
    }

    /// A 256-bit raw key and the salt to write as the file's first 16 bytes (and to read back).
    pub fn raw_with_salt(key: &[u8; 32], salt: &[u8; 16]) -> Key {
        Key {
            literal: literal(key.iter().chain(salt.iter())),
            salt: Some(*salt),
        }
    }

    /// The literal (`x'…'`), for `PRAGMA key` and `ATTACH … KEY`.
    pub fn sql(&self) -> &str {
        &self.literal
    }
}

fn literal<'a>(bytes: impl Iterator<Item = &'a u8>) -> Zeroizing<String> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = Zeroizing::new(String::with_capacity(3 + 96));
    text.push_str("x'");
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text.push('\'');
    text
}

/// Serializes keying and attaching keyed databases in this process: a keying that raced another
/// connection's open or close was seen failing (in CI, tests opening and closing stores in
/// parallel). Opening a connection is rare; the lock is cheap.
static KEYING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Turn SQLCipher's own log off (process-wide settings; SQLite's errors still come back as
/// errors).
pub fn quiet(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA cipher_log_level = NONE", [], |_| Ok(()))?;
    conn.query_row("PRAGMA cipher_log = off", [], |_| Ok(()))?;
    Ok(())
}

/// Key a just-opened connection with `key`. Nothing is read until the first statement, so a wrong
/// key shows only then ("file is not a database"), and writes nothing.
///
/// Keying has failed once in a while on a loaded machine with SQLCipher's catch-all "An error
/// occurred with PRAGMA key": a second attempt on the same connection succeeds, so one is made.
pub fn key_connection(conn: &Connection, key: &Key) -> rusqlite::Result<()> {
    let _keying = KEYING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    quiet(conn)?;
    let pragma = Zeroizing::new(format!("PRAGMA key = \"{}\";", key.sql()));
    if conn.execute_batch(&pragma).is_err() {
        conn.execute_batch(&pragma)?;
    }
    Ok(())
}

/// The first 16 bytes of the file at `path`; `None` when it is missing or shorter.
pub fn header(path: &Path) -> io::Result<Option<[u8; 16]>> {
    let mut bytes = [0u8; 16];
    match fs::File::open(path).and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => Ok(Some(bytes)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Why a database could not be encrypted in place; the plaintext one is then as it was.
#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    /// SQLite (SQLCipher) failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// A file could not be read, written, synced or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another process holds the database open (its write-ahead log could not be folded in).
    #[error("{} is in use by another process; stop it first", .0.display())]
    InUse(PathBuf),
    /// A path SQLite cannot be given.
    #[error("{} is not a UTF-8 path", .0.display())]
    NotUtf8(PathBuf),
    /// SQLCipher did not write the key's salt at the start of the copy (it would not open again).
    #[error("SQLCipher did not write the salt at the start of the encrypted copy")]
    Salt,
    /// The copy does not hold every row of the original.
    #[error("encrypting copied {after} of {before} rows of {table}; the plaintext database was kept as it was")]
    Incomplete {
        /// The table.
        table: String,
        /// Rows in the plaintext database.
        before: i64,
        /// Rows in the encrypted copy.
        after: i64,
    },
}

fn io(path: &Path) -> impl FnOnce(io::Error) -> CipherError {
    let path = path.to_owned();
    move |source| CipherError::Io { path, source }
}

/// `path` with `suffix` added to its file name (`db.sqlite3` → `db.sqlite3-wal`).
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> Result<(), CipherError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// Make a rename in `path`'s directory durable.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Replace the plaintext database at `path` with an encrypted copy under `key` holding exactly the
/// same tables, rows and schema version. `prepare` runs on the copy's file path before it is
/// written — to create it empty and private. A key with a salt is checked to lead the copy.
///
/// Crash-safe at every step: the plaintext write-ahead log is folded into the file first, the copy
/// is written beside it (`<path>.encrypting`, discarded and made again if a run was interrupted),
/// checked (every table has as many rows as in the original), fsynced, and only then renamed over
/// the original — atomic. Until that rename the original is whole; after it, nothing of the old
/// WAL is needed, and the stale `-wal`/`-shm` files (plaintext) are removed. The old file's blocks
/// are freed, not overwritten: the disk's own encryption is what protects freed blocks.
pub fn encrypt_in_place(
    path: &Path,
    key: &Key,
    prepare: impl FnOnce(&Path) -> io::Result<()>,
) -> Result<(), CipherError> {
    let copy = sibling(path, ".encrypting");
    remove_if_present(&copy)?;
    remove_if_present(&sibling(&copy, "-journal"))?;
    prepare(&copy).map_err(io(&copy))?;
    if let Err(e) = export(path, &copy, key) {
        // Best effort: the export's error is the one worth showing.
        let _ = fs::remove_file(&copy);
        return Err(e);
    }
    fs::File::open(&copy)
        .and_then(|f| f.sync_all())
        .map_err(io(&copy))?;
    if let Some(salt) = key.salt {
        if header(&copy).map_err(io(&copy))? != Some(salt) {
            let _ = fs::remove_file(&copy);
            return Err(CipherError::Salt);
        }
    }
    remove_if_present(&sibling(path, "-wal"))?;
    remove_if_present(&sibling(path, "-shm"))?;
    fs::rename(&copy, path).map_err(io(path))?;
    sync_dir(path).map_err(io(path))?;
    Ok(())
}

/// Copy the plaintext database at `path` into the new encrypted database `copy`.
fn export(path: &Path, copy: &Path, key: &Key) -> Result<(), CipherError> {
    // CREATE: an attached database is opened with the main one's flags, and the copy is new.
    let plain = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )?;
    quiet(&plain)?;
    plain.busy_timeout(std::time::Duration::from_secs(10))?;
    // Fold the write-ahead log into the file: then the file alone is the whole database.
    let busy: i64 = plain.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        return Err(CipherError::InUse(path.to_owned()));
    }
    let version: i64 = plain.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let copy_text = copy
        .to_str()
        .ok_or_else(|| CipherError::NotUtf8(copy.to_owned()))?;
    {
        let _keying = KEYING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        plain.execute(
            "ATTACH DATABASE ?1 AS encrypted KEY ?2",
            rusqlite::params![copy_text, key.sql()],
        )?;
    }
    // One transaction: the copy is of one moment of the database, and nothing writes meanwhile.
    plain.execute_batch("BEGIN IMMEDIATE")?;
    plain.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
    // sqlcipher_export copies tables and rows, not the header's schema version.
    plain.pragma_update(Some("encrypted"), "user_version", version)?;
    let tables: Vec<String> = plain
        .prepare("SELECT name FROM main.sqlite_schema WHERE type = 'table'")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for table in tables {
        let (before, after): (i64, i64) = plain.query_row(
            &format!(
                "SELECT (SELECT count(*) FROM main.\"{table}\"), \
                        (SELECT count(*) FROM encrypted.\"{table}\")"
            ),
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        if before != after {
            return Err(CipherError::Incomplete {
                table,
                before,
                after,
            });
        }
    }
    plain.execute_batch("COMMIT; DETACH DATABASE encrypted")?;
    plain.close().map_err(|(_, e)| CipherError::Sqlite(e))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_plaintext_database_is_encrypted_in_place_with_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA user_version = 7;
                 CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('NEEDLE-one'), ('NEEDLE-two');",
            )
            .unwrap();
        }
        assert_eq!(header(&path).unwrap().as_ref(), Some(PLAINTEXT_HEADER));
        let key = Key::raw_with_salt(&[7; 32], &[9; 16]);
        encrypt_in_place(&path, &key, |_| Ok(())).unwrap();
        assert_eq!(
            header(&path).unwrap(),
            Some([9; 16]),
            "the salt leads the file"
        );
        assert!(!fs::read(&path).unwrap().windows(6).any(|w| w == b"NEEDLE"));
        let conn = Connection::open(&path).unwrap();
        key_connection(&conn, &key).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!((n, v), (2, 7));
        // The wrong key reads nothing.
        let wrong = Connection::open(&path).unwrap();
        key_connection(&wrong, &Key::raw(&[8; 32])).unwrap();
        assert!(wrong
            .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r
                .get::<_, i64>(0))
            .is_err());
    }

    #[test]
    fn a_key_is_a_raw_key_literal() {
        assert_eq!(
            Key::raw(&[0xab; 32]).sql(),
            format!("x'{}'", "ab".repeat(32))
        );
        assert_eq!(
            Key::raw_with_salt(&[1; 32], &[2; 16]).sql(),
            format!("x'{}{}'", "01".repeat(32), "02".repeat(16))
        );
    }
}
