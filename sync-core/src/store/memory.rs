//! The reference store: everything in memory behind one lock. Not durable (it is for tests and for
//! checking that the contract tests describe behaviour, not SQLite details).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{
    seq_check, AuditStore, ChangeReceipt, Commit, DeviceRecord, DirectoryStore, FeedRow,
    ReportQuery, ReportRow, ReportStore, StoreError, StoredDoc, UserRecord, VillageCount,
};
use crate::audit::{self, AuditEntry, AuditEvent, AuditKey, Head};
use crate::protocol::Position;
use crate::{DeviceId, ReportId, Role, VillageCode};

#[derive(Default)]
struct Entry {
    row: Option<ReportRow>,
    doc: StoredDoc,
    receipts: Vec<ChangeReceipt>,
}

/// Everything in memory.
#[derive(Default)]
pub struct MemoryStore {
    entries: Mutex<BTreeMap<ReportId, Entry>>,
    peer_sync: Mutex<BTreeMap<(String, ReportId), Vec<u8>>>,
    directory: Mutex<Directory>,
}

/// Users, devices and the audit trail (sealed with a fixed test key: this store is for tests).
#[derive(Default)]
struct Directory {
    users: BTreeMap<String, UserRecord>,
    devices: Vec<DeviceRecord>,
    actors: HashMap<Vec<u8>, String>,
    version: u64,
    audit: Vec<AuditEntry>,
}

impl Directory {
    fn append(&mut self, events: &[AuditEvent]) {
        let tail = self.audit.last().map(|e| Head {
            seq: e.seq,
            mac: e.mac,
        });
        let sealed = audit::seal_after(&AuditKey::new(MEMORY_AUDIT_KEY), tail, events);
        self.audit.extend(sealed);
    }
}

/// The audit key of the in-memory store.
pub const MEMORY_AUDIT_KEY: [u8; 32] = [0x5a; 32];

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn directory<T>(&self, f: impl FnOnce(&mut Directory) -> T) -> Result<T, StoreError> {
        let mut guard = self.directory.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(f(&mut guard))
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut BTreeMap<ReportId, Entry>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = self.entries.lock().map_err(|_| StoreError::Poisoned)?;
        f(&mut guard)
    }
}

fn last_seq(entries: &BTreeMap<ReportId, Entry>) -> u64 {
    entries
        .values()
        .filter_map(|e| e.row.as_ref())
        .map(|r| r.last_seq)
        .max()
        .unwrap_or(0)
}

