//! Admission: which incoming changes of one report are accepted, refused (with a reason) or held,
//! and who may do what.
//!
//! The same code runs on the device before it commits a local edit ([`check_local`]) and on the
//! server when changes arrive ([`admit`]), so a refusal on the server is rare: it happens when the
//! *merge* with other devices' work breaks a rule (two volunteers each adding the 100th person), or
//! with a misbehaving or hostile client.
//!
//! Every change is judged with the access of the [`Principal`] that uploaded it — recorded at
//! upload and kept with a held change — never with the access of whoever uploads something later:
//!
//! * [`access`](Access): roles and village scope;
//! * [`authorship`]: a change's actor must belong to the person who uploads it;
//! * [`text`]: free text may not carry control or bidirectional-override characters;
//! * [`held`]: changes waiting for their dependencies are bounded per device and per report;
//! * [`admit`]: the whole judgement of one report's batch.

mod admit;
pub mod authorship;
mod checks;
pub mod held;
pub mod text;

use automerge::{ObjType, ReadDoc, Value as AmValue, ROOT};

pub use admit::{admit, Admission, Dropped, Judge, Origin, Submission};
pub use authorship::{Actors, Binding, API_GENERATION};
pub(crate) use checks::check_local;
pub use held::{HeldBudget, HeldLimits};

use crate::{DeviceId, ReportKind, VillageCode, SERVER_DEVICE};

/// What a writer may do. Authentication (the server) decides who is what; the rules only use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A field volunteer: reports of their villages; never `status` or fixed fields.
    Volunteer,
    /// An office coordinator: every village; owns the workflow `status`.
    Coordinator,
    /// Reads every report, with sensitive fields redacted; writes nothing.
    Analyst,
    /// Manages users, devices and the audit trail; reads no report contents.
    Admin,
    /// The server itself: creates `village_profile` reports.
    Server,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Volunteer,
        Role::Coordinator,
        Role::Analyst,
        Role::Admin,
        Role::Server,
    ];

    /// A stable name, for storage, the command line and display.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Volunteer => "volunteer",
            Role::Coordinator => "coordinator",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
            Role::Server => "server",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?} (volunteer, coordinator, analyst or admin)"))
    }
}

/// What one caller may touch: a role and, for a volunteer, their villages.
///
/// | role | syncs and writes | reads | sensitive fields |
/// |---|---|---|---|
/// | volunteer | reports of their villages (never `status`, never fixed fields) | their villages | yes |
/// | coordinator | every report, any field | all | yes |
/// | analyst | nothing | all | redacted |
/// | admin | nothing | no report contents | — |
///
/// ```
/// use sync_core::{rules::Access, Role, VillageCode};
///
/// let home = VillageCode::parse("6302010001").unwrap();
/// let other = VillageCode::parse("6302010002").unwrap();
/// let volunteer = Access::in_villages(Role::Volunteer, [home]);
/// assert!(volunteer.covers(home) && !volunteer.covers(other));
/// assert!(Access::everywhere(Role::Coordinator).covers(other));
/// assert!(!Access::everywhere(Role::Analyst).may_write());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    role: Role,
    /// `None`: every village of the office.
    villages: Option<std::collections::BTreeSet<VillageCode>>,
}

impl Access {
    /// Access to every village, with the rights of `role`.
    pub const fn everywhere(role: Role) -> Self {
        Access {
            role,
            villages: None,
        }
    }

    /// Access limited to `villages` (a volunteer's).
    pub fn in_villages(role: Role, villages: impl IntoIterator<Item = VillageCode>) -> Self {
        Access {
            role,
            villages: Some(villages.into_iter().collect()),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The villages this access is limited to; `None` for every village.
    pub fn villages(&self) -> Option<&std::collections::BTreeSet<VillageCode>> {
        self.villages.as_ref()
    }

    /// Whether reports of `village` are in scope (an admin's scope holds no report contents).
    pub fn covers(&self, village: VillageCode) -> bool {
        self.role != Role::Admin && self.villages.as_ref().is_none_or(|v| v.contains(&village))
    }

    /// Whether this caller may write reports at all.
    pub fn may_write(&self) -> bool {
        matches!(
            self.role,
            Role::Volunteer | Role::Coordinator | Role::Server
        )
    }

    /// Whether this caller may read report contents (through the API or a sync).
    pub fn may_read(&self) -> bool {
        self.role != Role::Admin
    }

    /// Whether this caller sees the sensitive fields (names, contacts, passport numbers, exact
    /// locations); others get a [`crate::redact::redact`]ed view.
    pub fn sees_sensitive(&self) -> bool {
        matches!(
            self.role,
            Role::Volunteer | Role::Coordinator | Role::Server
        )
    }
}

/// An authenticated caller: a device of a person, with that person's access as it stands now.
///
/// The server builds one per request from its directory of users and devices; the rules judge
/// every change with the principal that *uploaded* it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The person's account name.
    pub user: String,
    /// The device the request came through.
    pub device: DeviceId,
    /// What the person may touch.
    pub access: Access,
}

impl Principal {
    /// The server itself (village profiles).
    pub fn server() -> Self {
        Principal {
            user: "server".into(),
            device: SERVER_DEVICE,
            access: Access::everywhere(Role::Server),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.access.role()
    }
}

/// Why a change was refused. Stable codes travel on the wire; the detail is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RefusalCode {
    /// The bytes are not an automerge change.
    Undecodable = 1,
    /// A first change for a report that already exists.
    AlreadyCreated = 2,
    /// A first change that does not create a valid report.
    BadCreation = 3,
    /// The village code is not in the working area.
    UnknownVillage = 4,
    /// A change to a field fixed at creation.
    FixedField = 5,
    /// A change that replaces or removes a container created with the report.
    ContainerReplaced = 6,
    /// A change of `status` by someone who is not a coordinator.
    StatusNotPermitted = 7,
    /// The merged document breaks its schema (or the change writes forbidden characters).
    Schema = 8,
    /// Depends on a refused change.
    DependsOnRefused = 9,
    /// This writer may not do this: a report outside their villages or one the server does not
    /// have, another person's actor, a reserved actor, too many changes waiting.
    NotPermitted = 10,
}

impl RefusalCode {
    /// Every code.
    pub const ALL: [RefusalCode; 10] = [
        RefusalCode::Undecodable,
        RefusalCode::AlreadyCreated,
        RefusalCode::BadCreation,
        RefusalCode::UnknownVillage,
        RefusalCode::FixedField,
        RefusalCode::ContainerReplaced,
        RefusalCode::StatusNotPermitted,
        RefusalCode::Schema,
        RefusalCode::DependsOnRefused,
        RefusalCode::NotPermitted,
    ];

