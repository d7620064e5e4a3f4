//! The report schemas (`schemas/*.json`, JSON Schema 2020-12), compiled once and shared by the device
//! and the server, so both refuse exactly the same documents.

use std::sync::OnceLock;

use serde_json::Value;

use crate::ReportKind;

/// The schema text of a kind, exactly as shipped in `schemas/` (also served to apps).
pub fn schema_text(kind: ReportKind) -> &'static str {
    match kind {
        ReportKind::Incident => include_str!("../../schemas/incident.json"),
        ReportKind::Outreach => include_str!("../../schemas/outreach.json"),
        ReportKind::ForeignerReport => include_str!("../../schemas/foreigner_report.json"),
        ReportKind::VillageProfile => include_str!("../../schemas/village_profile.json"),
    }
}

/// One way a document breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SchemaViolation {
    /// JSON pointer to the offending value (`/location/lat`), empty for the root.
    pub path: String,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for SchemaViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = if self.path.is_empty() {
            "/"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Violations reported at most per validation: enough to act on, bounded for hostile documents.
const MAX_VIOLATIONS: usize = 20;

struct Compiled {
    validators: Vec<(ReportKind, Result<jsonschema::Validator, String>)>,
}

fn compiled() -> &'static Compiled {
    static COMPILED: OnceLock<Compiled> = OnceLock::new();
    COMPILED.get_or_init(|| Compiled {
        validators: ReportKind::ALL
            .into_iter()
            .map(|kind| {
                let validator = serde_json::from_str::<Value>(schema_text(kind))
                    .map_err(|e| e.to_string())
                    .and_then(|schema| {
                        jsonschema::options()
                            .should_validate_formats(true)
                            .build(&schema)
                            .map_err(|e| e.to_string())
                    });
                (kind, validator)
            })
            .collect(),
    })
}

/// Validate a materialized document against its kind's schema.
pub fn validate(kind: ReportKind, doc: &Value) -> Result<(), Vec<SchemaViolation>> {
    let Some((_, validator)) = compiled().validators.iter().find(|(k, _)| *k == kind) else {
        return Err(vec![SchemaViolation {
            path: String::new(),
            message: format!("no schema for kind {kind}"),
        }]);
    };
    let validator = validator.as_ref().map_err(|e| {
        vec![SchemaViolation {
            path: String::new(),
            message: format!("schema for {kind} does not compile: {e}"),
        }]
    })?;
    // The common case — a valid document — short-circuits; errors are collected only on failure.
    if validator.is_valid(doc) {
        return Ok(());
    }
    let violations: Vec<SchemaViolation> = validator
        .iter_errors(doc)
        .take(MAX_VIOLATIONS)
        .map(|e| SchemaViolation {
            path: e.instance_path().to_string(),
            message: e.to_string(),
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(violations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn incident() -> Value {
        json!({
            "kind": "incident", "schema_version": 1, "village": "6302010001",
            "created_at": "2026-11-28T08:00:00Z", "created_by": "d1",
            "category": "recruitment_offer", "title": "Agent at the harbour",
            "narrative": "", "location": {}, "people": [], "status": "new", "notes": []
        })
    }

    #[test]
    fn every_schema_compiles() {
        for (kind, v) in &compiled().validators {
            assert!(v.is_ok(), "{kind}: {v:?}", v = v.as_ref().err());
        }
    }

    #[test]
    fn common_fields_are_identical_in_every_schema() {
        let common = ["schema_version", "village", "created_at", "created_by"];
        let first: Value = serde_json::from_str(schema_text(ReportKind::Incident)).expect("json");
        for kind in ReportKind::ALL {
            let s: Value = serde_json::from_str(schema_text(kind)).expect("json");
            for field in common {
                assert_eq!(
                    s["properties"][field], first["properties"][field],
                    "{kind}.{field}"
                );
            }
            assert_eq!(s["properties"]["kind"]["const"], kind.as_str());
            assert_eq!(s["additionalProperties"], false);
        }
    }

    #[test]
    fn a_valid_incident_passes() {
        assert_eq!(validate(ReportKind::Incident, &incident()), Ok(()));
    }

    #[test]
    fn strictness() {
        let cases: Vec<(&str, Value)> = vec![
            ("/location/lat", json!({"lat": 91, "lon": 0})),
            ("/location", json!({"lat": 1})),
            ("/occurred_on", json!("28/11/2026")),
            ("/status", json!("approved")),
            ("", json!("extra field")),
            ("/people/0/role", json!([{"role": "agent"}])),
            ("/village", json!("63020")),
        ];
        for (path, bad) in cases {
            let mut doc = incident();
            let field = match path {
                "/location/lat" | "/location" => "location",
                "/occurred_on" => "occurred_on",
                "/status" => "status",
                "" => "unexpected",
                "/people/0/role" => "people",
                _ => "village",
            };
            doc[field] = bad;
            let errors = validate(ReportKind::Incident, &doc).expect_err(path);
            assert!(
                errors.iter().any(|e| e.path.starts_with(path)),
                "{path}: {errors:?}"
            );
        }
        let mut doc = incident();
        doc["title"] = json!("x".repeat(201));
        assert!(validate(ReportKind::Incident, &doc).is_err());
        let mut doc = incident();
        doc.as_object_mut().expect("object").remove("people");
        assert!(
            validate(ReportKind::Incident, &doc).is_err(),
            "containers are required"
        );
    }
}
