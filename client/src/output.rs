//! Text for people: a report's fields as `path: value` lines, its narrative as a paragraph, its
//! notes and conflicts as short sections. (`--json` output is serde, not this.)

use std::fmt::Write as _;

use serde_json::Value;
use sync_core::view::Conflict;
use sync_core::{DeviceId, VillageCode};

/// Fields with a section of their own rather than a line.
const NOTES: &str = "notes";

/// A value on one line: strings as they are, everything else as JSON.
pub fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `path: value` lines for every field of `document` except `skip`, in key order. Nested maps
/// and lists of objects become dotted paths (`location.lat`, `people.0.name`); a list of plain
/// values is one line; empty containers are left out.
pub fn field_lines(document: &Value, skip: &[&str]) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    if let Value::Object(fields) = document {
        for (key, value) in fields {
            if !skip.contains(&key.as_str()) {
                flatten(key.clone(), value, &mut lines);
            }
        }
    }
    lines
}

fn flatten(path: String, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(fields) => {
            for (key, v) in fields {
                flatten(format!("{path}.{key}"), v, out);
            }
        }
        Value::Array(items) if items.iter().all(|v| !v.is_object() && !v.is_array()) => {
            if !items.is_empty() {
                let joined: Vec<String> = items.iter().map(scalar).collect();
                out.push((path, joined.join(", ")));
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(format!("{path}.{i}"), v, out);
            }
        }
        scalar_value => out.push((path, scalar(scalar_value))),
    }
}

/// The village as people know it: `Labuan Barat (6302010001)`.
pub fn village_label(code: &str) -> String {
    match VillageCode::parse(code) {
        Ok(v) => format!("{} ({code})", v.village().name),
        Err(_) => code.to_owned(),
    }
}

/// The human form of `desa show`.
pub fn report_text(
    document: &Value,
    narrative_field: Option<&str>,
    conflicts: &[Conflict],
    waiting: usize,
    this_device: DeviceId,
) -> String {
    let mut text = String::new();
    let mut skip = vec![NOTES];
    skip.extend(narrative_field);
    let lines = field_lines(document, &skip);
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in lines {
        let value = if key == "village" {
            village_label(&value)
        } else {
            value
        };
        let _ = writeln!(text, "{key:width$}  {value}");
    }

    if let Some(field) = narrative_field {
        let narrative = document.get(field).and_then(Value::as_str).unwrap_or("");
        let _ = writeln!(text, "\n{}:", capitalise(field));
        if narrative.trim().is_empty() {
            let _ = writeln!(text, "  (empty)");
        }
        for line in narrative.lines() {
            let _ = writeln!(text, "  {line}");
        }
    }

    if let Some(notes) = document.get(NOTES).and_then(Value::as_array) {
        if !notes.is_empty() {
            let _ = writeln!(text, "\nNotes:");
        }
        for note in notes {
            let field = |k: &str| note.get(k).map(scalar).unwrap_or_default();
            let _ = writeln!(
                text,
                "  - {} {}: {}",
                field("at"),
                field("author"),
                field("text")
            );
        }
    }

    if !conflicts.is_empty() {
        let _ = writeln!(text, "\nConflicts:");
    }
    for conflict in conflicts {
        let _ = writeln!(text, "  {}:", conflict.path);
        for value in &conflict.values {
            let who = match value.device {
                Some(d) if d == this_device => format!("{d} (this device)"),
                Some(d) => d.to_string(),
                None => format!("actor {}", value.actor),
            };
            let shown = if value.winner { "  <- shown" } else { "" };
            let _ = writeln!(text, "    {}  by {who}{shown}", scalar(&value.value));
        }
    }

    let _ = match waiting {
        0 => writeln!(text, "\nNothing waiting to be sent."),
        1 => writeln!(text, "\n1 change waiting to be sent."),
        n => writeln!(text, "\n{n} changes waiting to be sent."),
    };
    text
}

fn capitalise(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_flatten_to_dotted_lines() {
        let doc = json!({
            "title": "Agent",
            "location": {"lat": -3.25, "lon": 116.2},
            "people": [{"role": "witness", "name": "Siti"}],
            "topics": ["a", "b"],
            "notes": [],
            "empty": {},
        });
        let lines = field_lines(&doc, &["notes"]);
        let keys: Vec<&str> = lines.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "location.lat",
                "location.lon",
                "people.0.name",
                "people.0.role",
                "title",
                "topics"
            ]
        );
        assert_eq!(lines[0].1, "-3.25");
        assert_eq!(lines[4].1, "Agent");
        assert_eq!(lines[5].1, "a, b");
    }

    #[test]
    fn show_text_has_its_sections() {
        let doc = json!({
            "kind": "incident",
            "village": "6302010001",
            "title": "Agent",
            "narrative": "First.\nSecond.",
            "notes": [{"id": "1", "author": "Rina", "at": "2025-11-28T08:00:00Z", "text": "Hi"}],
        });
        let me = DeviceId::from_bytes([1; 16]);
        let text = report_text(&doc, Some("narrative"), &[], 2, me);
        assert!(
            text.contains("village  Labuan Barat (6302010001)"),
            "{text}"
        );
        assert!(text.contains("Narrative:\n  First.\n  Second.\n"), "{text}");
        assert!(text.contains("  - 2025-11-28T08:00:00Z Rina: Hi"), "{text}");
        assert!(text.contains("2 changes waiting"), "{text}");
        assert!(!text.contains("Conflicts:"), "{text}");
    }
}