    /// A stable name, for storage and display.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefusalCode::Undecodable => "undecodable",
            RefusalCode::AlreadyCreated => "already_created",
            RefusalCode::BadCreation => "bad_creation",
            RefusalCode::UnknownVillage => "unknown_village",
            RefusalCode::FixedField => "fixed_field",
            RefusalCode::ContainerReplaced => "container_replaced",
            RefusalCode::StatusNotPermitted => "status_not_permitted",
            RefusalCode::Schema => "schema",
            RefusalCode::DependsOnRefused => "depends_on_refused",
            RefusalCode::NotPermitted => "not_permitted",
        }
    }
}

impl std::str::FromStr for RefusalCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RefusalCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown refusal code {s:?}"))
    }
}

/// A refusal: a code and a sentence for the volunteer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    /// Machine-readable reason.
    pub code: RefusalCode,
    /// Human-readable detail, at most [`Refusal::MAX_DETAIL`] characters.
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

/// The one answer to a change for a report the caller may not see: one outside their villages,
/// or one the server does not have. The same code and words for both, so an answer never tells
/// whether a report exists elsewhere.
pub const NOT_PERMITTED_DETAIL: &str =
    "not permitted: no such report in your villages; nothing was stored";

impl Refusal {
    /// Details are cut to this many characters: a refusal quotes what it must, never a whole
    /// refused value (a 5,000-character narrative would otherwise travel back to a 2G phone).
    pub const MAX_DETAIL: usize = 200;

    /// A refusal, its detail cut to [`Refusal::MAX_DETAIL`] characters.
    pub fn new(code: RefusalCode, detail: impl Into<String>) -> Self {
        Refusal {
            code,
            detail: clip(detail.into(), Refusal::MAX_DETAIL),
        }
    }

    /// The refusal of a change to a report the caller may not see ([`NOT_PERMITTED_DETAIL`]).
    pub fn not_permitted() -> Self {
        Refusal::new(RefusalCode::NotPermitted, NOT_PERMITTED_DETAIL)
    }

    fn schema(violations: &[crate::schema::SchemaViolation]) -> Self {
        let detail = violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Refusal::new(RefusalCode::Schema, detail)
    }
}

/// `text` cut to at most `max` characters, with `…` marking the cut.
pub fn clip(text: String, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((end, _)) if text.chars().count() > max => format!("{}…", &text[..end]),
        _ => text,
    }
}

/// The fate of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stored (now, or already before).
    Accepted,
    /// Refused, never stored or relayed.
    Refused(Refusal),
    /// Kept aside until these dependencies arrive.
    Held {
        /// The missing dependencies.
        missing: Vec<automerge::ChangeHash>,
    },
}

/// The kind of a stored report, if it has been created.
pub fn report_kind<R: ReadDoc>(doc: &R) -> Option<ReportKind> {
    read_string(doc, "kind")?.parse().ok()
}

/// The village of a stored report, if it has been created.
pub fn report_village<R: ReadDoc>(doc: &R) -> Option<VillageCode> {
    VillageCode::parse(&read_string(doc, "village")?).ok()
}

/// A root string field, stored either as a scalar or as text (JavaScript writes text).
pub(crate) fn read_string<R: ReadDoc>(doc: &R, key: &str) -> Option<String> {
    match doc.get(ROOT, key).ok()?? {
        (AmValue::Scalar(s), _) => s.as_str().map(str::to_owned),
        (AmValue::Object(ObjType::Text), obj) => doc.text(obj).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_clipped_to_two_hundred_characters() {
        let long = Refusal::new(RefusalCode::Schema, "é".repeat(5000));
        assert_eq!(long.detail.chars().count(), Refusal::MAX_DETAIL);
        assert!(long.detail.ends_with('…'));
        let short = Refusal::new(RefusalCode::Schema, "x".repeat(200));
        assert_eq!(short.detail, "x".repeat(200));
        assert_eq!(clip("abc".into(), 2), "a…");
    }
}
