//! Schema evolution (`docs/architecture.md`, Schema versions): a device built with schema version 1
//! against a server that knows version 2, which adds an `assignment` container to incidents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{new_incident, note, set, sync, village};
use serde_json::{json, Value};
use sync_core::automerge::ObjType;
use sync_core::schema::{schema_text, Schemas};
use sync_core::sim::MemoryServer;
use sync_core::{DeviceId, ReportKind, Role, Writer};

/// Version 2: every kind's schema with `schema_version` 2; incidents may have an `assignment`
/// (officer, due date), a container the server creates in every incident.
fn version_2() -> Schemas {
    let schemas = ReportKind::ALL
        .into_iter()
        .map(|kind| {
            let mut schema: Value = serde_json::from_str(schema_text(kind)).unwrap();
            schema["properties"]["schema_version"]["const"] = json!(2);
            if kind == ReportKind::Incident {
                schema["properties"]["assignment"] = json!({
                    "type": "object",
                    "properties": {
                        "officer": {"type": "string", "maxLength": 100},
                        "due": {"type": "string", "format": "date"}
                    },
                    "additionalProperties": false
                });
            }
            (kind, schema)
        })
        .collect();
    Schemas::builtin().and_version(
        schemas,
        vec![(ReportKind::Incident, "assignment", ObjType::Map)],
    )
}

fn coordinator() -> Writer {
    Writer {
        actor: DeviceId::from_bytes([0xC0; 16]).actor(0),
        role: Role::Coordinator,
        time: 1_764_300_000,
    }
}

#[test]
fn an_old_device_keeps_working_with_a_server_of_a_newer_schema() {
    let mut server = MemoryServer::with_schemas(version_2());
    let mut old = common::device(1);
    // It creates in the version it knows; the server takes the report and migrates it in the
    // same commit: version 2, with the container version 2 adds.
    let id = new_incident(&mut old, "recruiter at the pier");
    sync(&mut old, &mut server);
    let stored = sync_core::view::materialize(&server.report(&id).unwrap().doc);
    assert_eq!(stored["schema_version"], 2);
    assert_eq!(stored["assignment"], json!({}));
    let on_device = old.report(&id).unwrap().to_json();
    assert_eq!(on_device, stored, "the device has the migration too");

    // It edits the fields it knows, judged on them; the server judges the whole.
    assert!(old
        .edit(
            id,
            &[
                set("title", json!("two recruiters")),
                note("n1", "seen again")
            ]
        )
        .unwrap());
    sync(&mut old, &mut server);
    // A coordinator assigns an officer (a version-2 field); the old device receives it, keeps it,
    // shows it, and goes on editing what it knows.
    server
        .coordinator_edit(
            id,
            &[
                set("assignment.officer", json!("Budi")),
                set("assignment.due", json!("2026-12-10")),
            ],
            &coordinator(),
        )
        .unwrap()
        .expect("a change");
    sync(&mut old, &mut server);
    let on_device = old.report(&id).unwrap().to_json();
    assert_eq!(on_device["assignment"]["officer"], "Budi");
    assert!(old
        .edit(id, &[set("title", json!("three recruiters"))])
        .unwrap());
    sync(&mut old, &mut server);
    let stored = sync_core::view::materialize(&server.report(&id).unwrap().doc);
    assert_eq!(stored["title"], "three recruiters");
    assert_eq!(stored["assignment"]["officer"], "Budi");
    assert_eq!(old.report(&id).unwrap().to_json(), stored);

    // What it does not know, the server judges: an officer's name over version 2's limit passes
    // the device (it sets `assignment` aside) and is refused by the server; the device rebuilds
    // the report from the server's state and keeps the refusal for the volunteer.
    assert!(old
        .edit(id, &[set("assignment.officer", json!("x".repeat(101)))])
        .unwrap());
    sync(&mut old, &mut server);
    let stored = sync_core::view::materialize(&server.report(&id).unwrap().doc);
    assert_eq!(stored["assignment"]["officer"], "Budi");
    assert_eq!(old.report(&id).unwrap().to_json(), stored);
    assert_eq!(old.refusals.len(), 1, "{:?}", old.refusals);
    // A version-1 field's rules hold in version 2: a title over its limit is refused on the device.
    assert!(old
        .edit(id, &[set("title", json!("x".repeat(201)))])
        .is_err());
}

#[test]
fn only_the_server_raises_a_reports_schema_version() {
    let mut server = MemoryServer::with_schemas(version_2());
    let mut device = common::device(2);
    let id = new_incident(&mut device, "fixed");
    // A device may not raise it (nor lower it, after the migration).
    assert!(device.edit(id, &[set("schema_version", json!(2))]).is_err());
    sync(&mut device, &mut server);
    assert!(device.edit(id, &[set("schema_version", json!(1))]).is_err());
    // A server that knows only version 1 takes the same device's reports as it always did.
    let mut plain = MemoryServer::new();
    let mut other = common::device(3);
    let id = new_incident(&mut other, "plain");
    sync(&mut other, &mut plain);
    let stored = sync_core::view::materialize(&plain.report(&id).unwrap().doc);
    assert_eq!(stored["schema_version"], 1);
    assert!(stored.get("assignment").is_none());
    assert_eq!(village().to_string(), stored["village"]);
}

#[test]
fn a_newer_document_is_judged_on_what_this_side_knows() {
    let builtin = Schemas::builtin();
    let mut doc = json!({
        "kind": "incident", "schema_version": 3, "village": "6302010001",
        "created_at": "2026-11-28T08:00:00Z", "created_by": "d1",
        "category": "recruitment_offer", "title": "from the future",
        "narrative": "", "location": {}, "people": [], "status": "new", "notes": [],
        "assignment": {"officer": "Budi"}, "evidence": []
    });
    assert_eq!(builtin.validate(ReportKind::Incident, &doc), Ok(()));
    doc["title"] = json!("x".repeat(201));
    assert!(builtin.validate(ReportKind::Incident, &doc).is_err());
    // A version that does not exist is not a newer one.
    doc["title"] = json!("fine");
    doc["schema_version"] = json!(0);
    assert!(builtin.validate(ReportKind::Incident, &doc).is_err());
}
