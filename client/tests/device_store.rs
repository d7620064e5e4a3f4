//! The `DeviceStore` contract: the SQLite store answers every operation exactly as sync-core's
//! in-memory reference (`MemoryDevice`) does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use sync_core::automerge::{Automerge, Change};
use sync_core::protocol::absorb::{DeviceStore, RecordedRefusal};
use sync_core::sim::MemoryDevice;
use sync_core::{DeviceId, Edit, Refusal, RefusalCode, ReportId, VillageCode};

/// A report with three changes made by `device`.
fn report(device: DeviceId, n: u8) -> (ReportId, Automerge, Vec<Change>) {
    let id = ReportId::from_random([n; 16]);
    let writer = sync_core::sim::volunteer(device);
    let set = |p: &str, v: serde_json::Value| Edit::Set {
        path: p.parse().unwrap(),
        value: v,
    };
    let (mut report, first) =
        sync_core::sim::sample_incident(id, device, &format!("Report {n}")).unwrap();
    let second = report
        .edit(&[set("risk", json!("low"))], &writer)
        .unwrap()
        .unwrap();
    let third = report
        .edit(&[set("risk", json!("high"))], &writer)
        .unwrap()
        .unwrap();
    (id, report.into_doc(), vec![first, second, third])
}

/// What a store shows of itself after each step.
fn script<S: DeviceStore>(store: &mut S, device: DeviceId) -> Vec<String>
where
    S::Error: std::fmt::Debug,
{
    let mut seen = Vec::new();
    let hashes = |changes: Vec<Change>| -> Vec<String> {
        changes.iter().map(|c| c.hash().to_string()).collect()
    };
    let (one, doc1, c1) = report(device, 1);
    let (two, doc2, c2) = report(device, 2);

    seen.push(format!(
        "load missing: {:?}",
        store.load(one).unwrap().is_none()
    ));
    store.store(one, &doc1).unwrap();
    store.store(two, &doc2).unwrap();
    let loaded = store.load(one).unwrap().unwrap();
    seen.push(format!(
        "load: {:?} {}",
        loaded.get_heads(),
        sync_core::view::materialize(&loaded)
    ));

    seen.push(format!(
        "empty outbox: {:?}",
        hashes(store.unacknowledged(one).unwrap())
    ));
    store.replace_outbox(one, c1[1..].to_vec()).unwrap();
    store.replace_outbox(two, c2.clone()).unwrap();
    store.requeue(one, c1[0].clone()).unwrap();
    store.requeue(one, c1[2].clone()).unwrap(); // already queued: no-op
    seen.push(format!(
        "requeued: {:?}",
        hashes(store.unacknowledged(one).unwrap())
    ));

    store
        .acknowledge(&[
            (one, c1[1].hash()),
            (two, c2[0].hash()),
            (two, c2[2].hash()),
        ])
        .unwrap();
    seen.push(format!(
        "acked one: {:?}",
        hashes(store.unacknowledged(one).unwrap())
    ));
    seen.push(format!(
        "acked two: {:?}",
        hashes(store.unacknowledged(two).unwrap())
    ));

    for id in [one, one, two] {
        let w = store.next_writer(id).unwrap();
        seen.push(format!("writer: {} {:?}", w.actor, w.role));
    }
    store.forget(two).unwrap();
    seen.push(format!(
        "forgotten: {:?}",
        store.load(two).unwrap().is_none()
    ));
    seen.push(format!(
        "outbox kept: {:?}",
        hashes(store.unacknowledged(two).unwrap())
    ));
    let w = store.next_writer(two).unwrap();
    seen.push(format!("writer after forget: {}", w.actor));

    store
        .record_refusal(RecordedRefusal {
            report: one,
            change: c1[2].hash(),
            refusal: Refusal {
                code: RefusalCode::Schema,
                detail: "too long".into(),
            },
        })
        .unwrap();
    store.replace_outbox(one, Vec::new()).unwrap();
    seen.push(format!(
        "cleared: {:?}",
        hashes(store.unacknowledged(one).unwrap())
    ));
    seen
}

#[test]
fn sqlite_store_behaves_like_the_memory_device() {
    let mut device = Device::new("Rina");
    let id = device.info.id;

    let mut memory = MemoryDevice::new(id, VillageCode::parse(VILLAGE).unwrap());
    let expected = script(&mut memory, id);

    let mut tx = device.store.begin(&now()).unwrap();
    let got = script(&mut tx, id);
    tx.commit().unwrap();
    assert_eq!(got, expected);

    let refusals = device.store.refusals().unwrap();
    assert_eq!(refusals.len(), memory.refusals.len());
    assert_eq!(refusals[0].report, memory.refusals[0].report);
    assert_eq!(refusals[0].change, memory.refusals[0].change);
    assert_eq!(refusals[0].code, memory.refusals[0].refusal.code.as_str());
    assert_eq!(refusals[0].detail, memory.refusals[0].refusal.detail);
    assert_eq!(refusals[0].recorded_at, now().rfc3339);
}

#[test]
fn a_transaction_dropped_without_commit_changes_nothing() {
    let mut device = Device::new("Rina");
    let id = device.info.id;
    {
        let mut tx = device.store.begin(&now()).unwrap();
        script(&mut tx, id);
    }
    assert!(device.store.summaries().unwrap().is_empty());
    assert!(device.store.outbox().unwrap().is_empty());
    assert!(device.store.refusals().unwrap().is_empty());
}
