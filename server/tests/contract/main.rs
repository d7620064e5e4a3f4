//! The storage contract, run against every store: what the doc comments of `ReportStore`,
//! `DirectoryStore` and `AuditStore` promise, one module per concern.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod directory;
mod reports;
mod trail;

use desa_server::audit::{verify, Action, AuditEvent, AuditKey, Who};
use desa_server::store::memory::{MemoryStore, MEMORY_AUDIT_KEY};
use desa_server::store::sqlite::{Encryption, SqliteStore};
use desa_server::store::{
    ActorBinding, Commit, DeviceRecord, HeldRow, ReportQuery, ReportRow, ReportStore, ReportWrite,
    Store, StoreError, StoredChange, Uploader, UserRecord,
};
use sync_core::protocol::server::Receipt;
use sync_core::protocol::{PageMark, Position};
use sync_core::{DeviceId, ReportId, ReportKind, Role, Verifier, VillageCode};

/// The contract holds for the encrypted store the server runs.
pub(crate) const KEY: Encryption = Encryption::Key([7; 32]);

/// Run `check` against a fresh store of every kind.
pub(crate) fn each_store(check: impl Fn(&dyn Store)) {
    check(&MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    check(
        &SqliteStore::open(&dir.path().join("db.sqlite3"), KEY)
            .unwrap()
            .with_audit(AuditKey::new(MEMORY_AUDIT_KEY), None),
    );
}

pub(crate) fn village(code: &str) -> VillageCode {
    VillageCode::parse(code).unwrap()
}

pub(crate) fn id(n: u8) -> ReportId {
    ReportId::from_random([n; 16])
}

pub(crate) fn row(n: u8, village_code: &str, status: &str) -> ReportRow {
    ReportRow {
        id: id(n),
        kind: ReportKind::Incident,
        village: village(village_code),
        status: Some(status.into()),
        title: Some(format!("report {n}")),
        created_at: "2026-11-28T08:00:00Z".into(),
        updated_at: 0,
        last_seq: 0,
        json: format!("{{\"n\":{n}}}"),
    }
}

pub(crate) fn write(
    n: u8,
    village_code: &str,
    status: &str,
    change: u8,
    snapshot: Option<Vec<u8>>,
) -> ReportWrite {
    ReportWrite {
        row: row(n, village_code, status),
        changes: vec![StoredChange {
            hash: [change; 32],
            bytes: vec![change; 10],
            uploader: uploader(),
        }],
        snapshot,
        receipts: vec![Receipt {
            seq: 0,
            received_at: 0,
            heads: vec![[change; 32]],
        }],
    }
}

pub(crate) fn uploader() -> Uploader {
    Uploader {
        device: DeviceId::from_bytes([4; 16]),
        user: "siti".into(),
    }
}

pub(crate) fn commit(seq: u64, at: i64, writes: Vec<ReportWrite>) -> Commit {
    Commit {
        seq,
        received_at: at,
        writes,
        ..Commit::default()
    }
}

pub(crate) fn held_row(n: u8, device: u8, since: i64) -> HeldRow {
    HeldRow {
        hash: [n; 32],
        bytes: vec![n; usize::from(n)],
        device: DeviceId::from_bytes([device; 16]),
        since,
    }
}

pub(crate) fn event(n: usize) -> AuditEvent {
    desa_server::audit::now(
        Who {
            user: format!("user{n}"),
            role: "coordinator".into(),
            device: None,
        },
        Action::Read {
            via: "test".into(),
            reports: vec![id(n as u8).to_string()],
            redacted: false,
        },
    )
}
