//! The adversarial suite: an attacker speaking the wire protocols directly — the binary sync body
//! over HTTP, raw automerge-repo messages over the WebSocket — against the real server on
//! loopback. Nothing here goes through `desa` or a well-behaved client: out-of-scope and unknown
//! ids, dependency games, forged actors and creators, hostile bytes, floods of bad tokens and of
//! connections. Each test is bounded (a server of its own, seconds of work).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use desa_tests::ws::{self, next, send, Socket};
use desa_tests::Server;
use serde_json::{json, Value};
use sync_core::automerge::sync::{State, SyncDoc};
use sync_core::automerge::transaction::{CommitOptions, Transactable};
use sync_core::automerge::{ActorId, Automerge, Change, ROOT};
use sync_core::protocol::repo::RepoMessage;
use sync_core::protocol::{
    Bytes, Delta, Position, Scope, ScopePosition, SyncRequest, SyncResponse, Upload, WireVerdict,
};
use sync_core::rules::{API_GENERATION, NOT_PERMITTED_DETAIL};
use sync_core::{
    DeviceId, DeviceToken, Edit, FieldPath, NewReport, Refusal, RefusalCode, Report, ReportId,
    ReportKind, Role, VillageCode, Writer,
};

const HOME: &str = "6302010001";
const OTHER: &str = "6302010002";
const VICTIM: &str = "Siti Rahayu";

fn village(code: &str) -> VillageCode {
    VillageCode::parse(code).unwrap()
}

/// A device of a person: its token and id.
#[derive(Clone)]
struct Device {
    token: String,
    id: DeviceId,
}

impl Device {
    fn new(server: &Server, user: &str, role: &str, villages: &[&str]) -> Device {
        let token = server.token(user, role, villages);
        let id = token.parse::<DeviceToken>().unwrap().device();
        Device { token, id }
    }

    fn writer(&self, generation: u32) -> Writer {
        Writer {
            actor: self.id.actor(generation),
            role: Role::Volunteer,
            time: 1_764_316_800,
        }
    }
}

/// An office: Ani and Dewi, volunteers of HOME; Budi, a volunteer of OTHER; the coordinator.
struct Office {
    server: Server,
    ani: Device,
    dewi: Device,
    budi: Device,
    coordinator: Device,
    _dir: tempfile::TempDir,
}

impl Office {
    fn start(extra: &[&str]) -> Office {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(&dir.path().join("data"), extra);
        let ani = Device::new(&server, "ani", "volunteer", &[HOME]);
        let dewi = Device::new(&server, "dewi", "volunteer", &[HOME]);
        let budi = Device::new(&server, "budi", "volunteer", &[OTHER]);
        let coordinator = Device {
            id: server.coordinator.parse::<DeviceToken>().unwrap().device(),
            token: server.coordinator.clone(),
        };
        Office {
            server,
            ani,
            dewi,
            budi,
            coordinator,
            _dir: dir,
        }
    }

    /// A report of HOME by `by` naming a victim, stored on the server: its id and document.
    fn report(&self, by: &Device, title: &str) -> (ReportId, Report) {
        let new = NewReport {
            kind: ReportKind::Incident,
            village: village(HOME),
            created_at: "2026-11-28T08:00:00Z".into(),
            created_by: by.id.to_string(),
        };
        let fields = [
            set("category", json!("recruitment_offer")),
            set("title", json!(title)),
            Edit::Append {
                list: "people".parse().unwrap(),
                item: json!({"role": "potential_victim", "name": VICTIM, "age": 19}),
            },
        ];
        let id = ReportId::new_random();
        let (report, first) = Report::create(id, &new, &fields, &by.writer(0)).unwrap();
        let answer = upload(&self.server, by, id, &[first]);
        assert_eq!(answer.verdicts, vec![WireVerdict::Accepted]);
        (id, report)
    }

    fn audit(&self) -> Vec<Value> {
        let admin = Device::new(&self.server, "auditor", "admin", &[]);
        let mut records = Vec::new();
        let mut after = 0;
        loop {
            let (status, page) = self.server.get_as(
                &admin.token,
                &format!("/api/v1/audit?after={after}&limit=500"),
            );
            assert_eq!(status, 200, "{page}");
            // Each read of the trail is itself recorded: stop at a short page, not an empty one.
            let items = page["items"].as_array().unwrap().clone();
            let short = items.len() < 500;
            if let Some(last) = items.last() {
                after = last["seq"].as_u64().unwrap();
            }
            records.extend(items.into_iter().map(|i| i["record"].clone()));
            if short {
                return records;
            }
        }
    }
}

