//! Scenario tests: devices and a server over a simulated network (encoded bytes, in memory).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;
use sync_core::protocol::{
    Bytes, Position, Scope, ScopePosition, SyncRequest, SyncResponse, Upload, WireVerdict,
};
use sync_core::sim::MemoryServer;
use sync_core::{DeviceId, RefusalCode, ReportKind, Role, Writer};

fn concurrent_offline_edits(first: u8) {
    let mut server = MemoryServer::new();
    let (mut a, mut b) = (device(1), device(2));
    let id = new_incident(&mut a, "Agent at the harbour");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    assert_same(&b, &server, &id);

    // Both offline: same field, different fields, notes, narrative.
    a.edit(
        id,
        &[
            set("title", json!("Agent at Batulicin harbour")),
            set("risk", json!("high")),
        ],
    )
    .unwrap();
    b.edit(
        id,
        &[
            set("title", json!("Recruiter at the harbour")),
            set("location.place", json!("Pelabuhan")),
        ],
    )
    .unwrap();
    a.edit(
        id,
        &[
            note("na", "Spoke to the family"),
            append_text("narrative", "A man offered jobs in Malaysia."),
        ],
    )
    .unwrap();
    b.edit(
        id,
        &[
            note("nb", "Two girls left on Tuesday"),
            append_text("narrative", "He had no company papers."),
        ],
    )
    .unwrap();

    let order: [&mut sync_core::sim::MemoryDevice; 2] = if first == 1 {
        [&mut a, &mut b]
    } else {
        [&mut b, &mut a]
    };
    let [x, y] = order;
    sync(x, &mut server);
    sync(y, &mut server);
    sync(x, &mut server);
    assert_same(&a, &server, &id);
    assert_same(&b, &server, &id);

    let doc = server_json(&server, &id);
    assert_eq!(doc["risk"], "high");
    assert_eq!(doc["location"]["place"], "Pelabuhan");
    let notes: Vec<&str> = doc["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    let narrative = doc["narrative"].as_str().unwrap();
    assert!(
        narrative.contains("offered jobs in Malaysia") && narrative.contains("no company papers"),
        "{narrative}"
    );
    let conflicts = a.report(&id).unwrap().conflicts();
    let title = conflicts
        .iter()
        .find(|c| c.path == "title")
        .expect("title conflict is visible");
    let devices: Vec<_> = title.values.iter().map(|v| v.device.unwrap()).collect();
    assert!(devices.contains(&a.id()) && devices.contains(&b.id()));
    assert_eq!(title.values.iter().filter(|v| v.winner).count(), 1);
    assert_eq!(
        title.values[0].value, doc["title"],
        "the winner is what everyone shows"
    );
}

#[test]
fn offline_edits_merge_a_first() {
    concurrent_offline_edits(1);
}

#[test]
fn offline_edits_merge_b_first() {
    concurrent_offline_edits(2);
}

fn coordinator() -> Writer {
    Writer {
        actor: DeviceId::from_bytes([0xC0; 16]).actor(0),
        role: Role::Coordinator,
        time: 1_764_400_000,
    }
}

#[test]
fn coordinator_status_reaches_devices_and_volunteers_cannot_undo_it() {
    let mut server = MemoryServer::new();
    let (mut a, mut b) = (device(1), device(2));
    let id = new_incident(&mut a, "Missing girl");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    server
        .coordinator_edit(
            id,
            &[
                set("status", json!("verified")),
                note("c1", "Referred to police"),
            ],
            &coordinator(),
        )
        .unwrap();
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    for d in [&a, &b] {
        assert_eq!(d.report(&id).unwrap().to_json()["status"], "verified");
        assert_same(d, &server, &id);
    }
    let err = a.edit(id, &[set("status", json!("new"))]).unwrap_err();
    assert!(
        err.to_string()
            .contains("only a coordinator changes status"),
        "{err}"
    );
    assert_eq!(a.waiting(), 0, "a refused edit commits nothing");
}

#[test]
fn a_no_op_sync_is_a_few_bytes_whatever_the_village_holds() {
    let mut server = MemoryServer::new();
    let mut a = device(1);
    for i in 0..200 {
        new_incident(&mut a, &format!("report {i}"));
    }
    sync(&mut a, &mut server);
    let mut b = device(2);
    let (trips, _, _) = sync(&mut b, &mut server);
    assert_eq!(b.report_ids().len(), 200);
    assert_eq!(trips, 1, "200 reports fit one page");
    let (trips, up, down) = sync(&mut b, &mut server);
    assert_eq!(trips, 1);
    assert!(up + down < 64, "no-op sync cost {up} + {down} bytes");
}

#[test]
fn a_lost_response_is_retried_without_loss_or_duplicates() {
    let mut server = MemoryServer::new();
    let mut a = device(1);
    let id = new_incident(&mut a, "Boat at night");
    a.edit(id, &[set("risk", json!("urgent"))]).unwrap();
    let request = a.request();
    server.handle(&request).unwrap(); // committed, but the answer never reaches the device
    let before = server.report(&id).unwrap().doc.get_changes(&[]).len();
    assert_eq!(a.waiting(), 2);
    sync(&mut a, &mut server);
    assert_eq!(a.waiting(), 0);
    assert_eq!(
        server.report(&id).unwrap().doc.get_changes(&[]).len(),
        before,
        "nothing duplicated"
    );
    assert_same(&a, &server, &id);
}

fn raw_request(device: DeviceId, report: sync_core::ReportId, changes: Vec<Vec<u8>>) -> Vec<u8> {
    SyncRequest {
        device,
        positions: vec![ScopePosition {
            scope: Scope::village(village()),
            position: Position::default(),
        }],
        uploads: vec![Upload {
            report,
            changes: changes.into_iter().map(Bytes).collect(),
        }],
    }
    .encode()
}

#[test]
fn a_change_whose_dependencies_are_missing_is_held_then_applied() {
    let mut server = MemoryServer::new();
    let mut a = device(1);
    let id = new_incident(&mut a, "Held");
    sync(&mut a, &mut server);
    a.edit(id, &[set("title", json!("Held, edited"))]).unwrap();
    a.edit(id, &[set("risk", json!("low"))]).unwrap();
    let doc = a.report(&id).unwrap().into_doc();
    let changes = doc.get_changes(&[]);
    let (first, second) = (
        changes[1].raw_bytes().to_vec(),
        changes[2].raw_bytes().to_vec(),
    );

    let response = SyncResponse::decode(
        &server
            .handle(&raw_request(a.id(), id, vec![second]))
            .unwrap(),
    )
    .unwrap();
    match &response.verdicts[0] {
        WireVerdict::Held(missing) => assert_eq!(missing, &vec![changes[1].hash().0]),
        other => panic!("expected held, got {other:?}"),
    }
    assert_eq!(
        server_json(&server, &id)["title"],
        "Held",
        "nothing applied yet"
    );
    // The dependency arrives alone: the held change is applied with it, from the server's keeping.
    let response = SyncResponse::decode(
        &server
            .handle(&raw_request(a.id(), id, vec![first]))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(response.verdicts, vec![WireVerdict::Accepted]);
    assert_eq!(server_json(&server, &id)["risk"], "low");
    sync(&mut a, &mut server);
    assert_same(&a, &server, &id);
}

#[test]
fn a_later_change_of_a_report_the_server_lacks_is_refused_not_held_and_nothing_is_sent_back() {
    let mut server = MemoryServer::new();
    let mut a = device(1);
    let id = new_incident(&mut a, "Never sent");
    a.edit(id, &[set("risk", json!("low"))]).unwrap();
    let changes = a.report(&id).unwrap().into_doc().get_changes(&[]);
    let edit = changes[1].raw_bytes().to_vec();
    let response =
        SyncResponse::decode(&server.handle(&raw_request(a.id(), id, vec![edit])).unwrap())
            .unwrap();
    assert_eq!(
        response.verdicts,
        vec![WireVerdict::Refused(sync_core::Refusal::not_permitted())]
    );
    assert!(response.rebuilds.is_empty(), "no rebuild: nothing to show");
    assert!(server.report(&id).is_none());
}

#[test]
fn merged_state_refusal_is_recovered_on_the_device() {
    let mut server = MemoryServer::new();
    let (mut a, mut b) = (device(1), device(2));
    let id = new_incident(&mut a, "Long story");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    // Each long addition is valid alone (narrative max 20,000 characters); together they are not.
    a.edit(id, &[append_text("narrative", &"a".repeat(12_000))])
        .unwrap();
    b.edit(id, &[append_text("narrative", &"b".repeat(12_000))])
        .unwrap();
    b.edit(
        id,
        &[
            note("after", "written after the long text"),
            set("risk", json!("medium")),
        ],
    )
    .unwrap();
    b.edit(
        id,
        &[add(
            "people",
            json!({"role": "witness", "name": "Siti", "age": 17}),
        )],
    )
    .unwrap();
    b.edit(id, &[set("people.0.sex", json!("female"))]).unwrap();
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);

    assert_eq!(b.refusals.len(), 1, "{:?}", b.refusals);
    assert_eq!(b.refusals[0].refusal.code, RefusalCode::Schema);
    assert!(
        b.refusals[0].refusal.detail.contains("narrative"),
        "{}",
        b.refusals[0].refusal.detail
    );
    // The edits that built on the refused change were re-applied as new changes and sent.
    assert_eq!(b.waiting(), 3);
    sync(&mut b, &mut server);
    sync(&mut a, &mut server);
    assert_eq!(b.waiting(), 0);
    assert_same(&a, &server, &id);
    assert_same(&b, &server, &id);
    let doc = server_json(&server, &id);
    assert_eq!(doc["notes"][0]["id"], "after");
    assert_eq!(doc["risk"], "medium");
    assert_eq!(
        doc["people"],
        json!([{"role": "witness", "name": "Siti", "age": 17, "sex": "female"}])
    );
    assert!(!doc["narrative"].as_str().unwrap().contains('b'));
}

/// A client that skips the local checks (a modified app): the server refuses on its own.
#[test]
fn the_server_enforces_the_rules_without_trusting_the_device() {
    use sync_core::automerge::{transaction::Transactable, Automerge, ObjType, ROOT};
    let mut server = MemoryServer::new();
    let mut a = device(1);
    let id = new_incident(&mut a, "Rules");
    sync(&mut a, &mut server);
    let base = a.report(&id).unwrap().into_doc();

    let forge = |f: &dyn Fn(&mut sync_core::automerge::transaction::Transaction<'_>)| {
        let mut doc = base.clone();
        doc.set_actor(a.id().actor(0));
        let mut tx = doc.transaction();
        f(&mut tx);
        tx.commit();
        doc.get_last_local_change().unwrap().raw_bytes().to_vec()
    };
    let cases: Vec<(Vec<u8>, RefusalCode)> = vec![
        (
            forge(&|tx| {
                tx.put(ROOT, "status", "closed").unwrap();
            }),
            RefusalCode::StatusNotPermitted,
        ),
        (
            forge(&|tx| {
                tx.put(ROOT, "village", "6302010002").unwrap();
            }),
            RefusalCode::FixedField,
        ),
        (
            forge(&|tx| {
                tx.put_object(ROOT, "people", ObjType::List).unwrap();
            }),
            RefusalCode::ContainerReplaced,
        ),
        (
            forge(&|tx| {
                tx.delete(ROOT, "notes").unwrap();
            }),
            RefusalCode::ContainerReplaced,
        ),
        (
            forge(&|tx| {
                tx.put(ROOT, "risk", "catastrophic").unwrap();
            }),
            RefusalCode::Schema,
        ),
        (
            b"\x85\x6f\x4a\x83not a change".to_vec(),
            RefusalCode::Undecodable,
        ),
    ];
    let before = server_json(&server, &id);
    for (bytes, code) in cases {
        let response = SyncResponse::decode(
            &server
                .handle(&raw_request(a.id(), id, vec![bytes]))
                .unwrap(),
        )
        .unwrap();
        match &response.verdicts[0] {
            WireVerdict::Refused(r) => assert_eq!(r.code, code, "{r}"),
            other => panic!("expected {code:?}, got {other:?}"),
        }
        assert_eq!(
            server_json(&server, &id),
            before,
            "a refused change changes nothing"
        );
    }

    // A second "first change" for an existing report, and a report in an unknown village.
    let mut fork = Automerge::new().with_actor(a.id().actor(0));
    let mut tx = fork.transaction();
    tx.put(ROOT, "kind", "incident").unwrap();
    tx.commit();
    let second = fork.get_last_local_change().unwrap().raw_bytes().to_vec();
    let response = SyncResponse::decode(
        &server
            .handle(&raw_request(a.id(), id, vec![second.clone()]))
            .unwrap(),
    )
    .unwrap();
    assert!(
        matches!(&response.verdicts[0], WireVerdict::Refused(r) if r.code == RefusalCode::AlreadyCreated)
    );

    let mut outsider = Automerge::new().with_actor(a.id().actor(0));
    let mut tx = outsider.transaction();
    for (k, v) in [
        ("kind", "incident"),
        ("village", "9999999999"),
        ("created_at", "2026-11-28T08:00:00Z"),
        ("created_by", "x"),
        ("status", "new"),
        ("category", "other"),
        ("title", "t"),
    ] {
        tx.put(ROOT, k, v).unwrap();
    }
    tx.put(ROOT, "schema_version", 1).unwrap();
    for (f, t) in ReportKind::Incident.containers() {
        tx.put_object(ROOT, *f, *t).unwrap();
    }
    tx.commit();
    let new_id = sync_core::ReportId::from_random([42; 16]);
    let bytes = outsider
        .get_last_local_change()
        .unwrap()
        .raw_bytes()
        .to_vec();
    let response = SyncResponse::decode(
        &server
            .handle(&raw_request(a.id(), new_id, vec![bytes]))
            .unwrap(),
    )
    .unwrap();
    assert!(
        matches!(&response.verdicts[0], WireVerdict::Refused(r) if r.code == RefusalCode::UnknownVillage)
    );
    assert!(server.report(&new_id).is_none());
    assert_eq!(response.rebuilds.len(), 1);
    assert!(
        response.rebuilds[0].snapshot.0.is_empty(),
        "the server has nothing to rebuild from"
    );
}

#[test]
fn feeds_are_paged_and_a_new_device_catches_up() {
    let mut server = MemoryServer::new();
    server.page_limit = Some(7);
    let mut a = device(1);
    let ids: Vec<_> = (0..20)
        .map(|i| new_incident(&mut a, &format!("r{i}")))
        .collect();
    sync(&mut a, &mut server);
    let mut b = device(2);
    let (trips, _, _) = sync(&mut b, &mut server);
    assert_eq!(trips, 3, "20 reports in pages of 7");
    for id in &ids {
        assert_same(&b, &server, id);
    }
    let (trips, _, _) = sync(&mut b, &mut server);
    assert_eq!(trips, 1);
}

#[test]
fn a_device_offline_for_months_catches_up_after_compaction() {
    let mut server = MemoryServer::new();
    let (mut a, mut b) = (device(1), device(2));
    let id = new_incident(&mut a, "Old");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    // Far more updates than the server keeps receipts for.
    for i in 0..(sync_core::protocol::server::MAX_RECEIPTS + 10) {
        a.edit(id, &[note(&format!("n{i}"), "update")]).unwrap();
        sync(&mut a, &mut server);
    }
    b.edit(id, &[set("risk", json!("low"))]).unwrap();
    sync(&mut b, &mut server);
    sync(&mut a, &mut server);
    assert_same(&b, &server, &id);
    assert_same(&a, &server, &id);
    assert_eq!(
        server_json(&server, &id)["notes"].as_array().unwrap().len(),
        sync_core::protocol::server::MAX_RECEIPTS + 10
    );
}

#[test]
fn village_profiles_are_made_by_the_server_and_edited_by_devices() {
    let mut server = MemoryServer::with_village_profiles(&[village()]);
    let mut a = device(1);
    sync(&mut a, &mut server);
    let profile = sync_core::ReportId::village_profile(village());
    assert_eq!(
        a.report(&profile).unwrap().kind(),
        ReportKind::VillageProfile
    );
    a.edit(
        profile,
        &[
            set("head_of_village", json!("Pak Rahman")),
            append_text("risk_notes", "Agents visit after harvest."),
        ],
    )
    .unwrap();
    sync(&mut a, &mut server);
    assert_eq!(
        server_json(&server, &profile)["head_of_village"],
        "Pak Rahman"
    );
    let err = a.create(ReportKind::VillageProfile, &[]).unwrap_err();
    assert!(err.to_string().contains("created by the server"), "{err}");
    // Deterministic: a second server makes the very same document.
    let again = MemoryServer::with_village_profiles(&[village()]);
    assert_eq!(
        again.report(&profile).unwrap().doc.get_heads(),
        sync_core::Report::village_profile(village())
            .unwrap()
            .0
            .heads()
    );
}

#[test]
fn a_request_for_an_unknown_village_is_refused_whole() {
    let mut server = MemoryServer::new();
    let request = SyncRequest {
        device: DeviceId::from_bytes([1; 16]),
        positions: vec![ScopePosition {
            scope: Scope::Village(6_302_010_999),
            position: Position::default(),
        }],
        uploads: vec![],
    };
    let err = server.handle(&request.encode()).unwrap_err();
    assert!(err.to_string().contains("unknown village"), "{err}");
    assert!(server.handle(b"DS\x01\x01\xff\xff").is_err());
    assert!(server.handle(b"").is_err());
}

#[test]
fn a_device_is_not_sent_back_what_it_just_created() {
    let mut server = MemoryServer::new();
    let mut a = device(1);
    new_incident(&mut a, "Mine");
    let response = SyncResponse::decode(&server.handle(&a.request()).unwrap()).unwrap();
    assert_eq!(response.verdicts, vec![WireVerdict::Accepted]);
    assert!(
        response.feeds[0].items.is_empty(),
        "{:?}",
        response.feeds[0].items
    );
    a.handle_response(&server.handle(&a.request()).unwrap())
        .unwrap();
    // Another device's edit of it does come back, as changes only.
    let mut b = device(2);
    sync(&mut b, &mut server);
    let id = b.report_ids()[0];
    b.edit(id, &[note("b1", "seen")]).unwrap();
    sync(&mut b, &mut server);
    let response = SyncResponse::decode(&server.handle(&a.request()).unwrap()).unwrap();
    assert!(
        matches!(&response.feeds[0].items[0].delta, sync_core::protocol::Delta::Changes(c) if c.len() == 1)
    );
}

#[test]
fn a_large_backlog_is_sent_in_several_requests() {
    let mut server = MemoryServer::new();
    let mut a = device(1);
    // ~2.4 MiB of narrative over 120 reports: more than one request's upload budget.
    for i in 0..120 {
        let id = new_incident(&mut a, &format!("r{i}"));
        a.edit(
            id,
            &[append_text(
                "narrative",
                &format!("{i}").repeat(19_000)[..19_000],
            )],
        )
        .unwrap();
    }
    let first = SyncRequest::decode(&a.request()).unwrap();
    let sent: usize = first
        .uploads
        .iter()
        .flat_map(|u| &u.changes)
        .map(|c| c.0.len())
        .sum();
    assert!(sent <= sync_core::protocol::device::UPLOAD_BYTES, "{sent}");
    assert!(first.change_count() < 240);
    let (trips, _, _) = sync(&mut a, &mut server);
    assert!(trips >= 2, "{trips}");
    assert_eq!(a.waiting(), 0);
    assert_eq!(server.report_ids().len(), 120);
}

#[test]
fn device_sync_state_round_trips_through_json() {
    let state = sync_core::protocol::device::DeviceSync::new(
        DeviceId::from_bytes([5; 16]),
        &[Scope::village(village())],
    );
    let text = serde_json::to_string(&state).unwrap();
    assert_eq!(
        serde_json::from_str::<sync_core::protocol::device::DeviceSync>(&text).unwrap(),
        state
    );
}

#[test]
fn a_device_taking_in_a_hostile_feed_gets_an_error_not_a_panic() {
    use sync_core::protocol::{Delta, FeedItem, ScopeFeed};
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let hostile_docs: Vec<Vec<u8>> = std::fs::read_dir(root.join("stored_doc"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .filter(|b| b.len() > 16)
        .collect();
    let hostile_change = std::fs::read(root.join("change/apply-panics-in-op-set-batch")).unwrap();
    let mut deltas: Vec<Delta> = hostile_docs
        .iter()
        .map(|d| Delta::Snapshot(Bytes(d.clone())))
        .collect();
    deltas.push(Delta::Changes(vec![Bytes(hostile_change)]));
    for delta in deltas {
        let mut a = device(1);
        let request = SyncRequest::decode(&a.request()).unwrap();
        let response = SyncResponse {
            verdicts: Vec::new(),
            rebuilds: Vec::new(),
            feeds: vec![ScopeFeed {
                scope: request.positions[0].scope,
                items: vec![FeedItem {
                    report: sync_core::ReportId::from_random([4; 16]),
                    delta,
                }],
                position: Position {
                    since: 1,
                    after: None,
                },
            }],
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            a.handle_response(&response.encode())
        }));
        assert!(matches!(outcome, Ok(Err(_))), "a hostile feed is an error");
        assert!(a.report_ids().is_empty(), "nothing of it is kept");
    }
}
