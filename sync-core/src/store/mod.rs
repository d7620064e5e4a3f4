//! The storage contract: what the server keeps, as three narrow, fallible, synchronous traits —
//! one per concern — and the records they hold.
//!
//! * [`ReportStore`] — reports: their documents (snapshot and tail), materialized rows, receipts,
//!   held changes, feeds and coordinator queries, and the peers' saved sync states. Its
//!   [`ReportStore::commit`] is the one write of an ingest.
//! * [`DirectoryStore`] — people, their devices, and the actors bound to them.
//! * [`AuditStore`] — the sealed audit trail.
//!
//! A [`Commit`] spans the three on purpose: an ingest's changes, the actors it binds and the
//! audit entries that record it are written together or not at all.
//!
//! The traits live here, beside the pure core that reads through them, so that the server's
//! engine and the simulator run the same core over any store: [`memory::MemoryStore`] is the
//! reference (tests, the simulator); the server's SQLite store is the embedded default; a
//! PostgreSQL store would be a third. One contract test suite (`server/tests/store_contract.rs`)
//! runs against every implementation. Every method is called from blocking threads, never from
//! an async executor.

pub mod memory;

use std::collections::HashMap;
use std::sync::Arc;

use crate::audit::{AuditEntry, AuditEvent};
use crate::protocol::server::Receipt;
use crate::protocol::Position;
use crate::{DeviceId, DistrictCode, ReportId, ReportKind, Role, Verifier, VillageCode};

/// A storage failure. The server answers 500 and acknowledges nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database failed (IO, full disk, locked…); the underlying error is its source.
    #[error("database: {0}")]
    Database(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// Stored bytes do not decode: the store is damaged. Never a panic.
    #[error("corrupt stored data for {what}: {detail}")]
    Corrupt {
        /// What was being read.
        what: String,
        /// Why it does not decode.
        detail: String,
    },
    /// A user or device that already exists, or a device for a user that does not.
    #[error("{0}")]
    Conflict(String),
    /// The audit trail cannot be written (no audit key configured, or its anchor file failed).
    #[error("audit: {0}")]
    Audit(String),
    /// The database exists but this key does not open it (or it is not a database at all).
    #[error("the database at {} cannot be opened with this key: wrong key file?", path.display())]
    WrongKey {
        /// Database path.
        path: std::path::PathBuf,
    },
    /// A commit whose sequence number does not follow the last one.
    #[error("sequence {given} does not follow {last}")]
    Sequence {
        /// Last committed seq.
        last: u64,
        /// Seq of the refused commit.
        given: u64,
    },
    /// A lock guarding the store was poisoned by a panic elsewhere.
    #[error("a store lock was poisoned by a panic")]
    Poisoned,
}

impl StoreError {
    /// A database failure with `source` as its cause.
    pub fn database(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StoreError::Database(Arc::new(source))
    }

    /// A database failure described in words (no underlying error).
    pub fn database_msg(message: impl Into<String>) -> Self {
        StoreError::Database(Arc::new(Message(message.into())))
    }
}

/// A failure described in words only.
#[derive(Debug)]
struct Message(String);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Message {}

/// A report's stored state, as needed to merge into it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoredDoc {
    /// The last compacted snapshot (automerge `save()`), possibly empty.
    pub snapshot: Vec<u8>,
    /// Changes accepted since the snapshot, in commit order.
    pub tail: Vec<Vec<u8>>,
    /// Receipts of the report's updates (at most [`sync_core::protocol::server::MAX_RECEIPTS`]).
    pub receipts: Vec<Receipt>,
    /// Changes held for missing dependencies, with who uploaded them.
    pub held: Vec<HeldRow>,
    /// Seq of the latest update (0 if the report has only held changes).
    pub last_seq: u64,
}

impl StoredDoc {
    /// Snapshot and tail as one loadable byte string (automerge loads a document chunk followed by
    /// change chunks): the whole document, without loading it.
    pub fn full_bytes(&self) -> Vec<u8> {
        let mut out = self.snapshot.clone();
        for change in &self.tail {
            out.extend_from_slice(change);
        }
        out
    }
}