fn set(path: &str, value: Value) -> Edit {
    Edit::Set {
        path: path.parse::<FieldPath>().unwrap(),
        value,
    }
}

/// Raw sync request bytes: `changes` of `report`, and optionally a scope position.
fn request(device: DeviceId, report: ReportId, changes: &[Change], scope: Option<&str>) -> Vec<u8> {
    SyncRequest {
        device,
        positions: scope
            .map(|code| ScopePosition {
                scope: Scope::village(village(code)),
                position: Position::default(),
            })
            .into_iter()
            .collect(),
        uploads: vec![Upload {
            report,
            changes: changes
                .iter()
                .map(|c| Bytes(c.raw_bytes().to_vec()))
                .collect(),
        }],
    }
    .encode()
}

fn upload(server: &Server, by: &Device, report: ReportId, changes: &[Change]) -> SyncResponse {
    let (status, body) = server.post_sync_as(&by.token, &request(by.id, report, changes, None));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    SyncResponse::decode(&body).unwrap()
}

/// A change under `actor` on top of `base` writing `key = value` at the root — made with
/// automerge directly, as a hostile client would, past every local check.
fn raw_change(base: &Automerge, actor: ActorId, key: &str, value: &str) -> Change {
    let mut doc = base.clone();
    doc.set_actor(actor);
    let mut tx = doc.transaction();
    tx.put(ROOT, key, value).unwrap();
    tx.commit_with(CommitOptions::default().with_time(7));
    doc.get_last_local_change().unwrap()
}

