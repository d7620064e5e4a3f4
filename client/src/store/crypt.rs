//! Encryption at rest: the store is a SQLCipher database keyed from the volunteer's passphrase.
//!
//! The records name possible trafficking victims and witnesses, and a volunteer's phone may be
//! lost; whoever finds it must not be able to read them without the passphrase.
//!
//! * **Key.** 32 bytes of argon2id (version 0x13) over the passphrase and a random 16-byte salt,
//!   with [`ARGON2_MEMORY_KIB`] of memory, [`ARGON2_PASSES`] passes and [`ARGON2_LANES`] lane:
//!   the argon2 crate's defaults and OWASP's minimum for argon2id, about 20–60 ms on a phone and
//!   19 MiB of memory for each guess an attacker makes.
//! * **No side file.** The database is keyed with SQLCipher's raw key *and* salt
//!   (`PRAGMA key = "x'<64 hex key><32 hex salt>'"`), so SQLCipher uses the key as it is (no
//!   second key derivation) and writes the salt as the first 16 bytes of the file, where opening
//!   reads it back. Every page after that, and every page in the write-ahead log, is encrypted and
//!   authenticated.
//! * **One way in.** [`connect`] is the only function that opens an existing store, for the
//!   commands and for tests and tools alike; a wrong passphrase is [`StoreError::WrongPassphrase`]
//!   before anything is written, and a store written before encryption (a plain SQLite file) is
//!   encrypted on the way in ([`encrypt_plaintext`]).
//!
//! The argon2 parameters are not stored in the file: changing them would make existing stores
//! unopenable, so a change needs a new format marker and a migration, never an edit here.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use zeroize::Zeroizing;

use super::{private_file, schema, StoreError};
use crate::secrets::Passphrase;

/// Argon2id memory cost, in KiB (19 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;

/// Argon2id passes over the memory.
pub const ARGON2_PASSES: u32 = 2;

/// Argon2id parallelism. One lane: a phone's other cores are not ours to take, and an attacker
/// gains nothing from more lanes that the memory cost does not already charge for.
pub const ARGON2_LANES: u32 = 1;

/// Bytes of key (SQLCipher's AES-256 key).
pub const KEY_BYTES: usize = 32;

/// Bytes of salt, stored as the first bytes of the database file.
pub const SALT_BYTES: usize = 16;

/// How an unencrypted SQLite database begins.
const PLAINTEXT_HEADER: &[u8; SALT_BYTES] = b"SQLite format 3\0";

/// What the first bytes of a store file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A plain SQLite file, as `desa` wrote before stores were encrypted.
    Plaintext,
    /// An encrypted store with this salt.
    Encrypted {
        /// The first 16 bytes of the file.
        salt: [u8; SALT_BYTES],
    },
}

/// Read the first bytes of the store at `path`.
pub fn format(path: &Path) -> Result<Format, StoreError> {
    let mut file = fs::File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => StoreError::Missing(path.to_owned()),
        _ => StoreError::Io {
            path: path.to_owned(),
            source,
        },
    })?;
    let mut header = [0u8; SALT_BYTES];
    match file.read_exact(&mut header) {
        Ok(()) if &header == PLAINTEXT_HEADER => Ok(Format::Plaintext),
        Ok(()) => Ok(Format::Encrypted { salt: header }),
        // Shorter than a header: not a database at all (SQLCipher writes whole pages).
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(StoreError::NotAStore(path.to_owned()))
        }
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A store key and the salt it was derived with. Zeroed when dropped; no `Debug`.
pub(super) struct StoreKey {
    key: Zeroizing<[u8; KEY_BYTES]>,
    salt: [u8; SALT_BYTES],
}

impl StoreKey {
    /// A key for a new database, with a fresh random salt.
    pub(super) fn fresh(passphrase: &Passphrase) -> Result<StoreKey, StoreError> {
        let mut salt = [0u8; SALT_BYTES];
        getrandom::fill(&mut salt)
            .map_err(|e| StoreError::Setup(format!("no random salt from the system: {e}")))?;
        Self::derive(passphrase, salt)
    }

