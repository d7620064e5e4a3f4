//! Who may write what, decided by `rules::admit`: the village scope and the read-only roles, one
//! refusal for what the caller may not see, held changes judged with their uploader's access and
//! bounded, authorship, forbidden characters, and changes that make automerge panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use sync_core::automerge::transaction::{CommitOptions, Transactable};
use sync_core::automerge::{ActorId, Automerge, Change, ROOT};
use sync_core::rules::{
    admit, Access, Admission, HeldBudget, HeldLimits, Judge, Origin, Principal, Submission,
    NOT_PERMITTED_DETAIL,
};
use sync_core::sim::{sample_incident, volunteer, Book};
use sync_core::{
    DeviceId, Edit, FieldPath, Refusal, RefusalCode, Report, ReportId, Role, Verdict, VillageCode,
    Writer,
};

fn village(code: &str) -> VillageCode {
    VillageCode::parse(code).expect("a village of the list")
}

fn verdict_code(v: &Verdict) -> Option<RefusalCode> {
    match v {
        Verdict::Refused(r) => Some(r.code),
        _ => None,
    }
}

/// An office: a book of devices, a held budget, a clock.
struct Office {
    book: Book,
    budget: HeldBudget,
    now: i64,
}

impl Office {
    fn new() -> Self {
        Office::with_limits(HeldLimits::default())
    }

    fn with_limits(limits: HeldLimits) -> Self {
        Office {
            book: Book::default(),
            budget: HeldBudget::new(limits),
            now: 1_000_000,
        }
    }

    /// A person with one device.
    fn person(&mut self, user: &str, device: u8, access: Access) -> Arc<Principal> {
        let device = DeviceId::from_bytes([device; 16]);
        self.book.enrol(device, user);
        Arc::new(Principal {
            user: user.into(),
            device,
            access,
        })
    }

    fn admit(
        &mut self,
        doc: &mut Automerge,
        id: ReportId,
        changes: Vec<(Change, &Arc<Principal>, Origin)>,
    ) -> Admission {
        let incoming = changes
            .into_iter()
            .map(|(change, by, origin)| Submission {
                change,
                by: by.clone(),
                origin,
            })
            .collect();
        let mut judge = Judge {
            actors: &self.book,
            held: &mut self.budget,
            now: self.now,
            schemas: sync_core::schema::Schemas::builtin(),
        };
        let admission = admit(doc, id, incoming, &mut judge);
        self.book.bind(&admission.bindings);
        admission
    }

    /// Changes uploaded now by `by`.
    fn upload(
        &mut self,
        doc: &mut Automerge,
        id: ReportId,
        changes: impl IntoIterator<Item = Change>,
        by: &Arc<Principal>,
    ) -> Admission {
        let batch = changes
            .into_iter()
            .map(|c| (c, by, Origin::Uploaded))
            .collect();
        self.admit(doc, id, batch)
    }
}

fn volunteer_of(code: &str) -> Access {
    Access::in_villages(Role::Volunteer, [village(code)])
}

fn set(path: &str, value: serde_json::Value) -> Edit {
    Edit::Set {
        path: path.parse::<FieldPath>().expect("path"),
        value,
    }
}

/// Ani's incident in 6302010001, written by device 3 (Ani's).
fn anis_incident(n: u8) -> (Report, Change) {
    sample_incident(
        ReportId::from_random([n; 16]),
        DeviceId::from_bytes([3; 16]),
        "t",
    )
    .expect("sample")
}