fn not_permitted() -> WireVerdict {
    WireVerdict::Refused(Refusal::not_permitted())
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn changes_to_other_villages_or_missing_reports_get_one_refusal_and_nothing_back() {
    let office = Office::start(&[]);
    let (id, report) = office.report(&office.ani, "Recruiter at the harbour");
    let heads = office.server.report(&id.to_string())["heads"].clone();
    let budi = &office.budi;

    // Budi (another village) tries everything on Ani's report: a change built on it, a first
    // change claiming its id (for a report of his own village), and a resend of a change it has.
    let on_top = raw_change(report.doc(), budi.id.actor(0), "title", "mine now");
    let mut claim = NewReport {
        kind: ReportKind::Incident,
        village: village(OTHER),
        created_at: "2026-11-28T08:00:00Z".into(),
        created_by: budi.id.to_string(),
    };
    let (_, claiming) = Report::create(
        id,
        &claim,
        &[set("category", json!("other")), set("title", json!("t"))],
        &budi.writer(0),
    )
    .unwrap();
    let resend = report.doc().get_changes(&[])[0].clone();
    let (status, body) = office.server.post_sync_as(
        &budi.token,
        &request(
            budi.id,
            id,
            &[on_top.clone(), claiming, resend],
            Some(OTHER),
        ),
    );
    assert_eq!(status, 200);
    let answer = SyncResponse::decode(&body).unwrap();
    assert_eq!(answer.verdicts, vec![not_permitted(); 3]);
    assert!(answer.rebuilds.is_empty(), "no rebuild: {answer:?}");
    assert!(
        !String::from_utf8_lossy(&body).contains(VICTIM),
        "the answer carries nothing of the report"
    );
    assert_eq!(office.server.report(&id.to_string())["heads"], heads);

    // A later change to a report the server does not have: the very same answer, not held.
    let unknown = ReportId::new_random();
    let answer = upload(&office.server, budi, unknown, std::slice::from_ref(&on_top));
    assert_eq!(answer.verdicts, vec![not_permitted()]);
    assert!(answer.rebuilds.is_empty());
    assert_eq!(
        office.server.get(&format!("/api/v1/reports/{unknown}")).0,
        404
    );
    // The derived id of another village's profile is no way in either.
    let profile = ReportId::village_profile(village(HOME));
    let answer = upload(&office.server, budi, profile, &[on_top]);
    assert_eq!(answer.verdicts, vec![not_permitted()]);
    assert!(answer.rebuilds.is_empty());
    // The refusal's words are the same for all.
    let WireVerdict::Refused(r) = &answer.verdicts[0] else {
        unreachable!()
    };
    assert_eq!(r.detail, NOT_PERMITTED_DETAIL);

    // In his own village, a first change on a free id is his to make (so a creation on a taken id
    // is told apart only by someone who already knows the id: docs/security.md).
    claim.village = village(OTHER);
    let free = ReportId::new_random();
    let (_, mine) = Report::create(
        free,
        &claim,
        &[set("category", json!("other")), set("title", json!("t"))],
        &budi.writer(0),
    )
    .unwrap();
    let answer = upload(&office.server, budi, free, &[mine]);
    assert_eq!(answer.verdicts, vec![WireVerdict::Accepted]);
}

/// A raw peer, joined.
async fn peer(server: &Server, token: &str, name: &str) -> Socket {
    let mut socket = ws::connect(&server.ws_url(token)).await.expect("upgrade");
    assert!(matches!(
        ws::join(&mut socket, name).await,
        RepoMessage::Peer { .. }
    ));
    socket
}

/// A sync message offering `heads` (what a peer with the document says first).
fn offer(document: &str, doc: &Automerge) -> RepoMessage {
    RepoMessage::Sync {
        sender_id: "attacker".into(),
        target_id: String::new(),
        document_id: document.into(),
        data: doc
            .generate_sync_message(&mut State::new())
            .unwrap()
            .encode(),
    }
}

/// A sync message carrying `changes`.
fn carrying(document: &str, changes: &[Change]) -> RepoMessage {
    let mut message = Automerge::new()
        .generate_sync_message(&mut State::new())
        .unwrap();
    message.changes = changes
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect::<Vec<_>>()
        .into();
    RepoMessage::Sync {
        sender_id: "attacker".into(),
        target_id: String::new(),
        document_id: document.into(),
        data: message.encode(),
    }
}

/// Every message the server sends within `wait`, until it goes quiet.
async fn drain(socket: &mut Socket, wait: Duration) -> Vec<RepoMessage> {
    let mut out = Vec::new();
    while let Some(m) = next(socket, wait).await {
        out.push(m);
    }
    out
}

/// A message with the document id and change hashes replaced, to compare answers.
fn shape(message: &RepoMessage, ids: &[(&str, &str)]) -> String {
    let mut text = match message {
        RepoMessage::Error { message } => format!("error: {message}"),
        RepoMessage::DocUnavailable { document_id, .. } => {
            format!("doc-unavailable {document_id}")
        }
        RepoMessage::Sync {
            document_id, data, ..
        } => {
            let m = sync_core::automerge::sync::Message::decode(data).unwrap();
            format!(
                "sync {document_id} heads={} changes={}",
                m.heads.len(),
                m.changes.len()
            )
        }
        other => format!("{other:?}"),
    };
    for (from, to) in ids {
        text = text.replace(from, to);
    }
    text
}

#[tokio::test(flavor = "multi_thread")]
async fn over_the_websocket_another_villages_document_is_exactly_a_missing_one() {
    let office = tokio::task::spawn_blocking(|| Office::start(&[]))
        .await
        .unwrap();
    let (id, report) = office.report(&office.ani, "Recruiter at the harbour");
    let (id, missing) = (id.to_string(), ReportId::new_random().to_string());
    let mut budi = peer(&office.server, &office.budi.token, "budi").await;

    // Asked for, offered heads, sent changes: the same answers for both ids.
    let change = raw_change(report.doc(), office.budi.id.actor(0), "title", "mine");
    let mut fake = report.doc().clone();
    fake.apply_changes([change.clone()]).unwrap();
    let mut answers: Vec<Vec<String>> = Vec::new();
    for doc_id in [&id, &missing] {
        let mut seen = Vec::new();
        for message in [
            ws::request_for(doc_id),
            offer(doc_id, &fake),
            carrying(doc_id, std::slice::from_ref(&change)),
        ] {
            send(&mut budi, message).await;
            let got = drain(&mut budi, Duration::from_millis(400)).await;
            seen.extend(got.iter().map(|m| shape(m, &[(doc_id.as_str(), "DOC")])));
        }
        answers.push(seen);
    }
    assert_eq!(answers[0], answers[1], "the answers tell the two ids apart");
    assert!(
        answers[0].iter().any(|a| a.contains(NOT_PERMITTED_DETAIL)),
        "{:?}",
        answers[0]
    );
    assert!(answers[0].iter().all(|a| !a.contains(VICTIM)));
    assert_eq!(
        office.server.report(&id)["document"]["title"],
        "Recruiter at the harbour"
    );

    // Ephemeral messages about it are relayed to nobody.
    let mut ani = peer(&office.server, &office.ani.token, "ani").await;
    send(&mut ani, ws::request_for(&id)).await;
    assert!(matches!(
        next(&mut ani, Duration::from_secs(5)).await,
        Some(RepoMessage::Sync { .. })
    ));
    send(
        &mut budi,
        RepoMessage::Ephemeral {
            sender_id: "budi".into(),
            target_id: String::new(),
            count: 1,
            session_id: "s".into(),
            document_id: id.clone(),
            data: b"cursor at the victim's name".to_vec(),
        },
    )
    .await;
    for m in drain(&mut ani, Duration::from_millis(500)).await {
        assert!(
            !matches!(m, RepoMessage::Ephemeral { .. }),
            "relayed an out-of-scope ephemeral message"
        );
    }
}

#[test]
fn a_held_change_never_acts_with_the_authority_of_whoever_completes_it() {
    let office = Office::start(&[]);
    let (id, report) = office.report(&office.ani, "Recruiter at the harbour");
    // The coordinator's next change, made on their own device (not yet sent), and Ani's change
    // built on it, closing the report.
    let decision = raw_change(
        report.doc(),
        office.coordinator.id.actor(0),
        "status",
        "verified",
    );
    let mut after = report.doc().clone();
    after.apply_changes([decision.clone()]).unwrap();
    let closing = raw_change(&after, office.ani.id.actor(0), "status", "closed");
    let answer = upload(&office.server, &office.ani, id, &[closing]);
    assert!(matches!(answer.verdicts[0], WireVerdict::Held(_)));

    // The coordinator's own sync completes it: the decision stands, Ani's change is dropped.
    let answer = upload(&office.server, &office.coordinator, id, &[decision]);
    assert_eq!(answer.verdicts, vec![WireVerdict::Accepted]);
    let shown = office.server.report(&id.to_string());
    assert_eq!(shown["document"]["status"], "verified");
    let audit = office.audit();
    assert!(audit.iter().any(|r| r["action"] == "held_dropped"
        && r["who"]["user"] == "ani"
        && r["report"] == id.to_string()));
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "write" && r["who"]["user"] == "ani" && r["held"].is_array()),
        "the held upload is audited"
    );

    // A coordinator's PATCH cannot be predicted: it is not the change the old convention (its
    // device's API actor, the second, no message) would make.
    let (_, body) = office.server.post_sync_as(
        &office.coordinator.token,
        &SyncRequest {
            device: office.coordinator.id,
            positions: vec![ScopePosition {
                scope: Scope::village(village(HOME)),
                position: Position::default(),
            }],
            uploads: vec![],
        }
        .encode(),
    );
    let feed = SyncResponse::decode(&body).unwrap();
    let item = feed.feeds[0].items.iter().find(|i| i.report == id).unwrap();
    let Delta::Snapshot(snapshot) = &item.delta else {
        panic!("a whole document for a fresh position")
    };
    let current = Report::load(id, &snapshot.0).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let predicted: Vec<String> = (now - 2..=now + 3)
        .filter_map(|time| {
            let mut r = Report::from_doc(id, current.doc().clone()).unwrap();
            r.edit(
                &[set("status", json!("under_review"))],
                &Writer {
                    actor: office.coordinator.id.actor(API_GENERATION),
                    role: Role::Coordinator,
                    time,
                },
            )
            .unwrap()
            .map(|c| c.hash().to_string())
        })
        .collect();
    let (status, patched) = office.server.patch(
        &format!("/api/v1/reports/{id}"),
        &json!({"status": "under_review"}),
    );
    assert_eq!(status, 200, "{patched}");
    let change = patched["change"].as_str().unwrap();
    assert!(
        !predicted.iter().any(|p| p == change),
        "the coordinator's change was predictable"
    );
}

