//! The real JavaScript automerge-repo client (`tests/js`, installed from its lockfile by
//! `scripts/test`) against the real server, and interop with the `desa` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use desa_tests::{Desa, Server};

const VILLAGE: &str = "6302010001";

fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        dir.join("node_modules/@automerge/automerge-repo").exists(),
        "JavaScript client not installed: run `npm ci` in tests/js (scripts/test does it)"
    );
    dir
}

fn scenario(server: &Server, extra: &[&str]) -> String {
    let ws = server.ws_url(&server.coordinator);
    let out = Command::new("node")
        .arg("scenario.mjs")
        .args(["--ws", &ws, "--http", &server.url, "--repeat-b", "5"])
        .args(extra)
        .current_dir(js_dir())
        .output()
        .expect("run node (Node 20 is part of the machine)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "JavaScript scenario failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn incident_count(server: &Server) -> usize {
    let (status, body) = server.get("/api/v1/reports?kind=incident&limit=500");
    assert_eq!(status, 200);
    body["items"].as_array().unwrap().len()
}

#[test]
fn javascript_clients_sync_through_desa_sync_and_interoperate_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    // The scenario's dozen JS clients stand for many devices but share one token, so the per-device
    // request rate and connection cap (tests/tests/limits.rs checks them) are raised here.
    let mut server = Server::start(
        dir.path(),
        &[
            "--rate-limit",
            "10000",
            "--rate-burst",
            "100000",
            "--ws-per-device",
            "100",
        ],
    );
    let desa = Desa::init(&server, VILLAGE, "Ani");
    let id = desa
        .ok(&[
            "new",
            "incident",
            "--set",
            "category=recruitment_offer",
            "--set",
            "title=Made with desa",
        ])
        .last_line();
    desa.sync();

    let note = "added by a JavaScript app";
    scenario(&server, &["--interop", &id, "--interop-note", note]);

    // The JS app's edit reaches the desa device on its next HTTP sync.
    desa.sync();
    let doc = desa.show(&id)["document"].clone();
    assert!(
        doc["notes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["text"] == note),
        "{doc}"
    );
    assert_eq!(doc, server.report(&id)["document"]);

    // Everything the JS clients created is a report coordinators see; a restart loses none of it.
    let before = incident_count(&server);
    assert!(before >= 4, "{before}");
    server.kill();
    server.restart();
    assert_eq!(incident_count(&server), before);
    let fresh = Desa::init(&server, VILLAGE, "Budi");
    fresh.sync();
    assert_eq!(fresh.show(&id)["document"], doc);
}

/// Apps that edit while connected, never waiting for the server (`tests/js/nowait.mjs`): three
/// clients with their own tokens edit five reports each every 20 ms for 10 s, then a fresh client
/// must find every edit; then two clients type into one narrative character by character.
#[test]
fn apps_editing_without_waiting_lose_no_edit() {
    let dir = tempfile::tempdir().unwrap();
    // Typing is fast: the per-device request rate of the field (20/s) would slow it down (the
    // server waits before reading on), not lose anything — the test is about losing nothing.
    let server = Server::start(
        dir.path(),
        &["--rate-limit", "1000", "--rate-burst", "10000"],
    );
    let villages = ["6302010001", "6302010002", "6302010003", "6302010004"];
    let tokens: Vec<String> = ["ani", "budi", "citra", "fresh"]
        .iter()
        .map(|name| server.token(name, "volunteer", &villages))
        .collect();
    let out = Command::new("node")
        .arg("nowait.mjs")
        .args(["--ws", &server.ws_url(&tokens[0])])
        .args(["--http", &server.url])
        .args(["--tokens", &tokens.join(",")])
        .args([
            "--reports",
            "5",
            "--seconds",
            "10",
            "--interval",
            "20",
            "--typing",
            "200",
        ])
        .current_dir(js_dir())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains(" passed, 0 failed"),
        "editing without waiting lost edits:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
