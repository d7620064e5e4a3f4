//! The rules one change must pass on its own: a first change must create a valid report; a later
//! one must not touch a fixed field, replace a container, change `status` unless a coordinator
//! wrote it, or insert forbidden characters.

use automerge::{Automerge, Change, ReadDoc, Value as AmValue, ROOT};
use serde_json::Value;

use super::{read_string, text, Refusal, RefusalCode, Role};
use crate::guard;
use crate::kind::{FIXED_FIELDS, INITIAL_STATUS, STATUS};
use crate::schema::Schemas;
use crate::{ReportId, ReportKind, VillageCode};

/// A first change that passed: the document it makes and its state, reused by the merge so the
/// creation is applied, materialized and validated once.
pub(super) struct Created {
    pub(super) kind: ReportKind,
    pub(super) village: VillageCode,
    pub(super) doc: Automerge,
    pub(super) state: Value,
}

fn undecodable(e: guard::Contained) -> Refusal {
    Refusal::new(RefusalCode::Undecodable, e.to_string())
}

/// Check a report's first change: it alone must make a valid report.
pub(super) fn check_creation(
    change: &Change,
    id: ReportId,
    role: Role,
    exists: bool,
    schemas: &Schemas,
) -> Result<Created, Refusal> {
    if exists {
        return Err(Refusal::new(
            RefusalCode::AlreadyCreated,
            format!("report {id} already exists; a second first change would fork it"),
        ));
    }
    text::check(&guard::expand(change).map_err(undecodable)?)?;
    let mut genesis = Automerge::new();
    guard::apply(&mut genesis, vec![change.clone()]).map_err(undecodable)?;
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
    // A report is created in a version this side knows: an older device's report is welcome (the
    // writer migrates it), one of a version newer than the server is not.
    match state.get("schema_version").and_then(Value::as_u64) {
        Some(v) if schemas.knows(v) => {}
        _ => {
            return Err(bad(format!(
                "schema_version must be one this side knows (1 to {})",
                schemas.newest()
            )))
        }
    }
    if kind.has_status() && state.get(STATUS).and_then(Value::as_str) != Some(INITIAL_STATUS) {
        return Err(bad(format!(
            "a new {kind} starts with status \"{INITIAL_STATUS}\""
        )));
    }
    schemas
        .validate(kind, &state)
        .map_err(|v| Refusal::schema(&v))?;
    Ok(Created {
        kind,
        village,
        doc: genesis,
        state,
    })
}

/// Check a later change of a report of `kind`: fixed fields, containers, `status`, text. The server
/// alone raises `schema_version` and creates the containers a newer version adds (the writer's
/// migration change).
pub(super) fn check_change(
    change: &Change,
    kind: ReportKind,
    role: Role,
    schemas: &Schemas,
) -> Result<(), Refusal> {
    // `decode` expands a change that `Change::from_bytes` already verified; automerge documents it
    // may panic only on inputs that verification rejects. Contained anyway: a change comes from
    // the network, and no input may take the process down.
    let expanded = guard::expand(change).map_err(undecodable)?;
    for op in &expanded.operations {
        let (automerge::legacy::ObjectId::Root, automerge::legacy::Key::Map(key)) =
            (&op.obj, &op.key)
        else {
            continue;
        };
        let key = key.as_str();
        if role == Role::Server
            && (key == "schema_version" || schemas.container(kind, key).is_some())
        {
            continue;
        }
        if FIXED_FIELDS.contains(&key) {
            return Err(Refusal::new(
                RefusalCode::FixedField,
                format!("{key} is fixed when the report is created"),
            ));
        }
        if schemas.container(kind, key).is_some() {
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
    text::check(&expanded)
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
    // A device judges with the schemas it was built with: a report of a newer version is judged
    // on the fields it knows (`Schemas::validate`), the rest by the server.
    let schemas = Schemas::builtin();
    let kind = match before_kind {
        None => check_creation(change, id, role, false, schemas)?.kind,
        Some(k) => {
            check_change(change, k, role, schemas)?;
            k
        }
    };
    let state = crate::view::materialize(after);
    schemas
        .validate(kind, &state)
        .map_err(|v| Refusal::schema(&v))?;
    Ok((kind, state))
}
