//! Access and protection at rest: where `desa init` takes the token and the passphrase from, that
//! the token is never shown, that a wrong passphrase changes nothing, that a store written before
//! encryption is encrypted without losing anything, and that no report text is on disk in clear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Output;

use common::phone::{stderr, Phone};
use common::*;
use desa_client::cli::NewArgs;
use desa_client::commands::report;
use desa_client::store::crypt::{self, Format};
use desa_client::store::StoreError;
use desa_client::Store;
use sync_core::ReportKind;

/// Something no other part of the store would hold by chance.
const NARRATIVE: &str = "Siti left with the agent Pak Joko at dawn";

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn init_args(server: &str) -> Vec<&str> {
    vec![
        "init",
        "--server",
        server,
        "--village",
        VILLAGE,
        "--name",
        "Rina",
    ]
}

#[test]
fn init_takes_the_token_from_a_file_or_the_environment_and_never_shows_it() {
    // From a file, with DESA_TOKEN unset.
    let phone = Phone::new();
    let token_file = phone.dir.path().join("token.txt");
    std::fs::write(&token_file, format!("  {}\n", phone.token.reveal())).unwrap();
    let mut args = init_args("http://127.0.0.1:1");
    args.extend(["--token-file", token_file.to_str().unwrap()]);
    let init = phone
        .command()
        .env_remove("DESA_TOKEN")
        .args(&args)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(stderr(&init).contains("delete"), "{}", stderr(&init));
    let status = phone.json(&["status", "--json"]);
    assert_eq!(status["device"]["id"], phone.token.device().to_string());

    // Everything a volunteer might run, and every byte it printed: the token is in none of it.
    let mut outputs = vec![init];
    let id = phone
        .ok(&[
            "new",
            "incident",
            "--set",
            "category=other",
            "--set",
            "title=T",
        ])
        .lines()
        .last()
        .unwrap()
        .to_owned();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["list", "--json"],
        vec!["show", id.as_str()],
        vec!["sync"],
        vec!["--help"],
        vec!["init", "--help"],
    ] {
        outputs.push(phone.desa(&args));
    }
    let text = stdout(&outputs[1]);
    assert!(
        text.contains(&format!("device id: {}", phone.token.device())),
        "{text}"
    );
    let secret_part = &phone.token.reveal()[20..];
    for out in &outputs {
        for printed in [stdout(out), stderr(out)] {
            assert!(!printed.contains(secret_part), "token shown: {printed}");
        }
    }
    // Nor is it in the store's bytes (encrypted, like everything else there).
    assert_eq!(
        files_containing(phone.dir.path(), phone.token.reveal().as_bytes()),
        vec![token_file]
    );

    // From the environment.
    let from_env = Phone::init("http://127.0.0.1:1", "Budi", &[]);
    let status = from_env.json(&["status", "--json"]);
    assert_eq!(status["device"]["id"], from_env.token.device().to_string());
    assert_eq!(status["device"]["has_token"], true);
}

#[test]
fn a_bad_or_missing_token_or_passphrase_creates_nothing() {
    let phone = Phone::new();
    let args = init_args("http://127.0.0.1:1");
    let bad_token = "desa_3yZe7d8Q0OIlnotatoken";
    // (variable, its value or unset, what the message must say)
    let cases = [
        ("DESA_TOKEN", Some(bad_token), "not a desa device token"),
        ("DESA_TOKEN", None, "--token-file"),
        ("DESA_PASSPHRASE", None, "DESA_PASSPHRASE"),
        ("DESA_PASSPHRASE", Some("short"), "at least 8 characters"),
    ];
    for (name, value, says) in cases {
        let mut command = phone.command();
        match value {
            Some(v) => command.env(name, v),
            None => command.env_remove(name),
        };
        let env = (name, value);
        let out = command.args(&args).output().unwrap();
        let text = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{env:?}: {text}");
        assert!(text.contains(says), "{env:?}: {text}");
        assert!(!text.contains(bad_token), "{text}");
        assert!(!phone.store().exists(), "{env:?} created a store");
    }
    let mut with_missing_file = args.clone();
    with_missing_file.extend(["--token-file", "/nonexistent/token.txt"]);
    let out = phone.desa(&with_missing_file);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/token.txt"),
        "{}",
        stderr(&out)
    );
    assert!(!phone.store().exists());
}

