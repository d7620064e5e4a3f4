//! Sensitive fields and their redaction, for callers who may read reports but not the people in
//! them (analysts).
//!
//! | kind | field | redacted as |
//! |---|---|---|
//! | incident | `people.*.name`, `people.*.contact` | removed |
//! | incident | `location.lat`, `location.lon` | rounded to 0.01° (about 1.1 km) |
//! | foreigner_report | `passport_no`, `name` | removed |
//!
//! The foreigner's `name` is not in the issue's list, but it identifies a person exactly as a
//! `people.*.name` does, so it is treated the same. Free text (`narrative`, `notes`) cannot be
//! redacted mechanically; volunteers are trained not to put names there (docs/security.md).
//!
//! ```
//! use serde_json::json;
//! use sync_core::{redact, ReportKind};
//!
//! let mut report = json!({
//!     "kind": "incident",
//!     "location": {"lat": -3.41234, "lon": 116.00987, "place": "harbour"},
//!     "people": [{"role": "potential_victim", "name": "Siti", "age": 19}],
//! });
//! let removed = redact::redact(ReportKind::Incident, &mut report);
//! assert_eq!(report["people"][0], json!({"role": "potential_victim", "age": 19}));
//! assert_eq!(report["location"]["lat"], json!(-3.41));
//! assert_eq!(removed, ["location.lat", "location.lon", "people.0.name"]);
//! ```

use serde_json::Value;

use crate::ReportKind;

/// What happens to a sensitive field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Remove,
    /// Round a coordinate to 2 decimal places.
    Round,
}

/// Sensitive field patterns per kind; `*` matches any list index.
fn rules(kind: ReportKind) -> &'static [(&'static [&'static str], Rule)] {
    match kind {
        ReportKind::Incident => &[
            (&["people", "*", "name"], Rule::Remove),
            (&["people", "*", "contact"], Rule::Remove),
            (&["location", "lat"], Rule::Round),
            (&["location", "lon"], Rule::Round),
        ],
        ReportKind::ForeignerReport => {
            &[(&["passport_no"], Rule::Remove), (&["name"], Rule::Remove)]
        }
        ReportKind::Outreach | ReportKind::VillageProfile => &[],
    }
}

/// Redact a whole report of `kind` in place. Returns the dotted paths that were removed or
/// rounded, sorted, so that the answer can say what was withheld.
pub fn redact(kind: ReportKind, report: &mut Value) -> Vec<String> {
    redact_at(kind, "", report)
}

/// Redact `value`, which sits at dotted `path` inside a report of `kind` (a conflict's value, for
/// instance: `people.1` holds a person). Returns the dotted paths redacted, sorted.
pub fn redact_at(kind: ReportKind, path: &str, value: &mut Value) -> Vec<String> {
    let mut at: Vec<String> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('.').map(str::to_owned).collect()
    };
    let mut out = Vec::new();
    // The value itself may be a sensitive field (a conflict on `people.0.name`).
    match rule_for(kind, &at) {
        Some(Rule::Remove) => {
            *value = Value::Null;
            out.push(path.to_owned());
        }
        Some(Rule::Round) => {
            round(value);
            out.push(path.to_owned());
        }
        None => walk(kind, &mut at, value, &mut out),
    }
    out.sort();
    out
}

/// Whether a field at dotted `path` of a report of `kind` is sensitive.
pub fn is_sensitive(kind: ReportKind, path: &str) -> bool {
    let at: Vec<String> = path.split('.').map(str::to_owned).collect();
    rule_for(kind, &at).is_some()
}

fn rule_for(kind: ReportKind, at: &[String]) -> Option<Rule> {
    rules(kind).iter().find_map(|(pattern, rule)| {
        (pattern.len() == at.len()
            && pattern
                .iter()
                .zip(at)
                .all(|(p, a)| *p == a || (*p == "*" && a.parse::<usize>().is_ok())))
        .then_some(*rule)
    })
}

fn walk(kind: ReportKind, at: &mut Vec<String>, value: &mut Value, out: &mut Vec<String>) {
    // Reports are shallow (depth ≤ 3); the bound guards against a hostile document.
    if at.len() > 8 {
        return;
    }
    match value {
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                at.push(key.clone());
                match rule_for(kind, at) {
                    Some(Rule::Remove) => {
                        map.remove(&key);
                        out.push(at.join("."));
                    }
                    Some(Rule::Round) => {
                        if let Some(v) = map.get_mut(&key) {
                            round(v);
                        }
                        out.push(at.join("."));
                    }
                    None => {
                        if let Some(v) = map.get_mut(&key) {
                            walk(kind, at, v, out);
                        }
                    }
                }
                at.pop();
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                at.push(i.to_string());
                walk(kind, at, item, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn round(value: &mut Value) {
    *value = match value.as_f64() {
        Some(x) => serde_json::Number::from_f64((x * 100.0).round() / 100.0)
            .map(Value::Number)
            .unwrap_or(Value::Null),
        None => Value::Null,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn foreigner_and_conflict_values() {
        let mut report = json!({"kind": "foreigner_report", "name": "X", "passport_no": "A1",
                                "nationality": "MY"});
        let removed = redact(ReportKind::ForeignerReport, &mut report);
        assert_eq!(removed, ["name", "passport_no"]);
        assert_eq!(
            report,
            json!({"kind": "foreigner_report", "nationality": "MY"})
        );

        let mut person = json!({"role": "suspect", "contact": "+62 812", "name": "Budi"});
        let removed = redact_at(ReportKind::Incident, "people.3", &mut person);
        assert_eq!(removed, ["people.3.contact", "people.3.name"]);
        assert_eq!(person, json!({"role": "suspect"}));

        let mut name = json!("Budi");
        assert_eq!(
            redact_at(ReportKind::Incident, "people.0.name", &mut name),
            ["people.0.name"]
        );
        assert_eq!(name, Value::Null);
        assert!(is_sensitive(ReportKind::Incident, "location.lon"));
        assert!(!is_sensitive(ReportKind::Incident, "location.place"));
        assert!(!is_sensitive(ReportKind::Outreach, "name"));
    }
}
