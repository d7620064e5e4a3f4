//! The authorization matrix: every endpoint and WebSocket message type × every kind of caller,
//! against the real server, asserting the exact outcome — and that nothing outside a caller's
//! villages is ever returned or relayed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use desa_tests::ws::{self, join, next, request_for, send, Socket};
use desa_tests::Server;
use serde_json::{json, Value};
use sync_core::automerge::sync::{State, SyncDoc};
use sync_core::automerge::Automerge;
use sync_core::protocol::repo::RepoMessage;
use sync_core::protocol::{Position, Scope, ScopePosition, SyncRequest, SyncResponse, WireVerdict};
use sync_core::sim::MemoryDevice;
use sync_core::{
    DeviceId, DeviceToken, Edit, FieldPath, RefusalCode, ReportId, ReportKind, VillageCode,
};

const HOME: &str = "6302010001";
const OTHER: &str = "6302010002";
const VICTIM: &str = "Siti Rahayu";
const CONTACT: &str = "+62 812 5555 0101";

fn village(code: &str) -> VillageCode {
    VillageCode::parse(code).unwrap()
}

/// Every kind of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    NoToken,
    BadToken,
    Revoked,
    VolunteerIn,
    VolunteerOut,
    Coordinator,
    Analyst,
    Admin,
}

const EVERYONE: [Who; 8] = [
    Who::NoToken,
    Who::BadToken,
    Who::Revoked,
    Who::VolunteerIn,
    Who::VolunteerOut,
    Who::Coordinator,
    Who::Analyst,
    Who::Admin,
];

struct World {
    server: Server,
    volunteer_in: String,
    volunteer_out: String,
    revoked: String,
    bad: String,
    analyst: String,
    admin: String,
    /// A report of HOME with a victim's name, contact and exact location.
    report: ReportId,
    /// The device that wrote it (to make further changes).
    writer: MemoryDevice,
}

impl World {
    fn new() -> (World, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        // The matrix makes many unauthenticated calls from one address: its failure allowance is
        // lifted here (tests/tests/adversarial.rs checks the throttle), and failures are audited
        // every second rather than every minute.
        let server = Server::start(
            &dir.path().join("data"),
            &["--auth-fail-burst", "100000", "--auth-audit-interval", "1"],
        );
        let volunteer_in = server.token("ani", "volunteer", &[HOME]);
        let volunteer_out = server.token("budi", "volunteer", &[OTHER]);
        let analyst = server.token("ana", "analyst", &[]);
        let admin = server.token("root", "admin", &[]);
        let revoked = server.token("cici", "volunteer", &[HOME]);
        let device = revoked.parse::<DeviceToken>().unwrap().device();
        server.admin(&["device", "revoke", &device.to_string()]);
        // A well-formed token of a real device, with the wrong secret.
        let real = volunteer_in.parse::<DeviceToken>().unwrap();
        let bad = DeviceToken::new(real.device(), [0xAB; 32]).reveal();

        let mut writer = MemoryDevice::new(DeviceId::from_bytes([0xA1; 16]), village(HOME));
        let report = writer
            .create(
                ReportKind::Incident,
                &[
                    set("category", json!("recruitment_offer")),
                    set("title", json!("Recruiter at the harbour")),
                    set("narrative", json!("A man offered work in Malaysia without papers.")),
                    set("location.lat", json!(-3.241234)),
                    set("location.lon", json!(116.221234)),
                    Edit::Append {
                        list: "people".parse().unwrap(),
                        item: json!({"role": "potential_victim", "name": VICTIM, "contact": CONTACT, "age": 19}),
                    },
                ],
            )
            .unwrap();
        loop {
            let (status, body) = server.post_sync_as(&volunteer_in, &writer.request());
            assert_eq!(status, 200);
            if !writer.handle_response(&body).unwrap() {
                break;
            }
        }
        let world = World {
            server,
            volunteer_in,
            volunteer_out,
            revoked,
            bad,
            analyst,
            admin,
            report,
            writer,
        };
        // The revocation reached the running server (it polls the directory).
        wait_for(Duration::from_secs(1), || {
            world.server.get_as(&world.revoked, "/api/v1/me").0 == 401
        });
        (world, dir)
    }

