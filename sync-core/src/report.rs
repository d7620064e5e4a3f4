//! A report: one automerge document, created with all its fixed fields and containers in its first
//! change, edited through [`Edit`]s that pass the admission rules before they are committed.
//!
//! ```
//! use sync_core::{DeviceId, Edit, NewReport, Report, ReportId, ReportKind, Role, VillageCode, Writer};
//!
//! let device = DeviceId::new_random();
//! let writer = Writer { actor: device.actor(0), role: Role::Volunteer, time: 1_764_316_800 };
//! let new = NewReport {
//!     kind: ReportKind::Incident,
//!     village: VillageCode::parse("6302010001").unwrap(),
//!     created_at: "2026-11-28T08:00:00Z".into(),
//!     created_by: device.to_string(),
//! };
//! let fields = [
//!     Edit::Set { path: "category".parse().unwrap(), value: "recruitment_offer".into() },
//!     Edit::Set { path: "title".parse().unwrap(), value: "Agent at the harbour".into() },
//! ];
//! let (mut report, _first_change) = Report::create(ReportId::new_random(), &new, &fields, &writer).unwrap();
//! report.edit(&[Edit::Set { path: "location.lat".parse().unwrap(), value: (-3.25).into() },
//!               Edit::Set { path: "location.lon".parse().unwrap(), value: 116.2.into() }], &writer).unwrap();
//! assert_eq!(report.to_json()["location"]["lat"], -3.25);
//!
//! // Volunteers never change the workflow status:
//! let err = report.edit(&[Edit::Set { path: "status".parse().unwrap(), value: "closed".into() }], &writer);
//! assert!(err.is_err());
//! ```

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, Change, ChangeHash, ROOT};
use serde_json::Value;

use crate::edit::{self, Edit, EditError};
use crate::kind::{INITIAL_STATUS, SCHEMA_VERSION, STATUS};
use crate::rules::{self, Refusal, Role};
use crate::view::{self, Conflict};
use crate::{ReportId, ReportKind, VillageCode, SERVER_DEVICE};

/// Who writes, as what, and when (device clock, unix seconds).
#[derive(Debug, Clone)]
pub struct Writer {
    /// The automerge actor (see [`crate::DeviceId::actor`]).
    pub actor: ActorId,
    /// What the writer may do.
    pub role: Role,
    /// Device clock, unix seconds: recorded in the change as its device time.
    pub time: i64,
}

/// The fixed fields of a new report.
#[derive(Debug, Clone)]
pub struct NewReport {
    /// Kind.
    pub kind: ReportKind,
    /// Village.
    pub village: VillageCode,
    /// Device clock at creation, RFC 3339.
    pub created_at: String,
    /// The creating device (its id).
    pub created_by: String,
}

/// Why a report operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReportError {
    /// An edit could not be applied.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The result would be refused by the server: nothing was committed.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// Stored bytes are not a report.
    #[error("not a report document: {0}")]
    NotAReport(String),
}

/// `created_at` of every village profile: the profiles are made deterministically (same bytes on
/// every server), so their creation time is a fixed date, not a clock reading.
pub const VILLAGE_PROFILE_EPOCH: &str = "2026-01-01T00:00:00Z";

/// One report document.
#[derive(Debug, Clone)]
pub struct Report {
    id: ReportId,
    kind: ReportKind,
    doc: Automerge,
}

