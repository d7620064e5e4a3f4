//! Helpers shared by the scenario and property tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};
use sync_core::sim::{MemoryDevice, MemoryServer};
use sync_core::{DeviceId, Edit, FieldPath, ReportId, ReportKind, VillageCode};

pub fn village() -> VillageCode {
    VillageCode::parse("6302010001").unwrap()
}

pub fn device(n: u8) -> MemoryDevice {
    MemoryDevice::new(DeviceId::from_bytes([n; 16]), village())
}

pub fn path(p: &str) -> FieldPath {
    p.parse().unwrap()
}

pub fn set(p: &str, v: Value) -> Edit {
    Edit::Set {
        path: path(p),
        value: v,
    }
}

pub fn add(list: &str, item: Value) -> Edit {
    Edit::Append {
        list: path(list),
        item,
    }
}

pub fn append_text(field: &str, text: &str) -> Edit {
    Edit::AppendText {
        field: path(field),
        text: text.into(),
    }
}

pub fn note(id: &str, text: &str) -> Edit {
    add(
        "notes",
        json!({"id": id, "author": "tester", "at": "2026-11-28T09:00:00Z", "text": text}),
    )
}

pub fn incident_fields(title: &str) -> Vec<Edit> {
    vec![
        set("category", json!("recruitment_offer")),
        set("title", json!(title)),
    ]
}

pub fn new_incident(d: &mut MemoryDevice, title: &str) -> ReportId {
    d.create(ReportKind::Incident, &incident_fields(title))
        .unwrap()
}

pub fn sync(d: &mut MemoryDevice, s: &mut MemoryServer) -> (usize, usize, usize) {
    d.sync_with(s).unwrap()
}

/// The server's JSON of a report.
pub fn server_json(s: &MemoryServer, id: &ReportId) -> Value {
    sync_core::view::materialize(&s.report(id).unwrap().doc)
}

/// Assert a device holds exactly the server's document (same heads, same JSON).
pub fn assert_same(d: &MemoryDevice, s: &MemoryServer, id: &ReportId) {
    let local = d.report(id).expect("device has the report");
    let stored = &s.report(id).expect("server has the report").doc;
    let mut a = local.heads();
    let mut b = stored.get_heads();
    a.sort();
    b.sort();
    assert_eq!(a, b, "heads differ for {id}");
    assert_eq!(local.to_json(), sync_core::view::materialize(stored));
}
