//! The audit trail in SQLite: `desa-server audit verify` (admin::verify_audit) finds an edited,
//! deleted, inserted or truncated entry, even by someone who can write the database file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use desa_server::admin::{self, AdminError};
use desa_server::audit::{Action, AuditKey, Tamper, Who};
use desa_server::store::sqlite::{Encryption, SqliteStore};
use desa_server::store::AuditStore;

const KEY: [u8; 32] = [0x42; 32];

struct Trail {
    _dir: tempfile::TempDir,
    db: PathBuf,
    anchor: PathBuf,
}

fn open(db: &Path, anchor: &Path) -> SqliteStore {
    // Plaintext, so that the test can tamper with plain SQL; the chain does not depend on it.
    SqliteStore::open(db, Encryption::Plaintext)
        .unwrap()
        .with_audit(AuditKey::new(KEY), Some(anchor.to_owned()))
}

/// A trail of five entries (reads by user1…user5).
fn trail() -> Trail {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data").join("db.sqlite3");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let anchor = dir.path().join("audit-head");
    let store = open(&db, &anchor);
    for n in 1..=5 {
        store
            .append_audit(&[desa_server::audit::now(
                Who {
                    user: format!("user{n}"),
                    role: "analyst".into(),
                    device: None,
                },
                Action::Read {
                    via: "GET /api/v1/reports".into(),
                    reports: vec![format!("report{n}")],
                    redacted: true,
                },
            )])
            .unwrap();
    }
    Trail {
        _dir: dir,
        db,
        anchor,
    }
}

fn verify(t: &Trail) -> Result<String, AdminError> {
    admin::verify_audit(
        &open(&t.db, &t.anchor),
        &AuditKey::new(KEY),
        Some(&t.anchor),
    )
}

/// Tamper as someone with the database file would: bypass the append-only triggers.
fn tamper(t: &Trail, sql: &str) {
    let conn = rusqlite::Connection::open(&t.db).unwrap();
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_no_update; DROP TRIGGER IF EXISTS audit_no_delete;",
    )
    .unwrap();
    conn.execute_batch(sql).unwrap();
}

fn tampered(t: &Trail) -> Tamper {
    match verify(t) {
        Err(AdminError::Tampered(found)) => found,
        other => panic!("tampering not detected: {other:?}"),
    }
}

#[test]
fn an_intact_trail_verifies() {
    let t = trail();
    let ok = verify(&t).unwrap();
    assert!(ok.contains("5 entries"), "{ok}");
}

#[test]
fn the_trail_is_append_only_in_the_database() {
    let t = trail();
    let conn = rusqlite::Connection::open(&t.db).unwrap();
    let update = conn.execute("UPDATE audit SET record = 'x' WHERE seq = 1", []);
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = conn.execute("DELETE FROM audit WHERE seq = 5", []);
    assert!(delete.unwrap_err().to_string().contains("append-only"));
}

#[test]
fn an_edited_entry_is_found() {
    let t = trail();
    tamper(
        &t,
        "UPDATE audit SET record = replace(record, 'report2', 'report9') WHERE seq = 2",
    );
    assert_eq!(tampered(&t), Tamper::BadSeal { seq: 2 });
}

#[test]
fn a_deleted_entry_is_found() {
    let t = trail();
    tamper(&t, "DELETE FROM audit WHERE seq = 3");
    assert_eq!(tampered(&t), Tamper::Gap { after: 2, found: 4 });
}

#[test]
fn an_inserted_entry_is_found() {
    let t = trail();
    // Renumber to make room, then insert a plausible entry whose seal cannot be right.
    tamper(
        &t,
        "UPDATE audit SET seq = seq + 100 WHERE seq >= 3;
         UPDATE audit SET seq = seq - 99 WHERE seq >= 103;
         INSERT INTO audit (seq, record, mac) SELECT 3, record, mac FROM audit WHERE seq = 2;",
    );
    assert_eq!(tampered(&t), Tamper::BadSeal { seq: 3 });
}

#[test]
fn a_truncated_trail_is_found_through_the_anchor() {
    let t = trail();
    tamper(&t, "DELETE FROM audit WHERE seq >= 4");
    assert_eq!(
        tampered(&t),
        Tamper::Truncated {
            last: 3,
            anchored: 5
        }
    );
    // Emptied completely: still found.
    tamper(&t, "DELETE FROM audit");
    assert_eq!(
        tampered(&t),
        Tamper::Truncated {
            last: 0,
            anchored: 5
        }
    );
}

#[test]
fn a_wrong_key_cannot_vouch_for_the_trail() {
    let t = trail();
    let store = open(&t.db, &t.anchor);
    let wrong = admin::verify_audit(&store, &AuditKey::new([0; 32]), Some(&t.anchor));
    assert!(matches!(
        wrong,
        Err(AdminError::Tampered(Tamper::BadSeal { seq: 1 }))
    ));
}
