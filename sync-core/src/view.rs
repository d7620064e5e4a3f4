//! Reading a report: the merged JSON and its conflicts.
//!
//! Strings may be scalars (Rust, JS `ImmutableString`) or text objects (JavaScript automerge 3 writes
//! every string as text): both read as JSON strings.

use automerge::{ObjId, ObjType, Prop, ReadDoc, ScalarValue, Value as AmValue, ROOT};
use serde_json::{json, Value};

use crate::DeviceId;

/// Deeper than any schema allows; bounds recursion on hostile documents.
const MAX_DEPTH: usize = 16;

/// The merged document as JSON.
pub fn materialize<R: ReadDoc>(doc: &R) -> Value {
    object_json(doc, &ROOT, ObjType::Map, 0)
}

fn object_json<R: ReadDoc>(doc: &R, obj: &ObjId, t: ObjType, depth: usize) -> Value {
    if depth >= MAX_DEPTH {
        return Value::Null;
    }
    match t {
        ObjType::Map | ObjType::Table => {
            let mut out = serde_json::Map::new();
            for item in doc.map_range(obj, ..) {
                let id = item.id();
                out.insert(
                    item.key.to_string(),
                    value_json(doc, item.value, &id, depth),
                );
            }
            Value::Object(out)
        }
        ObjType::List => Value::Array(
            doc.list_range(obj, ..)
                .map(|item| {
                    let id = item.id();
                    value_json(doc, item.value, &id, depth)
                })
                .collect(),
        ),
        ObjType::Text => Value::String(doc.text(obj).unwrap_or_default()),
    }
}

fn value_json<R: ReadDoc>(
    doc: &R,
    value: automerge::ValueRef<'_>,
    id: &ObjId,
    depth: usize,
) -> Value {
    match value {
        automerge::ValueRef::Object(t) => object_json(doc, id, t, depth + 1),
        automerge::ValueRef::Scalar(s) => scalar_json(&ScalarValue::from(s)),
    }
}

pub(crate) fn scalar_json(s: &ScalarValue) -> Value {
    match s {
        ScalarValue::Str(s) => Value::String(s.to_string()),
        ScalarValue::Int(i) => json!(i),
        ScalarValue::Uint(u) => json!(u),
        ScalarValue::F64(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        ScalarValue::Boolean(b) => Value::Bool(*b),
        ScalarValue::Null => Value::Null,
        ScalarValue::Counter(c) => json!(i64::from(c)),
        ScalarValue::Timestamp(t) => json!(t),
        // Bytes are not part of any schema: shown as an array so that a string-typed field refuses it.
        ScalarValue::Bytes(b) => json!(b),
        ScalarValue::Unknown { .. } => Value::Null,
    }
}

fn am_value_json<R: ReadDoc>(doc: &R, value: &AmValue<'_>, id: &ObjId, depth: usize) -> Value {
    match value {
        AmValue::Object(t) => object_json(doc, id, *t, depth + 1),
        AmValue::Scalar(s) => scalar_json(s),
    }
}

/// One of several concurrent values of a field.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ConflictValue {
    /// The value.
    pub value: Value,
    /// The device that wrote it (from the automerge actor of the operation).
    pub device: Option<DeviceId>,
    /// The automerge actor id (hex) that wrote it.
    pub actor: String,
    /// Whether this is the value every replica shows (automerge's deterministic winner).
    pub winner: bool,
}

/// A field that holds several concurrent values.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Conflict {
    /// Dotted path of the field (`title`, `people.1.name`).
    pub path: String,
    /// The values, the winner first.
    pub values: Vec<ConflictValue>,
}

/// Every conflicted field, at any depth (nested maps and list items too).
pub fn conflicts<R: ReadDoc>(doc: &R) -> Vec<Conflict> {
    let mut out = Vec::new();
    walk(doc, &ROOT, ObjType::Map, String::new(), 0, &mut out);
    out
}

