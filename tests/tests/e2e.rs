//! End to end: the real `desa-server` on a free port with a temporary data directory, real `desa`
//! stores, real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use desa_tests::{Desa, Server};
use serde_json::{json, Value};

const VILLAGE: &str = "6302010001";

fn new_incident(d: &Desa, title: &str) -> String {
    d.ok(&[
        "new",
        "incident",
        "--set",
        "category=recruitment_offer",
        "--set",
        &format!("title={title}"),
    ])
    .last_line()
}

fn notes(doc: &Value) -> Vec<String> {
    doc["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["text"].as_str().unwrap().to_owned())
        .collect()
}

/// (a) Two volunteers edit the same incident offline; either sync order ends with both devices and
/// the coordinator showing the same merged document, nothing lost, the same-field conflict visible.
fn offline_edits_converge(a_first: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let a = Desa::init(&server, VILLAGE, "Ani");
    let b = Desa::init(&server, VILLAGE, "Budi");
    let id = new_incident(&a, "Agent at the harbour");
    a.sync();
    b.sync();

    a.ok(&[
        "edit",
        &id,
        "--set",
        "title=Agent at Batulicin harbour",
        "--set",
        "risk=high",
        "--note",
        "Spoke to the family",
        "--append-narrative",
        "He offered jobs in Malaysia.",
    ]);
    b.ok(&[
        "edit",
        &id,
        "--set",
        "title=Recruiter at the harbour",
        "--set",
        "location.place=Pelabuhan lama",
        "--note",
        "Two girls left on Tuesday",
        "--append-narrative",
        "He had no company papers.",
    ]);
    let (first, second) = if a_first { (&a, &b) } else { (&b, &a) };
    first.sync();
    second.sync();
    first.sync();

    let coordinator = server.report(&id);
    let doc = &coordinator["document"];
    for d in [&a, &b] {
        assert_eq!(
            &d.show(&id)["document"],
            doc,
            "device and coordinator differ"
        );
    }
    assert_eq!(doc["risk"], "high");
    assert_eq!(doc["location"]["place"], "Pelabuhan lama");
    let mut n = notes(doc);
    n.sort();
    assert_eq!(n, ["Spoke to the family", "Two girls left on Tuesday"]);
    let narrative = doc["narrative"].as_str().unwrap();
    assert!(
        narrative.contains("jobs in Malaysia") && narrative.contains("no company papers"),
        "{narrative}"
    );
    let conflict = coordinator["conflicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "title")
        .expect("title conflict shown");
    assert_eq!(conflict["values"].as_array().unwrap().len(), 2);
    let shown = a.show(&id);
    assert!(
        shown["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "title"),
        "{shown}"
    );
    // The coordinator's history says which device changed what.
    let history = coordinator["history"].as_array().unwrap();
    assert!(history
        .iter()
        .any(|h| h["fields"].as_array().unwrap().contains(&json!("risk"))));
    assert!(history.iter().all(|h| h["received_at"].is_string()));
}

#[test]
fn offline_edits_converge_a_first() {
    offline_edits_converge(true);
}

#[test]
fn offline_edits_converge_b_first() {
    offline_edits_converge(false);
}

/// (b) A coordinator's status change reaches both devices; a volunteer cannot change it.
#[test]
fn coordinator_status_reaches_both_devices() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let a = Desa::init(&server, VILLAGE, "Ani");
    let b = Desa::init(&server, VILLAGE, "Budi");
    let id = new_incident(&a, "Missing girl");
    a.sync();
    b.sync();
    let (status, body) = server.patch(
        &format!("/api/v1/reports/{id}"),
        &json!({"status": "verified", "note": "Referred to Polres"}),
    );
    assert_eq!(status, 200, "{body}");
    a.sync();
    b.sync();
    for d in [&a, &b] {
        let doc = &d.show(&id)["document"];
        assert_eq!(doc["status"], "verified");
        assert_eq!(notes(doc), ["Referred to Polres"]);
    }
    let refused = a.run(&["edit", &id, "--set", "status=new"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("coordinator"), "{}", refused.stderr);
    let listed = server
        .get(&format!(
            "/api/v1/reports?village={VILLAGE}&status=verified"
        ))
        .1;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["url"], format!("automerge:{id}"));
}

/// (c) SIGKILL between and during syncs: no acknowledged change lost, nothing duplicated.
#[test]
fn killing_the_server_loses_nothing_acknowledged_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    let a = Desa::init(&server, VILLAGE, "Ani");
    let id = new_incident(&a, "Boat at night");
    a.ok(&["edit", &id, "--note", "acknowledged before the kill"]);
    a.sync();
    // Between syncs: an acknowledged change survives a kill at once.
    server.kill();
    server.restart();
    assert_eq!(
        notes(&server.report(&id)["document"]),
        ["acknowledged before the kill"]
    );

    // During syncs: a large push is interrupted by a kill at an arbitrary point, three times.
    let mut expected = vec!["acknowledged before the kill".to_owned()];
    for round in 0..3 {
        for i in 0..40 {
            let text = format!("round {round} note {i}");
            a.ok(&["edit", &id, "--note", &text]);
            expected.push(text);
        }
        let pushing = std::process::Command::new(desa_tests::binary("desa"))
            .arg("--store")
            .arg(a.store_path())
            .arg("sync")
            .env("DESA_PASSPHRASE", desa_tests::PASSPHRASE)
            .output_async();
        server.kill();
        let outcome = pushing.wait_with_output().unwrap();
        // Either it finished before the kill, or it failed cleanly ("offline"/refused); never a crash.
        assert!(
            matches!(outcome.status.code(), Some(0) | Some(1) | Some(2)),
            "{outcome:?}"
        );
        server.restart();
        a.sync();
    }
    let mut stored = notes(&server.report(&id)["document"]);
    stored.sort();
    expected.sort();
    assert_eq!(stored, expected, "every note exactly once");
    assert_eq!(a.show(&id)["document"], server.report(&id)["document"]);
    assert_eq!(a.show(&id)["waiting"], 0);
}

trait OutputAsync {
    fn output_async(&mut self) -> std::process::Child;
}

impl OutputAsync for std::process::Command {
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// (d) Each kind of bad input gets its answer and changes nothing.
#[test]
fn bad_input_gets_its_answer_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--max-body", "4096"]);
    let a = Desa::init(&server, VILLAGE, "Ani");
    let id = new_incident(&a, "Baseline");
    a.sync();
    let seq = server.seq();
    let before = server.report(&id)["document"].clone();

    let (status, body) = server.post_sync(b"not a sync message");
    assert_eq!(status, 400);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "bad_request");
    assert!(
        body["detail"].as_str().unwrap().contains("malformed"),
        "{body}"
    );

    let (status, _) = server.post_sync(&vec![0u8; 5000]);
    assert_eq!(status, 413);

    let request = sync_core::protocol::SyncRequest {
        device: sync_core::DeviceId::new_random(),
        positions: vec![sync_core::protocol::ScopePosition {
            scope: sync_core::protocol::Scope::Village(6_302_010_999),
            position: Default::default(),
        }],
        uploads: vec![],
    };
    let (status, body) = server.post_sync(&request.encode());
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));

    let report = format!("/api/v1/reports/{id}");
    assert_eq!(server.patch(&report, &json!({"status": "approved"})).0, 422);
    assert_eq!(server.patch(&report, &json!({"colour": "red"})).0, 400);
    assert_eq!(server.patch(&report, &json!({})).0, 400);
    assert_eq!(server.get("/api/v1/reports/not-an-id").0, 404);
    assert_eq!(
        server
            .get(&format!(
                "/api/v1/reports/{}",
                sync_core::ReportId::new_random()
            ))
            .0,
        404
    );
    assert_eq!(server.get("/api/v1/reports?village=9999999999").0, 422);
    assert_eq!(server.get("/api/v1/reports?kind=poem").0, 400);
    assert_eq!(server.get("/api/v1/reports?updated_since=yesterday").0, 400);
    assert_eq!(server.get("/api/v1/schemas/poem").0, 404);

    // The CLI refuses locally what the server would refuse, and stores nothing.
    let bad = a.run(&[
        "new",
        "incident",
        "--set",
        "category=recruitment_offer",
        "--set",
        "title=x",
        "--set",
        "location.lat=200",
    ]);
    assert_ne!(bad.code, 0);
    assert_eq!(a.ok(&["status", "--json"]).json()["waiting"], 0);

    assert_eq!(server.seq(), seq, "nothing was stored");
    assert_eq!(server.report(&id)["document"], before);
}

