//! Encryption at rest for the SQLite store (SQLCipher, through `desa-cipher`): keying every
//! connection, telling a wrong key apart from a damaged file, and encrypting a plaintext database
//! left by an older version.
//!
//! The records name possible trafficking victims; a copied data disk, a backup or a stolen server
//! must not yield them. With [`Encryption::Key`] every page SQLCipher writes — the database, its
//! WAL and its temporary files — is encrypted and authenticated (HMAC per page).

use std::path::Path;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, ErrorCode};
use zeroize::Zeroize;

use super::{Sql, StoreError};

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
        desa_cipher::key_connection(conn, &desa_cipher::Key::raw(key)).sql()?;
    }
    // A connection that found a WAL left by a crash checkpoints it into the database when it
    // closes, even if its key could not read a page: no checkpoint on close until the key is
    // known to fit, so that a wrong key writes nothing.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
        .sql()?;
    match conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
                .sql()?;
            Ok(())
        }
        Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => {
            Err(StoreError::WrongKey {
                path: path.to_owned(),
            })
        }
        Err(e) => Err(StoreError::database(e)),
    }
}

/// If `encryption` has a key and `path` is a plaintext database (from a version before encryption
/// at rest), replace it with an encrypted copy holding exactly the same data
/// ([`desa_cipher::encrypt_in_place`]: crash-safe at every step). Returns whether it did.
pub(crate) fn encrypt_if_plaintext(
    path: &Path,
    encryption: &Encryption,
) -> Result<bool, StoreError> {
    let Encryption::Key(key) = encryption else {
        return Ok(false);
    };
    let header = desa_cipher::header(path).map_err(StoreError::database)?;
    if header.as_ref() != Some(desa_cipher::PLAINTEXT_HEADER) {
        return Ok(false);
    }
    desa_cipher::encrypt_in_place(path, &desa_cipher::Key::raw(key), |copy| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(copy)
            .map(|_| ())
    })
    .map_err(StoreError::database)?;
    tracing::warn!(
        db = %path.display(),
        "encrypted the existing plaintext database; the old plaintext pages may remain in free \
         space on the disk until overwritten"
    );
    Ok(true)
}