fn walk<R: ReadDoc>(
    doc: &R,
    obj: &ObjId,
    t: ObjType,
    path: String,
    depth: usize,
    out: &mut Vec<Conflict>,
) {
    if depth >= MAX_DEPTH {
        return;
    }
    let props: Vec<Prop> = match t {
        ObjType::Map | ObjType::Table => doc.keys(obj).map(Prop::Map).collect(),
        ObjType::List => (0..doc.length(obj)).map(Prop::Seq).collect(),
        ObjType::Text => return,
    };
    for prop in props {
        let child_path = match (&prop, path.is_empty()) {
            (Prop::Map(k), true) => k.clone(),
            (Prop::Map(k), false) => format!("{path}.{k}"),
            (Prop::Seq(i), _) => format!("{path}.{i}"),
        };
        let Ok(all) = doc.get_all(obj, prop.clone()) else {
            continue;
        };
        let top = doc.get(obj, prop).ok().flatten();
        let winner = top.as_ref().map(|(_, id)| id.clone());
        if all.len() > 1 {
            let mut values: Vec<ConflictValue> = all
                .iter()
                .map(|(v, id)| {
                    let actor = match id {
                        ObjId::Id(_, actor, _) => Some(actor.clone()),
                        ObjId::Root => None,
                    };
                    ConflictValue {
                        value: am_value_json(doc, v, id, depth),
                        device: actor
                            .as_ref()
                            .and_then(DeviceId::from_actor)
                            .map(|(d, _)| d),
                        actor: actor.map(|a| a.to_hex_string()).unwrap_or_default(),
                        winner: Some(id) == winner.as_ref(),
                    }
                })
                .collect();
            values.sort_by_key(|v| !v.winner);
            out.push(Conflict {
                path: child_path.clone(),
                values,
            });
        }
        if let Some((AmValue::Object(child_t), child)) = top {
            walk(doc, &child, child_t, child_path, depth + 1, out);
        }
    }
}

/// The fields (and list items) that `changes` write in `doc` (which contains them), as dotted paths
/// cut after the item (`title`, `people`, `people.0`, `location.lat`), sorted. The one answer to
/// "which fields did this change touch", for the audit trail and a report's history alike: it
/// reads the changes' operations and looks up where each touched object sits in `doc` (an item
/// since deleted is named by its list only).
pub fn fields_written(doc: &automerge::Automerge, changes: &[automerge::Change]) -> Vec<String> {
    FieldsWritten::new(doc).of(changes)
}

/// [`fields_written`] for many changes of one document (a history), looking each object up once.
pub struct FieldsWritten<'a> {
    doc: &'a automerge::Automerge,
    places: std::collections::HashMap<String, Option<Vec<String>>>,
}

impl<'a> FieldsWritten<'a> {
    /// For changes of `doc`.
    pub fn new(doc: &'a automerge::Automerge) -> Self {
        FieldsWritten {
            doc,
            places: std::collections::HashMap::new(),
        }
    }

    /// The fields `changes` write, as [`fields_written`].
    pub fn of(&mut self, changes: &[automerge::Change]) -> Vec<String> {
        use automerge::legacy::{Key, ObjectId};
        let mut fields = std::collections::BTreeSet::new();
        for change in changes {
            // Admitted changes have been expanded before; contained anyway (see `guard`).
            let Ok(expanded) = crate::guard::expand(change) else {
                continue;
            };
            for op in &expanded.operations {
                let mut path: Vec<String> = match &op.obj {
                    ObjectId::Root => Vec::new(),
                    ObjectId::Id(id) => {
                        let doc = self.doc;
                        let place = self
                            .places
                            .entry(id.to_string())
                            .or_insert_with_key(|id| place_of(doc, id))
                            .clone();
                        match place {
                            Some(path) => path,
                            // An object made and replaced since: nothing of it is left.
                            None => continue,
                        }
                    }
                };
                if let Key::Map(key) = &op.key {
                    path.push(key.to_string());
                }
                path.truncate(2);
                if !path.is_empty() {
                    fields.insert(path.join("."));
                }
            }
        }
        fields.into_iter().collect()
    }
}

/// Where the object printed as `id` (`counter@actor`) sits: its path from the root, cut after two
/// steps (field, item).
fn place_of(doc: &automerge::Automerge, id: &str) -> Option<Vec<String>> {
    // `import_obj` parses the id automerge itself printed (valid hex); guarded all the same.
    let obj = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.import_obj(id)))
        .ok()?
        .ok()?;
    let path = doc.parents(&obj).ok()?.path();
    Some(
        path.into_iter()
            .take(2)
            .map(|(_, prop)| match prop {
                Prop::Map(k) => k,
                Prop::Seq(i) => i.to_string(),
            })
            .collect(),
    )
}
