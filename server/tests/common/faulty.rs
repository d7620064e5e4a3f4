//! A store that fails or stalls on command: the engine's failure paths, tested.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use desa_server::audit::{AuditEntry, AuditEvent};
use desa_server::store::memory::MemoryStore;
use desa_server::store::{
    AuditStore, ChangeReceipt, Commit, DeviceRecord, DirectoryStore, FeedRow, ReportQuery,
    ReportRow, ReportStore, StoreError, StoredDoc, UserRecord, VillageCount,
};
use sync_core::protocol::Position;
use sync_core::{DeviceId, ReportId, Role, VillageCode};

/// What the next commits do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Commit.
    Normal,
    /// Fail, writing nothing.
    Fail,
    /// Wait until the mode changes (a disk that stopped answering).
    Stall,
}

/// [`MemoryStore`] whose commits obey a [`Mode`].
pub struct Faulty {
    inner: MemoryStore,
    mode: Mutex<Mode>,
    changed: Condvar,
    /// Commits waiting in [`Mode::Stall`].
    stalled: std::sync::atomic::AtomicUsize,
}

impl Faulty {
    pub fn new() -> Self {
        Faulty {
            inner: MemoryStore::new(),
            mode: Mutex::new(Mode::Normal),
            changed: Condvar::new(),
            stalled: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// How many commits are waiting on a stalled disk.
    pub fn stalled(&self) -> usize {
        self.stalled.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
        self.changed.notify_all();
    }
}

impl ReportStore for Faulty {
    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        let mut mode = self.mode.lock().unwrap();
        if *mode == Mode::Stall {
            self.stalled
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            while *mode == Mode::Stall {
                mode = self.changed.wait(mode).unwrap();
            }
            self.stalled
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        if *mode == Mode::Fail {
            return Err(StoreError::database_msg("injected: the disk is full"));
        }
        drop(mode);
        self.inner.commit(commit)
    }
    fn load(&self, id: &ReportId) -> Result<Option<StoredDoc>, StoreError> {
        self.inner.load(id)
    }
    fn last_seq(&self) -> Result<u64, StoreError> {
        self.inner.last_seq()
    }
    fn feed(&self, v: VillageCode, p: &Position, limit: usize) -> Result<Vec<FeedRow>, StoreError> {
        self.inner.feed(v, p, limit)
    }
    fn row(&self, id: &ReportId) -> Result<Option<ReportRow>, StoreError> {
        self.inner.row(id)
    }
    fn query(&self, q: &ReportQuery) -> Result<Vec<ReportRow>, StoreError> {
        self.inner.query(q)
    }
    fn change_receipts(&self, id: &ReportId) -> Result<Vec<ChangeReceipt>, StoreError> {
        self.inner.change_receipts(id)
    }
    fn village_counts(&self) -> Result<Vec<VillageCount>, StoreError> {
        self.inner.village_counts()
    }
    fn peer_sync_states(&self, s: &str) -> Result<Vec<(ReportId, Vec<u8>)>, StoreError> {
        self.inner.peer_sync_states(s)
    }
    fn save_peer_sync_states(&self, s: &str, st: &[(ReportId, Vec<u8>)]) -> Result<(), StoreError> {
        self.inner.save_peer_sync_states(s, st)
    }
    fn held_usage(&self, d: &[DeviceId]) -> Result<HashMap<DeviceId, (usize, usize)>, StoreError> {
        self.inner.held_usage(d)
    }
    fn reports_with_held_before(&self, b: i64, l: usize) -> Result<Vec<ReportId>, StoreError> {
        self.inner.reports_with_held_before(b, l)
    }
}

impl DirectoryStore for Faulty {
    fn add_user(&self, u: &UserRecord, a: &AuditEvent) -> Result<(), StoreError> {
        self.inner.add_user(u, a)
    }
    fn add_device(&self, d: &DeviceRecord, a: &AuditEvent) -> Result<(), StoreError> {
        self.inner.add_device(d, a)
    }
    fn revoke_device(&self, id: DeviceId, at: i64, a: &AuditEvent) -> Result<bool, StoreError> {
        self.inner.revoke_device(id, at, a)
    }
    fn update_user(
        &self,
        n: &str,
        r: Role,
        v: &[VillageCode],
        a: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.inner.update_user(n, r, v, a)
    }
    fn remove_user(&self, n: &str, at: i64, a: &AuditEvent) -> Result<bool, StoreError> {
        self.inner.remove_user(n, at, a)
    }
    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.inner.users()
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.inner.devices()
    }
    fn directory_version(&self) -> Result<u64, StoreError> {
        self.inner.directory_version()
    }
    fn actor_owners(&self, a: &[Vec<u8>]) -> Result<HashMap<Vec<u8>, String>, StoreError> {
        self.inner.actor_owners(a)
    }
}

impl AuditStore for Faulty {
    fn append_audit(&self, e: &[AuditEvent]) -> Result<(), StoreError> {
        self.inner.append_audit(e)
    }
    fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.inner.audit_entries(after, limit)
    }
}
