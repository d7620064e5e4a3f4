//! Encryption at rest, checked on the bytes on disk: a report ingested through the real engine is
//! readable in the files of a plaintext store (the negative control: the scan can find it) and in
//! no file of an encrypted one — the database, its WAL before a checkpoint, or after one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

use desa_server::audit::AuditKey;
use desa_server::engine::Engine;
use desa_server::store::sqlite::{Encryption, SqliteStore};
use desa_server::store::{ReportQuery, ReportStore, StoreError};
use serde_json::json;
use sync_core::sim::MemoryDevice;
use sync_core::{DeviceId, Edit, FieldPath, ReportId, ReportKind, VillageCode};

const KEY: [u8; 32] = [0x5a; 32];

fn village() -> VillageCode {
    VillageCode::parse("6302010001").unwrap()
}

/// A narrative no other bytes of the store could contain by chance.
fn narrative(n: u32) -> String {
    format!(
        "NEGATIVE-CONTROL-{n}: Siti, 16, taken from the jetty at Batulicin by a man named Rahmat"
    )
}

/// Device `n` writes an incident with `narrative(n)` and syncs it through the engine.
fn ingest_incident(engine: &Engine, n: u8) -> ReportId {
    let mut device = MemoryDevice::new(DeviceId::from_bytes([n; 16]), village());
    let id = device
        .create(
            ReportKind::Incident,
            &[
                Edit::Set {
                    path: FieldPath::root("category"),
                    value: json!("other"),
                },
                Edit::Set {
                    path: FieldPath::root("title"),
                    value: json!(format!("report {n}")),
                },
                Edit::AppendText {
                    field: FieldPath::root("narrative"),
                    text: narrative(u32::from(n)),
                },
            ],
        )
        .unwrap();
    loop {
        let answer = engine.sync(&device.request(), &common::siti_on(n)).unwrap();
        if !device.handle_response(&answer).unwrap() {
            break;
        }
    }
    id
}

/// An engine over `store`, with the village profiles.
fn engine(store: &Arc<SqliteStore>) -> Engine {
    common::enrol(
        store.as_ref(),
        "siti",
        sync_core::Role::Volunteer,
        &[village()],
        &[1, 2, 3, 4, 5],
    );
    let directory = Arc::new(desa_server::auth::Directory::load(store.clone()).unwrap());
    let engine = Engine::new(
        store.clone(),
        directory,
        desa_server::engine::EngineOptions {
            cache_reports: 64,
            ..Default::default()
        },
    )
    .unwrap();
    engine.seed_village_profiles().unwrap();
    engine
}

/// Drop the engine and wait until its writer thread has let go of the store (a condition, polled).
fn stop(engine: Engine, store: &Arc<SqliteStore>) {
    drop(engine);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Arc::strong_count(store) > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine never released the store"
        );
        std::thread::yield_now();
    }
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Name and bytes of every file in `dir`.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    file_names(dir)
        .into_iter()
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).unwrap();
            (name, bytes)
        })
        .collect()
}

/// Move everything from the WAL into the database file, through a connection of our own.
fn checkpoint(db: &Path, key: Option<&[u8; 32]>) {
    let conn = rusqlite::Connection::open(db).unwrap();
    if let Some(key) = key {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        conn.execute_batch(&format!("PRAGMA key = \"x'{hex}'\";"))
            .unwrap();
    }
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0, "checkpoint blocked");
}

fn all_rows(store: &SqliteStore) -> Vec<(ReportId, u64, String)> {
    store
        .query(&ReportQuery {
            limit: 10_000,
            ..ReportQuery::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.last_seq, r.json))
        .collect()
}

/// A store as the engine needs it (with an audit key).
fn audited(db: &std::path::Path, encryption: Encryption) -> Arc<SqliteStore> {
    Arc::new(
        SqliteStore::open(db, encryption)
            .unwrap()
            .with_audit(AuditKey::new([1; 32]), None),
    )
}

#[test]
fn negative_control_a_plaintext_store_shows_the_narrative_in_its_wal_and_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("desa.sqlite3");
    let store = audited(&db, Encryption::Plaintext);
    let engine = engine(&store);
    ingest_incident(&engine, 1);
    let needle = narrative(1);

    // Committed, not yet checkpointed: in the WAL.
    let found = files_containing(dir.path(), needle.as_bytes());
    assert!(
        found.iter().any(|p| p.ends_with("desa.sqlite3-wal")),
        "the scan must find plaintext in the WAL, or it proves nothing: {found:?}"
    );
    checkpoint(&db, None);
    let found = files_containing(dir.path(), needle.as_bytes());
    assert!(
        found.iter().any(|p| p.ends_with("desa.sqlite3")),
        "after a checkpoint the database file holds it: {found:?}"
    );
    stop(engine, &store);
}

