//! The real `desa` binary, run as a volunteer would, against a store in a temporary directory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;

use common::{new_token, passphrase, PASSPHRASE};
use sync_core::DeviceToken;

/// A store in a fresh temporary directory (in a subdirectory `init` must create), and the token
/// the office gave this device (in `DESA_TOKEN`).
struct Env {
    dir: tempfile::TempDir,
    token: DeviceToken,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
            token: new_token(),
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("phone").join("store.db")
    }

    /// Run `desa` with the store given by `--store` (and a HOME that holds nothing, so a test can
    /// never touch the real one).
    fn desa(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_desa"))
            .arg("--store")
            .arg(self.store())
            .args(args)
            .env("HOME", self.dir.path().join("home"))
            .env_remove("DESA_STORE")
            .env("DESA_PASSPHRASE", PASSPHRASE)
            .env("DESA_TOKEN", self.token.reveal())
            .output()
            .unwrap()
    }

    /// Run and expect success; stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.desa(args);
        assert!(
            out.status.success(),
            "desa {args:?} failed ({:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).unwrap()
    }

    /// Everything the store holds, as the commands show it.
    fn snapshot(&self, id: &str) -> (Value, Value, Value) {
        let mut status = self.json(&["status", "--json"]);
        status["device"]["server"] = Value::Null;
        (
            status,
            self.json(&["list", "--json"]),
            self.json(&["show", id, "--json"]),
        )
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A URL where nothing listens: bind port 0, note the port, close it.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn init(env: &Env, server: &str) {
    let out = env.ok(&[
        "init",
        "--server",
        server,
        "--village",
        "6302010001",
        "--name",
        "Rina",
    ]);
    assert!(out.contains("Labuan Barat"), "{out}");
    assert!(env.store().exists());
    // The token's device is this device.
    let status = env.json(&["status", "--json"]);
    assert_eq!(status["device"]["id"], env.token.device().to_string());
    assert_eq!(status["device"]["has_token"], true);
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or_default().trim().to_owned()
}

#[test]
fn a_volunteers_day_offline() {
    let env = Env::new();
    init(&env, &dead_url());

    // A second init is refused and leaves the store alone.
    let again = env.desa(&[
        "init",
        "--server",
        "http://x",
        "--village",
        "6302010001",
        "--name",
        "B",
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    let created = env.ok(&[
        "new",
        "incident",
        "--set",
        "category=recruitment_offer",
        "--set",
        "title=Agent at harbour",
        "--set",
        "location.lat=-3.25",
        "--set",
        "location.lon=116.2",
        "--add",
        r#"people={"role":"witness","name":"Siti"}"#,
        "--narrative",
        "A man offered jobs in Malaysia.",
    ]);
    assert!(
        created.contains("created incident in Labuan Barat (6302010001)"),
        "{created}"
    );
    let id = last_line(&created);

    // The URL form is accepted as well as the bare id.
    let url = format!("automerge:{id}");
    let edited = env.ok(&[
        "edit",
        &url,
        "--set",
        "risk=high",
        "--note",
        "Spoke to the family",
        "--append-narrative",
        "He had no company papers.",
    ]);
    assert!(
        edited.contains("2 changes of this report waiting"),
        "{edited}"
    );
    let unchanged = env.ok(&["edit", &id, "--set", "risk=high"]);
    assert!(unchanged.contains("nothing changed"), "{unchanged}");

    let shown = env.json(&["show", &id, "--json"]);
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["url"], url.as_str());
    assert_eq!(shown["kind"], "incident");
    assert_eq!(shown["waiting"], 2);
    assert_eq!(shown["conflicts"], serde_json::json!([]));
    let doc = &shown["document"];
    assert_eq!(doc["title"], "Agent at harbour");
    assert_eq!(doc["location"]["lat"], -3.25);
    assert_eq!(doc["people"][0]["name"], "Siti");
    assert_eq!(doc["risk"], "high");
    assert_eq!(doc["status"], "new");
    assert_eq!(doc["notes"][0]["author"], "Rina");
    assert_eq!(doc["notes"][0]["text"], "Spoke to the family");
    assert_eq!(
        doc["narrative"],
        "A man offered jobs in Malaysia.\nHe had no company papers."
    );

    let text = env.ok(&["show", &id]);
    assert!(
        text.contains("Narrative:\n  A man offered jobs in Malaysia.\n"),
        "{text}"
    );
    assert!(text.contains("title           Agent at harbour"), "{text}");

    let list = env.json(&["list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["title"], "Agent at harbour");
    assert_eq!(list[0]["status"], "new");
    assert_eq!(list[0]["waiting"], 2);
    assert!(env.ok(&["list"]).contains("Agent at harbour"));

    let status = env.json(&["status", "--json"]);
    assert_eq!(status["waiting"], 2);
    assert_eq!(status["waiting_reports"][0]["report"], id.as_str());
    assert_eq!(status["last_sync"], Value::Null);
    assert_eq!(status["device"]["name"], "Rina");
    assert!(env.ok(&["status"]).contains("last sync: never"));

    // Offline: exit 2, the exact message, and the store as it was.
    let before = env.snapshot(&id);
    let sync = env.desa(&["sync"]);
    assert_eq!(sync.status.code(), Some(2), "{}", stderr(&sync));
    assert!(
        stderr(&sync).contains("offline: 2 changes waiting"),
        "{}",
        stderr(&sync)
    );
    assert_eq!(env.snapshot(&id), before);

    // A value the schema refuses: non-zero, a clear message, nothing stored.
    let bad = env.desa(&[
        "new",
        "incident",
        "--set",
        "category=recruitment_offer",
        "--set",
        "title=Out of range",
        "--set",
        "location.lat=200",
        "--set",
        "location.lon=116.2",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).contains("location/lat"), "{}", stderr(&bad));
    let refused_edit = env.desa(&["edit", &id, "--set", "status=closed"]);
    assert_eq!(refused_edit.status.code(), Some(1));
    assert!(
        stderr(&refused_edit).contains("coordinator"),
        "{}",
        stderr(&refused_edit)
    );
    assert_eq!(env.snapshot(&id), before);
}

#[test]
fn refusals_and_usage_errors_are_clear() {
    let env = Env::new();
    let missing = env.desa(&["list"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("desa init"),
        "{}",
        stderr(&missing)
    );
    assert!(
        !env.store().exists(),
        "a read command must not create a store"
    );

    let unknown = env.desa(&[
        "init",
        "--server",
        "http://x",
        "--village",
        "6399999999",
        "--name",
        "R",
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("unknown village code 6399999999"),
        "{}",
        stderr(&unknown)
    );
    assert!(!env.store().exists());

    init(&env, "http://127.0.0.1:1");
    let profile = env.desa(&["new", "village_profile"]);
    assert_eq!(profile.status.code(), Some(1));
    assert!(
        stderr(&profile).contains("created by the server"),
        "{}",
        stderr(&profile)
    );
    let no_narrative = env.desa(&["new", "foreigner_report", "--narrative", "x"]);
    assert!(
        stderr(&no_narrative).contains("no narrative"),
        "{}",
        stderr(&no_narrative)
    );

    // Usage errors exit 1 (2 means offline).
    let usage = env.desa(&["new", "incident", "--set", "title"]);
    assert_eq!(usage.status.code(), Some(1));
    assert!(stderr(&usage).contains("PATH=VALUE"), "{}", stderr(&usage));
    let bad_id = env.desa(&["show", "automerge:nope"]);
    assert_eq!(bad_id.status.code(), Some(1));
    assert!(
        stderr(&bad_id).contains("not a report id"),
        "{}",
        stderr(&bad_id)
    );
    assert_eq!(env.json(&["list", "--json"]), serde_json::json!([]));
}

#[test]
fn the_store_comes_from_desa_store_and_a_damaged_row_is_an_error() {
    let env = Env::new();
    init(&env, "http://127.0.0.1:1");
    let id = last_line(&env.ok(&[
        "new",
        "outreach",
        "--set",
        "held_on=2026-11-20",
        "--set",
        "venue=Balai desa",
        "--add",
        "topics=safe migration",
    ]));

    // DESA_STORE names the store when --store is absent.
    let out = Command::new(env!("CARGO_BIN_EXE_desa"))
        .args(["show", &id, "--json"])
        .env("DESA_STORE", env.store())
        .env("HOME", env.dir.path().join("home"))
        .env("DESA_PASSPHRASE", PASSPHRASE)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        shown["document"]["topics"],
        serde_json::json!(["safe migration"])
    );

    damage(&env.store(), "UPDATE reports SET doc = x'00ff00'");
    let show = env.desa(&["show", &id]);
    assert_eq!(show.status.code(), Some(1));
    assert!(stderr(&show).contains("damaged"), "{}", stderr(&show));
    assert!(!stderr(&show).contains("panicked"), "{}", stderr(&show));

    damage(&env.store(), "UPDATE outbox SET change = x'0102'");
    let sync = env.desa(&["sync"]);
    assert_eq!(sync.status.code(), Some(1));
    assert!(stderr(&sync).contains("damaged"), "{}", stderr(&sync));
}

/// Change the store behind desa's back, through the one function that opens a store.
fn damage(store: &Path, sql: &str) {
    let conn = desa_client::store::crypt::connect(store, &passphrase())
        .unwrap()
        .conn;
    assert_eq!(conn.execute(sql, []).unwrap(), 1);
}
