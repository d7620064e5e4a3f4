//! The real `desa` binary syncing over real HTTP with a minimal stand-in server (the in-process
//! `MemoryServer` behind a few lines of HTTP/1.1 that, like the real server, wants a bearer token),
//! and what the volunteer is told when the server refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::phone::{stderr, Phone};
use common::stand_in::{serve, Reply, Request, StandIn};

#[test]
fn two_phones_sync_over_http() {
    let server = StandIn::start(None);
    let (rina, budi) = (
        Phone::init(&server.url, "Rina", &[]),
        Phone::init(&server.url, "Budi", &[]),
    );
    server.register(&rina.token);
    server.register(&budi.token);
    let made = rina.ok(&[
        "new",
        "incident",
        "--set",
        "category=missing_person",
        "--set",
        "title=Girl missing since Sunday",
    ]);
    let id = made.lines().last().unwrap().to_owned();

    let out = rina.desa(&["sync"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .contains("synced: 1 change sent (1 accepted, 0 refused, 0 held), 0 reports received"),
        "{stdout}"
    );
    assert!(stderr(&out).contains("sync: page 1"));
    // The token went with the request, as the contract says.
    assert_eq!(
        server.seen.lock().unwrap()[0],
        Some(format!("Bearer {}", rina.token.reveal()))
    );

    let out = budi.ok(&["sync"]);
    assert!(out.contains("1 report received"), "{out}");
    let shown = budi.json(&["show", &id, "--json"]);
    assert_eq!(shown["document"]["title"], "Girl missing since Sunday");
    assert_eq!(shown["waiting"], 0);

    budi.ok(&["edit", &id, "--note", "Seen at the harbour"]);
    budi.ok(&["sync"]);
    rina.ok(&["sync"]);
    let a = rina.json(&["show", &id, "--json"]);
    let b = budi.json(&["show", &id, "--json"]);
    assert_eq!(a["document"], b["document"]);
    assert_eq!(a["document"]["notes"][0]["author"], "Budi");
    assert!(rina.json(&["status", "--json"])["last_sync"].is_string());
}

/// A phone with one waiting change syncs with a server that answers `reply`; returns the exit
/// code and stderr, after checking that the store is exactly as it was.
fn refused_by(reply: Reply) -> (Option<i32>, String) {
    let url = serve(Arc::new(move |_: &Request| reply.clone()), None);
    let phone = Phone::init(&url, "Rina", &[]);
    phone.ok(&["new", "foreigner_report", "--set", "nationality=unknown"]);
    let before = phone.json(&["status", "--json"]);
    let out = phone.desa(&["sync"]);
    assert_eq!(phone.json(&["status", "--json"]), before);
    assert_eq!(before["waiting"], 1);
    let text = stderr(&out);
    assert!(
        text.contains("Your 1 change is kept on this device"),
        "{text}"
    );
    assert!(!text.contains(&phone.token.reveal()), "{text}");
    (out.status.code(), text)
}

#[test]
fn an_unknown_token_is_refused_and_the_volunteer_told_to_contact_the_office() {
    let server = StandIn::start(None);
    // Never registered: the office did not add this device, or revoked it.
    let phone = Phone::init(&server.url, "Rina", &[]);
    phone.ok(&["new", "foreigner_report", "--set", "nationality=unknown"]);
    let before = phone.json(&["status", "--json"]);
    let out = phone.desa(&["sync"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("did not accept this device's token")
            && text.contains("contact the office")
            && text.contains("Your 1 change is kept on this device"),
        "{text}"
    );
    assert_eq!(phone.json(&["status", "--json"]), before);

    // Once the office adds it, the same store syncs.
    server.register(&phone.token);
    assert!(phone.ok(&["sync"]).contains("1 accepted"));
}

#[test]
fn a_request_without_a_token_is_401() {
    // The stand-in itself must refuse a request without the header, or the tests above prove
    // nothing about what desa sends.
    let server = StandIn::start(None);
    let response = ureq::post(format!("{}/api/v1/sync", server.url))
        .config()
        .http_status_as_error(false)
        .build()
        .header("Content-Type", "application/octet-stream")
        .send(&b"x"[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}

#[test]
fn forbidden_is_exit_3_with_the_servers_reason() {
    let (code, text) = refused_by(Reply::error(
        403,
        "forbidden",
        "village 6302010001 is not one of this volunteer's villages",
    ));
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("does not permit this device")
            && text.contains("not one of this volunteer's villages")
            && text.contains("contact the office"),
        "{text}"
    );
}

#[test]
fn rate_limited_is_exit_2_with_the_wait() {
    let (code, text) =
        refused_by(Reply::error(429, "rate_limited", "slow down").with_header("Retry-After", "30"));
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("the server is busy: sync again in 30 seconds"),
        "{text}"
    );
}

#[test]
fn too_large_is_a_failure_that_keeps_the_changes() {
    let (code, text) = refused_by(Reply::error(413, "too_large", "request over 2 MiB"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("too large (request over 2 MiB)"), "{text}");
}

#[test]
fn a_refused_request_changes_nothing() {
    let (code, text) = refused_by(Reply::error(
        422,
        "unknown village",
        "6302010001 is not served here",
    ));
    assert_eq!(code, Some(1));
    assert!(
        text.contains(
            "server refused the sync (422): unknown village: 6302010001 is not served here"
        ),
        "{text}"
    );
}

#[test]
fn an_answer_that_is_not_a_sync_response_changes_nothing() {
    let url = serve(
        Arc::new(|_: &Request| Reply {
            status: 200,
            content_type: "text/html",
            headers: Vec::new(),
            body: b"<html>captive portal</html>".to_vec(),
        }),
        None,
    );
    let phone = Phone::init(&url, "Rina", &[]);
    phone.ok(&["new", "foreigner_report", "--set", "nationality=unknown"]);
    let before = phone.json(&["status", "--json"]);
    let out = phone.desa(&["sync"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("could not be used"),
        "{}",
        stderr(&out)
    );
    assert_eq!(phone.json(&["status", "--json"]), before);
}