    /// The key of the database whose file begins with `salt`.
    pub(super) fn derive(
        passphrase: &Passphrase,
        salt: [u8; SALT_BYTES],
    ) -> Result<StoreKey, StoreError> {
        let params = Params::new(
            ARGON2_MEMORY_KIB,
            ARGON2_PASSES,
            ARGON2_LANES,
            Some(KEY_BYTES),
        )
        .map_err(|e| StoreError::Setup(format!("argon2 parameters: {e}")))?;
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), &salt, &mut key[..])
            .map_err(|e| StoreError::Setup(format!("deriving the store key: {e}")))?;
        Ok(StoreKey { key, salt })
    }

    /// The salt.
    pub(super) fn salt(&self) -> [u8; SALT_BYTES] {
        self.salt
    }

    /// SQLCipher's raw key with explicit salt: `x'<key hex><salt hex>'`.
    fn sql_value(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::with_capacity(3 + 2 * (KEY_BYTES + SALT_BYTES)));
        text.push_str("x'");
        for byte in self.key.iter().chain(self.salt.iter()) {
            push_hex(&mut text, *byte);
        }
        text.push('\'');
        text
    }
}

fn push_hex(text: &mut String, byte: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    text.push(char::from(DIGITS[usize::from(byte >> 4)]));
    text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
}

/// Turn off SQLCipher's own log. It writes `ERROR CORE ...` lines to stderr when a page fails to
/// decrypt (a wrong passphrase), which would bury the one message the volunteer needs. The log
/// settings are process-wide and set up when the library initialises (the first open), so this
/// runs after opening, on every connection.
/// Serializes keying connections (see [`open_keyed`]).
static KEYING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn quiet(conn: &Connection) -> Result<(), StoreError> {
    conn.query_row("PRAGMA cipher_log_level = NONE", [], |_| Ok(()))?;
    conn.query_row("PRAGMA cipher_log = off", [], |_| Ok(()))?;
    Ok(())
}

/// Open `path` with `key` without touching the file: SQLCipher reads nothing until the first
/// statement.
pub(super) fn open_keyed(path: &Path, key: &StoreKey) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    // One connection keyed at a time per process (SQLCipher sets its crypto provider up and
    // down with the first and last codec; the server saw a keying race once under parallel tests).
    let _keying = KEYING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    quiet(&conn)?;
    let pragma = Zeroizing::new(format!("PRAGMA key = \"{}\";", key.sql_value().as_str()));
    // Keying has failed once in a while on a loaded machine (tests opening stores in parallel
    // with heavy IO), with SQLCipher's catch-all "An error occurred with PRAGMA key": a second
    // attempt on the same connection succeeds. The server does the same (server/src/store/
    // cipher.rs).
    if conn.execute_batch(&pragma).is_err() {
        conn.execute_batch(&pragma)?;
    }
    Ok(conn)
}

/// An open connection to a store.
#[derive(Debug)]
pub struct Connected {
    /// The connection, keyed and checked.
    pub conn: Connection,
    /// The store was a plain SQLite file and has just been encrypted with this passphrase.
    pub encrypted_now: bool,
}

/// The one way to open an existing store: read its salt, derive the key, open, and check the key
/// by reading the schema. A wrong passphrase fails here, before any statement could write (and
/// SQLCipher writes nothing while failing to decrypt page 1). A plaintext store is encrypted
/// first.
pub fn connect(path: &Path, passphrase: &Passphrase) -> Result<Connected, StoreError> {
    let mut encrypted_now = false;
    let salt = match format(path)? {
        Format::Encrypted { salt } => salt,
        Format::Plaintext => {
            encrypted_now = true;
            encrypt_plaintext(path, passphrase)?
        }
    };
    let conn = open_keyed(path, &StoreKey::derive(passphrase, salt)?)?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => StoreError::WrongPassphrase(path.to_owned()),
            _ => StoreError::Sqlite(e),
        })?;
    Ok(Connected {
        conn,
        encrypted_now,
    })
}