impl ReportStore for MemoryStore {
    fn load(&self, id: &ReportId) -> Result<Option<StoredDoc>, StoreError> {
        self.with(|m| {
            Ok(m.get(id)
                .and_then(|e| (e.row.is_some() || !e.doc.held.is_empty()).then(|| e.doc.clone())))
        })
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        self.with(|m| Ok(last_seq(m)))
    }

    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        self.with(|m| {
            seq_check(last_seq(m), commit)?;
            // Build the new entries aside, then swap them in: all or nothing.
            let mut staged: Vec<(ReportId, Entry)> = Vec::new();
            for write in &commit.writes {
                let id = write.row.id;
                let old = m.get(&id);
                let mut doc = old.map(|e| e.doc.clone()).unwrap_or_default();
                let mut receipts = old.map(|e| e.receipts.clone()).unwrap_or_default();
                for change in &write.changes {
                    if receipts.iter().any(|r| r.hash == change.hash) {
                        continue;
                    }
                    receipts.push(ChangeReceipt {
                        hash: change.hash,
                        seq: commit.seq,
                        received_at: commit.received_at,
                        uploader: Some(change.uploader.clone()),
                    });
                    doc.tail.push(change.bytes.clone());
                }
                if let Some(snapshot) = &write.snapshot {
                    doc.snapshot = snapshot.clone();
                    doc.tail.clear();
                }
                doc.receipts = write.receipts.clone();
                doc.last_seq = commit.seq;
                let mut row = write.row.clone();
                row.last_seq = commit.seq;
                row.updated_at = commit.received_at;
                staged.push((
                    id,
                    Entry {
                        row: Some(row),
                        doc,
                        receipts,
                    },
                ));
            }
            for (id, entry) in staged {
                let held = m.get(&id).map(|e| e.doc.held.clone()).unwrap_or_default();
                let mut entry = entry;
                entry.doc.held = held;
                m.insert(id, entry);
            }
            for (id, held) in &commit.held {
                m.entry(*id).or_default().doc.held = held.clone();
            }
            Ok(())
        })?;
        self.directory(|d| {
            for b in &commit.bindings {
                d.actors
                    .entry(b.actor.clone())
                    .or_insert_with(|| b.user.clone());
            }
            d.append(&commit.audit)
        })
    }

    fn feed(
        &self,
        village: VillageCode,
        position: &Position,
        limit: usize,
    ) -> Result<Vec<FeedRow>, StoreError> {
        self.with(|m| {
            let mut rows: Vec<FeedRow> = m
                .iter()
                .filter_map(|(id, e)| e.row.as_ref().map(|r| (id, r)))
                .filter(|(id, r)| {
                    r.village == village
                        && r.last_seq > position.since
                        && position
                            .after
                            .is_none_or(|mark| (r.last_seq, **id) > (mark.seq, mark.report))
                })
                .map(|(id, r)| FeedRow {
                    id: *id,
                    last_seq: r.last_seq,
                })
                .collect();
            rows.sort_by_key(|r| (r.last_seq, r.id));
            rows.truncate(limit);
            Ok(rows)
        })
    }

    fn row(&self, id: &ReportId) -> Result<Option<ReportRow>, StoreError> {
        self.with(|m| Ok(m.get(id).and_then(|e| e.row.clone())))
    }

    fn query(&self, q: &ReportQuery) -> Result<Vec<ReportRow>, StoreError> {
        self.with(|m| {
            let mut rows: Vec<ReportRow> = m
                .values()
                .filter_map(|e| e.row.clone())
                .filter(|r| {
                    q.village.is_none_or(|v| r.village == v)
                        && q.district.is_none_or(|d| r.village.district() == d)
                        && q.kind.is_none_or(|k| r.kind == k)
                        && q.status
                            .as_ref()
                            .is_none_or(|s| r.status.as_ref() == Some(s))
                        && q.updated_since.is_none_or(|t| r.updated_at > t)
                        && q.after.is_none_or(|after| (r.last_seq, r.id) > after)
                })
                .collect();
            rows.sort_by_key(|r| (r.last_seq, r.id));
            rows.truncate(q.limit);
            Ok(rows)
        })
    }

    fn change_receipts(&self, id: &ReportId) -> Result<Vec<ChangeReceipt>, StoreError> {
        self.with(|m| Ok(m.get(id).map(|e| e.receipts.clone()).unwrap_or_default()))
    }

    fn village_counts(&self) -> Result<Vec<VillageCount>, StoreError> {
        self.with(|m| {
            let mut counts: BTreeMap<(VillageCode, crate::ReportKind), u64> = BTreeMap::new();
            for row in m.values().filter_map(|e| e.row.as_ref()) {
                *counts.entry((row.village, row.kind)).or_default() += 1;
            }
            Ok(counts
                .into_iter()
                .map(|((village, kind), count)| VillageCount {
                    village,
                    kind,
                    count,
                })
                .collect())
        })
    }

    fn peer_sync_states(&self, storage_id: &str) -> Result<Vec<(ReportId, Vec<u8>)>, StoreError> {
        let map = self.peer_sync.lock().map_err(|_| StoreError::Poisoned)?;
        Ok(map
            .iter()
            .filter(|((s, _), _)| s == storage_id)
            .map(|((_, id), state)| (*id, state.clone()))
            .collect())
    }

    fn save_peer_sync_states(
        &self,
        storage_id: &str,
        states: &[(ReportId, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut map = self.peer_sync.lock().map_err(|_| StoreError::Poisoned)?;
        for (id, state) in states {
            map.insert((storage_id.to_owned(), *id), state.clone());
        }
        Ok(())
    }

    fn held_usage(
        &self,
        devices: &[DeviceId],
    ) -> Result<HashMap<DeviceId, (usize, usize)>, StoreError> {
        self.with(|m| {
            let mut out: HashMap<DeviceId, (usize, usize)> =
                devices.iter().map(|d| (*d, (0, 0))).collect();
            for row in m.values().flat_map(|e| &e.doc.held) {
                if let Some((n, bytes)) = out.get_mut(&row.device) {
                    *n += 1;
                    *bytes += row.bytes.len();
                }
            }
            Ok(out)
        })
    }

    fn reports_with_held_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ReportId>, StoreError> {
        self.with(|m| {
            Ok(m.iter()
                .filter(|(_, e)| e.doc.held.iter().any(|h| h.since < before))
                .map(|(id, _)| *id)
                .take(limit)
                .collect())
        })
    }
}

impl DirectoryStore for MemoryStore {
    fn add_user(&self, user: &UserRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.directory(|d| {
            if d.users.contains_key(&user.name) {
                return Err(StoreError::Conflict(format!(
                    "user {:?} already exists",
                    user.name
                )));
            }
            d.users.insert(user.name.clone(), user.clone());
            d.version += 1;
            d.append(std::slice::from_ref(audit));
            Ok(())
        })?
    }

    fn add_device(&self, device: &DeviceRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.directory(|d| {
            if d.users
                .get(&device.user)
                .is_none_or(|u| u.removed_at.is_some())
            {
                return Err(StoreError::Conflict(format!(
                    "no user {:?} (unknown, or removed)",
                    device.user
                )));
            }
            if d.devices.iter().any(|x| x.id == device.id) {
                return Err(StoreError::Conflict(format!(
                    "device {} already exists",
                    device.id
                )));
            }
            d.devices.push(device.clone());
            d.version += 1;
            d.append(std::slice::from_ref(audit));
            Ok(())
        })?
    }

    fn revoke_device(&self, id: DeviceId, at: i64, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.directory(|d| {
            match d
                .devices
                .iter_mut()
                .find(|x| x.id == id && x.revoked_at.is_none())
            {
                Some(device) => device.revoked_at = Some(at),
                None => return false,
            }
            d.version += 1;
            d.append(std::slice::from_ref(audit));
            true
        })
    }

    fn update_user(
        &self,
        name: &str,
        role: Role,
        villages: &[VillageCode],
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.directory(|d| {
            let Some(user) = d.users.get_mut(name).filter(|u| u.removed_at.is_none()) else {
                return false;
            };
            user.role = role;
            user.villages = villages.to_vec();
            d.version += 1;
            d.append(std::slice::from_ref(audit));
            true
        })
    }

    fn remove_user(&self, name: &str, at: i64, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.directory(|d| {
            let Some(user) = d.users.get_mut(name).filter(|u| u.removed_at.is_none()) else {
                return false;
            };
            user.removed_at = Some(at);
            for device in d.devices.iter_mut().filter(|x| x.user == name) {
                device.revoked_at.get_or_insert(at);
            }
            d.version += 1;
            d.append(std::slice::from_ref(audit));
            true
        })
    }

    fn actor_owners(&self, actors: &[Vec<u8>]) -> Result<HashMap<Vec<u8>, String>, StoreError> {
        self.directory(|d| {
            actors
                .iter()
                .filter_map(|a| d.actors.get(a).map(|u| (a.clone(), u.clone())))
                .collect()
        })
    }

    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.directory(|d| d.users.values().cloned().collect())
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.directory(|d| d.devices.clone())
    }

    fn directory_version(&self) -> Result<u64, StoreError> {
        self.directory(|d| d.version)
    }
}

impl AuditStore for MemoryStore {
    fn append_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.directory(|d| d.append(events))
    }

    fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.directory(|d| {
            d.audit
                .iter()
                .filter(|e| e.seq > after)
                .take(limit)
                .cloned()
                .collect()
        })
    }
}