#[test]
fn a_volunteer_writes_only_reports_of_their_villages() {
    let mut office = Office::new();
    let ani = office.person("ani", 3, volunteer_of("6302010001"));
    let tono = office.person("tono", 4, volunteer_of("6302010002"));
    let (mut report, genesis) = anis_incident(1);

    // In her village the creation is accepted; a later edit by the other village's volunteer is
    // refused, and the refusal names nothing of the report.
    let mut doc = Automerge::new();
    let a = office.upload(&mut doc, report.id(), [genesis.clone()], &ani);
    assert_eq!(a.verdicts[&genesis.hash()], Verdict::Accepted);
    let edit = report
        .edit(&[set("title", "changed".into())], &volunteer(ani.device))
        .expect("valid edit")
        .expect("a change");
    let heads = doc.get_heads();
    let a = office.upload(&mut doc, report.id(), [edit.clone()], &tono);
    assert_eq!(
        a.verdicts[&edit.hash()],
        Verdict::Refused(Refusal::not_permitted())
    );
    assert!(!NOT_PERMITTED_DETAIL.contains("6302010001"));
    assert_eq!(
        doc.get_heads(),
        heads,
        "nothing of the refused change is kept"
    );

    // Analysts and admins write nothing, even in scope; a coordinator writes anywhere.
    for (n, role) in [(10, Role::Analyst), (11, Role::Admin)] {
        let reader = office.person(role.as_str(), n, Access::everywhere(role));
        let a = office.upload(&mut doc, report.id(), [edit.clone()], &reader);
        assert_eq!(
            verdict_code(&a.verdicts[&edit.hash()]),
            Some(RefusalCode::NotPermitted),
            "{role}"
        );
    }
    let office_ = office.person("office", 12, Access::everywhere(Role::Coordinator));
    // The coordinator uploads Ani's change (a device relaying it): Ani's actor is not the office's.
    let a = office.upload(&mut doc, report.id(), [edit.clone()], &office_);
    assert_eq!(
        verdict_code(&a.verdicts[&edit.hash()]),
        Some(RefusalCode::NotPermitted)
    );
    let a = office.upload(&mut doc, report.id(), [edit.clone()], &ani);
    assert_eq!(a.verdicts[&edit.hash()], Verdict::Accepted);
}

#[test]
fn out_of_scope_and_unknown_reports_get_one_and_the_same_refusal() {
    let mut office = Office::new();
    let ani = office.person("ani", 3, volunteer_of("6302010001"));
    let tono = office.person("tono", 4, volunteer_of("6302010002"));
    let (mut report, genesis) = anis_incident(1);
    let mut doc = Automerge::new();
    office.upload(&mut doc, report.id(), [genesis.clone()], &ani);
    let edit = report
        .edit(&[set("title", "more".into())], &volunteer(ani.device))
        .unwrap()
        .unwrap();
    office.upload(&mut doc, report.id(), [edit.clone()], &ani);

    // Tono's attempts on Ani's report: a change built on it, a first change for its id (in his own
    // village), and a resend of a change the report already has.
    let mut tonos_copy = Report::from_doc(report.id(), report.doc().clone()).unwrap();
    let tonos_edit = tonos_copy
        .edit(&[set("title", "mine".into())], &volunteer(tono.device))
        .unwrap()
        .unwrap();
    let (_, tonos_creation) = sample_incident(report.id(), tono.device, "taken?").unwrap();
    let heads = doc.get_heads();
    let a = office.upload(
        &mut doc,
        report.id(),
        [tonos_edit.clone(), tonos_creation.clone(), edit.clone()],
        &tono,
    );
    for change in [&tonos_edit, &tonos_creation, &edit] {
        assert_eq!(
            a.verdicts[&change.hash()],
            Verdict::Refused(Refusal::not_permitted())
        );
    }
    assert!(a.held.is_empty() && a.applied.is_empty());
    assert_eq!(doc.get_heads(), heads);

    // A later change for a report the server does not have gets exactly the same answer, and is
    // not held.
    let mut empty = Automerge::new();
    let a = office.upload(&mut empty, report.id(), [tonos_edit.clone()], &tono);
    assert_eq!(
        a.verdicts[&tonos_edit.hash()],
        Verdict::Refused(Refusal::not_permitted())
    );
    assert!(a.held.is_empty());
    // Even for the volunteer of the report's own village.
    let a = office.upload(&mut empty, report.id(), [edit.clone()], &ani);
    assert_eq!(
        a.verdicts[&edit.hash()],
        Verdict::Refused(Refusal::not_permitted())
    );
}

