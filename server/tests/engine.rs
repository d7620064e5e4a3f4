//! The server engine over SQLite, driven by in-memory devices with real encoded requests: it must
//! behave like sync-core's reference server, and keep everything across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use desa_server::audit::AuditKey;
use desa_server::auth::Principal;
use desa_server::engine::Engine;
use desa_server::store::sqlite::{Encryption, SqliteStore};
use serde_json::json;
use sync_core::sim::MemoryDevice;
use sync_core::{DeviceId, Edit, FieldPath, ReportId, ReportKind, Role, VillageCode, Writer};

fn engine(dir: &Path) -> Engine {
    let store = SqliteStore::open(&dir.join("db.sqlite3"), Encryption::Key([3; 32]))
        .unwrap()
        .with_audit(AuditKey::new([1; 32]), None);
    let engine = Engine::new(Arc::new(store), 64).unwrap();
    engine.seed_village_profiles().unwrap();
    engine
}

/// A volunteer of the test village.
fn volunteer() -> Principal {
    Principal {
        user: "siti".into(),
        device: DeviceId::from_bytes([0x51; 16]),
        access: sync_core::Access::in_villages(Role::Volunteer, [village()]),
    }
}

fn coordinator_principal() -> Principal {
    Principal {
        user: "office".into(),
        device: DeviceId::from_bytes([0xC0; 16]),
        access: sync_core::Access::everywhere(Role::Coordinator),
    }
}

fn village() -> VillageCode {
    VillageCode::parse("6302010001").unwrap()
}

fn device(n: u8) -> MemoryDevice {
    MemoryDevice::new(DeviceId::from_bytes([n; 16]), village())
}

fn set(path: &str, value: serde_json::Value) -> Edit {
    Edit::Set {
        path: path.parse::<FieldPath>().unwrap(),
        value,
    }
}

fn note(id: &str) -> Edit {
    Edit::Append {
        list: "notes".parse().unwrap(),
        item: json!({"id": id, "author": "t", "at": "2026-11-28T09:00:00Z", "text": id}),
    }
}

/// Sync a device with the engine until no more pages; returns round trips.
fn sync(d: &mut MemoryDevice, e: &Engine) -> usize {
    let mut trips = 0;
    loop {
        let answer = e.sync(&d.request(), &volunteer()).unwrap();
        trips += 1;
        if !d.handle_response(&answer).unwrap() {
            return trips;
        }
    }
}

fn server_json(e: &Engine, id: &ReportId) -> serde_json::Value {
    serde_json::from_str(&e.store().row(id).unwrap().unwrap().json).unwrap()
}

fn new_incident(d: &mut MemoryDevice, title: &str) -> ReportId {
    d.create(
        ReportKind::Incident,
        &[set("category", json!("other")), set("title", json!(title))],
    )
    .unwrap()
}

#[test]
fn devices_converge_through_the_engine_and_a_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (device(1), device(2));
    let id;
    {
        let e = engine(dir.path());
        id = new_incident(&mut a, "Agent");
        sync(&mut a, &e);
        sync(&mut b, &e);
        a.edit(id, &[set("title", json!("A's title")), note("na")])
            .unwrap();
        b.edit(
            id,
            &[
                set("title", json!("B's title")),
                note("nb"),
                set("risk", json!("high")),
            ],
        )
        .unwrap();
        sync(&mut b, &e);
        sync(&mut a, &e);
        sync(&mut b, &e);
        assert_eq!(a.report(&id).unwrap().to_json(), server_json(&e, &id));
        assert_eq!(b.report(&id).unwrap().to_json(), server_json(&e, &id));
    }
    // Restart: a new engine over the same database.
    let e = engine(dir.path());
    let mut c = device(3);
    sync(&mut c, &e);
    let on_c = c.report(&id).unwrap();
    assert_eq!(on_c.to_json(), a.report(&id).unwrap().to_json());
    assert_eq!(on_c.to_json()["notes"].as_array().unwrap().len(), 2);
    assert_eq!(
        on_c.conflicts()
            .iter()
            .filter(|c| c.path == "title")
            .count(),
        1
    );
    assert_eq!(
        c.report_ids().len(),
        2,
        "the incident and the village profile"
    );
    // Nothing new: one round trip, and the seq did not move.
    let seq = e.store().last_seq().unwrap();
    assert_eq!(sync(&mut c, &e), 1);
    assert_eq!(e.store().last_seq().unwrap(), seq);
}

