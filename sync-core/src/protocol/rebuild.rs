//! Recovery after a refusal (decision 6): the device rebuilds the report from the server's state and
//! re-applies its remaining local edits as new changes.
//!
//! "Remaining" are the device's unacknowledged changes that the server has not got and did not
//! refuse for a reason of their own — typically changes refused only because they built on the
//! refused one. Each is re-applied by replaying what it did (automerge's patches between its
//! dependencies and itself) *by path* on the rebuilt document, committed under the device's next
//! actor generation, and checked by the same rules as any edit. Whatever cannot be re-applied is
//! reported, never silently lost.

use std::collections::{HashMap, HashSet};

use automerge::transaction::{CommitOptions, Transactable, Transaction};
use automerge::{
    Automerge, Change, ChangeHash, ObjId, Patch, PatchAction, Prop, ReadDoc, Value, ROOT,
};

use crate::report::{Report, Writer};
use crate::rules::{Refusal, RefusalCode};
use crate::ReportId;

/// The result of a rebuild.
#[derive(Debug)]
pub struct Rebuilt {
    /// The rebuilt report; `None` when the server has none (its creation was refused).
    pub report: Option<Report>,
    /// New changes that re-apply the remaining local edits: the report's new outbox.
    pub reapplied: Vec<Change>,
    /// Local changes that were not re-applied, and why.
    pub dropped: Vec<(ChangeHash, Refusal)>,
}

/// Rebuild report `id` from the server's `snapshot` (empty: the server has none), re-applying the
/// device's `unacked` changes (in the order they were made) except those in `refused` (refused for
/// a reason of their own). `writer` must carry the device's next actor generation for this report.
pub fn rebuild(
    id: ReportId,
    local: &Automerge,
    snapshot: &[u8],
    unacked: &[Change],
    refused: &HashSet<ChangeHash>,
    writer: &Writer,
) -> Result<Rebuilt, String> {
    let mut dropped = Vec::new();
    if snapshot.is_empty() {
        for c in unacked {
            dropped.push((
                c.hash(),
                Refusal::new(
                    RefusalCode::DependsOnRefused,
                    "the report's creation was refused",
                ),
            ));
        }
        return Ok(Rebuilt {
            report: None,
            reapplied: Vec::new(),
            dropped,
        });
    }
    let server = crate::guard::load(snapshot).map_err(|e| e.to_string())?;
    let mut report = Report::from_doc(id, server).map_err(|e| e.to_string())?;
    let mut reapplied = Vec::new();
    for change in unacked {
        let hash = change.hash();
        if report.doc().get_change_meta_by_hash(&hash).is_some() || refused.contains(&hash) {
            continue;
        }
        let patches = local.diff(change.deps(), &[hash]);
        match reapply(&mut report, &patches, writer) {
            Ok(Some(new_change)) => reapplied.push(new_change),
            Ok(None) => {}
            Err(refusal) => dropped.push((hash, refusal)),
        }
    }
    Ok(Rebuilt {
        report: Some(report),
        reapplied,
        dropped,
    })
}

/// Replay `patches` on `report` as one new change, checked by the admission rules.
fn reapply(
    report: &mut Report,
    patches: &[Patch],
    writer: &Writer,
) -> Result<Option<Change>, Refusal> {
    let kind = report.kind();
    let mut trial = report.doc().clone();
    trial.set_actor(writer.actor.clone());
    let mut tx = trial.transaction();
    let mut created = HashMap::new();
    for patch in patches {
        replay(&mut tx, patch, &mut created);
    }
    let (hash, _) = tx.commit_with(CommitOptions::default().with_time(writer.time));
    if hash.is_none() {
        return Ok(None);
    }
    let Some(change) = trial.get_last_local_change() else {
        return Ok(None);
    };
    crate::rules::check_local(Some(kind), &trial, &change, report.id(), writer.role)?;
    *report.doc_mut() = trial;
    Ok(Some(change))
}

/// Objects this replay created, by their id in the local document.
type Created = HashMap<ObjId, ObjId>;

/// Find the object a patch addresses: one this replay created (its local id maps to the new one),
/// or else by walking its path by property — object ids differ between the local document and the
/// rebuilt one, and list indices may have shifted.
fn resolve(tx: &Transaction<'_>, patch: &Patch, created: &Created) -> Option<ObjId> {
    if let Some(obj) = created.get(&patch.obj) {
        return Some(obj.clone());
    }
    let mut obj = ROOT;
    for (local, prop) in &patch.path {
        if let Some(mapped) = created.get(local) {
            obj = mapped.clone();
        }
        obj = match tx.get(&obj, prop.clone()).ok()?? {
            (Value::Object(_), id) => id,
            _ => return None,
        };
    }
    Some(obj)
}

/// Apply one patch where it still makes sense; a patch whose target no longer exists is skipped
/// (its effect depended on the refused change).
fn replay(tx: &mut Transaction<'_>, patch: &Patch, created: &mut Created) {
    let Some(obj) = resolve(tx, patch, created) else {
        return;
    };
    let len = tx.length(&obj);
    // Errors here mean the patch no longer applies to the rebuilt document; skipping is the
    // documented behaviour, and the admission check afterwards validates what was applied.
    let _ = match &patch.action {
        PatchAction::PutMap { key, value, .. } => {
            put(tx, &obj, Prop::Map(key.clone()), value, created)
        }
        PatchAction::PutSeq { index, value, .. } if *index < len => {
            put(tx, &obj, Prop::Seq(*index), value, created)
        }
        PatchAction::Insert { index, values } => {
            let mut result = Ok(());
            for (at, (value, local, _)) in ((*index).min(len)..).zip(values.iter()) {
                result = match value {
                    Value::Object(t) => tx.insert_object(&obj, at, *t).map(|new| {
                        created.insert(local.clone(), new);
                    }),
                    Value::Scalar(s) => tx.insert(&obj, at, s.as_ref().clone()),
                };
            }
            result
        }
        PatchAction::SpliceText { index, value, .. } => {
            tx.splice_text(&obj, (*index).min(len), 0, &value.make_string())
        }
        PatchAction::Increment { prop, value } => tx.increment(&obj, prop.clone(), *value),
        PatchAction::DeleteMap { key } => tx.delete(&obj, key.as_str()),
        PatchAction::DeleteSeq { index, length } => {
            let mut result = Ok(());
            for _ in 0..(*length).min(len.saturating_sub(*index)) {
                result = tx.delete(&obj, *index);
            }
            result
        }
        PatchAction::PutSeq { .. } | PatchAction::Conflict { .. } | PatchAction::Mark { .. } => {
            Ok(())
        }
    };
}

fn put(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    prop: Prop,
    (value, local): &(Value<'_>, ObjId),
    created: &mut Created,
) -> Result<(), automerge::AutomergeError> {
    match value {
        Value::Object(t) => tx.put_object(obj, prop, *t).map(|new| {
            created.insert(local.clone(), new);
        }),
        Value::Scalar(s) => tx.put(obj, prop, s.as_ref().clone()),
    }
}