/// A change held for missing dependencies: its bytes, the device that uploaded it (whose access
/// judges it when its dependencies arrive) and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRow {
    /// The change's hash.
    pub hash: [u8; 32],
    /// The change, as uploaded.
    pub bytes: Vec<u8>,
    /// The device that uploaded it.
    pub device: DeviceId,
    /// When it was uploaded (server clock, unix ms).
    pub since: i64,
}

/// Who uploaded a change: the authenticated device and its person, as the server recorded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploader {
    /// The device the change came through.
    pub device: DeviceId,
    /// Its person (account name).
    pub user: String,
}

/// An accepted change, as a commit writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredChange {
    /// Its hash.
    pub hash: [u8; 32],
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Who uploaded it.
    pub uploader: Uploader,
}

/// An actor bound to the person whose device first uploaded a change under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorBinding {
    /// The automerge actor id.
    pub actor: Vec<u8>,
    /// The person.
    pub user: String,
    /// The device that uploaded the first change under it.
    pub device: DeviceId,
    /// When (unix ms).
    pub at: i64,
}

/// The materialized, indexed row of a report (what coordinators query).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    /// Id.
    pub id: ReportId,
    /// Kind.
    pub kind: ReportKind,
    /// Village.
    pub village: VillageCode,
    /// Workflow status, for kinds that have one.
    pub status: Option<String>,
    /// Title, for kinds that have one.
    pub title: Option<String>,
    /// Device time of creation (as written in the document).
    pub created_at: String,
    /// Server time of the latest update, unix ms.
    pub updated_at: i64,
    /// Seq of the latest update.
    pub last_seq: u64,
    /// The merged document as JSON text.
    pub json: String,
}

/// What one commit writes for one report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportWrite {
    /// The new materialized row (its `last_seq`/`updated_at` are the commit's).
    pub row: ReportRow,
    /// Changes accepted now, in causal order: appended to the tail.
    pub changes: Vec<StoredChange>,
    /// When set, the new compacted snapshot: it replaces the snapshot and empties the tail (the
    /// changes above are already inside it). A report's first write always carries one.
    pub snapshot: Option<Vec<u8>>,
    /// The report's receipts after this update.
    pub receipts: Vec<Receipt>,
}

/// One atomic write: everything one ingest (a sync request, a coordinator edit, the village
/// profiles at first start) changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Commit {
    /// The seq of this update: the previous [`Store::last_seq`] + 1. Unused (may be anything)
    /// when `writes` is empty.
    pub seq: u64,
    /// Server clock, unix ms.
    pub received_at: i64,
    /// Reports whose state changed.
    pub writes: Vec<ReportWrite>,
    /// The full set of held changes for each report whose held set changed (empty: none held).
    pub held: Vec<(ReportId, Vec<HeldRow>)>,
    /// Actors bound to their first uploader by this commit. An actor already bound is left as it
    /// is (the first binding stands).
    pub bindings: Vec<ActorBinding>,
    /// Audit events for what this commit does, appended to the trail in the same transaction.
    pub audit: Vec<AuditEvent>,
}

impl Commit {
    /// Whether it stores nothing (a group whose every change was refused, or a probe).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.held.is_empty()
            && self.bindings.is_empty()
            && self.audit.is_empty()
    }
}

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Unique name.
    pub name: String,
    /// Role (never [`Role::Server`]).
    pub role: Role,
    /// A volunteer's villages (empty for other roles).
    pub villages: Vec<VillageCode>,
    /// Unix ms.
    pub created_at: i64,
    /// When the user was removed (unix ms): their devices are revoked and the name is not given to
    /// anyone else, so that history and the audit trail keep naming one person.
    pub removed_at: Option<i64>,
}