#[test]
fn held_changes_are_bounded_per_device() {
    let office = Office::start(&[]);
    let (id, report) = office.report(&office.ani, "Recruiter at the harbour");
    // 66 changes on top of one the server never gets.
    let mut r = Report::from_doc(id, report.doc().clone()).unwrap();
    let chain: Vec<Change> = (0..67)
        .map(|i| {
            r.edit(
                &[set("title", json!(format!("t{i}")))],
                &office.ani.writer(0),
            )
            .unwrap()
            .unwrap()
        })
        .skip(1)
        .collect();
    let answer = upload(&office.server, &office.ani, id, &chain);
    let held = answer
        .verdicts
        .iter()
        .filter(|v| matches!(v, WireVerdict::Held(_)))
        .count();
    assert_eq!(held, 64, "at most 64 held per device");
    let WireVerdict::Refused(over) = &answer.verdicts[64] else {
        panic!("{:?}", answer.verdicts[64])
    };
    assert_eq!(over.code, RefusalCode::NotPermitted);
    assert!(over.detail.contains("at most 64"), "{}", over.detail);
    assert!(matches!(
        &answer.verdicts[65],
        WireVerdict::Refused(r) if r.code == RefusalCode::DependsOnRefused
    ));
    // Resending changes nothing: the same 64 are held, the rest refused again.
    let again = upload(&office.server, &office.ani, id, &chain);
    assert_eq!(again.verdicts, answer.verdicts);
    // Another device of another person still has room.
    let mut d = Report::from_doc(id, report.doc().clone()).unwrap();
    let dewis: Vec<Change> = (0..2)
        .map(|i| {
            d.edit(
                &[set("risk", json!(["low", "high"][i]))],
                &office.dewi.writer(0),
            )
            .unwrap()
            .unwrap()
        })
        .collect();
    let answer = upload(&office.server, &office.dewi, id, &dewis[1..]);
    assert!(matches!(answer.verdicts[0], WireVerdict::Held(_)));
}