/// (e) A refused change is reported by `desa status`, and the device converges with the server.
#[test]
fn a_refusal_is_reported_and_the_device_converges() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let a = Desa::init(&server, VILLAGE, "Ani");
    let b = Desa::init(&server, VILLAGE, "Budi");
    let id = new_incident(&a, "Long story");
    a.sync();
    b.sync();
    // Valid alone (narrative max 20,000 characters), too long once merged.
    a.ok(&["edit", &id, "--append-narrative", &"a".repeat(12_000)]);
    b.ok(&["edit", &id, "--append-narrative", &"b".repeat(12_000)]);
    b.ok(&["edit", &id, "--note", "written after the long text"]);
    a.sync();
    b.sync();

    let status = b.ok(&["status", "--json"]).json();
    let refusals = status["refusals"].as_array().unwrap();
    assert_eq!(refusals.len(), 1, "{status}");
    assert!(
        refusals[0]["detail"]
            .as_str()
            .unwrap()
            .contains("narrative"),
        "{status}"
    );
    let human = b.ok(&["status"]).stdout;
    assert!(human.contains("narrative"), "{human}");

    b.sync();
    a.sync();
    let doc = server.report(&id)["document"].clone();
    assert_eq!(b.show(&id)["document"], doc);
    assert_eq!(a.show(&id)["document"], doc);
    assert_eq!(notes(&doc), ["written after the long text"]);
    assert!(!doc["narrative"].as_str().unwrap().contains('b'));
}