#[test]
fn a_held_change_is_judged_with_the_access_of_its_uploader_not_of_who_completes_it() {
    let mut office = Office::new();
    let ani = office.person("ani", 3, volunteer_of("6302010001"));
    let coordinator = office.person("office", 9, Access::everywhere(Role::Coordinator));
    let (report, genesis) = anis_incident(1);
    let mut doc = Automerge::new();
    office.upload(&mut doc, report.id(), [genesis.clone()], &ani);

    // The coordinator's decision, not yet received by the server…
    let mut server_copy = Report::from_doc(report.id(), doc.clone()).unwrap();
    let decision = server_copy
        .edit(
            &[set("status", "verified".into())],
            &Writer {
                actor: coordinator.device.actor(sync_core::rules::API_GENERATION),
                role: Role::Coordinator,
                time: 1,
            },
        )
        .unwrap()
        .unwrap();
    // …and Ani's change on top of it, closing the report (which she may not do).
    let mut anis = server_copy.doc().clone();
    anis.set_actor(ani.device.actor(0));
    let mut tx = anis.transaction();
    tx.put(ROOT, "status", "closed").unwrap();
    tx.commit_with(CommitOptions::default().with_time(2));
    let escalation = anis.get_last_local_change().unwrap();

    // Uploaded first, it waits for the decision.
    let a = office.upload(&mut doc, report.id(), [escalation.clone()], &ani);
    assert!(matches!(
        a.verdicts[&escalation.hash()],
        Verdict::Held { .. }
    ));
    assert_eq!(a.held.len(), 1);
    assert_eq!(a.held[0].origin, Origin::Held { since: office.now });

    // The decision arrives (made by the server for the coordinator); the held change is judged as
    // Ani's, refused, and dropped — never applied with the coordinator's authority.
    let held = a.held[0].clone();
    let a = office.admit(
        &mut doc,
        report.id(),
        vec![
            (held.change.clone(), &held.by, held.origin),
            (decision.clone(), &coordinator, Origin::Server),
        ],
    );
    assert_eq!(a.verdicts[&decision.hash()], Verdict::Accepted);
    assert_eq!(
        verdict_code(&a.verdicts[&escalation.hash()]),
        Some(RefusalCode::StatusNotPermitted)
    );
    assert_eq!(a.dropped.len(), 1);
    assert_eq!(a.dropped[0].submission.by.user, "ani");
    assert!(a.held.is_empty());
    assert_eq!(
        sync_core::view::materialize(&doc)["status"],
        "verified",
        "the coordinator's decision stands"
    );
    assert_eq!(office.budget.usage(ani.device), (0, 0), "room given back");
}

#[test]
fn a_held_change_whose_uploader_lost_the_village_is_dropped() {
    let mut office = Office::new();
    let ani = office.person("ani", 3, volunteer_of("6302010001"));
    let (mut report, genesis) = anis_incident(1);
    let mut doc = Automerge::new();
    office.upload(&mut doc, report.id(), [genesis], &ani);
    let first = report
        .edit(&[set("title", "one".into())], &volunteer(ani.device))
        .unwrap()
        .unwrap();
    let second = report
        .edit(&[set("title", "two".into())], &volunteer(ani.device))
        .unwrap()
        .unwrap();
    let a = office.upload(&mut doc, report.id(), [second.clone()], &ani);
    assert_eq!(a.held.len(), 1);

    // Ani moves to another village; her held change is judged with her access as it is now.
    let moved = Arc::new(Principal {
        access: volunteer_of("6302010002"),
        ..(*ani).clone()
    });
    let a = office.admit(
        &mut doc,
        report.id(),
        vec![(second.clone(), &moved, Origin::Held { since: office.now })],
    );
    assert_eq!(
        a.verdicts[&second.hash()],
        Verdict::Refused(Refusal::not_permitted())
    );
    assert_eq!(a.dropped.len(), 1);
    assert_eq!(office.budget.usage(ani.device), (0, 0));
    // `first` never reached the server: `second` could not have been applied anyway.
    assert!(doc.get_change_meta_by_hash(&first.hash()).is_none());
}

