//! Helpers for the client's integration tests: SQLite-backed devices in temporary directories and
//! an in-process server behind the `Transport` trait.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod phone;
pub mod stand_in;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use desa_client::args::Assignment;
use desa_client::cli::{EditArgs, FieldEdits, InitArgs, NewArgs, TokenSource};
use desa_client::commands::init::{self, InitSecrets};
use desa_client::commands::{report, show, sync};
use desa_client::secrets::Passphrase;
use desa_client::store::{crypt, DeviceInfo};
use desa_client::transport::{Transport, TransportError};
use desa_client::{CliError, Now, Store};
use serde_json::Value;
use sync_core::sim::MemoryServer;
use sync_core::{DeviceId, DeviceToken, ReportId, ReportKind};

pub const VILLAGE: &str = "6302010001";

/// The store passphrase of every test device.
pub const PASSPHRASE: &str = "a long test passphrase";

pub fn passphrase() -> Passphrase {
    Passphrase::new(PASSPHRASE)
}

/// A token as `desa-server device add` would show it: a new device and 256 random bits.
pub fn new_token() -> DeviceToken {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).unwrap();
    DeviceToken::new(DeviceId::new_random(), secret)
}

/// Every file in `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

/// Write a plaintext copy of the encrypted store at `path` to `to`: the file a `desa` from before
/// encryption would have left (a plain SQLite database in write-ahead-log mode, and no token, which
/// stores did not have then). Opens the store through `crypt::connect`, the one way in.
pub fn plaintext_copy(path: &Path, to: &Path) {
    let conn = crypt::connect(path, &passphrase()).unwrap().conn;
    // The store's connection may not create files: the attached database must exist.
    std::fs::File::create(to).unwrap();
    conn.execute("ATTACH DATABASE ?1 AS plain KEY ''", [to.to_str().unwrap()])
        .unwrap();
    conn.query_row("SELECT sqlcipher_export('plain')", [], |_| Ok(()))
        .unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    conn.pragma_update(Some("plain"), "user_version", version)
        .unwrap();
    conn.execute("DELETE FROM plain.meta WHERE key = 'token'", [])
        .unwrap();
    conn.execute_batch("DETACH DATABASE plain").unwrap();
    drop(conn);
    let plain = rusqlite::Connection::open(to).unwrap();
    let mode: String = plain
        .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    assert_eq!(&std::fs::read(to).unwrap()[..16], b"SQLite format 3\0");
}

/// A fixed clock: tests do not depend on the machine's.
pub fn now() -> Now {
    Now::from_unix(1_764_316_800)
}

/// `MemoryServer` behind the `Transport` trait, exactly as the HTTP transport is used.
pub struct InProcess(pub RefCell<MemoryServer>);

impl InProcess {
    pub fn new() -> Self {
        InProcess(RefCell::new(MemoryServer::new()))
    }

    /// The server's merged JSON of a report.
    pub fn json(&self, id: ReportId) -> Value {
        sync_core::view::materialize(&self.0.borrow().report(&id).expect("on server").doc)
    }

    /// The server's heads of a report, sorted.
    pub fn heads(&self, id: ReportId) -> Vec<sync_core::automerge::ChangeHash> {
        let mut heads = self
            .0
            .borrow()
            .report(&id)
            .expect("on server")
            .doc
            .get_heads();
        heads.sort();
        heads
    }
}

impl Transport for InProcess {
    fn post_sync(&self, body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        self.0
            .borrow_mut()
            .handle(&body)
            .map_err(|e| TransportError::Http {
                status: 400,
                error: "bad request".into(),
                detail: e.to_string(),
            })
    }
}

/// A transport with no network at all.
pub struct Unreachable;

impl Transport for Unreachable {
    fn post_sync(&self, _body: Vec<u8>) -> Result<Vec<u8>, TransportError> {
        Err(TransportError::Offline)
    }
}

/// One device: its store in its own temporary directory.
pub struct Device {
    pub store: Store,
    pub info: DeviceInfo,
    pub token: DeviceToken,
    pub dir: tempfile::TempDir,
}