#[test]
fn a_wrong_passphrase_is_one_clear_error_and_touches_nothing() {
    let phone = Phone::init("http://127.0.0.1:1", "Rina", &[]);
    phone.ok(&["new", "foreigner_report", "--set", "nationality=unknown"]);
    let before = snapshot(phone.dir.path());
    assert!(before.contains_key("store.db"), "{:?}", before.keys());

    for args in [
        vec!["list"],
        vec!["status", "--json"],
        vec!["new", "foreigner_report", "--set", "nationality=unknown"],
        vec!["sync"],
    ] {
        let out = phone
            .command()
            .env("DESA_PASSPHRASE", "not the passphrase")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            stderr(&out),
            format!(
                "wrong passphrase for the device store at {}\n",
                phone.store().display()
            ),
            "{args:?}"
        );
        assert_eq!(stdout(&out), "");
        assert!(
            snapshot(phone.dir.path()) == before,
            "{args:?} changed the store"
        );
    }
    // The right one still opens it.
    assert_eq!(phone.json(&["status", "--json"])["waiting"], 1);
}

/// Create an incident with `NARRATIVE` in the device's store.
fn write_narrative(device: &mut Device) -> sync_core::ReportId {
    let args = NewArgs {
        kind: ReportKind::Incident,
        fields: fields(&["category=other", "title=Harbour"], &[], None),
        narrative: Some(NARRATIVE.into()),
    };
    report::create(&mut device.store, &args, &now()).unwrap().id
}

#[test]
fn no_report_text_is_on_disk_in_clear_and_the_check_can_tell() {
    let mut device = Device::new("Rina");
    write_narrative(&mut device);
    let dir = device.path().parent().unwrap().to_owned();
    // (a) Encrypted: nowhere in the store's directory, while the store is open (its write-ahead
    // log holds the report) and after it is closed.
    assert!(
        dir.join("store.db-wal").exists(),
        "no write-ahead log to check"
    );
    assert_eq!(
        files_containing(&dir, NARRATIVE.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );
    let path = device.path();
    drop(device.store);
    assert_eq!(
        files_containing(&dir, NARRATIVE.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );

    // (b) The same report in a plaintext store, as desa kept it before encryption: found. The
    // check above can fail.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = plain_dir.path().join("store.db");
    plaintext_copy(&path, &plain);
    assert_eq!(
        files_containing(plain_dir.path(), NARRATIVE.as_bytes()),
        vec![plain]
    );
}

#[test]
fn a_plaintext_store_is_encrypted_keeping_every_report_and_change() {
    let server = InProcess::new();
    let mut device = Device::new("Rina");
    let synced = incident(&mut device, "Sent already");
    device.sync(&server);
    let waiting = write_narrative(&mut device);
    device.edit(edit_args(
        waiting,
        &["risk=high"],
        &[],
        Some("Spoke to the family"),
    ));
    device.edit(edit_args(synced, &[], &[], Some("Later note")));
    let expected = |store: &Store| {
        (
            Kept::of(store),
            store.report(waiting).unwrap().unwrap().to_json(),
            store.report(synced).unwrap().unwrap().to_json(),
        )
    };
    let before = expected(&device.store);
    assert_eq!(before.0.waiting(), 3);

    // Replace the store with the file an older desa would have: plain SQLite, no token.
    let path = device.path();
    let dir = path.parent().unwrap().to_owned();
    drop(device.store);
    let plain = dir.join("plain.db");
    plaintext_copy(&path, &plain);
    std::fs::rename(&plain, &path).unwrap();
    assert_eq!(crypt::format(&path).unwrap(), Format::Plaintext);
    assert!(!files_containing(&dir, NARRATIVE.as_bytes()).is_empty());

    // The real binary encrypts it, says so once, and shows the same store.
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_desa"))
            .arg("--store")
            .arg(&path)
            .args(args)
            .env("HOME", dir.join("home"))
            .env("DESA_PASSPHRASE", PASSPHRASE)
            .env_remove("DESA_TOKEN")
            .output()
            .unwrap()
    };
    let first = run(&["status", "--json"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(
        stderr(&first).matches("was not encrypted").count(),
        1,
        "{}",
        stderr(&first)
    );
    let second = run(&["list"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(stderr(&second), "");
    assert!(matches!(
        crypt::format(&path).unwrap(),
        Format::Encrypted { .. }
    ));
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["store.db"], "leftovers beside the store");
    assert_eq!(
        files_containing(&dir, NARRATIVE.as_bytes()),
        Vec::<std::path::PathBuf>::new()
    );

    let store = Store::open(&path, &passphrase()).unwrap();
    assert!(!store.encrypted_now());
    assert_eq!(expected(&store), before);
    // Stores made before tokens have none: sync says what to do, and keeps everything.
    assert!(store.token().unwrap().is_none());
    drop(store);
    let sync = run(&["sync"]);
    assert_eq!(sync.status.code(), Some(3), "{}", stderr(&sync));
    assert!(
        stderr(&sync).contains("no token") && stderr(&sync).contains("Your 3 changes are kept"),
        "{}",
        stderr(&sync)
    );

    // And the old passphrase-less way in is closed.
    assert!(matches!(
        Store::open(
            &path,
            &desa_client::secrets::Passphrase::new("another passphrase")
        ),
        Err(StoreError::WrongPassphrase(_))
    ));
}
