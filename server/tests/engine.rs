//! The server engine over SQLite, driven by in-memory devices with real encoded requests: it must
//! behave like sync-core's reference server, and keep everything across a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

mod common;

use desa_server::audit::AuditKey;
use desa_server::auth::{Directory, Principal};
use desa_server::engine::{Engine, EngineOptions};
use desa_server::store::sqlite::{Encryption, SqliteStore};
use desa_server::store::Store;
use serde_json::json;
use sync_core::sim::MemoryDevice;
use sync_core::{DeviceId, Edit, FieldPath, ReportId, ReportKind, Role, VillageCode, Writer};

/// An engine over a fresh (or existing) database in `dir`, whose directory has Siti, a
/// volunteer of the test village with devices 1 to 3 and 0x51, and the office, a coordinator with
/// device 0xC0.
fn engine(dir: &Path) -> Engine {
    engine_with(dir, EngineOptions::default())
}

fn engine_with(dir: &Path, options: EngineOptions) -> Engine {
    let store = SqliteStore::open(&dir.join("db.sqlite3"), Encryption::Key([3; 32]))
        .unwrap()
        .with_audit(AuditKey::new([1; 32]), None);
    let store: Arc<dyn Store> = Arc::new(store);
    common::office(store.as_ref());
    let directory = Arc::new(Directory::load(store.clone()).unwrap());
    let engine = Engine::new(store, directory, options).unwrap();
    engine.seed_village_profiles().unwrap();
    engine
}

fn volunteer() -> Arc<Principal> {
    common::siti_on(0x51)
}