/// A device of a user, with the verifier of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device id (named by its token).
    pub id: DeviceId,
    /// Its user's name.
    pub user: String,
    /// SHA-256 of the token's secret.
    pub verifier: Verifier,
    /// Unix ms.
    pub created_at: i64,
    /// When it was revoked (unix ms).
    pub revoked_at: Option<i64>,
}

/// One report of a feed page.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedRow {
    /// The report.
    pub id: ReportId,
    /// Seq of its latest update.
    pub last_seq: u64,
}

/// A coordinator query. Results are ordered by (last_seq, id); `after` continues a previous page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportQuery {
    /// Only this village.
    pub village: Option<VillageCode>,
    /// Only villages of this district.
    pub district: Option<DistrictCode>,
    /// Only this kind.
    pub kind: Option<ReportKind>,
    /// Only this status.
    pub status: Option<String>,
    /// Only reports the server updated after this time (unix ms).
    pub updated_since: Option<i64>,
    /// Continue after this (last_seq, id).
    pub after: Option<(u64, ReportId)>,
    /// At most this many rows.
    pub limit: usize,
}

/// When the server received one change of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeReceipt {
    /// The change.
    pub hash: [u8; 32],
    /// Seq of the update that brought it.
    pub seq: u64,
    /// Server clock, unix ms.
    pub received_at: i64,
    /// Who uploaded it (`None`: stored before uploaders were recorded).
    pub uploader: Option<Uploader>,
}

/// Reports per village and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VillageCount {
    /// Village.
    pub village: VillageCode,
    /// Kind.
    pub kind: ReportKind,
    /// Number of reports.
    pub count: u64,
}

/// Reports: everything one report's history needs, and the indexes coordinators and devices read.
pub trait ReportStore: Send + Sync {
    /// The stored state of a report: snapshot, tail, receipts and held changes. `None` when the
    /// server has nothing of it (not even held changes).
    fn load(&self, id: &ReportId) -> Result<Option<StoredDoc>, StoreError>;

    /// The highest seq committed so far (0 for an empty store).
    fn last_seq(&self) -> Result<u64, StoreError>;

    /// Write one commit atomically and durably: when this returns `Ok`, every part of it —
    /// changes, rows, receipts, held sets, bindings, audit entries, seq — survives a crash or power
    /// loss; when it returns `Err` (or the process dies during it), none of it is visible. Refuses
    /// a commit with writes whose seq is not `last_seq() + 1`. An actor already bound keeps its
    /// first binding.
    fn commit(&self, commit: &Commit) -> Result<(), StoreError>;

    /// Reports of `village` updated after `position` — `last_seq > position.since` and, if the
    /// position has a mark, `(last_seq, id) > mark` — ordered by `(last_seq, id)`, at most `limit`.
    fn feed(
        &self,
        village: VillageCode,
        position: &Position,
        limit: usize,
    ) -> Result<Vec<FeedRow>, StoreError>;

    /// The materialized row of a report.
    fn row(&self, id: &ReportId) -> Result<Option<ReportRow>, StoreError>;

    /// Rows matching a coordinator query, ordered by `(last_seq, id)`, at most `query.limit`.
    fn query(&self, query: &ReportQuery) -> Result<Vec<ReportRow>, StoreError>;

    /// When each change of a report was received, and who uploaded it, in seq order.
    fn change_receipts(&self, id: &ReportId) -> Result<Vec<ChangeReceipt>, StoreError>;

    /// Number of reports per village and kind (villages without reports are absent).
    fn village_counts(&self) -> Result<Vec<VillageCount>, StoreError>;

    /// The automerge sync states saved for a peer's storage (`storageId` of an automerge-repo
    /// peer), per report. Losing them costs bandwidth, never data.
    fn peer_sync_states(&self, storage_id: &str) -> Result<Vec<(ReportId, Vec<u8>)>, StoreError>;

    /// Save (replace) sync states for a peer's storage, atomically.
    fn save_peer_sync_states(
        &self,
        storage_id: &str,
        states: &[(ReportId, Vec<u8>)],
    ) -> Result<(), StoreError>;