impl Device {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("desa").join("store.db");
        let args = InitArgs {
            server: "http://127.0.0.1:1".into(),
            village: VILLAGE.into(),
            name: name.into(),
            token: TokenSource::default(),
            ca_file: None,
        };
        let token = new_token();
        let secrets = InitSecrets {
            token: token.clone(),
            passphrase: passphrase(),
        };
        let (store, info) = init::create(&path, &args, &secrets, &now()).unwrap();
        assert_eq!(info.id, token.device());
        Device {
            store,
            info,
            token,
            dir,
        }
    }

    /// The store file.
    pub fn path(&self) -> PathBuf {
        self.store.path().to_owned()
    }

    pub fn create(&mut self, kind: ReportKind, set: &[&str]) -> ReportId {
        let args = NewArgs {
            kind,
            fields: fields(set, &[], None),
            narrative: None,
        };
        report::create(&mut self.store, &args, &now()).unwrap().id
    }

    pub fn try_edit(&mut self, args: EditArgs) -> Result<report::Edited, CliError> {
        report::edit(&mut self.store, &args, &now())
    }

    pub fn edit(&mut self, args: EditArgs) {
        let edited = self.try_edit(args).unwrap();
        assert!(
            matches!(edited, report::Edited::Changed { .. }),
            "{edited:?}"
        );
    }

    pub fn sync(&mut self, server: &InProcess) -> sync::SyncSummary {
        let mut progress = Vec::new();
        sync::sync(&mut self.store, server, &now(), &mut progress).unwrap()
    }

    pub fn view(&self, id: ReportId) -> show::ReportView {
        show::view(&self.store, id).unwrap()
    }

    pub fn heads(&self, id: ReportId) -> Vec<sync_core::automerge::ChangeHash> {
        let mut heads = self.store.report(id).unwrap().expect("on device").heads();
        heads.sort();
        heads
    }

    pub fn waiting(&self) -> usize {
        self.store.waiting().unwrap().iter().map(|(_, n)| n).sum()
    }

    /// Assert this device holds exactly the server's report: same heads, same JSON.
    pub fn assert_same_as(&self, server: &InProcess, id: ReportId) {
        assert_eq!(self.heads(id), server.heads(id), "heads differ for {id}");
        assert_eq!(self.view(id).document, server.json(id), "documents differ");
    }
}

pub fn fields(set: &[&str], add: &[&str], note: Option<&str>) -> FieldEdits {
    FieldEdits {
        set: set
            .iter()
            .map(|s| s.parse::<Assignment>().unwrap())
            .collect(),
        add: add
            .iter()
            .map(|s| s.parse::<Assignment>().unwrap())
            .collect(),
        note: note.map(str::to_owned),
    }
}

/// `desa edit ID` with these pieces.
pub fn edit_args(id: ReportId, set: &[&str], add: &[&str], note: Option<&str>) -> EditArgs {
    EditArgs {
        id,
        fields: fields(set, add, note),
        remove: Vec::new(),
        append_narrative: None,
    }
}

pub fn narrative(id: ReportId, text: &str) -> EditArgs {
    EditArgs {
        append_narrative: Some(text.into()),
        ..edit_args(id, &[], &[], None)
    }
}

pub fn incident(d: &mut Device, title: &str) -> ReportId {
    d.create(
        ReportKind::Incident,
        &["category=recruitment_offer", &format!("title={title}")],
    )
}

/// Every file in the directory: its bytes and when it was last modified.
pub fn snapshot(
    dir: &Path,
) -> std::collections::BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (std::fs::read(e.path()).unwrap(), meta.modified().unwrap()),
            )
        })
        .collect()
}

/// What a store keeps — reports, waiting changes (by hash), refusals, sync positions, device — to
/// compare a store before and after an operation that must not lose anything.
#[derive(Debug, PartialEq)]
pub struct Kept {
    /// The report list.
    pub summaries: Vec<desa_client::store::ReportSummary>,
    /// Waiting changes per report.
    pub outbox: Vec<(ReportId, Vec<sync_core::automerge::ChangeHash>)>,
    /// Refusals.
    pub refusals: Vec<desa_client::store::StoredRefusal>,
    /// Sync positions.
    pub sync: sync_core::protocol::device::DeviceSync,
    /// The device.
    pub device: DeviceInfo,
}

impl Kept {
    /// Read it from `store`.
    pub fn of(store: &Store) -> Kept {
        Kept {
            summaries: store.summaries().unwrap(),
            outbox: store
                .outbox()
                .unwrap()
                .into_iter()
                .map(|(id, changes)| (id, changes.iter().map(|c| c.hash()).collect()))
                .collect(),
            refusals: store.refusals().unwrap(),
            sync: store.sync_state().unwrap(),
            device: store.device().unwrap(),
        }
    }

    /// Changes waiting, all reports together.
    pub fn waiting(&self) -> usize {
        self.outbox.iter().map(|(_, c)| c.len()).sum()
    }
}