    fn token(&self, who: Who) -> Option<&str> {
        match who {
            Who::NoToken => None,
            Who::BadToken => Some(&self.bad),
            Who::Revoked => Some(&self.revoked),
            Who::VolunteerIn => Some(&self.volunteer_in),
            Who::VolunteerOut => Some(&self.volunteer_out),
            Who::Coordinator => Some(&self.server.coordinator),
            Who::Analyst => Some(&self.analyst),
            Who::Admin => Some(&self.admin),
        }
    }

    fn call(&self, who: Who, method: &str, path: &str, body: Option<Vec<u8>>) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let url = format!("{}{path}", self.server.url);
        let auth = self.token(who).map(|t| format!("Bearer {t}"));
        let result = match method {
            "GET" => {
                let mut r = agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            "PATCH" | "POST" => {
                let mut r = if method == "PATCH" {
                    agent.patch(&url)
                } else {
                    agent.post(&url)
                };
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                let content_type = if method == "PATCH" {
                    "application/json"
                } else {
                    "application/octet-stream"
                };
                r.header("Content-Type", content_type)
                    .send(body.unwrap_or_default())
            }
            other => panic!("method {other}"),
        };
        let mut response = result.expect("HTTP");
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (status, text)
    }
}

fn set(path: &str, value: Value) -> Edit {
    Edit::Set {
        path: path.parse::<FieldPath>().unwrap(),
        value,
    }
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sync request for one village scope, from scratch.
fn scope_request(code: &str) -> Vec<u8> {
    SyncRequest {
        device: DeviceId::from_bytes([0xEE; 16]),
        positions: vec![ScopePosition {
            scope: Scope::village(village(code)),
            position: Position::default(),
        }],
        uploads: vec![],
    }
    .encode()
}

/// Method, path, body, and the expected status for each caller, in [`EVERYONE`]'s order.
type Row = (&'static str, String, Option<Vec<u8>>, [u16; 8]);

#[test]
fn every_endpoint_answers_every_caller_exactly() {
    let (w, _dir) = World::new();
    let id = w.report.to_string();
    let get_report = format!("/api/v1/reports/{id}");
    let patch = Some(json!({"status": "under_review"}).to_string().into_bytes());
    let matrix: Vec<Row> = vec![
        ("GET", "/healthz".into(), None, [200; 8]),
        (
            "GET",
            "/api/v1/me".into(),
            None,
            [401, 401, 401, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/v1/villages".into(),
            None,
            [401, 401, 401, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/v1/schemas/incident".into(),
            None,
            [401, 401, 401, 200, 200, 200, 200, 200],
        ),
        (
            "GET",
            "/api/v1/reports".into(),
            None,
            [401, 401, 401, 200, 200, 200, 200, 403],
        ),
        (
            "GET",
            get_report.clone(),
            None,
            [401, 401, 401, 200, 404, 200, 200, 403],
        ),
        (
            "GET",
            "/api/v1/export".into(),
            None,
            [401, 401, 401, 200, 200, 200, 200, 403],
        ),
        (
            "GET",
            "/api/v1/audit".into(),
            None,
            [401, 401, 401, 403, 403, 403, 403, 200],
        ),
        (
            "POST",
            "/api/v1/sync".into(),
            Some(scope_request(HOME)),
            [401, 401, 401, 200, 403, 200, 403, 403],
        ),
        (
            "POST",
            "/api/v1/sync".into(),
            Some(scope_request(OTHER)),
            [401, 401, 401, 403, 200, 200, 403, 403],
        ),
        // The PATCH comes last: it changes the report.
        (
            "PATCH",
            get_report.clone(),
            patch.clone(),
            [401, 401, 401, 403, 403, 200, 403, 403],
        ),
    ];
    let mut failures = Vec::new();
    for (method, path, body, expected) in &matrix {
        for (who, want) in EVERYONE.iter().zip(expected) {
            let (got, text) = w.call(*who, method, path, body.clone());
            if got != *want {
                failures.push(format!(
                    "{method} {path} as {who:?}: {got}, expected {want}: {text}"
                ));
            }
            if *want == 401 {
                // Nothing served: the error shape and no report content.
                assert!(
                    text.contains("\"unauthorized\"") && !text.contains(VICTIM),
                    "{text}"
                );
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn out_of_scope_reads_look_like_nothing_and_analysts_see_no_sensitive_fields() {
    let (w, _dir) = World::new();
    let id = w.report.to_string();

    // A report of another village answers exactly as an id that does not exist.
    let missing = ReportId::new_random().to_string();
    let (s1, out_of_scope) = w.call(
        Who::VolunteerOut,
        "GET",
        &format!("/api/v1/reports/{id}"),
        None,
    );
    let (s2, nonexistent) = w.call(
        Who::VolunteerOut,
        "GET",
        &format!("/api/v1/reports/{missing}"),
        None,
    );
    assert_eq!((s1, s2), (404, 404));
    assert_eq!(
        out_of_scope.replace(&id, "ID"),
        nonexistent.replace(&missing, "ID")
    );

    // Lists, exports, village counts and syncs of the other volunteer never include it.
    for path in [
        "/api/v1/reports",
        "/api/v1/export",
        "/api/v1/villages",
        "/api/v1/reports?village=6302010001",
    ] {
        let (status, text) = w.call(Who::VolunteerOut, "GET", path, None);
        assert_eq!(status, 200, "{path}");
        assert!(
            !text.contains(&id) && !text.contains(VICTIM),
            "{path}: {text}"
        );
    }
    let (_, villages) = w.call(Who::VolunteerOut, "GET", "/api/v1/villages", None);
    let villages: Value = serde_json::from_str(&villages).unwrap();
    let home = villages
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["code"] == HOME)
        .unwrap();
    assert_eq!(
        home["reports"], 0,
        "counts outside the caller's villages are not shown"
    );
    let (_, body) = w
        .server
        .post_sync_as(&w.volunteer_out, &scope_request(OTHER));
    let answer = SyncResponse::decode(&body).unwrap();
    assert!(answer
        .feeds
        .iter()
        .all(|f| f.items.iter().all(|i| i.report != w.report)));

    // The volunteer of the village and the coordinator see everything.
    for who in [Who::VolunteerIn, Who::Coordinator] {
        let (_, text) = w.call(who, "GET", &format!("/api/v1/reports/{id}"), None);
        assert!(
            text.contains(VICTIM) && text.contains(CONTACT) && text.contains("-3.241234"),
            "{who:?}"
        );
        assert!(!text.contains("\"redacted\""), "{who:?}");
    }

    // The analyst reads it, redacted, and is told what was withheld — everywhere it can read.
    for path in [
        format!("/api/v1/reports/{id}"),
        "/api/v1/reports?kind=incident".into(),
        "/api/v1/export?kind=incident".into(),
    ] {
        let (status, text) = w.call(Who::Analyst, "GET", &path, None);
        assert_eq!(status, 200);
        assert!(text.contains(&id), "{path}");
        assert!(
            !text.contains(VICTIM) && !text.contains(CONTACT),
            "{path}: {text}"
        );
        assert!(
            !text.contains("-3.241234") && !text.contains("116.221234"),
            "{path}: {text}"
        );
        assert!(
            text.contains("-3.24") && text.contains("116.22"),
            "rounded, not removed: {text}"
        );
        assert!(
            text.contains("people.0.name") && text.contains("location.lat"),
            "{path}: {text}"
        );
    }
}

#[test]
fn forbidden_changes_over_http_are_refused_with_their_reason_and_allowed_ones_kept() {
    let (w, _dir) = World::new();
    let before = w.server.report(&w.report.to_string());
    let mut writer = w.writer.clone();
    writer
        .edit(
            w.report,
            &[set("title", json!("Edited by the wrong village"))],
        )
        .unwrap();
    let request = SyncRequest::decode(&writer.request()).unwrap();
    let upload = SyncRequest {
        positions: vec![],
        ..request
    };
    // The other village's volunteer uploads it: refused as not permitted, nothing stored.
    let (status, body) = w.server.post_sync_as(&w.volunteer_out, &upload.encode());
    assert_eq!(status, 200);
    let answer = SyncResponse::decode(&body).unwrap();
    match &answer.verdicts[..] {
        [WireVerdict::Refused(r)] => {
            assert_eq!(r.code, RefusalCode::NotPermitted);
            assert_eq!(
                r.detail,
                sync_core::rules::NOT_PERMITTED_DETAIL,
                "the refusal names nothing of the report"
            );
        }
        other => panic!("expected one refusal, got {other:?}"),
    }
    assert!(
        answer.rebuilds.is_empty(),
        "nothing of the report comes back"
    );
    assert_eq!(
        w.server.report(&w.report.to_string())["heads"],
        before["heads"]
    );

    // A volunteer of the village may not change the status; the title edit is theirs to make.
    let mut status_edit = w.writer.clone();
    status_edit
        .edit(
            w.report,
            &[set("title", json!("Recruiter at the harbour, again"))],
        )
        .unwrap();
    let title_only = SyncRequest::decode(&status_edit.request()).unwrap();
    let (_, body) = w.server.post_sync_as(
        &w.volunteer_in,
        &SyncRequest {
            positions: vec![],
            ..title_only
        }
        .encode(),
    );
    assert!(matches!(
        &SyncResponse::decode(&body).unwrap().verdicts[..],
        [WireVerdict::Accepted]
    ));
    let after = w.server.report(&w.report.to_string());
    assert_eq!(
        after["document"]["title"],
        "Recruiter at the harbour, again"
    );

    // Analysts and admins do not sync at all.
    for token in [&w.analyst, &w.admin] {
        let (status, _) = w.server.post_sync_as(token, &upload.encode());
        assert_eq!(status, 403);
    }
}

async fn joined(url: &str, peer: &str) -> Socket {
    let mut socket = ws::connect(url).await.expect("upgrade");
    assert!(matches!(
        join(&mut socket, peer).await,
        RepoMessage::Peer { .. }
    ));
    socket
}

#[tokio::test(flavor = "multi_thread")]
async fn the_websocket_keeps_the_same_rules() {
    let (w, _dir) = tokio::task::spawn_blocking(World::new).await.unwrap();
    let id = w.report.to_string();

    // The upgrade: 401 without a valid token (query or header), 403 for roles that do not sync.
    let base = w.server.ws_url("x");
    let base = base.trim_end_matches("?token=x");
    assert_eq!(ws::connect(base).await.err(), Some(401));
    for (who, want) in [
        (Who::BadToken, 401),
        (Who::Revoked, 401),
        (Who::Analyst, 403),
        (Who::Admin, 403),
    ] {
        let url = w.server.ws_url(w.token(who).unwrap());
        assert_eq!(ws::connect(&url).await.err(), Some(want), "{who:?}");
    }
    // The header works too (samod-style clients).
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(base)
            .unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", w.volunteer_in).parse().unwrap(),
    );
    let (mut by_header, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("header auth");
    by_header.close(None).await.ok();

    // In scope: the document comes. Out of scope: exactly as an unknown id.
    let mut inside = joined(&w.server.ws_url(&w.volunteer_in), "inside").await;
    send(&mut inside, request_for(&id)).await;
    assert!(matches!(
        next(&mut inside, Duration::from_secs(5)).await,
        Some(RepoMessage::Sync { .. })
    ));
    let mut outside = joined(&w.server.ws_url(&w.volunteer_out), "outside").await;
    send(&mut outside, request_for(&id)).await;
    let missing = ReportId::new_random().to_string();
    let a = next(&mut outside, Duration::from_secs(5)).await;
    send(&mut outside, request_for(&missing)).await;
    let b = next(&mut outside, Duration::from_secs(5)).await;
    assert!(
        matches!(a, Some(RepoMessage::DocUnavailable { .. })),
        "{a:?}"
    );
    assert!(
        matches!(b, Some(RepoMessage::DocUnavailable { .. })),
        "{b:?}"
    );

    // A change to it from outside is refused as not permitted, and not stored.
    let heads = w.server.report(&id)["heads"].clone();
    let mut writer = w.writer.clone();
    writer
        .edit(w.report, &[set("title", json!("from outside"))])
        .unwrap();
    let change = SyncRequest::decode(&writer.request()).unwrap().uploads[0].changes[0].clone();
    let mut message = Automerge::new()
        .generate_sync_message(&mut State::new())
        .unwrap();
    message.changes = vec![change.0.clone()].into();
    send(
        &mut outside,
        RepoMessage::Sync {
            sender_id: "outside".into(),
            target_id: String::new(),
            document_id: id.clone(),
            data: message.encode(),
        },
    )
    .await;
    match next(&mut outside, Duration::from_secs(5)).await {
        Some(RepoMessage::Error { message }) => {
            assert!(message.contains("not permitted"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(w.server.report(&id)["heads"], heads);

    // Ephemeral messages about it from outside are not relayed to the peer that has it open.
    send(
        &mut outside,
        RepoMessage::Ephemeral {
            sender_id: "outside".into(),
            target_id: String::new(),
            count: 1,
            session_id: "s".into(),
            document_id: id.clone(),
            data: b"cursor".to_vec(),
        },
    )
    .await;
    loop {
        match next(&mut inside, Duration::from_millis(500)).await {
            Some(RepoMessage::Ephemeral { .. }) => {
                panic!("relayed an out-of-scope ephemeral message")
            }
            Some(_) => continue,
            None => break,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_device_is_refused_within_a_second_even_on_an_open_websocket() {
    let (w, _dir) = tokio::task::spawn_blocking(World::new).await.unwrap();
    let token = w.server.token("dodi", "volunteer", &[HOME]);
    let device = token.parse::<DeviceToken>().unwrap().device();
    let mut socket = joined(&w.server.ws_url(&token), "dodi").await;
    assert_eq!(w.server.get_as(&token, "/api/v1/me").0, 200);

    let server = &w.server;
    server.admin(&["device", "revoke", &device.to_string()]);
    let revoked_at = Instant::now();
    // The open connection is told and closed…
    loop {
        match next(&mut socket, Duration::from_secs(1)).await {
            Some(RepoMessage::Error { message }) => {
                assert!(message.contains("revoked"), "{message}")
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        revoked_at.elapsed()
    );
    // …and HTTP answers 401.
    assert_eq!(server.get_as(&token, "/api/v1/me").0, 401);
    assert!(revoked_at.elapsed() < Duration::from_secs(1));
}

#[test]
fn the_audit_trail_records_reads_writes_and_failures_but_never_a_token() {
    let (w, _dir) = World::new();
    let id = w.report.to_string();
    w.call(Who::Analyst, "GET", &format!("/api/v1/reports/{id}"), None);
    w.call(Who::BadToken, "GET", "/api/v1/reports", None);
    w.call(
        Who::Coordinator,
        "GET",
        "/api/v1/export?kind=incident",
        None,
    );
    // Failed authentications are written once their interval (here a second) ends.
    let mut text = String::new();
    wait_for(Duration::from_secs(5), || {
        let (status, body) = w.call(Who::Admin, "GET", "/api/v1/audit?limit=500", None);
        assert_eq!(status, 200);
        text = body;
        text.contains("\"auth_failed\"")
    });
    for token in [
        &w.volunteer_in,
        &w.bad,
        &w.analyst,
        &w.admin,
        &w.server.coordinator,
    ] {
        let secret = &token["desa_".len()..];
        assert!(!text.contains(secret), "a token in the audit trail");
    }
    let audit: Value = serde_json::from_str(&text).unwrap();
    let records: Vec<&Value> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["record"])
        .collect();
    let has = |f: &dyn Fn(&Value) -> bool| records.iter().any(|r| f(r));
    assert!(has(&|r| r["action"] == "user_add" && r["name"] == "ani"));
    assert!(has(&|r| r["action"] == "device_revoke"));
    assert!(has(&|r| r["action"] == "write"
        && r["report"] == id.as_str()
        && r["who"]["user"] == "ani"
        && r["fields"].as_array().is_some_and(|f| !f.is_empty())));
    assert!(has(&|r| r["action"] == "read"
        && r["who"]["role"] == "analyst"
        && r["redacted"] == true
        && r["reports"][0] == id.as_str()));
    assert!(has(&|r| r["action"] == "auth_failed"
        && r["reasons"]["wrong secret"].as_u64() >= Some(1)
        && r["peer"] == "127.0.0.1"));
    assert!(has(
        &|r| r["action"] == "export" && r["who"]["user"] == "office"
    ));
    // The whole chain verifies against its anchor.
    let verified = w.server.admin(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
}