#[test]
fn an_encrypted_store_shows_the_narrative_in_no_file_before_or_after_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("desa.sqlite3");
    let store = audited(&db, Encryption::Key(KEY));
    let engine = engine(&store);
    let id = ingest_incident(&engine, 1);
    let needle = narrative(1);

    // The report is there, readable through the store…
    let row = store.row(&id).unwrap().unwrap();
    assert!(row.json.contains(&needle), "{}", row.json);
    // …and the WAL holds the commit (so the scan below looks at real data)…
    let wal = std::fs::metadata(dir.path().join("desa.sqlite3-wal")).unwrap();
    assert!(wal.len() > 0);
    // …but no file shows it.
    assert_eq!(
        files_containing(dir.path(), needle.as_bytes()),
        Vec::<PathBuf>::new()
    );
    checkpoint(&db, Some(&KEY));
    assert_eq!(
        files_containing(dir.path(), needle.as_bytes()),
        Vec::<PathBuf>::new()
    );
    assert_ne!(
        &std::fs::read(&db).unwrap()[..16],
        b"SQLite format 3\0",
        "not even the SQLite header is in the clear"
    );
    stop(engine, &store);
}

#[test]
fn a_wrong_key_fails_at_open_with_one_clear_message_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("desa.sqlite3");
    {
        let store = audited(&db, Encryption::Key(KEY));
        let engine = engine(&store);
        ingest_incident(&engine, 1);
        stop(engine, &store);
    }
    let before = snapshot(dir.path());
    assert_eq!(file_names(dir.path()), ["desa.sqlite3"]);

    for wrong in [Encryption::Key([0x5b; 32]), Encryption::Plaintext] {
        let err = SqliteStore::open(&db, wrong)
            .err()
            .expect("opened with a wrong key");
        assert!(matches!(err, StoreError::WrongKey { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "the database at {} cannot be opened with this key: wrong key file?",
                db.display()
            )
        );
        assert_eq!(
            snapshot(dir.path()),
            before,
            "a failed open changed the files"
        );
    }
    // The right key still opens it, with everything in place.
    let store = SqliteStore::open(&db, Encryption::Key(KEY)).unwrap();
    assert!(store.last_seq().unwrap() > 0);
}

#[test]
fn a_plaintext_database_is_encrypted_in_place_keeping_every_report() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("desa.sqlite3");
    let store = audited(&db, Encryption::Plaintext);
    let engine = engine(&store);
    let ids: Vec<ReportId> = (1..=5).map(|n| ingest_incident(&engine, n)).collect();
    stop(engine, &store);
    let rows = all_rows(&store);
    let docs: Vec<_> = ids.iter().map(|id| store.load(id).unwrap()).collect();
    let seq = store.last_seq().unwrap();
    assert!(rows.len() > 5, "the incidents and the village profiles");
    // As after a crash of the old version: the last commits are only in the WAL, which no one
    // checkpointed (the connections are never closed).
    std::mem::forget(store);
    assert!(
        std::fs::metadata(dir.path().join("desa.sqlite3-wal"))
            .unwrap()
            .len()
            > 0
    );
    assert!(!files_containing(dir.path(), narrative(5).as_bytes()).is_empty());

    let store = SqliteStore::open(&db, Encryption::Key(KEY)).unwrap();
    assert_eq!(all_rows(&store), rows);
    assert_eq!(store.last_seq().unwrap(), seq);
    for (id, doc) in ids.iter().zip(&docs) {
        assert_eq!(&store.load(id).unwrap(), doc);
    }
    drop(store);
    for n in 1..=5 {
        assert_eq!(
            files_containing(dir.path(), narrative(n).as_bytes()),
            Vec::<PathBuf>::new(),
            "plaintext of report {n} left behind"
        );
    }
    assert_eq!(file_names(dir.path()), ["desa.sqlite3"]);
    // Encrypted for good: the key opens it again (no second migration), nothing else does.
    let store = SqliteStore::open(&db, Encryption::Key(KEY)).unwrap();
    assert_eq!(all_rows(&store), rows);
    drop(store);
    assert!(matches!(
        SqliteStore::open(&db, Encryption::Plaintext),
        Err(StoreError::WrongKey { .. })
    ));
}
