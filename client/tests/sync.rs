//! SQLite-backed devices syncing through an in-process server (`sync_core::sim::MemoryServer`)
//! over the `Transport` trait: the same bytes the HTTP transport carries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use desa_client::commands::{show, status, sync};
use desa_client::CliError;
use sync_core::ReportKind;

fn concurrent_offline_edits(a_first: bool) {
    let server = InProcess::new();
    let (mut a, mut b) = (Device::new("Rina"), Device::new("Budi"));
    let id = incident(&mut a, "Agent at the harbour");
    a.sync(&server);
    let got = b.sync(&server);
    assert_eq!(got.received, 1);
    b.assert_same_as(&server, id);

    // Both offline: the same field, different fields, notes, narrative.
    a.edit(edit_args(
        id,
        &["title=Agent at Batulicin harbour", "risk=high"],
        &[],
        None,
    ));
    b.edit(edit_args(
        id,
        &["title=Recruiter at the harbour", "location.place=Pelabuhan"],
        &[],
        None,
    ));
    a.edit(edit_args(id, &[], &[], Some("Spoke to the family")));
    b.edit(edit_args(id, &[], &[], Some("Two girls left on Tuesday")));
    a.edit(narrative(id, "A man offered jobs in Malaysia."));
    b.edit(narrative(id, "He had no company papers."));
    assert_eq!((a.waiting(), b.waiting()), (3, 3));

    let (x, y) = if a_first {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    x.sync(&server);
    y.sync(&server);
    x.sync(&server);
    assert_eq!((a.waiting(), b.waiting()), (0, 0));
    a.assert_same_as(&server, id);
    b.assert_same_as(&server, id);

    let doc = a.view(id).document;
    assert_eq!(doc["risk"], "high");
    assert_eq!(doc["location"]["place"], "Pelabuhan");
    let notes = doc["notes"].as_array().unwrap();
    let mut authors: Vec<&str> = notes
        .iter()
        .map(|n| n["author"].as_str().unwrap())
        .collect();
    authors.sort();
    assert_eq!(authors, ["Budi", "Rina"]);
    let text = doc["narrative"].as_str().unwrap();
    assert!(
        text.contains("offered jobs in Malaysia") && text.contains("no company papers"),
        "{text}"
    );

    // The title conflict is visible on both devices, with who wrote what and which value shows.
    for d in [&a, &b] {
        let view = d.view(id);
        let title = view
            .conflicts
            .iter()
            .find(|c| c.path == "title")
            .expect("title conflict");
        assert_eq!(title.values.len(), 2);
        assert!(title.values[0].winner && !title.values[1].winner);
        assert_eq!(title.values[0].value, view.document["title"]);
        let mut writers: Vec<_> = title.values.iter().map(|v| v.device).collect();
        writers.sort();
        let mut expected = vec![Some(a.info.id), Some(b.info.id)];
        expected.sort();
        assert_eq!(writers, expected);

        let mut text = Vec::new();
        show::run(&d.store, id, false, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("Conflicts:\n  title:\n"), "{text}");
        assert!(text.contains("(this device)"), "{text}");
        assert!(text.contains("Nothing waiting to be sent."), "{text}");
    }
}

#[test]
fn concurrent_offline_edits_converge_a_first() {
    concurrent_offline_edits(true);
}

#[test]
fn concurrent_offline_edits_converge_b_first() {
    concurrent_offline_edits(false);
}

#[test]
fn a_merge_time_refusal_is_recorded_and_later_edits_are_reapplied() {
    let server = InProcess::new();
    let (mut a, mut b) = (Device::new("Rina"), Device::new("Budi"));
    let id = incident(&mut a, "Long story");
    a.sync(&server);
    b.sync(&server);

    // Each addition is valid alone (narrative max 20,000 characters); together they are not.
    a.edit(narrative(id, &"a".repeat(12_000)));
    b.edit(narrative(id, &"b".repeat(12_000)));
    b.edit(edit_args(
        id,
        &["risk=medium"],
        &[],
        Some("written after the long text"),
    ));
    b.edit(edit_args(
        id,
        &[],
        &[r#"people={"role":"witness","name":"Siti","age":17}"#],
        None,
    ));
    b.edit(edit_args(id, &["people.0.sex=female"], &[], None));
    a.sync(&server);

    let summary = b.sync(&server);
    // The long text is refused on its own; the three edits built on it are refused with it, then
    // re-applied under the next generation and sent in the same `desa sync`.
    assert_eq!(summary.refused, 4, "{summary:?}");
    assert_eq!(summary.reapplied, 3, "{summary:?}");
    assert_eq!(summary.accepted, 3, "{summary:?}");
    assert_eq!(summary.refusals.len(), 1, "{summary:?}");
    assert_eq!(b.waiting(), 0);

    let st = status::gather(&b.store).unwrap();
    assert_eq!(st.refusals.len(), 1, "{:?}", st.refusals);
    assert_eq!(st.refusals[0].code, "schema");
    assert!(
        st.refusals[0].detail.contains("narrative"),
        "{:?}",
        st.refusals[0]
    );
    assert_eq!(st.refusals[0].report, id.to_string());
    let mut text = Vec::new();
    status::run(&b.store, false, &mut text).unwrap();
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("Refused by the server (1)"), "{text}");
    assert!(text.contains("schema: "), "{text}");

    // An edit after the rebuild writes under the new generation too.
    b.edit(edit_args(id, &["location.place=Pasar"], &[], None));
    b.sync(&server);
    a.sync(&server);
    a.assert_same_as(&server, id);
    b.assert_same_as(&server, id);

    let doc = a.view(id).document;
    assert_eq!(doc["notes"][0]["text"], "written after the long text");
    assert_eq!(doc["risk"], "medium");
    assert_eq!(doc["location"]["place"], "Pasar");
    assert_eq!(
        doc["people"],
        serde_json::json!([{"role": "witness", "name": "Siti", "age": 17, "sex": "female"}])
    );
    let narrative = doc["narrative"].as_str().unwrap();
    assert!(!narrative.contains('b') && narrative.contains("aaaa"));

    // None of b's changes under generation 0 (all refused) is in the document; its four later
    // changes are, under generation 1: no refused sequence number was reused.
    let report = b.store.report(id).unwrap().unwrap();
    let changes = report.doc().get_changes(&[]);
    let by = |g: u32| {
        changes
            .iter()
            .filter(|c| *c.actor_id() == b.info.id.actor(g))
            .count()
    };
    assert_eq!((by(0), by(1)), (0, 4));
}

#[test]
fn a_long_catch_up_is_paged() {
    let server = InProcess::new();
    server.0.borrow_mut().page_limit = Some(2);
    let (mut a, mut b) = (Device::new("Rina"), Device::new("Budi"));
    for i in 0..5 {
        incident(&mut a, &format!("Report {i}"));
    }
    a.sync(&server);
    let mut progress = Vec::new();
    let summary = sync::sync(&mut b.store, &server, &now(), &mut progress).unwrap();
    assert_eq!(summary.received, 5);
    assert_eq!(summary.rounds, 3);
    let progress = String::from_utf8(progress).unwrap();
    assert!(
        progress.contains("sync: page 3 — 1 report received"),
        "{progress}"
    );
    assert_eq!(b.store.summaries().unwrap().len(), 5);
    assert!(!status::gather(&b.store).unwrap().positions[0].paging);
}

#[test]
fn offline_changes_nothing() {
    let mut a = Device::new("Rina");
    let id = a.create(
        ReportKind::Outreach,
        &["held_on=2026-11-20", "venue=Balai desa"],
    );
    let before = (
        a.store.outbox().unwrap().len(),
        a.view(id),
        a.store.last_sync().unwrap(),
    );
    let mut progress = Vec::new();
    let err = sync::sync(&mut a.store, &Unreachable, &now(), &mut progress).unwrap_err();
    assert!(matches!(err, CliError::Offline { waiting: 1 }), "{err:?}");
    assert_eq!(err.to_string(), "offline: 1 changes waiting");
    assert_eq!(err.exit_code(), 2);
    let after = (
        a.store.outbox().unwrap().len(),
        a.view(id),
        a.store.last_sync().unwrap(),
    );
    assert_eq!(before, after);
}

#[test]
fn a_refused_edit_stores_nothing() {
    let mut a = Device::new("Rina");
    let id = incident(&mut a, "Rules");
    let before = a.view(id);
    let err = a
        .try_edit(edit_args(id, &["status=closed"], &[], Some("note too")))
        .unwrap_err();
    assert!(err.to_string().contains("status_not_permitted"), "{err}");
    assert_eq!(a.view(id), before);
    assert_eq!(a.waiting(), 1);
}

#[test]
fn remove_runs_after_set_and_before_add() {
    let mut a = Device::new("Rina");
    let id = a.create(
        ReportKind::Incident,
        &["category=other", "title=Order", "risk=low"],
    );
    a.edit(edit_args(
        id,
        &[],
        &[r#"people={"role":"suspect","name":"Agus"}"#],
        None,
    ));
    let mut args = edit_args(
        id,
        &["title=Order of edits"],
        &[r#"people={"role":"witness","name":"Siti"}"#],
        None,
    );
    args.remove = vec!["risk".parse().unwrap(), "people.0".parse().unwrap()];
    a.edit(args);
    let doc = a.view(id).document;
    assert_eq!(doc["title"], "Order of edits");
    assert!(doc.get("risk").is_none(), "{doc}");
    assert_eq!(
        doc["people"],
        serde_json::json!([{"role": "witness", "name": "Siti"}])
    );
    assert_eq!(a.waiting(), 3);
}