/// `path` with `suffix` added to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Encrypt a plaintext store in place, keeping everything it holds; returns the new salt.
///
/// Crash safety: the encrypted copy is written beside the store (`<store>.encrypting`), made
/// durable, checked (every table has as many rows as in the original), and only then renamed over
/// the original, which is atomic. Before the rename, the original is whole: its write-ahead log
/// was checkpointed into the file first, so removing the stale `-wal`/`-shm` (which would
/// otherwise be replayed into the encrypted database) loses nothing. A crash at any point leaves
/// either the whole plaintext store, migrated again at the next open, or the whole encrypted one.
///
/// The old file's blocks are freed, not overwritten: flash storage cannot promise to erase them.
/// The phone's own encryption is what protects freed blocks.
pub fn encrypt_plaintext(
    path: &Path,
    passphrase: &Passphrase,
) -> Result<[u8; SALT_BYTES], StoreError> {
    let tmp = sibling(path, ".encrypting");
    // Left by an interrupted attempt; the original is still whole, so start again.
    remove_if_present(&tmp)?;
    remove_if_present(&sibling(&tmp, "-journal"))?;
    private_file(&tmp).map_err(|source| StoreError::Io {
        path: tmp.clone(),
        source,
    })?;
    let key = StoreKey::fresh(passphrase)?;
    if let Err(e) = export(path, &tmp, &key) {
        // Best effort: the export's error is the one worth showing.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| StoreError::Io { path, source }
    };
    fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_error(&tmp))?;
    if format(&tmp)? != (Format::Encrypted { salt: key.salt() }) {
        let _ = fs::remove_file(&tmp);
        return Err(StoreError::Setup(
            "SQLCipher did not write the salt at the start of the encrypted copy".into(),
        ));
    }
    remove_if_present(&sibling(path, "-wal"))?;
    remove_if_present(&sibling(path, "-shm"))?;
    fs::rename(&tmp, path).map_err(io_error(path))?;
    sync_dir(path)?;
    Ok(key.salt())
}

/// Copy the plaintext store at `path` into the new encrypted database `tmp`.
fn export(path: &Path, tmp: &Path, key: &StoreKey) -> Result<(), StoreError> {
    let plain = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    quiet(&plain)?;
    plain.busy_timeout(std::time::Duration::from_secs(10))?;
    let version = schema::version(&plain)?;
    if version == 0 {
        return Err(StoreError::NotAStore(path.to_owned()));
    }
    // Fold the write-ahead log into the file: then the file alone is the whole store.
    let busy: i64 = plain.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
    if busy != 0 {
        return Err(StoreError::Setup(
            "another desa is using the store; try again when it has finished".into(),
        ));
    }
    let tmp_text = tmp
        .to_str()
        .ok_or_else(|| StoreError::Setup(format!("{} is not a UTF-8 path", tmp.display())))?;
    {
        let _keying = KEYING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        plain.execute(
            "ATTACH DATABASE ?1 AS encrypted KEY ?2",
            rusqlite::params![tmp_text, key.sql_value().as_str()],
        )?;
    }
    // One transaction: the copy is of one moment of the store, and no other desa writes meanwhile.
    plain.execute_batch("BEGIN IMMEDIATE")?;
    plain.query_row("SELECT sqlcipher_export('encrypted')", [], |_| Ok(()))?;
    // sqlcipher_export copies tables and rows, not the schema version.
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
            return Err(StoreError::Setup(format!(
                "encrypting the store copied {after} of {before} rows of {table}; \
                 the unencrypted store was kept as it was"
            )));
        }
    }
    plain.execute_batch("COMMIT; DETACH DATABASE encrypted")?;
    plain.close().map_err(|(_, e)| StoreError::Sqlite(e))?;
    Ok(())
}

/// Make a rename in `path`'s directory durable.
#[cfg(unix)]
fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(not(unix))]
fn sync_dir(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn the_key_depends_on_passphrase_and_salt() {
        let a = StoreKey::derive(&Passphrase::new("passphrase one"), [1; SALT_BYTES]).unwrap();
        let again = StoreKey::derive(&Passphrase::new("passphrase one"), [1; SALT_BYTES]).unwrap();
        let other_salt =
            StoreKey::derive(&Passphrase::new("passphrase one"), [2; SALT_BYTES]).unwrap();
        let other_pass =
            StoreKey::derive(&Passphrase::new("passphrase two"), [1; SALT_BYTES]).unwrap();
        assert_eq!(*a.key, *again.key);
        assert_ne!(*a.key, *other_salt.key);
        assert_ne!(*a.key, *other_pass.key);
        let text = a.sql_value();
        assert_eq!(text.len(), 3 + 96);
        assert!(text.starts_with("x'") && text.ends_with(&format!("{}'", "01".repeat(16))));
    }

    #[test]
    fn formats() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        assert!(matches!(format(&path), Err(StoreError::Missing(_))));
        fs::write(&path, b"short").unwrap();
        assert!(matches!(format(&path), Err(StoreError::NotAStore(_))));
        fs::write(&path, b"SQLite format 3\0and the rest").unwrap();
        assert_eq!(format(&path).unwrap(), Format::Plaintext);
        fs::write(&path, [7u8; 4096]).unwrap();
        assert_eq!(format(&path).unwrap(), Format::Encrypted { salt: [7; 16] });
    }
}