    /// Changes and bytes each of `devices` has held, over all reports (devices with none: 0).
    fn held_usage(
        &self,
        devices: &[DeviceId],
    ) -> Result<HashMap<DeviceId, (usize, usize)>, StoreError>;

    /// Reports holding a change uploaded before `before` (unix ms), at most `limit`: where held
    /// changes may have expired.
    fn reports_with_held_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ReportId>, StoreError>;
}

/// People, their devices, and the actors bound to them.
pub trait DirectoryStore: Send + Sync {
    /// Add a user and its audit event atomically. A taken name (also of a removed user) is
    /// [`StoreError::Conflict`].
    fn add_user(&self, user: &UserRecord, audit: &AuditEvent) -> Result<(), StoreError>;

    /// Add a device of an existing, not removed user and its audit event atomically.
    fn add_device(&self, device: &DeviceRecord, audit: &AuditEvent) -> Result<(), StoreError>;

    /// Revoke a device at `at` (unix ms) and audit it. `Ok(false)`: no such device, or already
    /// revoked (nothing written).
    fn revoke_device(&self, id: DeviceId, at: i64, audit: &AuditEvent) -> Result<bool, StoreError>;

    /// Change a user's role and villages, and audit it, atomically. `Ok(false)`: no such user (or
    /// a removed one); nothing written.
    fn update_user(
        &self,
        name: &str,
        role: Role,
        villages: &[VillageCode],
        audit: &AuditEvent,
    ) -> Result<bool, StoreError>;

    /// Remove a user at `at` (unix ms): mark them removed, revoke every device of theirs, and
    /// audit it, atomically. `Ok(false)`: no such user, or already removed; nothing written.
    fn remove_user(&self, name: &str, at: i64, audit: &AuditEvent) -> Result<bool, StoreError>;

    /// Every user, by name, removed ones included.
    fn users(&self) -> Result<Vec<UserRecord>, StoreError>;

    /// Every device, revoked ones included.
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError>;

    /// A number that changes whenever a user or device is added, changed or revoked (by this
    /// process or another one sharing the database): the server polls it to notice.
    fn directory_version(&self) -> Result<u64, StoreError>;

    /// The persons the given actors are bound to (actors never bound are absent). Bindings are
    /// written by [`ReportStore::commit`].
    fn actor_owners(&self, actors: &[Vec<u8>]) -> Result<HashMap<Vec<u8>, String>, StoreError>;
}

/// The audit trail: entries sealed in a chain (`crate::audit`), appended only.
pub trait AuditStore: Send + Sync {
    /// Append events to the audit trail, durably.
    fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;

    /// Audit entries with `seq > after`, in order, at most `limit`.
    fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
}

/// A store of all three concerns: what a server runs on.
pub trait Store: ReportStore + DirectoryStore + AuditStore + 'static {}

impl<T: ReportStore + DirectoryStore + AuditStore + 'static> Store for T {}

/// Compact a report's tail into a new snapshot once it holds this many changes: loading then
/// costs one snapshot parse instead of replaying many small changes, and the tail stays short.
pub const COMPACT_AFTER: usize = 32;

/// Refuse a commit with writes whose seq does not follow `last` (the store's last seq).
pub fn seq_check(last: u64, commit: &Commit) -> Result<(), StoreError> {
    if !commit.writes.is_empty() && commit.seq != last + 1 {
        return Err(StoreError::Sequence {
            last,
            given: commit.seq,
        });
    }
    Ok(())
}

/// Encode receipts for storage.
pub fn encode_receipts(receipts: &[Receipt]) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(receipts).map_err(StoreError::database)
}

/// Decode stored receipts.
pub fn decode_receipts(id: &ReportId, bytes: &[u8]) -> Result<Vec<Receipt>, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt {
        what: format!("receipts of {id}"),
        detail: e.to_string(),
    })
}