impl Report {
    /// Create a report: fixed fields, `status: new` where the kind has one, every container, and
    /// `fields` — all in the first change. Refused exactly as the server would refuse it.
    pub fn create(
        id: ReportId,
        new: &NewReport,
        fields: &[Edit],
        writer: &Writer,
    ) -> Result<(Report, Change), ReportError> {
        let mut doc = Automerge::new().with_actor(writer.actor.clone());
        let mut tx = doc.transaction();
        let genesis = |tx: &mut automerge::transaction::Transaction<'_>| -> Result<(), automerge::AutomergeError> {
            tx.put(ROOT, "kind", new.kind.as_str())?;
            tx.put(ROOT, "schema_version", SCHEMA_VERSION as i64)?;
            tx.put(ROOT, "village", new.village.to_string())?;
            tx.put(ROOT, "created_at", new.created_at.as_str())?;
            tx.put(ROOT, "created_by", new.created_by.as_str())?;
            if new.kind.has_status() {
                tx.put(ROOT, STATUS, INITIAL_STATUS)?;
            }
            for (field, t) in new.kind.containers() {
                tx.put_object(ROOT, *field, *t)?;
            }
            Ok(())
        };
        genesis(&mut tx).map_err(|e| ReportError::NotAReport(e.to_string()))?;
        for e in fields {
            edit::apply(&mut tx, e)?;
        }
        // The message names the report, so two reports created alike by one device in the same
        // second still have distinct first changes (a change hash identifies one report's change).
        tx.commit_with(
            CommitOptions::default()
                .with_time(writer.time)
                .with_message(format!("create {id}")),
        );
        let change = doc
            .get_last_local_change()
            .ok_or_else(|| ReportError::NotAReport("empty first change".into()))?;
        rules::check_local(None, &doc, &change, id, writer.role).map_err(ReportError::Refused)?;
        Ok((
            Report {
                id,
                kind: new.kind,
                doc,
            },
            change,
        ))
    }

    /// The profile of a village, made the same way on every server (fixed actor, time and id), so
    /// that two servers — or one server re-created from scratch — never fork it.
    pub fn village_profile(village: VillageCode) -> Result<(Report, Change), ReportError> {
        let new = NewReport {
            kind: ReportKind::VillageProfile,
            village,
            created_at: VILLAGE_PROFILE_EPOCH.into(),
            created_by: SERVER_DEVICE.to_string(),
        };
        let writer = Writer {
            actor: SERVER_DEVICE.actor(0),
            role: Role::Server,
            time: 0,
        };
        Report::create(ReportId::village_profile(village), &new, &[], &writer)
    }

    /// Wrap a document (loaded from storage or received whole).
    pub fn from_doc(id: ReportId, doc: Automerge) -> Result<Report, ReportError> {
        let kind = rules::report_kind(&doc)
            .ok_or_else(|| ReportError::NotAReport("no valid kind field".into()))?;
        Ok(Report { id, kind, doc })
    }

    /// Load saved bytes (`save()` output, or concatenated changes).
    pub fn load(id: ReportId, bytes: &[u8]) -> Result<Report, ReportError> {
        let doc = crate::guard::load(bytes).map_err(|e| ReportError::NotAReport(e.to_string()))?;
        Report::from_doc(id, doc)
    }

    /// Apply edits as one change, if the result passes the admission rules; otherwise nothing
    /// changes. `Ok(None)` when the edits change nothing (writing the same value again).
    pub fn edit(&mut self, edits: &[Edit], writer: &Writer) -> Result<Option<Change>, ReportError> {
        self.edit_with_message(edits, writer, None)
    }

    /// [`Report::edit`], with a message recorded in the change. The message is part of the
    /// change's hash: the server writes a random one into the changes it makes for people through
    /// the API, so that nobody can predict their hashes and pre-build changes on top of them.
    pub fn edit_with_message(
        &mut self,
        edits: &[Edit],
        writer: &Writer,
        message: Option<String>,
    ) -> Result<Option<Change>, ReportError> {
        let mut trial = self.doc.clone();
        trial.set_actor(writer.actor.clone());
        let mut tx = trial.transaction();
        for e in edits {
            edit::apply(&mut tx, e)?;
        }
        let mut options = CommitOptions::default().with_time(writer.time);
        if let Some(message) = message {
            options = options.with_message(message);
        }
        let (hash, _) = tx.commit_with(options);
        if hash.is_none() {
            return Ok(None);
        }
        let change = trial
            .get_last_local_change()
            .ok_or_else(|| ReportError::NotAReport("commit produced no change".into()))?;
        rules::check_local(Some(self.kind), &trial, &change, self.id, writer.role)
            .map_err(ReportError::Refused)?;
        self.doc = trial;
        Ok(Some(change))
    }

    /// The id.
    pub fn id(&self) -> ReportId {
        self.id
    }

    /// The kind.
    pub fn kind(&self) -> ReportKind {
        self.kind
    }

    /// The village (fixed at creation).
    pub fn village(&self) -> Option<VillageCode> {
        rules::read_string(&self.doc, "village").and_then(|v| VillageCode::parse(&v).ok())
    }

    /// The workflow status, for kinds that have one.
    pub fn status(&self) -> Option<String> {
        rules::read_string(&self.doc, STATUS)
    }

    /// The merged document as JSON.
    pub fn to_json(&self) -> Value {
        view::materialize(&self.doc)
    }

    /// Conflicted fields at any depth.
    pub fn conflicts(&self) -> Vec<Conflict> {
        view::conflicts(&self.doc)
    }

    /// The current heads.
    pub fn heads(&self) -> Vec<ChangeHash> {
        self.doc.get_heads()
    }

    /// The document.
    pub fn doc(&self) -> &Automerge {
        &self.doc
    }

    /// The document, to merge received changes into (through [`crate::rules::admit`] on the server).
    pub fn doc_mut(&mut self) -> &mut Automerge {
        &mut self.doc
    }

    /// The document, owned.
    pub fn into_doc(self) -> Automerge {
        self.doc
    }

    /// Compacted bytes of the whole document.
    pub fn save(&self) -> Vec<u8> {
        self.doc.save()
    }
}
