//! Admission: which incoming changes of one report are accepted, refused (with a reason) or held.
//!
//! The same code runs on the device before it commits a local edit and on the server when a batch
//! arrives, so a refusal on the server is rare: it happens when the *merge* with other devices' work
//! breaks a rule (two volunteers each adding the 100th person), or with a misbehaving client.
//!
//! A batch is judged in three steps:
//! 1. **Dependencies.** A change whose dependencies are neither stored nor in the batch is *held*
//!    (kept, never dropped) until they arrive. Held changes are never given to automerge: it would
//!    queue them and apply them later without checks.
//! 2. **Each change on its own** (causal order): a first change must create a valid report (fixed
//!    fields, every container, `status: new`, a known village); a later change must not touch a fixed
//!    field, replace a container, or — unless written by a coordinator — change `status`. A change
//!    that depends on a refused change is refused too.
//! 3. **The merged state** after the whole batch must pass the schema. If it does not, the changes are
//!    taken one by one in causal order and each one that breaks the schema is refused (with its
//!    dependents). This path is rare, so its cost (a rebuild of the previous state) does not matter.

use std::collections::{HashMap, HashSet};

use automerge::{Automerge, Change, ChangeHash, ObjType, ReadDoc, Value as AmValue, ROOT};
use serde_json::Value;

