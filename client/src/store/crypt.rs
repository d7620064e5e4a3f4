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
use std::path::Path;

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
        Ok(()) if &header == desa_cipher::PLAINTEXT_HEADER => Ok(Format::Plaintext),
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

    /// The key for SQLCipher: raw key and salt (`x'<key hex><salt hex>'`).
    fn cipher(&self) -> desa_cipher::Key {
        desa_cipher::Key::raw_with_salt(&self.key, &self.salt)
    }
}

/// Open `path` with `key` without touching the file: SQLCipher reads nothing until the first
/// statement.
pub(super) fn open_keyed(path: &Path, key: &StoreKey) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    desa_cipher::key_connection(&conn, &key.cipher())?;
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

/// Encrypt a plaintext store in place, keeping everything it holds; returns the new salt.
///
/// [`desa_cipher::encrypt_in_place`] does it crash-safely: an encrypted copy is written beside the
/// store, made durable, checked (every table has as many rows as in the original, the salt leads
/// the file), and only then renamed over the original, which is atomic. A crash at any point leaves
/// either the whole plaintext store, migrated again at the next open, or the whole encrypted one.
///
/// The old file's blocks are freed, not overwritten: flash storage cannot promise to erase them.
/// The phone's own encryption is what protects freed blocks.
pub fn encrypt_plaintext(
    path: &Path,
    passphrase: &Passphrase,
) -> Result<[u8; SALT_BYTES], StoreError> {
    {
        let plain = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        desa_cipher::quiet(&plain)?;
        if schema::version(&plain)? == 0 {
            return Err(StoreError::NotAStore(path.to_owned()));
        }
    }
    let key = StoreKey::fresh(passphrase)?;
    desa_cipher::encrypt_in_place(path, &key.cipher(), private_file).map_err(|e| match e {
        desa_cipher::CipherError::Sqlite(e) => StoreError::Sqlite(e),
        desa_cipher::CipherError::Io { path, source } => StoreError::Io { path, source },
        desa_cipher::CipherError::InUse(_) => StoreError::Setup(
            "another desa is using the store; try again when it has finished".into(),
        ),
        other => StoreError::Setup(format!("encrypting the store: {other}")),
    })?;
    Ok(key.salt())
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
        let key = a.cipher();
        let text = key.sql();
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
