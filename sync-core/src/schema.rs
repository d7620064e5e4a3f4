//! The report schemas (`schemas/*.json`, JSON Schema 2020-12), compiled once and shared by the device
//! and the server, so both refuse exactly the same documents.

use std::sync::OnceLock;

use automerge::ObjType;
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

/// One kind's schema in one version.
struct KindSchema {
    kind: ReportKind,
    validator: Result<jsonschema::Validator, String>,
    /// The root properties it knows.
    properties: Vec<String>,
}

/// One schema version: every kind's schema, and the containers it adds to the version before.
struct Version {
    number: u64,
    kinds: Vec<KindSchema>,
    added_containers: Vec<(ReportKind, String, ObjType)>,
}

/// The report schemas a device or server knows, by `schema_version` (see `docs/architecture.md`,
/// Schema versions). Versions only ever add: optional fields, and containers, which the server
/// creates in existing reports (the writer's migration change). A document is validated against
/// the schema of its own version; one of a version newer than this side knows is validated as its
/// *projection* on the newest known version — its unknown root fields set aside — so an older
/// device keeps editing the fields it knows, and the server, which knows the newer version, judges
/// the whole.
pub struct Schemas {
    versions: Vec<Version>,
}

impl Schemas {
    /// The schemas shipped in `schemas/` (version 1), compiled once.
    pub fn builtin() -> &'static Schemas {
        static BUILTIN: OnceLock<Schemas> = OnceLock::new();
        BUILTIN.get_or_init(|| Schemas {
            versions: vec![Version {
                number: 1,
                kinds: ReportKind::ALL
                    .into_iter()
                    .map(|kind| compile(kind, serde_json::from_str(schema_text(kind))))
                    .collect(),
                added_containers: Vec::new(),
            }],
        })
    }

    /// These schemas and the next version: its schema for every kind (each must accept every
    /// document of the version before once its `schema_version` is raised), and the containers it
    /// adds.
    pub fn and_version(
        &self,
        schemas: Vec<(ReportKind, Value)>,
        added_containers: Vec<(ReportKind, &str, ObjType)>,
    ) -> Schemas {
        let number = self.newest() + 1;
        let mut versions: Vec<Version> = self
            .versions
            .iter()
            .map(|v| Version {
                number: v.number,
                kinds: v
                    .kinds
                    .iter()
                    .map(|k| KindSchema {
                        kind: k.kind,
                        validator: k.validator.clone(),
                        properties: k.properties.clone(),
                    })
                    .collect(),
                added_containers: v.added_containers.clone(),
            })
            .collect();
        versions.push(Version {
            number,
            kinds: schemas
                .into_iter()
                .map(|(kind, schema)| compile(kind, Ok(schema)))
                .collect(),
            added_containers: added_containers
                .into_iter()
                .map(|(kind, name, t)| (kind, name.to_owned(), t))
                .collect(),
        });
        Schemas { versions }
    }

    /// The newest version known.
    pub fn newest(&self) -> u64 {
        self.versions.last().map_or(1, |v| v.number)
    }

    /// Whether `version` is one of those known.
    pub fn knows(&self, version: u64) -> bool {
        self.versions.iter().any(|v| v.number == version)
    }

    /// The containers of `kind` in `version`: those it is created with, and those each version up
    /// to `version` added.
    pub fn containers(&self, kind: ReportKind, version: u64) -> Vec<(String, ObjType)> {
        let mut all: Vec<(String, ObjType)> = kind
            .containers()
            .iter()
            .map(|(name, t)| ((*name).to_owned(), *t))
            .collect();
        for v in self.versions.iter().filter(|v| v.number <= version) {
            all.extend(
                v.added_containers
                    .iter()
                    .filter(|(k, _, _)| *k == kind)
                    .map(|(_, name, t)| (name.clone(), *t)),
            );
        }
        all
    }

    /// The container type of a root field of `kind` in any known version.
    pub fn container(&self, kind: ReportKind, field: &str) -> Option<ObjType> {
        self.containers(kind, self.newest())
            .into_iter()
            .find(|(name, _)| name == field)
            .map(|(_, t)| t)
    }

    /// Validate a materialized document against the schema of its version (a newer one: its
    /// projection on the newest known).
    pub fn validate(&self, kind: ReportKind, doc: &Value) -> Result<(), Vec<SchemaViolation>> {
        let violation = |message: String| {
            vec![SchemaViolation {
                path: "/schema_version".into(),
                message,
            }]
        };
        let Some(version) = doc.get("schema_version").and_then(Value::as_u64) else {
            return Err(violation("schema_version is missing".into()));
        };
        let newest = self.newest();
        if version > newest {
            let schema = self.kind_schema(kind, newest)?;
            let mut projection = doc.clone();
            if let Some(fields) = projection.as_object_mut() {
                fields.retain(|name, _| schema.properties.iter().any(|p| p == name));
                fields.insert("schema_version".into(), newest.into());
            }
            return check(schema, &projection);
        }
        if !self.knows(version) {
            return Err(violation(format!(
                "schema_version {version} does not exist"
            )));
        }
        check(self.kind_schema(kind, version)?, doc)
    }

    fn kind_schema(
        &self,
        kind: ReportKind,
        version: u64,
    ) -> Result<&KindSchema, Vec<SchemaViolation>> {
        self.versions
            .iter()
            .find(|v| v.number == version)
            .and_then(|v| v.kinds.iter().find(|k| k.kind == kind))
            .ok_or_else(|| {
                vec![SchemaViolation {
                    path: String::new(),
                    message: format!("no schema for kind {kind} in version {version}"),
                }]
            })
    }
}

fn compile(kind: ReportKind, schema: Result<Value, serde_json::Error>) -> KindSchema {
    let schema = schema.map_err(|e| e.to_string());
    let properties = schema
        .as_ref()
        .ok()
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    let validator = schema.and_then(|schema| {
        jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .map_err(|e| e.to_string())
    });
    KindSchema {
        kind,
        validator,
        properties,
    }
}

fn check(schema: &KindSchema, doc: &Value) -> Result<(), Vec<SchemaViolation>> {
    let kind = schema.kind;
    let validator = schema.validator.as_ref().map_err(|e| {
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

/// Validate a materialized document against the shipped schemas ([`Schemas::builtin`]).
pub fn validate(kind: ReportKind, doc: &Value) -> Result<(), Vec<SchemaViolation>> {
    Schemas::builtin().validate(kind, doc)
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
        for k in &Schemas::builtin().versions[0].kinds {
            assert!(
                k.validator.is_ok(),
                "{}: {:?}",
                k.kind,
                k.validator.as_ref().err()
            );
            assert!(k.properties.contains(&"schema_version".to_owned()));
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