#[test]
fn forged_actors_and_creators_are_refused_and_history_names_the_uploader() {
    let office = Office::start(&[]);
    let (id, report) = office.report(&office.ani, "Recruiter at the harbour");

    // Dewi (same village) writes under Ani's device actor: refused.
    let as_ani = raw_change(report.doc(), office.ani.id.actor(0), "risk", "urgent");
    let answer = upload(&office.server, &office.dewi, id, &[as_ani]);
    assert!(
        matches!(&answer.verdicts[0], WireVerdict::Refused(r) if r.code == RefusalCode::NotPermitted)
    );
    // …or under the server's reserved actors.
    for actor in [
        sync_core::SERVER_DEVICE.actor(0),
        office.dewi.id.actor(API_GENERATION),
        office.coordinator.id.actor(API_GENERATION),
    ] {
        let reserved = raw_change(report.doc(), actor, "risk", "urgent");
        let answer = upload(&office.server, &office.dewi, id, &[reserved]);
        assert!(
            matches!(&answer.verdicts[0], WireVerdict::Refused(r) if r.code == RefusalCode::NotPermitted),
            "{:?}",
            answer.verdicts
        );
    }
    // A report naming Ani's device as its creator, uploaded by Dewi: refused.
    let new = NewReport {
        kind: ReportKind::Incident,
        village: village(HOME),
        created_at: "2026-11-28T08:00:00Z".into(),
        created_by: office.ani.id.to_string(),
    };
    let fields = [
        set("category", json!("other")),
        set("title", json!("forged")),
    ];
    let forged_id = ReportId::new_random();
    let (_, forged) = Report::create(forged_id, &new, &fields, &office.dewi.writer(0)).unwrap();
    let answer = upload(&office.server, &office.dewi, forged_id, &[forged]);
    assert!(
        matches!(&answer.verdicts[0], WireVerdict::Refused(r) if r.code == RefusalCode::BadCreation)
    );

    // An app's random actor is bound to whoever uploads under it first.
    let app = ActorId::from(vec![0xAB; 16]);
    let first = raw_change(report.doc(), app.clone(), "risk", "high");
    let answer = upload(
        &office.server,
        &office.ani,
        id,
        std::slice::from_ref(&first),
    );
    assert_eq!(answer.verdicts, vec![WireVerdict::Accepted]);
    let mut after = report.doc().clone();
    after.apply_changes([first]).unwrap();
    let second = raw_change(&after, app, "risk", "urgent");
    let answer = upload(
        &office.server,
        &office.dewi,
        id,
        std::slice::from_ref(&second),
    );
    assert!(
        matches!(&answer.verdicts[0], WireVerdict::Refused(r) if r.code == RefusalCode::NotPermitted)
    );

    // A second device of Ani's (a re-tokened phone) keeps writing under the first one's actor.
    let phone2 = Device::new(&office.server, "ani", "volunteer", &[HOME]);
    let answer = upload(&office.server, &phone2, id, &[second]);
    assert_eq!(answer.verdicts, vec![WireVerdict::Accepted]);

    // History names the device and the person that uploaded each change.
    let shown = office.server.report(&id.to_string());
    let history = shown["history"].as_array().unwrap();
    assert!(history
        .iter()
        .all(|h| h["recorded"] == true && h["user"] == "ani"));
    assert_eq!(
        history.last().unwrap()["device"],
        phone2.id.to_string(),
        "the uploading device, not the actor's"
    );
}

