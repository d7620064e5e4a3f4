//! The shipped `schemas/` directory is what the device and the server validate with, and its
//! examples (documentation for app developers) are valid reports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use serde_json::Value;
use sync_core::{schema, ReportKind, VillageCode};

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

#[test]
fn every_schema_file_is_the_one_sync_core_embeds() {
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(schemas_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_owned();
        let kind: ReportKind = name
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            schema::schema_text(kind),
            "{name}.json differs from the embedded copy"
        );
        kinds.push(kind);
    }
    kinds.sort();
    assert_eq!(kinds, ReportKind::ALL.to_vec(), "one schema file per kind");
}

#[test]
fn the_examples_are_valid_reports_and_breaking_them_is_caught() {
    for kind in ReportKind::ALL {
        let path = schemas_dir().join("examples").join(format!("{kind}.json"));
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(schema::validate(kind, &doc), Ok(()), "{}", path.display());
        VillageCode::parse(doc["village"].as_str().unwrap())
            .expect("example village is in the working area");

        for version in [Value::from(0), Value::from("1"), Value::Null] {
            let mut broken = doc.clone();
            broken["schema_version"] = version;
            assert!(
                schema::validate(kind, &broken).is_err(),
                "{kind}: schema_version is checked"
            );
        }
        // A report of a newer version (written by a newer device, docs/architecture.md §3a) is
        // judged on the fields this side knows: its new fields pass, a broken known one does not.
        let mut newer = doc.clone();
        newer["schema_version"] = Value::from(2);
        newer["assigned_team"] = Value::from("a field a newer version adds");
        assert_eq!(
            schema::validate(kind, &newer),
            Ok(()),
            "{kind}: newer version"
        );
        newer["village"] = Value::from(7);
        assert!(
            schema::validate(kind, &newer).is_err(),
            "{kind}: a newer version's known fields are checked"
        );
        let mut extra = doc;
        extra["surprise"] = Value::from(true);
        assert!(
            schema::validate(kind, &extra).is_err(),
            "{kind}: unknown fields are refused"
        );
    }
}

#[test]
fn the_village_list_has_the_whole_working_area() {
    let villages: Vec<_> = sync_core::all_villages().collect();
    assert_eq!(villages.len(), 341);
    let regencies: std::collections::BTreeSet<&str> =
        villages.iter().map(|v| v.regency_name.as_str()).collect();
    assert_eq!(
        regencies.into_iter().collect::<Vec<_>>(),
        ["Kabupaten Kotabaru", "Kabupaten Tanah Bumbu"]
    );
}
