//! Who may write what: the village scope and the read-only roles, decided by `rules::admit`.

use sync_core::automerge::Automerge;
use sync_core::rules::{admit, Access};
use sync_core::sim::{sample_incident, volunteer};
use sync_core::{DeviceId, Edit, FieldPath, RefusalCode, ReportId, Role, Verdict, VillageCode};

fn village(code: &str) -> VillageCode {
    VillageCode::parse(code).expect("a village of the list")
}

fn verdict_code(v: &Verdict) -> Option<RefusalCode> {
    match v {
        Verdict::Refused(r) => Some(r.code),
        _ => None,
    }
}

#[test]
fn a_volunteer_writes_only_reports_of_their_villages() {
    let device = DeviceId::from_bytes([3; 16]);
    // The sample incident is in 6302010001.
    let (mut report, genesis) =
        sample_incident(ReportId::from_random([1; 16]), device, "t").expect("sample");
    let home = Access::in_villages(Role::Volunteer, [village("6302010001")]);
    let elsewhere = Access::in_villages(Role::Volunteer, [village("6302010002")]);

    // Creating it outside their villages is refused and stores nothing.
    let mut doc = Automerge::new();
    let a = admit(&mut doc, report.id(), vec![genesis.clone()], &elsewhere);
    assert_eq!(
        verdict_code(&a.verdicts[&genesis.hash()]),
        Some(RefusalCode::NotPermitted)
    );
    assert!(a.applied.is_empty() && doc.get_heads().is_empty());

    // In their village it is accepted; a later edit by the other village's volunteer is refused.
    let a = admit(&mut doc, report.id(), vec![genesis.clone()], &home);
    assert_eq!(a.verdicts[&genesis.hash()], Verdict::Accepted);
    let edit = report
        .edit(
            &[Edit::Set {
                path: FieldPath::root("title"),
                value: "changed".into(),
            }],
            &volunteer(device),
        )
        .expect("valid edit")
        .expect("a change");
    let heads = doc.get_heads();
    let a = admit(&mut doc, report.id(), vec![edit.clone()], &elsewhere);
    let Verdict::Refused(refusal) = &a.verdicts[&edit.hash()] else {
        panic!("expected a refusal, got {:?}", a.verdicts[&edit.hash()]);
    };
    assert_eq!(refusal.code, RefusalCode::NotPermitted);
    assert!(refusal.detail.contains("6302010001"), "{}", refusal.detail);
    assert_eq!(
        doc.get_heads(),
        heads,
        "nothing of the refused change is kept"
    );

    // Analysts and admins write nothing, even in scope; a coordinator writes anywhere.
    for role in [Role::Analyst, Role::Admin] {
        let a = admit(
            &mut doc,
            report.id(),
            vec![edit.clone()],
            &Access::everywhere(role),
        );
        assert_eq!(
            verdict_code(&a.verdicts[&edit.hash()]),
            Some(RefusalCode::NotPermitted),
            "{role}"
        );
    }
    let a = admit(
        &mut doc,
        report.id(),
        vec![edit.clone()],
        &Access::everywhere(Role::Coordinator),
    );
    assert_eq!(a.verdicts[&edit.hash()], Verdict::Accepted);
}

#[test]
fn fields_written_names_each_field_and_item_a_batch_touches() {
    let device = DeviceId::from_bytes([3; 16]);
    let (mut report, genesis) =
        sample_incident(ReportId::from_random([2; 16]), device, "t").expect("sample");
    let edit = report
        .edit(
            &[
                Edit::Set {
                    path: FieldPath::root("title"),
                    value: "changed".into(),
                },
                Edit::Set {
                    path: "location.lat".parse().expect("path"),
                    value: (-3.2).into(),
                },
                Edit::Set {
                    path: "location.lon".parse().expect("path"),
                    value: 116.1.into(),
                },
                Edit::Append {
                    list: FieldPath::root("people"),
                    item: serde_json::json!({"role": "witness", "name": "Budi"}),
                },
            ],
            &volunteer(device),
        )
        .expect("valid edit")
        .expect("a change");
    let mut doc = Automerge::new();
    doc.apply_changes([genesis, edit.clone()]).expect("apply");
    assert_eq!(
        sync_core::view::fields_written(&doc, &[edit]),
        [
            "location.lat",
            "location.lon",
            "people",
            "people.0",
            "title"
        ]
    );
}