fn village() -> VillageCode {
    common::village()
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
        let principal = common::siti_on(d.id().as_bytes()[0]);
        let answer = e.sync(&d.request(), &principal).unwrap();
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
            &common::coordinator(),
            [1; 16]
        )
        .unwrap()
        .is_some());
    assert!(
        e.edit(
            id,
            &[set("status", json!("referred"))],
            &coordinator,
            &common::coordinator(),
            [1; 16]
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

/// One upload over the sync path as `principal`: the verdicts and the answer.
fn upload(
    e: &Engine,
    principal: &Arc<Principal>,
    report: ReportId,
    changes: &[sync_core::automerge::Change],
) -> sync_core::protocol::SyncResponse {
    use sync_core::protocol::{Bytes, SyncRequest, SyncResponse, Upload};
    let request = SyncRequest {
        device: principal.device,
        positions: Vec::new(),
        uploads: vec![Upload {
            report,
            changes: changes
                .iter()
                .map(|c| Bytes(c.raw_bytes().to_vec()))
                .collect(),
        }],
    };
    SyncResponse::decode(&e.sync(&request.encode(), principal).unwrap()).unwrap()
}

fn audit_records(e: &Engine) -> Vec<serde_json::Value> {
    e.store()
        .audit_entries(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|entry| serde_json::from_str(&entry.record).unwrap())
        .collect()
}

/// A change `device` makes on top of `base`, setting `status` (which only coordinators may).
fn status_change(
    base: &sync_core::automerge::Automerge,
    actor: sync_core::automerge::ActorId,
    status: &str,
) -> sync_core::automerge::Change {
    use sync_core::automerge::transaction::{CommitOptions, Transactable};
    let mut doc = base.clone();
    doc.set_actor(actor);
    let mut tx = doc.transaction();
    tx.put(sync_core::automerge::ROOT, "status", status)
        .unwrap();
    tx.commit_with(CommitOptions::default().with_time(5));
    doc.get_last_local_change().unwrap()
}

#[test]
fn a_held_change_is_judged_with_its_uploaders_access_when_a_coordinator_completes_it() {
    use sync_core::protocol::WireVerdict;
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let mut a = device(1);
    let id = new_incident(&mut a, "Escalation");
    sync(&mut a, &e);
    let base = a.report(&id).unwrap().into_doc();

    // The coordinator's next change (not yet sent) and Siti's change on top of it, closing the
    // report — which she may not do.
    let decision = status_change(&base, DeviceId::from_bytes([0xC0; 16]).actor(0), "verified");
    let mut after = base.clone();
    after.apply_changes([decision.clone()]).unwrap();
    let closing = status_change(&after, DeviceId::from_bytes([1; 16]).actor(0), "closed");
    let answer = upload(&e, &common::siti_on(1), id, std::slice::from_ref(&closing));
    assert!(matches!(answer.verdicts[0], WireVerdict::Held(_)));
    let held = e.store().load(&id).unwrap().unwrap().held;
    assert_eq!(held.len(), 1);
    assert_eq!(
        held[0].device,
        DeviceId::from_bytes([1; 16]),
        "kept with its uploader"
    );

    // The coordinator's own HTTP sync brings the missing change: it is accepted, and Siti's held
    // change is judged as hers — refused, dropped, audited under her name.
    let answer = upload(&e, &common::coordinator(), id, &[decision]);
    assert_eq!(answer.verdicts, vec![WireVerdict::Accepted]);
    assert_eq!(server_json(&e, &id)["status"], "verified");
    assert!(e.store().load(&id).unwrap().unwrap().held.is_empty());
    let records = audit_records(&e);
    let dropped = records
        .iter()
        .find(|r| r["action"] == "held_dropped")
        .expect("the drop is audited");
    assert_eq!(dropped["who"]["user"], "siti");
    assert!(dropped["changes"][0]
        .as_str()
        .unwrap()
        .ends_with("status_not_permitted"));
    let held_write = records
        .iter()
        .find(|r| r["action"] == "write" && r["held"].is_array())
        .expect("the held upload is audited");
    assert_eq!(held_write["who"]["user"], "siti");
}

#[test]
fn a_revoked_devices_held_changes_are_dropped_never_applied() {
    use sync_core::protocol::WireVerdict;
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let mut a = device(1);
    let id = new_incident(&mut a, "Lost phone");
    sync(&mut a, &e);
    let mut report = a.report(&id).unwrap();
    let writer = |n: u8| Writer {
        actor: DeviceId::from_bytes([n; 16]).actor(0),
        role: Role::Volunteer,
        time: 9,
    };
    let first = report
        .edit(&[set("title", json!("one"))], &writer(2))
        .unwrap()
        .unwrap();
    let second = report
        .edit(&[set("risk", json!("high"))], &writer(2))
        .unwrap()
        .unwrap();
    let answer = upload(&e, &common::siti_on(2), id, std::slice::from_ref(&second));
    assert!(matches!(answer.verdicts[0], WireVerdict::Held(_)));

    // Device 2 is revoked; later device 1 of the same person brings the missing change.
    let audit = desa_server::audit::AuditEvent::at(
        0,
        desa_server::audit::Who {
            user: "test".into(),
            role: "admin".into(),
            device: None,
        },
        desa_server::audit::Action::DeviceRevoke {
            device: DeviceId::from_bytes([2; 16]).to_string(),
        },
    );
    assert!(e
        .store()
        .revoke_device(DeviceId::from_bytes([2; 16]), 1, &audit)
        .unwrap());
    e.directory().refresh().unwrap();
    let answer = upload(&e, &common::siti_on(1), id, &[first]);
    assert_eq!(answer.verdicts, vec![WireVerdict::Accepted]);
    assert_eq!(server_json(&e, &id)["title"], "one");
    assert!(
        server_json(&e, &id).get("risk").is_none(),
        "the revoked device's held change is not applied"
    );
    assert!(e.store().load(&id).unwrap().unwrap().held.is_empty());
    assert!(audit_records(&e)
        .iter()
        .any(|r| r["action"] == "held_dropped"
            && r["changes"][0]
                .as_str()
                .unwrap()
                .ends_with("uploader revoked or removed")));
}

/// A clock the test moves.
struct TestClock(std::sync::atomic::AtomicI64);

impl desa_server::engine::Clock for TestClock {
    fn now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn held_changes_expire_and_history_names_who_uploaded_each_change() {
    use sync_core::protocol::WireVerdict;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(TestClock(std::sync::atomic::AtomicI64::new(
        1_800_000_000_000,
    )));
    let e = engine_with(
        dir.path(),
        EngineOptions {
            clock: clock.clone(),
            ..EngineOptions::default()
        },
    );
    let mut a = device(1);
    let id = new_incident(&mut a, "Waiting");
    sync(&mut a, &e);
    let mut report = a.report(&id).unwrap();
    let writer = Writer {
        actor: DeviceId::from_bytes([1; 16]).actor(0),
        role: Role::Volunteer,
        time: 9,
    };
    // Built on a change the server never receives.
    let _never_sent = report
        .edit(&[set("title", json!("one"))], &writer)
        .unwrap()
        .unwrap();
    let waiting = report
        .edit(&[set("risk", json!("high"))], &writer)
        .unwrap()
        .unwrap();
    let answer = upload(&e, &common::siti_on(1), id, std::slice::from_ref(&waiting));
    assert!(matches!(answer.verdicts[0], WireVerdict::Held(_)));

    // Eight days on, the next write to the report drops it.
    clock
        .0
        .fetch_add(8 * 24 * 3600 * 1000, std::sync::atomic::Ordering::SeqCst);
    a.edit(id, &[note("later")]).unwrap();
    sync(&mut a, &e);
    assert!(e.store().load(&id).unwrap().unwrap().held.is_empty());
    assert!(audit_records(&e)
        .iter()
        .any(|r| r["action"] == "held_dropped"));

    // Every stored change names the device and person that uploaded it.
    let receipts = e.store().change_receipts(&id).unwrap();
    assert!(receipts.iter().all(|r| r
        .uploader
        .as_ref()
        .is_some_and(|u| u.user == "siti" && u.device == DeviceId::from_bytes([1; 16]))));
}

#[test]
fn a_change_that_panics_automerge_is_refused_and_ingestion_goes_on() {
    use sync_core::protocol::WireVerdict;
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let bytes = include_bytes!("../../fuzz/regressions/change/apply-panics-in-op-set-batch");
    let Ok(hostile) = sync_core::automerge::Change::from_bytes(bytes.to_vec()) else {
        return;
    };
    let seq = e.store().last_seq().unwrap();
    let answer = upload(
        &e,
        &common::siti_on(1),
        ReportId::from_random([0x66; 16]),
        &[hostile],
    );
    assert!(matches!(answer.verdicts[0], WireVerdict::Refused(_)));
    assert_eq!(e.store().last_seq().unwrap(), seq, "nothing stored");
    // The writer goes on: the next sync and the health probe work.
    e.probe(std::time::Duration::from_secs(5)).unwrap();
    let mut a = device(1);
    let id = new_incident(&mut a, "After the attack");
    sync(&mut a, &e);
    assert_eq!(server_json(&e, &id)["title"], "After the attack");
}

#[test]
fn a_failed_commit_acknowledges_nothing_and_a_stalled_writer_is_reported() {
    use common::faulty::{Faulty, Mode};
    let store = Arc::new(Faulty::new());
    common::office(store.as_ref());
    let directory = Arc::new(Directory::load(store.clone()).unwrap());
    let e = Arc::new(Engine::new(store.clone(), directory, EngineOptions::default()).unwrap());
    e.seed_village_profiles().unwrap();
    let mut a = device(1);
    let id = new_incident(&mut a, "Kept on the device");
    sync(&mut a, &e);
    a.edit(id, &[note("first")]).unwrap();

    // The disk fails: the sync is an error, nothing is acknowledged, the device keeps its edit,
    // and what the server serves is the committed state.
    store.set(Mode::Fail);
    let request = a.request();
    assert!(e.sync(&request, &common::siti_on(1)).is_err());
    assert_eq!(a.waiting(), 1);
    assert!(server_json(&e, &id)["notes"].as_array().unwrap().is_empty());
    let mut fresh = device(2);
    store.set(Mode::Normal);
    sync(&mut fresh, &e);
    assert!(fresh.report(&id).unwrap().to_json()["notes"]
        .as_array()
        .unwrap()
        .is_empty());
    // Once the disk is back, the same request goes through.
    sync(&mut a, &e);
    assert_eq!(server_json(&e, &id)["notes"][0]["id"], "first");

    // A writer that cannot finish (a disk that stopped answering) is reported, not hidden.
    e.probe(std::time::Duration::from_secs(5)).unwrap();
    store.set(Mode::Stall);
    a.edit(id, &[note("second")]).unwrap();
    let stuck = {
        let (e, request) = (e.clone(), a.request());
        std::thread::spawn(move || e.sync(&request, &common::siti_on(1)).is_ok())
    };
    let since = std::time::Instant::now();
    while store.stalled() == 0 {
        assert!(since.elapsed() < std::time::Duration::from_secs(10));
        std::thread::yield_now();
    }
    let probe = e.probe(std::time::Duration::from_millis(300));
    assert!(
        matches!(probe, Err(desa_server::engine::EngineError::Unavailable(_))),
        "{probe:?}"
    );
    store.set(Mode::Normal);
    assert!(stuck.join().unwrap(), "it finishes once the disk answers");
    e.probe(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn a_changes_fields_are_the_same_in_the_audit_trail_and_the_history() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path());
    let mut a = device(0x51);
    let id = new_incident(&mut a, "fields");
    sync(&mut a, &e);
    a.edit(
        id,
        &[
            set("title", json!("renamed")),
            set("location.lat", json!(-3.2)),
            set("location.lon", json!(116.1)),
            note("n1"),
            Edit::Append {
                list: FieldPath::root("people"),
                item: json!({"role": "witness", "name": "Budi"}),
            },
        ],
    )
    .unwrap();
    sync(&mut a, &e);
    let doc = e.store().load(&id).unwrap().unwrap();
    let receipts = e.store().change_receipts(&id).unwrap();
    let working = sync_core::protocol::server::load_working(&id, &doc).unwrap();
    let history = desa_server::view::history(&working.doc, &receipts);
    let writes: Vec<serde_json::Value> = audit_records(&e)
        .into_iter()
        .filter(|r| r["action"] == "write" && r["report"] == json!(id.to_string()))
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    for write in writes {
        let changes = write["changes"].as_array().unwrap();
        assert_eq!(changes.len(), 1);
        let entry = history
            .iter()
            .find(|h| json!(h.change) == changes[0])
            .expect("the change is in the history");
        assert_eq!(json!(entry.fields), write["fields"]);
    }
    let last = history.last().unwrap();
    assert_eq!(
        last.fields,
        [
            "location.lat",
            "location.lon",
            "notes",
            "notes.0",
            "people",
            "people.0",
            "title"
        ]
    );
}
