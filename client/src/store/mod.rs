//! The device's local store: one SQLite file holding its reports, the changes waiting to be sent,
//! its sync positions and the refusals to show the volunteer.
//!
//! Reads go through [`Store`]; every write goes through a [`StoreTx`] (one immediate SQLite
//! transaction), which also implements sync-core's
//! [`DeviceStore`](sync_core::protocol::absorb::DeviceStore), so that a whole sync round is
//! absorbed atomically. Schema and versions: [`schema`]. The file is encrypted with a key derived
//! from the volunteer's passphrase ([`crypt`]); [`crypt::connect`] is the one way in.

pub mod crypt;
mod rows;
pub mod schema;
mod tx;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use sync_core::automerge::ChangeHash;
use sync_core::protocol::device::DeviceSync;
use sync_core::{DeviceId, DeviceToken, Report, ReportId, VillageCode};

use crate::clock::Now;
use crate::secrets::Passphrase;
use crypt::StoreKey;
pub use tx::StoreTx;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No store at the path.
    #[error(
        "no desa store at {0}: run `desa init --server URL --village CODE --name NAME` first \
         (or pass --store PATH / set DESA_STORE)"
    )]
    Missing(PathBuf),
    /// `init` on a path that already holds something.
    #[error(
        "a store already exists at {0}: refusing to overwrite it (use --store PATH for another)"
    )]
    Exists(PathBuf),
    /// The file is not a desa store.
    #[error("{0} is not a desa store")]
    NotAStore(PathBuf),
    /// The passphrase does not open the store. Nothing was read or written.
    #[error("wrong passphrase for the device store at {0}")]
    WrongPassphrase(PathBuf),
    /// Written by a newer `desa`.
    #[error(
        "the store at {path} has schema version {found}; this desa understands up to {supported}: \
         update desa"
    )]
    TooNew {
        /// The store.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        supported: i64,
    },
    /// Stored bytes that do not decode.
    #[error("the store is damaged: {0}")]
    Corrupt(String),
    /// SQLite could not be set up as the store needs.
    #[error("store setup: {0}")]
    Setup(String),
    /// SQLite failed.
    #[error("store database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// What.
        source: io::Error,
    },
}

/// Who this device is, and where it syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The store's own device id, taken at `init` from the token given then: its automerge actors
    /// start with these bytes, and it never changes. A token installed later (`desa token set`)
    /// may name another device: the server knows the store by [`Store::sync_device`].
    pub id: DeviceId,
    /// The volunteer's name for this device (author of its notes).
    pub name: String,
    /// The village it follows and reports in.
    pub village: VillageCode,
    /// The server's base URL (`http://host:port`).
    pub server: String,
}

/// What a new store is made with, besides who the device is.
#[derive(Debug)]
pub struct NewStore<'a> {
    /// Who the device is; `device.id` must be the token's device.
    pub device: &'a DeviceInfo,
    /// The device token, shown to the server with every request.
    pub token: &'a DeviceToken,
    /// The office's own CA certificate(s), PEM, when the server's certificate is not signed by a
    /// public CA.
    pub ca_pem: Option<&'a str>,
    /// The initial sync positions.
    pub sync: &'a DeviceSync,
}

/// One report as `desa list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportSummary {
    /// The report.
    pub id: ReportId,
    /// Its kind (absent only in a damaged document).
    pub kind: Option<String>,
    /// Its title, if the kind has one and it is set.
    pub title: Option<String>,
    /// Its workflow status, if the kind has one.
    pub status: Option<String>,
    /// Device clock of its creation.
    pub created_at: Option<String>,
    /// Changes waiting to be sent.
    pub waiting: usize,
}

/// A refusal kept for the volunteer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRefusal {
    /// The report.
    pub report: ReportId,
    /// The change that was refused (or could not be re-applied).
    pub change: ChangeHash,
    /// The refusal code (`schema`, `fixed_field`…: [`sync_core::RefusalCode::as_str`]).
    pub code: String,
    /// The server's sentence.
    pub detail: String,
    /// Device clock when the refusal was recorded.
    pub recorded_at: String,
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    encrypted_now: bool,
}

