//! Edits as plain data, and how they become automerge operations.
//!
//! The CLI parses `--set`/`--add`/`--note` into [`Edit`]s, the server turns a coordinator's PATCH into
//! [`Edit`]s, and both go through [`crate::Report::edit`], which applies them in one transaction and
//! runs the same admission check the server runs before committing.

use automerge::transaction::Transactable;
use automerge::{ObjId, ObjType, ReadDoc, ScalarValue, Value as AmValue, ROOT};
use serde_json::Value;

use crate::path::{FieldPath, Segment};

/// One edit of a report.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Set the value at a dotted path (`title`, `location.lat`, `people.0.name`). Setting an object
    /// on a map container (`location={"lat":..}`) sets each of its keys; setting a string on a text
    /// field replaces its text with a minimal splice.
    Set {
        /// Where.
        path: FieldPath,
        /// What (JSON).
        value: Value,
    },
    /// Remove the value at a path (an optional field, or a list item).
    Remove {
        /// Where.
        path: FieldPath,
    },
    /// Append an item to a list (`people`, `topics`, `notes`).
    Append {
        /// The list.
        list: FieldPath,
        /// The new item (JSON).
        item: Value,
    },
    /// Append a paragraph to a collaborative text (`narrative`, `risk_notes`): concurrent appends from
    /// several devices are all kept.
    AppendText {
        /// The text field.
        field: FieldPath,
        /// The paragraph.
        text: String,
    },
}

/// Why an edit cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The path does not lead to an existing object.
    #[error("{path}: no such field or item")]
    NoSuchPath {
        /// The path.
        path: String,
    },
    /// The path leads somewhere of the wrong type.
    #[error("{path}: {problem}")]
    WrongType {
        /// The path.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A number JSON holds that automerge cannot.
    #[error("{path}: unsupported number {value}")]
    BadNumber {
        /// The path.
        path: String,
        /// The number.
        value: String,
    },
    /// automerge refused the operation.
    #[error("{path}: {message}")]
    Automerge {
        /// The path.
        path: String,
        /// automerge's message.
        message: String,
    },
}

