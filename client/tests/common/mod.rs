//! Helpers for the client's integration tests: SQLite-backed devices in temporary directories and
//! an in-process server behind the `Transport` trait.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::path::PathBuf;

use desa_client::args::Assignment;
use desa_client::cli::{EditArgs, FieldEdits, InitArgs, NewArgs};
use desa_client::commands::{init, report, show, sync};
use desa_client::store::DeviceInfo;
use desa_client::transport::{Transport, TransportError};
use desa_client::{CliError, Now, Store};
use serde_json::Value;
use sync_core::sim::MemoryServer;
use sync_core::{ReportId, ReportKind};

pub const VILLAGE: &str = "6302010001";

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
    _dir: tempfile::TempDir,
}

impl Device {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("desa").join("store.db");
        let args = InitArgs {
            server: "http://127.0.0.1:1".into(),
            village: VILLAGE.into(),
            name: name.into(),
        };
        let (store, info) = init::create(&path, &args, &now()).unwrap();
        Device {
            store,
            info,
            _dir: dir,
        }
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