#[test]
fn a_new_device_gets_uncompacted_reports_whole_and_compaction_keeps_everyone_in_step() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let (mut a, mut old) = (device(1), device(2));
    let id = new_incident(&mut a, "Many edits");
    sync(&mut a, &e);
    sync(&mut old, &e);
    // Fewer edits than the compaction threshold: stored as snapshot + tail.
    for i in 0..10 {
        a.edit(id, &[note(&format!("n{i}"))]).unwrap();
        sync(&mut a, &e);
    }
    assert_eq!(e.store().load(&id).unwrap().unwrap().tail.len(), 10);
    let mut fresh = device(3);
    sync(&mut fresh, &e);
    assert_eq!(
        fresh.report(&id).unwrap().heads(),
        a.report(&id).unwrap().heads()
    );
    // Past the threshold: compacted into a new snapshot.
    for i in 10..45 {
        a.edit(id, &[note(&format!("n{i}"))]).unwrap();
        sync(&mut a, &e);
    }
    assert!(e.store().load(&id).unwrap().unwrap().tail.len() < desa_server::store::COMPACT_AFTER);
    sync(&mut old, &e);
    sync(&mut fresh, &e);
    for d in [&old, &fresh] {
        assert_eq!(
            d.report(&id).unwrap().heads(),
            a.report(&id).unwrap().heads()
        );
    }
    assert_eq!(server_json(&e, &id)["notes"].as_array().unwrap().len(), 45);
}

#[test]
fn coordinator_edits_flow_to_devices_and_refusals_recover() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let (mut a, mut b) = (device(1), device(2));
    let id = new_incident(&mut a, "Status");
    sync(&mut a, &e);
    sync(&mut b, &e);
    let coordinator = Writer {
        actor: DeviceId::from_bytes([0xC0; 16]).actor(0),
        role: Role::Coordinator,
        time: 1,
    };
    assert!(e
        .edit(
            id,
            &[set("status", json!("referred"))],
            &coordinator,
            &coordinator_principal()
        )
        .unwrap()
        .is_some());
    assert!(
        e.edit(
            id,
            &[set("status", json!("referred"))],
            &coordinator,
            &coordinator_principal()
        )
        .unwrap()
        .is_none(),
        "same value: no change"
    );
    sync(&mut a, &e);
    assert_eq!(a.report(&id).unwrap().to_json()["status"], "referred");

    // Two long additions that are valid alone and too long together.
    a.edit(
        id,
        &[Edit::AppendText {
            field: "narrative".parse().unwrap(),
            text: "a".repeat(12_000),
        }],
    )
    .unwrap();
    b.edit(
        id,
        &[Edit::AppendText {
            field: "narrative".parse().unwrap(),
            text: "b".repeat(12_000),
        }],
    )
    .unwrap();
    b.edit(id, &[note("kept")]).unwrap();
    sync(&mut a, &e);
    sync(&mut b, &e);
    assert_eq!(b.refusals.len(), 1);
    sync(&mut b, &e);
    sync(&mut a, &e);
    assert_eq!(
        b.report(&id).unwrap().heads(),
        a.report(&id).unwrap().heads()
    );
    assert_eq!(server_json(&e, &id)["notes"][0]["id"], "kept");
    assert_eq!(server_json(&e, &id)["status"], "referred");
}

#[test]
fn bad_requests_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let seq = e.store().last_seq().unwrap();
    assert!(e.sync(b"", &volunteer()).is_err());
    assert!(e.sync(b"DS\x01\x01\xff\xff\xff", &volunteer()).is_err());
    let mut a = device(1);
    new_incident(&mut a, "x");
    let mut request = sync_core::protocol::SyncRequest::decode(&a.request()).unwrap();
    request.positions[0].scope = sync_core::protocol::Scope::Village(6_302_010_999);
    let err = e.sync(&request.encode(), &volunteer()).unwrap_err();
    assert!(err.to_string().contains("unknown village"), "{err}");
    assert_eq!(e.store().last_seq().unwrap(), seq);
}