fn am_err(path: &FieldPath) -> impl Fn(automerge::AutomergeError) -> EditError + '_ {
    move |e| EditError::Automerge {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// Apply one edit inside a transaction.
pub(crate) fn apply<T: Transactable>(tx: &mut T, edit: &Edit) -> Result<(), EditError> {
    match edit {
        Edit::Set { path, value } => set(tx, path, value),
        Edit::Remove { path } => {
            let (parent, last) = resolve_parent(tx, path)?;
            tx.delete(&parent, last.prop()).map_err(am_err(path))
        }
        Edit::Append { list, item } => {
            let obj = resolve_object(tx, list, ObjType::List)?;
            let index = tx.length(&obj);
            write_value(tx, &obj, Slot::Insert(index), item, list)
        }
        Edit::AppendText { field, text } => {
            let obj = resolve_object(tx, field, ObjType::Text)?;
            let current = tx.text(&obj).map_err(am_err(field))?;
            let end = tx.length(&obj);
            let paragraph = if current.is_empty() || current.ends_with('\n') {
                text.clone()
            } else {
                format!("\n{text}")
            };
            tx.splice_text(&obj, end, 0, &paragraph)
                .map_err(am_err(field))
        }
    }
}

fn set<T: Transactable>(tx: &mut T, path: &FieldPath, value: &Value) -> Result<(), EditError> {
    let (parent, last) = resolve_parent(tx, path)?;
    let existing = tx.get(&parent, last.prop()).map_err(am_err(path))?;
    match (existing, value) {
        // Merge into an existing map rather than replacing it: replacing a container would discard
        // concurrent edits made inside it on other devices.
        (Some((AmValue::Object(ObjType::Map), obj)), Value::Object(entries)) => {
            for (key, v) in entries {
                let child = path.child(Segment::Key(key.clone()));
                set(tx, &child, v)?;
            }
            let _ = obj;
            Ok(())
        }
        (Some((AmValue::Object(ObjType::Text), obj)), Value::String(s)) => {
            tx.update_text(&obj, s).map_err(am_err(path))
        }
        (Some((AmValue::Object(ObjType::List), _)), _) => Err(EditError::WrongType {
            path: path.to_string(),
            problem: "is a list: add items to it instead of replacing it".into(),
        }),
        _ => write_value(tx, &parent, Slot::Put(last.prop()), value, path),
    }
}

/// Where a value goes: over a map key or list index (`Put`), or as a new list element (`Insert`).
enum Slot {
    Put(automerge::Prop),
    Insert(usize),
}

/// Write a JSON value into a slot, creating nested objects as needed.
fn write_value<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    slot: Slot,
    value: &Value,
    path: &FieldPath,
) -> Result<(), EditError> {
    let container = match value {
        Value::Object(_) => Some(ObjType::Map),
        Value::Array(_) => Some(ObjType::List),
        _ => None,
    };
    let Some(t) = container else {
        let s = to_scalar(value, path)?;
        return match slot {
            Slot::Put(prop) => tx.put(obj, prop, s),
            Slot::Insert(index) => tx.insert(obj, index, s),
        }
        .map_err(am_err(path));
    };
    let child = match slot {
        Slot::Put(prop) => tx.put_object(obj, prop, t),
        Slot::Insert(index) => tx.insert_object(obj, index, t),
    }
    .map_err(am_err(path))?;
    match value {
        Value::Object(entries) => fill_map(tx, &child, entries, path),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                write_value(tx, &child, Slot::Insert(i), item, path)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn fill_map<T: Transactable>(
    tx: &mut T,
    obj: &ObjId,
    entries: &serde_json::Map<String, Value>,
    path: &FieldPath,
) -> Result<(), EditError> {
    for (key, v) in entries {
        let child = path.child(Segment::Key(key.clone()));
        write_value(tx, obj, Slot::Put(key.as_str().into()), v, &child)?;
    }
    Ok(())
}

fn to_scalar(value: &Value, path: &FieldPath) -> Result<ScalarValue, EditError> {
    Ok(match value {
        Value::Null => ScalarValue::Null,
        Value::Bool(b) => ScalarValue::Boolean(*b),
        Value::String(s) => ScalarValue::Str(s.as_str().into()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                ScalarValue::Int(i)
            } else if let Some(f) = n.as_f64().filter(|f| f.is_finite()) {
                ScalarValue::F64(f)
            } else {
                return Err(EditError::BadNumber {
                    path: path.to_string(),
                    value: n.to_string(),
                });
            }
        }
        Value::Array(_) | Value::Object(_) => {
            return Err(EditError::WrongType {
                path: path.to_string(),
                problem: "expected a scalar".into(),
            })
        }
    })
}

/// Walk all but the last segment; return the parent object and the last segment.
fn resolve_parent<'p, T: ReadDoc>(
    doc: &T,
    path: &'p FieldPath,
) -> Result<(ObjId, &'p Segment), EditError> {
    let (last, init) = path.split_last();
    let mut obj = ROOT;
    for (depth, seg) in init.iter().enumerate() {
        obj = match doc.get(&obj, seg.prop()) {
            Ok(Some((AmValue::Object(_), child))) => child,
            _ => {
                return Err(EditError::NoSuchPath {
                    path: path.prefix(depth + 1).to_string(),
                })
            }
        };
    }
    Ok((obj, last))
}

fn resolve_object<T: ReadDoc>(
    doc: &T,
    path: &FieldPath,
    want: ObjType,
) -> Result<ObjId, EditError> {
    let (parent, last) = resolve_parent(doc, path)?;
    match doc.get(&parent, last.prop()) {
        Ok(Some((AmValue::Object(t), obj))) if t == want => Ok(obj),
        Ok(Some(_)) => Err(EditError::WrongType {
            path: path.to_string(),
            problem: format!("is not a {}", obj_type_name(want)),
        }),
        _ => Err(EditError::NoSuchPath {
            path: path.to_string(),
        }),
    }
}

pub(crate) fn obj_type_name(t: ObjType) -> &'static str {
    match t {
        ObjType::Map | ObjType::Table => "map",
        ObjType::List => "list",
        ObjType::Text => "text",
    }
}