use crate::kind::{FIXED_FIELDS, INITIAL_STATUS, SCHEMA_VERSION, STATUS};
use crate::schema::{self, SchemaViolation};
use crate::{ReportId, ReportKind, VillageCode};

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
    /// locations); others get a [`crate::view::redact`]ed view.
    pub fn sees_sensitive(&self) -> bool {
        matches!(
            self.role,
            Role::Volunteer | Role::Coordinator | Role::Server
        )
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
    /// The merged document breaks its schema.
    Schema = 8,
    /// Depends on a refused change.
    DependsOnRefused = 9,
    /// This writer may not create a report of this kind.
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
    /// Human-readable detail.
    pub detail: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl Refusal {
    fn new(code: RefusalCode, detail: impl Into<String>) -> Self {
        Refusal {
            code,
            detail: detail.into(),
        }
    }

    fn schema(violations: &[SchemaViolation]) -> Self {
        let detail = violations
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        Refusal::new(RefusalCode::Schema, detail)
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
        missing: Vec<ChangeHash>,
    },
}

/// The outcome of admitting a batch into one report.
#[derive(Debug)]
pub struct Admission {
    /// One verdict per distinct change of the batch.
    pub verdicts: HashMap<ChangeHash, Verdict>,
    /// Changes newly applied to the document, in causal order: what to persist.
    pub applied: Vec<Change>,
    /// Changes waiting for dependencies: what to keep aside.
    pub held: Vec<Change>,
    /// The merged document after the batch, if it is a valid report (absent only while no first
    /// change has been accepted).
    pub state: Option<Value>,
}

/// Admit `incoming` changes into the report `id` whose stored document is `doc` (empty for a report
/// not yet created). On return `doc` holds the new state; refused and held changes are not in it.
pub fn admit(
    doc: &mut Automerge,
    id: ReportId,
    incoming: Vec<Change>,
    access: &Access,
) -> Admission {
    let role = access.role();
    let mut verdicts = HashMap::new();
    let mut batch: HashMap<ChangeHash, Change> = HashMap::new();
    for change in incoming {
        let hash = change.hash();
        if doc.get_change_meta_by_hash(&hash).is_some() {
            verdicts.insert(hash, Verdict::Accepted);
        } else {
            batch.insert(hash, change);
        }
    }

    // 1. Dependencies: hold what cannot be applied yet (and, transitively, what builds on it).
    let order = causal_order(&batch);
    let mut held: Vec<Change> = Vec::new();
    let mut held_hashes: HashSet<ChangeHash> = HashSet::new();
    let mut ready: Vec<ChangeHash> = Vec::new();
    for hash in order {
        let change = &batch[&hash];
        let mut missing = Vec::new();
        for dep in change.deps() {
            if held_hashes.contains(dep) {
                if let Some(Verdict::Held { missing: m }) = verdicts.get(dep) {
                    missing.extend(m.iter().copied());
                }
            } else if !batch.contains_key(dep) && doc.get_change_meta_by_hash(dep).is_none() {
                missing.push(*dep);
            }
        }
        if missing.is_empty() {
            ready.push(hash);
        } else {
            missing.sort();
            missing.dedup();
            held_hashes.insert(hash);
            held.push(change.clone());
            verdicts.insert(hash, Verdict::Held { missing });
        }
    }

    // 2. Each change on its own.
    let mut kind = report_kind(doc);
    let stored_village = read_string(doc, "village").and_then(|v| VillageCode::parse(&v).ok());
    let out_of_scope = |village: VillageCode| -> Option<Refusal> {
        if !access.may_write() {
            Some(Refusal::new(
                RefusalCode::NotPermitted,
                format!("the {role} role writes no reports"),
            ))
        } else if !access.covers(village) {
            Some(Refusal::new(
                RefusalCode::NotPermitted,
                format!("village {village} is not one of your villages"),
            ))
        } else {
            None
        }
    };
    let mut created: Option<(ChangeHash, Automerge, Value)> = None;
    let mut refused: HashSet<ChangeHash> = HashSet::new();
    let mut candidates: Vec<ChangeHash> = Vec::new();
    for hash in ready {
        let change = &batch[&hash];
        let verdict = if let Some(bad) = change.deps().iter().find(|d| refused.contains(*d)) {
            Err(Refusal::new(
                RefusalCode::DependsOnRefused,
                format!("depends on refused change {bad}"),
            ))
        } else if change.deps().is_empty() {
            check_creation(change, id, role, kind.is_some()).and_then(|c| {
                match out_of_scope(c.village) {
                    Some(refusal) => return Err(refusal),
                    None => kind = Some(c.kind),
                }
                created = Some((hash, c.doc, c.state));
                Ok(())
            })
        } else {
            match (kind, stored_village.and_then(out_of_scope)) {
                (_, Some(refusal)) => Err(refusal),
                (Some(k), None) => check_change(change, k, role),
                (None, None) => Err(Refusal::new(
                    RefusalCode::BadCreation,
                    "the report's first change was refused",
                )),
            }
        };
        match verdict {
            Ok(()) => candidates.push(hash),
            Err(refusal) => {
                refused.insert(hash);
                verdicts.insert(hash, Verdict::Refused(refusal));
            }
        }
    }

    // 3. The merged state.
    let Some(kind) = kind else {
        return Admission {
            verdicts,
            applied: Vec::new(),
            held,
            state: None,
        };
    };
    // A new report starts from the document its checked first change made.
    let mut applied_first = Vec::new();
    let mut created_state = None;
    if let Some((hash, genesis, state)) = created {
        *doc = genesis;
        candidates.retain(|h| *h != hash);
        applied_first.push(batch[&hash].clone());
        created_state = Some(state);
    }
    let before = doc.get_heads();
    let changes: Vec<Change> = candidates.iter().map(|h| batch[h].clone()).collect();
    let (mut applied, state) = match (changes.is_empty(), created_state) {
        (true, Some(state)) => (Vec::new(), state),
        _ => {
            let fast = doc.apply_changes(changes.clone()).is_ok();
            let state = crate::view::materialize(doc);
            match (fast, schema::validate(kind, &state)) {
                (true, Ok(())) => (changes, state),
                _ => {
                    // Rare path: find the changes that break the merged state, one by one.
                    *doc = rebuild_at(doc, &before);
                    admit_one_by_one(doc, kind, changes, &mut verdicts, &mut refused)
                }
            }
        }
    };
    applied_first.append(&mut applied);
    let applied = applied_first;
    for change in &applied {
        verdicts.insert(change.hash(), Verdict::Accepted);
    }
    Admission {
        verdicts,
        applied,
        held,
        state: Some(state),
    }
}

fn admit_one_by_one(
    doc: &mut Automerge,
    kind: ReportKind,
    changes: Vec<Change>,
    verdicts: &mut HashMap<ChangeHash, Verdict>,
    refused: &mut HashSet<ChangeHash>,
) -> (Vec<Change>, Value) {
    let mut applied = Vec::new();
    for change in changes {
        let hash = change.hash();
        if let Some(bad) = change.deps().iter().find(|d| refused.contains(*d)) {
            let refusal = Refusal::new(
                RefusalCode::DependsOnRefused,
                format!("depends on refused change {bad}"),
            );
            refused.insert(hash);
            verdicts.insert(hash, Verdict::Refused(refusal));
            continue;
        }
        let mut trial = doc.clone();
        let outcome = trial
            .apply_changes([change.clone()])
            .map_err(|e| Refusal::new(RefusalCode::Undecodable, e.to_string()))
            .and_then(|()| {
                schema::validate(kind, &crate::view::materialize(&trial))
                    .map_err(|v| Refusal::schema(&v))
            });
        match outcome {
            Ok(()) => {
                *doc = trial;
                applied.push(change);
            }
            Err(refusal) => {
                refused.insert(hash);
                verdicts.insert(hash, Verdict::Refused(refusal));
            }
        }
    }
    let state = crate::view::materialize(doc);
    (applied, state)
}

/// The document as it was at `heads` (used only on the rare refusal path).
fn rebuild_at(doc: &Automerge, heads: &[ChangeHash]) -> Automerge {
    doc.fork_at(heads).unwrap_or_else(|_| {
        // fork_at only fails for heads the document does not have; `heads` came from this document.
        let mut fresh = Automerge::new();
        let _ = fresh.apply_changes(doc.get_changes(&[]));
        fresh
    })
}

/// Batch changes in an order where every change follows the batch changes it depends on.
fn causal_order(batch: &HashMap<ChangeHash, Change>) -> Vec<ChangeHash> {
    let mut order = Vec::with_capacity(batch.len());
    let mut done: HashSet<ChangeHash> = HashSet::new();
    let mut hashes: Vec<ChangeHash> = batch.keys().copied().collect();
    hashes.sort(); // deterministic
    for start in hashes {
        // Iterative DFS, post-order.
        let mut stack = vec![(start, false)];
        while let Some((hash, expanded)) = stack.pop() {
            if done.contains(&hash) {
                continue;
            }
            if expanded {
                done.insert(hash);
                order.push(hash);
                continue;
            }
            stack.push((hash, true));
            if let Some(change) = batch.get(&hash) {
                for dep in change.deps() {
                    if batch.contains_key(dep) && !done.contains(dep) {
                        stack.push((*dep, false));
                    }
                }
            }
        }
    }
    order
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

/// Check a report's first change: it alone must make a valid report.
fn check_creation(
    change: &Change,
    id: ReportId,
    role: Role,
    exists: bool,
) -> Result<Created, Refusal> {
    if exists {
        return Err(Refusal::new(
            RefusalCode::AlreadyCreated,
            format!("report {id} already exists; a second first change would fork it"),
        ));
    }
    let mut genesis = Automerge::new();
    genesis
        .apply_changes([change.clone()])
        .map_err(|e| Refusal::new(RefusalCode::Undecodable, e.to_string()))?;
    let bad = |detail: String| Refusal::new(RefusalCode::BadCreation, detail);
    let kind_text = read_string(&genesis, "kind").ok_or_else(|| bad("missing kind".into()))?;
    let kind: ReportKind = kind_text
        .parse()
        .map_err(|e: crate::kind::UnknownKind| bad(e.to_string()))?;
    let village_text =
        read_string(&genesis, "village").ok_or_else(|| bad("missing village".into()))?;
    let village = VillageCode::parse(&village_text)
        .map_err(|e| Refusal::new(RefusalCode::UnknownVillage, e.to_string()))?;
    match (kind.device_creatable(), role) {
        (true, _) | (false, Role::Server) => {}
        (false, _) => {
            return Err(Refusal::new(
                RefusalCode::NotPermitted,
                format!("{kind} reports are created by the server, one per village"),
            ))
        }
    }
    if kind == ReportKind::VillageProfile && id != ReportId::village_profile(village) {
        return Err(bad(format!(
            "the profile of village {village} has a fixed id"
        )));
    }
    for (field, want) in kind.containers() {
        match genesis.get(ROOT, *field) {
            Ok(Some((AmValue::Object(t), _))) if t == *want => {}
            _ => {
                return Err(bad(format!(
                    "{field} must be created as a {} in the report's first change",
                    crate::edit::obj_type_name(*want)
                )))
            }
        }
    }
    let state = crate::view::materialize(&genesis);
    if state.get("schema_version").and_then(Value::as_u64) != Some(SCHEMA_VERSION) {
        return Err(bad(format!("schema_version must be {SCHEMA_VERSION}")));
    }
    if kind.has_status() && state.get(STATUS).and_then(Value::as_str) != Some(INITIAL_STATUS) {
        return Err(bad(format!(
            "a new {kind} starts with status \"{INITIAL_STATUS}\""
        )));
    }
    schema::validate(kind, &state).map_err(|v| Refusal::schema(&v))?;
    Ok(Created {
        kind,
        village,
        doc: genesis,
        state,
    })
}

/// A first change that passed: the document it makes and its state, reused by the merge so the
/// creation is applied, materialized and validated once.
struct Created {
    kind: ReportKind,
    village: VillageCode,
    doc: Automerge,
    state: Value,
}

/// Check a later change of a report of `kind`: fixed fields, containers and `status`.
fn check_change(change: &Change, kind: ReportKind, role: Role) -> Result<(), Refusal> {
    // `decode` expands a change that `Change::from_bytes` already verified; automerge documents it
    // may panic only on inputs that verification rejects. Guard anyway: a change comes from the
    // network, and no input may take the process down.
    let expanded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| change.decode()))
        .map_err(|_| Refusal::new(RefusalCode::Undecodable, "change could not be expanded"))?;
    for op in &expanded.operations {
        let (automerge::legacy::ObjectId::Root, automerge::legacy::Key::Map(key)) =
            (&op.obj, &op.key)
        else {
            continue;
        };
        let key = key.as_str();
        if FIXED_FIELDS.contains(&key) {
            return Err(Refusal::new(
                RefusalCode::FixedField,
                format!("{key} is fixed when the report is created"),
            ));
        }
        if kind.container(key).is_some() {
            return Err(Refusal::new(
                RefusalCode::ContainerReplaced,
                format!(
                    "{key} was created with the report; edit inside it instead of replacing it"
                ),
            ));
        }
        if key == STATUS && kind.has_status() && role == Role::Volunteer {
            return Err(Refusal::new(
                RefusalCode::StatusNotPermitted,
                "only a coordinator changes status",
            ));
        }
    }
    Ok(())
}

/// The admission check for a change made locally on top of `before` (the device's and the
/// coordinator API's path): the same per-change and merged-state rules the server applies.
pub(crate) fn check_local(
    before_kind: Option<ReportKind>,
    after: &Automerge,
    change: &Change,
    id: ReportId,
    role: Role,
) -> Result<(ReportKind, Value), Refusal> {
    let kind = match before_kind {
        None => check_creation(change, id, role, false)?.kind,
        Some(k) => {
            check_change(change, k, role)?;
            k
        }
    };
    let state = crate::view::materialize(after);
    schema::validate(kind, &state).map_err(|v| Refusal::schema(&v))?;
    Ok((kind, state))
}