#[test]
fn held_changes_are_bounded_per_device_and_per_report_and_expire() {
    let limits = HeldLimits {
        per_device_changes: 3,
        per_device_bytes: 1 << 20,
        per_report_changes: 4,
        per_report_bytes: 1 << 20,
        max_age_ms: 1000,
    };
    let mut office = Office::with_limits(limits);
    let ani = office.person("ani", 3, volunteer_of("6302010001"));
    let budi = office.person("budi", 5, volunteer_of("6302010001"));
    let (report, genesis) = anis_incident(1);
    let mut doc = Automerge::new();
    office.upload(&mut doc, report.id(), [genesis], &ani);

    // Changes on top of a dependency the server never receives.
    let base = doc.clone();
    let chain = |device: DeviceId, n: usize| -> Vec<Change> {
        let mut r = Report::from_doc(report.id(), base.clone()).unwrap();
        (0..=n)
            .map(|i| {
                r.edit(&[set("title", format!("t{i}").into())], &volunteer(device))
                    .unwrap()
                    .unwrap()
            })
            .skip(1)
            .collect()
    };
    let anis = chain(ani.device, 5);
    let a = office.upload(&mut doc, report.id(), anis.clone(), &ani);
    let held: Vec<_> = anis
        .iter()
        .map(|c| matches!(a.verdicts[&c.hash()], Verdict::Held { .. }))
        .collect();
    assert_eq!(held, [true, true, true, false, false]);
    let Verdict::Refused(over) = &a.verdicts[&anis[3].hash()] else {
        panic!()
    };
    assert_eq!(over.code, RefusalCode::NotPermitted);
    assert!(over.detail.contains("at most 3 changes"), "{}", over.detail);
    assert_eq!(
        verdict_code(&a.verdicts[&anis[4].hash()]),
        Some(RefusalCode::DependsOnRefused)
    );

    // The report holds at most 4, whoever uploads them.
    let mut kept: Vec<Submission> = a.held;
    let budis = chain(budi.device, 3);
    let mut batch: Vec<(Change, &Arc<Principal>, Origin)> = kept
        .iter()
        .map(|s| (s.change.clone(), &s.by, s.origin))
        .collect();
    batch.extend(budis.iter().map(|c| (c.clone(), &budi, Origin::Uploaded)));
    let a = office.admit(&mut doc, report.id(), batch);
    assert_eq!(a.held.len(), 4, "three of Ani's kept, one of Budi's");
    let Verdict::Refused(full) = &a.verdicts[&budis[1].hash()] else {
        panic!("{:?}", a.verdicts[&budis[1].hash()])
    };
    assert!(full.detail.contains("this report"), "{}", full.detail);
    kept = a.held;

    // A week later (here: a second) they expire, and their room comes back.
    office.now += 1001;
    let batch = kept
        .iter()
        .map(|s| (s.change.clone(), &s.by, s.origin))
        .collect();
    let a = office.admit(&mut doc, report.id(), batch);
    assert!(a.held.is_empty());
    assert_eq!(a.dropped.len(), 4);
    assert!(a.dropped[0].refusal.detail.contains("expired"));
    assert_eq!(office.budget.usage(ani.device), (0, 0));
    assert_eq!(office.budget.usage(budi.device), (0, 0));
}

#[test]
fn an_actor_belongs_to_one_person_and_created_by_names_the_creators_device() {
    let mut office = Office::new();
    let ani = office.person("ani", 3, volunteer_of("6302010001"));
    let budi = office.person("budi", 5, volunteer_of("6302010001"));

    // Budi creates a report under Ani's device actor: refused, nothing stored.
    let id = ReportId::from_random([7; 16]);
    let (_, as_ani) = sample_incident(id, ani.device, "forged").unwrap();
    let mut doc = Automerge::new();
    let a = office.upload(&mut doc, id, [as_ani.clone()], &budi);
    assert_eq!(
        verdict_code(&a.verdicts[&as_ani.hash()]),
        Some(RefusalCode::NotPermitted)
    );
    assert!(doc.get_heads().is_empty());

    // Under his own actor but naming Ani's device as its creator: refused too.
    let new = sync_core::NewReport {
        kind: sync_core::ReportKind::Incident,
        village: village("6302010001"),
        created_at: "2026-11-28T08:00:00Z".into(),
        created_by: ani.device.to_string(),
    };
    let (_, claims_ani) = Report::create(
        id,
        &new,
        &sync_core::sim::sample_fields("t"),
        &volunteer(budi.device),
    )
    .unwrap();
    let a = office.upload(&mut doc, id, [claims_ani.clone()], &budi);
    assert_eq!(
        verdict_code(&a.verdicts[&claims_ani.hash()]),
        Some(RefusalCode::BadCreation)
    );

    // An app's random actor is bound to its first uploader; nobody else may use it.
    let app = ActorId::from(vec![0xAA; 16]);
    let new = sync_core::NewReport {
        created_by: budi.device.to_string(),
        ..new
    };
    let (mut report, first) = Report::create(
        id,
        &new,
        &sync_core::sim::sample_fields("t"),
        &Writer {
            actor: app.clone(),
            role: Role::Volunteer,
            time: 1,
        },
    )
    .unwrap();
    let a = office.upload(&mut doc, id, [first.clone()], &budi);
    assert_eq!(a.verdicts[&first.hash()], Verdict::Accepted);
    assert_eq!(a.bindings.len(), 1);
    assert_eq!(a.bindings[0].user, "budi");
    let next = report
        .edit(
            &[set("title", "by the app".into())],
            &Writer {
                actor: app,
                role: Role::Volunteer,
                time: 2,
            },
        )
        .unwrap()
        .unwrap();
    let a = office.upload(&mut doc, id, [next.clone()], &ani);
    assert_eq!(
        verdict_code(&a.verdicts[&next.hash()]),
        Some(RefusalCode::NotPermitted)
    );
    let a = office.upload(&mut doc, id, [next.clone()], &budi);
    assert_eq!(a.verdicts[&next.hash()], Verdict::Accepted);
}

