//! The four report kinds and the shape facts the merge rules need about each: which fields are fixed
//! at creation, which are containers (created with the report, never replaced), whether the kind has
//! a workflow `status`.

use std::fmt;
use std::str::FromStr;

use automerge::ObjType;

/// The schema version every report is created under today.
pub const SCHEMA_VERSION: u64 = 1;

/// Root fields written in a report's first change and never changed afterwards.
pub const FIXED_FIELDS: [&str; 5] = [
    "kind",
    "schema_version",
    "village",
    "created_at",
    "created_by",
];

/// The workflow field (only on kinds with [`ReportKind::has_status`]).
pub const STATUS: &str = "status";

/// The value `status` starts at.
pub const INITIAL_STATUS: &str = "new";

/// A kind of report.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum ReportKind {
    /// Something seen that may be trafficking.
    Incident,
    /// An awareness session held.
    Outreach,
    /// A foreigner staying with no clear purpose.
    ForeignerReport,
    /// The one profile of a village (created by the server).
    VillageProfile,
}

/// An unknown kind name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown report kind {0:?} (incident, outreach, foreigner_report, village_profile)")]
pub struct UnknownKind(pub String);

impl ReportKind {
    /// Every kind.
    pub const ALL: [ReportKind; 4] = [
        ReportKind::Incident,
        ReportKind::Outreach,
        ReportKind::ForeignerReport,
        ReportKind::VillageProfile,
    ];

    /// The name used in documents, schemas and URLs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ReportKind::Incident => "incident",
            ReportKind::Outreach => "outreach",
            ReportKind::ForeignerReport => "foreigner_report",
            ReportKind::VillageProfile => "village_profile",
        }
    }

    /// Whether reports of this kind carry the coordinator-owned workflow `status`.
    pub fn has_status(&self) -> bool {
        matches!(self, ReportKind::Incident | ReportKind::ForeignerReport)
    }

    /// The nested containers of this kind. They are all created in the report's first change: two
    /// devices creating the same nested object concurrently would lose one side's contents.
    pub fn containers(&self) -> &'static [(&'static str, ObjType)] {
        match self {
            ReportKind::Incident => &[
                ("narrative", ObjType::Text),
                ("location", ObjType::Map),
                ("people", ObjType::List),
                ("notes", ObjType::List),
            ],
            ReportKind::Outreach => &[
                ("topics", ObjType::List),
                ("attendees", ObjType::Map),
                ("agencies_present", ObjType::List),
                ("notes", ObjType::List),
            ],
            ReportKind::ForeignerReport => &[("notes", ObjType::List)],
            ReportKind::VillageProfile => &[("risk_notes", ObjType::Text)],
        }
    }

    /// The container type of a root field, if it is one.
    pub fn container(&self, field: &str) -> Option<ObjType> {
        self.containers()
            .iter()
            .find(|(name, _)| *name == field)
            .map(|(_, t)| *t)
    }

    /// The collaborative text field appended to by `--narrative`, if the kind has one.
    pub fn narrative_field(&self) -> Option<&'static str> {
        self.containers()
            .iter()
            .find(|(_, t)| *t == ObjType::Text)
            .map(|(name, _)| *name)
    }

    /// Whether devices may create reports of this kind (`village_profile` is created by the server).
    pub fn device_creatable(&self) -> bool {
        !matches!(self, ReportKind::VillageProfile)
    }
}

impl FromStr for ReportKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ReportKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

impl fmt::Display for ReportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ReportKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
