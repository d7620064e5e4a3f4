//! `desa token set`: a store made before tokens gets one, a store whose token the office revoked
//! gets the new one, and in both every waiting change is then sent; a malformed token changes no
//! byte of the store; the token is never printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use common::phone::{stderr, Phone};
use common::stand_in::StandIn;
use common::*;
use desa_client::Store;
use sync_core::DeviceToken;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Neither stream of `out` holds the token, nor its secret half alone.
fn assert_not_shown(out: &Output, token: &DeviceToken) {
    let text = token.reveal();
    for printed in [stdout(out), stderr(out)] {
        assert!(
            !printed.contains(&text) && !printed.contains(&text[30..]),
            "token shown: {printed}"
        );
    }
}

/// `desa token set --token-file FILE` (DESA_TOKEN still holds the phone's first token: the file
/// must win), required to succeed; its output.
fn set_from_file(phone: &Phone, token: &DeviceToken) -> Output {
    let file = phone.dir.path().join("new.token");
    std::fs::write(&file, format!("{}\n", token.reveal())).unwrap();
    let out = phone.desa(&["token", "set", "--token-file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_not_shown(&out, token);
    assert_not_shown(&out, &phone.token);
    assert!(
        stderr(&out).contains(&format!("delete {}", file.display())),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(&file).unwrap();
    out
}

fn new_report(phone: &Phone, title: &str) -> String {
    let made = phone.ok(&[
        "new",
        "incident",
        "--set",
        "category=recruitment_offer",
        "--set",
        &format!("title={title}"),
    ]);
    made.lines().last().unwrap().to_owned()
}

#[test]
fn a_store_made_before_tokens_gets_one_and_then_syncs() {
    let server = StandIn::start(None);
    // The phone's first token stands for the random id an older desa gave its store: the office
    // never issued it.
    let phone = Phone::init(&server.url, "Rina", &[]);
    let old_id = phone.token.device();
    let first = new_report(&phone, "Agent at the harbour");
    phone.ok(&["edit", &first, "--note", "Seen again on Friday"]);
    let second = new_report(&phone, "Bus to the border");

    // Replace the store with what an older desa left: plain SQLite, no token.
    let path = phone.store();
    let plain = phone.dir.path().join("plain.db");
    plaintext_copy(&path, &plain);
    std::fs::rename(&plain, &path).unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", path.display()));
    }
    // Its first command encrypts it; sync then asks for a token and says how to install one.
    let sync = phone.desa(&["sync"]);
    assert_eq!(sync.status.code(), Some(3), "{}", stderr(&sync));
    let text = stderr(&sync);
    assert!(
        text.contains("was not encrypted")
            && text.contains("no token")
            && text.contains("desa token set")
            && text.contains("Your 3 changes are kept"),
        "{text}"
    );

    // The office adds the device; the volunteer installs its token.
    let issued = new_token();
    server.register(&issued);
    let out = phone
        .command()
        .env("DESA_TOKEN", issued.reveal())
        .args(["token", "set"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_not_shown(&out, &issued);
    assert_eq!(
        stdout(&out),
        format!(
            "device token installed: this store syncs as {}; 3 changes waiting, sent at the next \
             desa sync\n",
            issued.device()
        )
    );
    assert_eq!(stderr(&out), "");

    let status = phone.json(&["status", "--json"]);
    assert_eq!(status["device"]["has_token"], true);
    assert_eq!(status["device"]["id"], issued.device().to_string());
    assert_eq!(status["device"]["actor"], old_id.to_string());
    assert_eq!(status["waiting"], 3);

    let out = phone.desa(&["sync"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("3 accepted"), "{}", stdout(&out));
    assert_not_shown(&out, &issued);
    assert_eq!(phone.json(&["status", "--json"])["waiting"], 0);
    // Sent with the new token, naming the device it authenticates.
    assert_eq!(
        server.seen.lock().unwrap().last().unwrap().as_deref(),
        Some(format!("Bearer {}", issued.reveal()).as_str())
    );
    assert_eq!(*server.devices.lock().unwrap(), vec![issued.device()]);

    // Everything reached the server: another phone receives both reports, the note included.
    let budi = Phone::init(&server.url, "Budi", &[]);
    server.register(&budi.token);
    assert!(budi.ok(&["sync"]).contains("2 reports received"));
    let shown = budi.json(&["show", &first, "--json"]);
    assert_eq!(
        shown["document"]["notes"][0]["text"],
        "Seen again on Friday"
    );
    assert_eq!(
        budi.json(&["show", &second, "--json"])["document"]["title"],
        "Bus to the border"
    );
}

#[test]
fn a_revoked_token_is_replaced_and_the_waiting_edits_are_sent() {
    let server = StandIn::start(None);
    let phone = Phone::init(&server.url, "Rina", &[]);
    server.register(&phone.token);
    let old_id = phone.token.device();
    let id = new_report(&phone, "Agent at the harbour");
    phone.ok(&["sync"]);

    // Offline for a while: edits and a new report wait in the outbox.
    phone.ok(&[
        "edit",
        &id,
        "--set",
        "risk=high",
        "--note",
        "Two girls left",
    ]);
    let later = new_report(&phone, "Bus to the border");
    // The phone was reported lost: the office revoked its token.
    server.revoke(&phone.token);
    let refused = phone.desa(&["sync"]);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("did not accept this device's token")
            && stderr(&refused).contains("desa token set")
            && stderr(&refused).contains("Your 2 changes are kept"),
        "{}",
        stderr(&refused)
    );
    let before = Store::open(&phone.store(), &passphrase()).unwrap();
    let kept = Kept::of(&before);
    assert_eq!(kept.waiting(), 2);
    drop(before);

    // Found again: the office issues a new token (for a new device, as `device add` does).
    let issued = new_token();
    server.register(&issued);
    let out = set_from_file(&phone, &issued);
    assert_eq!(
        stdout(&out),
        format!(
            "device token replaced: this store syncs as {} (was {old_id}); 2 changes waiting, \
             sent at the next desa sync\n",
            issued.device()
        )
    );
    let after = Store::open(&phone.store(), &passphrase()).unwrap();
    assert_eq!(
        Kept::of(&after),
        kept,
        "installing the token changed more than the token"
    );
    assert_eq!(after.token().unwrap(), Some(issued.clone()));
    drop(after);
    let text = phone.ok(&["status"]);
    assert!(
        text.contains(&format!("device id: {}", issued.device()))
            && text.contains(&format!("edits as:  {old_id}"))
            && text.contains("token:     kept in the store (never shown)"),
        "{text}"
    );
    // The same token again changes nothing and says so.
    let again = set_from_file(&phone, &issued);
    assert!(
        stdout(&again).contains("already installed"),
        "{}",
        stdout(&again)
    );

    let out = phone.desa(&["sync"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("2 accepted"), "{}", stdout(&out));
    assert_eq!(phone.json(&["status", "--json"])["waiting"], 0);
    assert_eq!(
        *server.devices.lock().unwrap(),
        vec![old_id, issued.device()],
        "each sync names the device its token authenticates"
    );

    // Nothing was lost: another phone sees the edit, the note and the new report; reports made
    // after the new token name its device as their creator.
    let budi = Phone::init(&server.url, "Budi", &[]);
    server.register(&budi.token);
    budi.ok(&["sync"]);
    let shown = budi.json(&["show", &id, "--json"]);
    assert_eq!(shown["document"]["risk"], "high");
    assert_eq!(shown["document"]["notes"][0]["text"], "Two girls left");
    assert_eq!(
        budi.json(&["show", &later, "--json"])["document"]["title"],
        "Bus to the border"
    );
    let newest = new_report(&phone, "After the new token");
    phone.ok(&["sync"]);
    budi.ok(&["sync"]);
    assert_eq!(
        budi.json(&["show", &newest, "--json"])["document"]["created_by"],
        issued.device().to_string()
    );
}

/// `desa token set` with each bad source on the phone's store: exit 1, the message, and not a
/// byte or a modification time of any file in the directory changed.
fn assert_bad_tokens_change_nothing(phone: &Phone) {
    let bad = "desa_3yZe7d8Q0OIlnotatoken";
    let file = phone.dir.path().join("bad.token");
    std::fs::write(&file, bad).unwrap();
    let file_arg = file.to_str().unwrap();
    // (DESA_TOKEN, arguments after `token set`, what the message must say)
    let cases: [(Option<&str>, Vec<&str>, &str); 4] = [
        (Some(bad), vec![], "DESA_TOKEN is not a desa device token"),
        (
            None,
            vec!["--token-file", file_arg],
            "not a desa device token",
        ),
        (
            None,
            vec!["--token-file", "/nonexistent/t"],
            "/nonexistent/t",
        ),
        (None, vec![], "--token-file"),
    ];
    let before = snapshot(phone.dir.path());
    for (env, extra, says) in cases {
        let mut command = phone.command();
        match env {
            Some(value) => command.env("DESA_TOKEN", value),
            None => command.env_remove("DESA_TOKEN"),
        };
        let out = command
            .args(["token", "set"])
            .args(&extra)
            .output()
            .unwrap();
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {text}");
        assert!(text.contains(says), "{extra:?}: {text}");
        assert!(!text.contains(bad), "{text}");
        assert_eq!(stdout(&out), "");
        assert!(
            snapshot(phone.dir.path()) == before,
            "{env:?} {extra:?} changed the store"
        );
    }
}

#[test]
fn a_malformed_token_changes_no_byte_of_the_store() {
    // An encrypted store, with its token.
    let phone = Phone::init("http://127.0.0.1:1", "Rina", &[]);
    new_report(&phone, "Agent at the harbour");
    assert_bad_tokens_change_nothing(&phone);
    let status = phone.json(&["status", "--json"]);
    assert_eq!(status["device"]["id"], phone.token.device().to_string());
    assert_eq!(status["waiting"], 1);

    // A store an older desa left (plaintext, no token) is not even encrypted.
    let path = phone.store();
    let plain = phone.dir.path().join("plain.db");
    plaintext_copy(&path, &plain);
    std::fs::rename(&plain, &path).unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{side}", path.display()));
    }
    assert_bad_tokens_change_nothing(&phone);
    assert_eq!(&std::fs::read(&path).unwrap()[..16], b"SQLite format 3\0");

    // Without a store there is nothing to give a token to, and nothing is asked.
    let empty = Phone::new();
    let out = empty
        .command()
        .env_remove("DESA_TOKEN")
        .args(["token", "set"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no desa store"), "{}", stderr(&out));
    assert!(!empty.store().exists());
}

#[test]
fn the_token_is_never_printed_nor_stored_in_clear() {
    let server = StandIn::start(None);
    let phone = Phone::init(&server.url, "Rina", &[]);
    let issued = new_token();
    server.register(&issued);
    let mut outputs = vec![set_from_file(&phone, &issued)];
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["sync"],
        vec!["token", "set", "--help"],
        vec!["--help"],
    ] {
        outputs.push(phone.desa(&args));
    }
    // From DESA_TOKEN too (the phone's first token: the office did not revoke it in this story,
    // but the volunteer may install either).
    outputs.push(phone.desa(&["token", "set"]));
    assert!(outputs.last().unwrap().status.success());
    for out in &outputs {
        assert_not_shown(out, &issued);
        assert_not_shown(out, &phone.token);
    }
    assert!(
        stdout(&outputs[3]).contains("synced"),
        "{}",
        stderr(&outputs[3])
    );
    // The store holds both tokens' history only encrypted: neither is in any file's bytes.
    for token in [&issued, &phone.token] {
        assert_eq!(
            files_containing(phone.dir.path(), token.reveal().as_bytes()),
            Vec::<std::path::PathBuf>::new()
        );
    }
}