/// A change writing `value` as the title, built without the local checks (as a hostile client
/// would).
fn raw_title_change(doc: &Automerge, actor: ActorId, value: &str) -> Change {
    let mut doc = doc.clone();
    doc.set_actor(actor);
    let mut tx = doc.transaction();
    tx.put(ROOT, "title", value).unwrap();
    tx.commit_with(CommitOptions::default().with_time(3));
    doc.get_last_local_change().unwrap()
}

#[test]
fn text_with_control_or_bidi_characters_is_refused_but_old_text_stays_writable() {
    let mut office = Office::new();
    let ani = office.person("ani", 3, volunteer_of("6302010001"));
    let (report, genesis) = anis_incident(1);
    let mut doc = Automerge::new();
    office.upload(&mut doc, report.id(), [genesis], &ani);
    for bad in [
        "Ani\u{202E}9876",
        "nul\0byte",
        "esc\u{1b}[2J",
        "isolate\u{2066}x",
    ] {
        let change = raw_title_change(&doc, ani.device.actor(0), bad);
        let a = office.upload(&mut doc, report.id(), [change.clone()], &ani);
        let Verdict::Refused(r) = &a.verdicts[&change.hash()] else {
            panic!("{bad:?} accepted")
        };
        assert_eq!(r.code, RefusalCode::Schema, "{bad:?}");
    }
    let fine = raw_title_change(&doc, ani.device.actor(0), "line one\nline two\tok");
    let a = office.upload(&mut doc, report.id(), [fine.clone()], &ani);
    assert_eq!(a.verdicts[&fine.hash()], Verdict::Accepted);

    // A report that holds such a character from before the rule stays writable.
    let mut old = doc.clone();
    old.apply_changes([raw_title_change(
        &doc,
        ani.device.actor(1),
        "old\u{202E}title",
    )])
    .unwrap();
    let mut r = Report::from_doc(report.id(), old.clone()).unwrap();
    let edit = r
        .edit(
            &[Edit::Append {
                list: FieldPath::root("notes"),
                item: serde_json::json!({"id": "n1", "author": "ani", "at": "2026-11-28T09:00:00Z", "text": "still fine"}),
            }],
            &volunteer(ani.device),
        )
        .unwrap()
        .unwrap();
    let a = office.upload(&mut old, report.id(), [edit.clone()], &ani);
    assert_eq!(a.verdicts[&edit.hash()], Verdict::Accepted);
}

#[test]
fn a_change_that_makes_automerge_panic_is_refused_and_nothing_else_is_lost() {
    let mut office = Office::new();
    let ani = office.person("ani", 3, volunteer_of("6302010001"));
    // Found by the `change` fuzz target (fuzz/regressions/change/apply-panics-in-op-set-batch).
    let bytes = include_bytes!("../../fuzz/regressions/change/apply-panics-in-op-set-batch");
    let Ok(hostile) = Change::from_bytes(bytes.to_vec()) else {
        return; // a later automerge refuses it at parse time
    };
    // As the first change of a new report…
    let mut doc = Automerge::new();
    let id = ReportId::from_random([5; 16]);
    let a = office.upload(&mut doc, id, [hostile.clone()], &ani);
    assert!(matches!(a.verdicts[&hostile.hash()], Verdict::Refused(_)));
    assert!(doc.get_heads().is_empty());
    // …and beside a valid creation of another report: that one is stored whole.
    let (report, genesis) = anis_incident(2);
    let mut doc = Automerge::new();
    let a = office.upload(
        &mut doc,
        report.id(),
        [genesis.clone(), hostile.clone()],
        &ani,
    );
    assert_eq!(a.verdicts[&genesis.hash()], Verdict::Accepted);
    assert!(matches!(a.verdicts[&hostile.hash()], Verdict::Refused(_)));
    assert_eq!(doc.get_heads(), vec![genesis.hash()]);
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