impl Store {
    /// Create a new store at `path` (and its directory), encrypted with a key derived from
    /// `passphrase`. Refuses if anything is already there.
    ///
    /// The file is created first, exclusively, readable by its owner only: it holds names of
    /// victims and witnesses. If a later step fails the file is removed, so `init` can be retried.
    pub fn create(
        path: &Path,
        new: &NewStore<'_>,
        passphrase: &Passphrase,
        now: &Now,
    ) -> Result<Store, StoreError> {
        if new.token.device() != new.device.id {
            return Err(StoreError::Setup(
                "the device id must be the token's device".into(),
            ));
        }
        if path.exists() {
            return Err(StoreError::Exists(path.to_owned()));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        private_file(path).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => StoreError::Exists(path.to_owned()),
            _ => StoreError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        let made = StoreKey::fresh(passphrase).and_then(|key| Self::fill(path, new, &key, now));
        if made.is_err() {
            // Best effort: the error being returned is the one worth showing.
            let _ = fs::remove_file(path);
        }
        made
    }

    fn fill(
        path: &Path,
        new: &NewStore<'_>,
        key: &StoreKey,
        now: &Now,
    ) -> Result<Store, StoreError> {
        let mut conn = crypt::open_keyed(path, key)?;
        schema::configure(&conn)?;
        // Switching to write-ahead logging wrote page 1 to the file itself. If SQLCipher did not
        // put the salt first, no later `desa` could find the key: better to fail now.
        if crypt::format(path)? != (crypt::Format::Encrypted { salt: key.salt() }) {
            return Err(StoreError::Setup(
                "SQLCipher did not write the salt at the start of the store".into(),
            ));
        }
        schema::migrate(&mut conn, path)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let device = new.device;
        let settings = [
            ("device_id", device.id.to_string()),
            ("device_name", device.name.clone()),
            ("village", device.village.to_string()),
            ("server_url", device.server.clone()),
            ("created_at", now.rfc3339.clone()),
        ];
        for (key, value) in &settings {
            rows::put_meta(&tx, key, value.as_bytes())?;
        }
        rows::put_meta(
            &tx,
            "token",
            zeroize::Zeroizing::new(new.token.reveal()).as_bytes(),
        )?;
        if let Some(pem) = new.ca_pem {
            rows::put_meta(&tx, "server_ca_pem", pem.as_bytes())?;
        }
        rows::put_sync_state(&tx, new.sync)?;
        tx.commit()?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            encrypted_now: false,
        })
    }

    /// Open the store at `path` with its passphrase, upgrading its schema if it is older than this
    /// build's. A store written before encryption is encrypted with `passphrase` first
    /// ([`Store::encrypted_now`] tells).
    pub fn open(path: &Path, passphrase: &Passphrase) -> Result<Store, StoreError> {
        let crypt::Connected {
            mut conn,
            encrypted_now,
        } = crypt::connect(path, passphrase)?;
        let version = schema::version(&conn).map_err(|e| match e.sqlite_error_code() {
            Some(ErrorCode::NotADatabase) => StoreError::NotAStore(path.to_owned()),
            _ => StoreError::Sqlite(e),
        })?;
        if version == 0 {
            return Err(StoreError::NotAStore(path.to_owned()));
        }
        schema::configure(&conn)?;
        schema::migrate(&mut conn, path)?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            encrypted_now,
        })
    }

    /// Whether opening found a plain SQLite store (written before stores were encrypted) and
    /// encrypted it, so that the volunteer can be told once.
    pub fn encrypted_now(&self) -> bool {
        self.encrypted_now
    }

    /// The device token, if the store has one (stores made before tokens have none).
    ///
    /// Its device is the store's own id when `init` stored it, and usually another one once
    /// `desa token set` replaced it (the office issues a new device with every token).
    pub fn token(&self) -> Result<Option<DeviceToken>, StoreError> {
        stored_token(&self.conn)
    }

    /// The device the server knows this store as: the token's device, or the store's own id in a
    /// store without a token. `desa status` shows it, and every sync request names it, because the
    /// server attributes a sync to the device whose token authenticated it (its audit trail, and
    /// `desa-server device list`, name that device). The store's own id ([`DeviceInfo::id`])
    /// stays the actor of its edits.
    pub fn sync_device(&self) -> Result<DeviceId, StoreError> {
        match self.token()? {
            Some(token) => Ok(token.device()),
            None => Ok(self.device()?.id),
        }
    }

    /// Install `token` as the device token, replacing the one stored, if any; returns that one
    /// (`None` when there was none, or it was damaged past reading).
    ///
    /// Only the token's row changes, in one transaction: every report, waiting change, refusal,
    /// actor generation and sync position stays, and so does the store's own device id, so that
    /// the edits waiting in the outbox are sent as they are with the new token. A crash leaves the
    /// old token or the new one.
    pub fn set_token(&mut self, token: &DeviceToken) -> Result<Option<DeviceToken>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A damaged old token must not stand in the way of the new one.
        let previous = stored_token(&tx).ok().flatten();
        rows::put_meta(
            &tx,
            "token",
            zeroize::Zeroizing::new(token.reveal()).as_bytes(),
        )?;
        tx.commit()?;
        Ok(previous)
    }

    /// The office CA certificate(s) the server's certificate is checked against, if given at
    /// `init` (otherwise the public web roots are used).
    pub fn server_ca_pem(&self) -> Result<Option<String>, StoreError> {
        rows::meta_text(&self.conn, "server_ca_pem")
    }

    /// Where the store is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Start a write. Immediate, so that a read-modify-write (an edit, a sync round) never
    /// interleaves with another `desa` process writing the same report.
    pub fn begin(&mut self, now: &Now) -> Result<StoreTx<'_>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        StoreTx::new(tx, now.clone())
    }

    /// Who this device is.
    pub fn device(&self) -> Result<DeviceInfo, StoreError> {
        device_info(&self.conn)
    }

    /// The sync positions.
    pub fn sync_state(&self) -> Result<DeviceSync, StoreError> {
        rows::sync_state(&self.conn)
    }

    /// When the last sync round was committed (device clock), if ever.
    pub fn last_sync(&self) -> Result<Option<String>, StoreError> {
        rows::meta_text(&self.conn, "last_sync")
    }

    /// A report on this device.
    pub fn report(&self, id: ReportId) -> Result<Option<Report>, StoreError> {
        rows::load_doc(&self.conn, id)?
            .map(|doc| {
                Report::from_doc(id, doc)
                    .map_err(|e| StoreError::Corrupt(format!("report {id}: {e}")))
            })
            .transpose()
    }

    /// How many changes of a report are waiting to be sent.
    pub fn waiting_for(&self, id: ReportId) -> Result<usize, StoreError> {
        rows::waiting_for(&self.conn, id)
    }

    /// Every change waiting to be sent, grouped per report, in the order they were made.
    pub fn outbox(&self) -> Result<Vec<(ReportId, Vec<sync_core::automerge::Change>)>, StoreError> {
        rows::outbox(&self.conn)
    }

    /// Waiting changes per report, in the order the reports would be sent.
    pub fn waiting(&self) -> Result<Vec<(ReportId, usize)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT report, COUNT(*) FROM outbox GROUP BY report ORDER BY MIN(n)")?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let id = rows::report_id(&row.get::<_, Vec<u8>>(0)?)?;
            let n: i64 = row.get(1)?;
            out.push((id, usize::try_from(n).unwrap_or(0)));
        }
        Ok(out)
    }

    /// Every report on the device, oldest first (by device clock, then id: a stable order).
    pub fn summaries(&self) -> Result<Vec<ReportSummary>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT r.id, r.kind, r.title, r.status, r.created_at,
                    (SELECT COUNT(*) FROM outbox o WHERE o.report = r.id)
             FROM reports r ORDER BY r.created_at, r.id",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let waiting: i64 = row.get(5)?;
            out.push(ReportSummary {
                id: rows::report_id(&row.get::<_, Vec<u8>>(0)?)?,
                kind: row.get(1)?,
                title: row.get(2)?,
                status: row.get(3)?,
                created_at: row.get(4)?,
                waiting: usize::try_from(waiting).unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Every refusal recorded, oldest first.
    pub fn refusals(&self) -> Result<Vec<StoredRefusal>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT report, change_hash, code, detail, recorded_at FROM refusals ORDER BY n",
        )?;
        let mut rows = stmt.query([])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(StoredRefusal {
                report: rows::report_id(&row.get::<_, Vec<u8>>(0)?)?,
                change: rows::change_hash(&row.get::<_, Vec<u8>>(1)?)?,
                code: row.get(2)?,
                detail: row.get(3)?,
                recorded_at: row.get(4)?,
            });
        }
        Ok(out)
    }
}

fn stored_token(conn: &Connection) -> Result<Option<DeviceToken>, StoreError> {
    let Some(text) = rows::meta_text(conn, "token")?.map(zeroize::Zeroizing::new) else {
        return Ok(None);
    };
    // The stored text is not repeated in the error.
    text.parse()
        .map(Some)
        .map_err(|_| StoreError::Corrupt("the stored device token does not parse".into()))
}

fn device_info(conn: &Connection) -> Result<DeviceInfo, StoreError> {
    let id = rows::required_text(conn, "device_id")?;
    let village = rows::required_text(conn, "village")?;
    Ok(DeviceInfo {
        id: id
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("device id: {e}")))?,
        name: rows::required_text(conn, "device_name")?,
        village: VillageCode::parse(&village)
            .map_err(|e| StoreError::Corrupt(format!("village: {e}")))?,
        server: rows::required_text(conn, "server_url")?,
    })
}

#[cfg(unix)]
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

#[cfg(unix)]
pub(crate) fn private_file(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}

#[cfg(not(unix))]
pub(crate) fn private_file(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map(drop)
}