#[test]
fn a_flood_of_bad_tokens_is_throttled_per_address_and_audited_once_per_interval() {
    let office = Office::start(&["--auth-audit-interval", "1", "--trusted-proxy", "127.0.0.1"]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let bad = DeviceToken::new(office.ani.id, [0x55; 32]).reveal();
    let mut statuses = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..60 {
        let response = agent
            .get(format!("{}/api/v1/me", office.server.url))
            .header("Authorization", format!("Bearer {bad}"))
            .call()
            .unwrap();
        if response.status() == 429 {
            let retry = response
                .headers()
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap();
            assert!(retry.parse::<u64>().unwrap() >= 1);
        }
        statuses.push(response.status().as_u16());
    }
    let took = started.elapsed();
    assert!(statuses[..20].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[20..].contains(&429), "{statuses:?}");
    // Only failures count: the office's valid token, from the same address, is still served.
    assert_eq!(office.server.get_as(&office.ani.token, "/api/v1/me").0, 200);
    // Behind the trusted proxy each client address has its own allowance.
    let forwarded = agent
        .get(format!("{}/api/v1/me", office.server.url))
        .header("Authorization", format!("Bearer {bad}"))
        .header("X-Forwarded-For", "203.0.113.7")
        .call()
        .unwrap();
    assert_eq!(forwarded.status(), 401);

    // One audit entry per address and interval (1 s here: a slow machine spreads the 60 failures
    // over more than one), with the counts.
    let mut entries = Vec::new();
    wait_for("the failures to be audited", Duration::from_secs(5), || {
        entries = office
            .audit()
            .into_iter()
            .filter(|r| r["action"] == "auth_failed")
            .collect();
        entries.iter().any(|r| r["peer"] == "203.0.113.7")
    });
    let local: Vec<&Value> = entries
        .iter()
        .filter(|r| r["peer"] == "127.0.0.1")
        .collect();
    let intervals = took.as_secs() as usize + 2;
    assert!(
        (1..=intervals).contains(&local.len()),
        "{} entries for {took:?}: {local:?}",
        local.len()
    );
    let sum = |f: &dyn Fn(&Value) -> u64| local.iter().map(|r| f(r)).sum::<u64>();
    assert_eq!(sum(&|r| r["count"].as_u64().unwrap()), 60);
    assert!(sum(&|r| r["throttled"].as_u64().unwrap_or(0)) >= 30);
    assert_eq!(sum(&|r| r["reasons"]["wrong secret"].as_u64().unwrap()), 60);
    assert!(
        local.iter().all(|r| !r.to_string().contains(&bad[6..])),
        "never the token"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_connections_are_capped_and_dropped_ones_are_reaped() {
    let office = tokio::task::spawn_blocking(|| {
        Office::start(&["--ws-per-device", "2", "--ws-ping", "1", "--ws-idle", "3"])
    })
    .await
    .unwrap();
    let url = office.server.ws_url(&office.ani.token);
    let mut live = peer(&office.server, &office.ani.token, "live").await;
    // A phone that lost its signal: joined, then silent (never reads, so never answers a ping).
    let silent = peer(&office.server, &office.ani.token, "silent").await;
    assert_eq!(
        ws::connect(&url).await.err(),
        Some(429),
        "a third is refused"
    );
    // Another device is not affected.
    let mut other = peer(&office.server, &office.dewi.token, "dewi").await;
    // Within the idle time the silent one is reaped and the phone can connect again; the live
    // one (which reads, and so answers pings) stays.
    let start = Instant::now();
    let third = loop {
        if let Ok(socket) = ws::connect(&url).await {
            break socket;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "never reaped");
        // Keep the live peers reading (answering pings) meanwhile.
        let _ = next(&mut live, Duration::from_millis(200)).await;
        let _ = next(&mut other, Duration::from_millis(10)).await;
    };
    drop((silent, third));
    send(
        &mut live,
        ws::request_for(&ReportId::new_random().to_string()),
    )
    .await;
    assert!(matches!(
        next(&mut live, Duration::from_secs(5)).await,
        Some(RepoMessage::DocUnavailable { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn access_changes_reach_open_connections_within_a_second() {
    let office = tokio::task::spawn_blocking(|| Office::start(&[]))
        .await
        .unwrap();
    let mut ani = peer(&office.server, &office.ani.token, "ani").await;
    let server = &office.server;
    let out = server.admin(&["user", "set", "ani", "--village", OTHER]);
    assert!(out.contains("now a volunteer of 6302010002"), "{out}");
    let changed = Instant::now();
    loop {
        match next(&mut ani, Duration::from_secs(1)).await {
            Some(RepoMessage::Error { message }) => {
                assert!(message.contains("access has changed"), "{message}")
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "{:?}",
        changed.elapsed()
    );
    // Her syncs follow the new village at once.
    let scope = |code: &str| {
        SyncRequest {
            device: office.ani.id,
            positions: vec![ScopePosition {
                scope: Scope::village(village(code)),
                position: Position::default(),
            }],
            uploads: vec![],
        }
        .encode()
    };
    assert_eq!(server.post_sync_as(&office.ani.token, &scope(HOME)).0, 403);
    assert_eq!(server.post_sync_as(&office.ani.token, &scope(OTHER)).0, 200);

    // Removed: every device of hers is refused, open connections closed.
    let mut again = peer(&office.server, &office.ani.token, "ani").await;
    let out = server.admin(&["user", "remove", "ani"]);
    assert!(out.contains("removed ani"), "{out}");
    let removed = Instant::now();
    while next(&mut again, Duration::from_secs(1)).await.is_some() {}
    assert!(removed.elapsed() < Duration::from_secs(1));
    assert_eq!(server.get_as(&office.ani.token, "/api/v1/me").0, 401);
    let listed = server.admin(&["device", "list", "ani"]);
    assert!(
        listed.contains(&office.ani.id.to_string()) && listed.contains("revoked"),
        "{listed}"
    );
    let users = server.admin(&["user", "list"]);
    assert!(users.contains("removed"), "{users}");
    // The name is never given to someone else.
    let again = server.admin_output(&["user", "add", "ani", "--role", "coordinator"]);
    assert!(!again.status.success());
}

fn regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/regressions")
        .join(target);
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_changes_and_documents_stop_nothing() {
    let office = tokio::task::spawn_blocking(|| Office::start(&[]))
        .await
        .unwrap();
    // Every change the fuzzers kept, as the first change of a new report over HTTP.
    let server = &office.server;
    for bytes in regressions("change") {
        let (status, body) = server.post_sync_as(&office.ani.token, &{
            let mut r =
                SyncRequest::decode(&request(office.ani.id, ReportId::new_random(), &[], None))
                    .unwrap();
            r.uploads[0].changes = vec![Bytes(bytes)];
            r.encode()
        });
        assert_eq!(status, 200);
        let answer = SyncResponse::decode(&body).unwrap();
        assert!(matches!(answer.verdicts[0], WireVerdict::Refused(_)));
    }
    // Every document the fuzzers kept, as a chunk of an automerge-repo sync message.
    let mut socket = peer(server, &office.ani.token, "hostile").await;
    let doc = ReportId::new_random().to_string();
    for bytes in regressions("stored_doc") {
        let mut message = Automerge::new()
            .generate_sync_message(&mut State::new())
            .unwrap();
        message.changes = vec![bytes].into();
        send(
            &mut socket,
            RepoMessage::Sync {
                sender_id: "hostile".into(),
                target_id: String::new(),
                document_id: doc.clone(),
                data: message.encode(),
            },
        )
        .await;
        let _ = drain(&mut socket, Duration::from_millis(200)).await;
    }
    // Every sync message the fuzzers kept (among them `have` bloom filters that divide by zero or
    // ask automerge for 16 GiB), about a report this peer sees: the server answers it from a
    // document with changes to test against the filter.
    let (seen, _) = tokio::task::block_in_place(|| office.report(&office.ani, "seen"));
    for bytes in regressions("ws_message") {
        let Ok(RepoMessage::Sync { data, .. } | RepoMessage::Request { data, .. }) =
            RepoMessage::decode(&bytes)
        else {
            continue;
        };
        send(
            &mut socket,
            RepoMessage::Sync {
                sender_id: "hostile".into(),
                target_id: String::new(),
                document_id: seen.to_string(),
                data,
            },
        )
        .await;
        let _ = drain(&mut socket, Duration::from_millis(200)).await;
    }
    // The connection, the writer and the health check all go on.
    send(
        &mut socket,
        ws::request_for(&ReportId::new_random().to_string()),
    )
    .await;
    assert!(matches!(
        next(&mut socket, Duration::from_secs(5)).await,
        Some(RepoMessage::DocUnavailable { .. })
    ));
    let (id, _) = tokio::task::block_in_place(|| office.report(&office.ani, "after the attack"));
    assert_eq!(
        server.report(&id.to_string())["document"]["title"],
        "after the attack"
    );
    assert_eq!(server.get("/healthz").0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn control_and_bidi_characters_are_refused_on_every_path() {
    let office = tokio::task::spawn_blocking(|| Office::start(&[]))
        .await
        .unwrap();
    let (id, report) = tokio::task::block_in_place(|| office.report(&office.ani, "Clean title"));
    let server = &office.server;
    for bad in ["Ani\u{202E}5550101", "nul\u{0}here"] {
        // HTTP sync.
        let change = raw_change(report.doc(), office.ani.id.actor(0), "title", bad);
        let answer = tokio::task::block_in_place(|| {
            upload(server, &office.ani, id, std::slice::from_ref(&change))
        });
        assert!(
            matches!(&answer.verdicts[0], WireVerdict::Refused(r) if r.code == RefusalCode::Schema)
        );
        // automerge-repo.
        let mut socket = peer(server, &office.ani.token, "p").await;
        send(&mut socket, carrying(&id.to_string(), &[change])).await;
        let said = drain(&mut socket, Duration::from_millis(400)).await;
        assert!(
            said.iter().any(|m| matches!(m, RepoMessage::Error { message } if message.contains("control character"))),
            "{said:?}"
        );
        // A coordinator's PATCH note.
        let (status, body) = tokio::task::block_in_place(|| {
            server.patch(&format!("/api/v1/reports/{id}"), &json!({"note": bad}))
        });
        assert_eq!(status, 422, "{body}");
    }
    assert_eq!(
        server.report(&id.to_string())["document"]["title"],
        "Clean title"
    );
}

#[test]
fn every_error_is_the_json_error_and_short() {
    let office = Office::start(&[]);
    let server = &office.server;
    let admin = Device::new(server, "root", "admin", &[]);
    let long_id = "x".repeat(20_000);
    for (token, path, want) in [
        (&server.coordinator, "/api/v1/reports/".to_owned(), 404),
        (&server.coordinator, "/api/v1/nothing-here".to_owned(), 404),
        (
            &server.coordinator,
            format!("/api/v1/reports/{long_id}"),
            404,
        ),
        (
            &server.coordinator,
            "/api/v1/reports?limit=0".to_owned(),
            400,
        ),
        (
            &server.coordinator,
            "/api/v1/reports?limit=501".to_owned(),
            400,
        ),
        (&admin.token, "/api/v1/audit?limit=0".to_owned(), 400),
    ] {
        let (status, body) = server.get_as(token, &path);
        assert_eq!(status, want, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(
            detail.chars().count() <= 300,
            "{path}: {} chars",
            detail.len()
        );
    }
    // A refused value is quoted, not echoed whole.
    let (id, _) = office.report(&office.ani, "t");
    let (status, body) = server.patch(
        &format!("/api/v1/reports/{id}"),
        &json!({"note": "n".repeat(5000)}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().chars().count() <= 300);
}

#[test]
fn the_data_directory_is_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start_with_umask(&data, &[], Some("000"));
    let _ = server.token("ani", "volunteer", &[HOME]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}
