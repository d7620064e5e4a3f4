//! The storage contract, run against every store: what `Store`'s doc comments promise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use desa_server::audit::{self, Action, AuditEvent, AuditKey, Who};
use desa_server::store::memory::{MemoryStore, MEMORY_AUDIT_KEY};
use desa_server::store::sqlite::{Encryption, SqliteStore};
use desa_server::store::{
    ActorBinding, Commit, DeviceRecord, HeldRow, ReportQuery, ReportRow, ReportWrite, Store,
    StoreError, StoredChange, Uploader, UserRecord,
};
use sync_core::protocol::server::Receipt;
use sync_core::protocol::{PageMark, Position};
use sync_core::{DeviceId, ReportId, ReportKind, Role, Verifier, VillageCode};

/// Run `check` against a fresh store of every kind.
fn each_store(check: impl Fn(&dyn Store)) {
    check(&MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    check(
        &SqliteStore::open(&dir.path().join("db.sqlite3"), KEY)
            .unwrap()
            .with_audit(AuditKey::new(MEMORY_AUDIT_KEY), None),
    );
}

/// The contract holds for the encrypted store the server runs.
const KEY: Encryption = Encryption::Key([7; 32]);

fn village(code: &str) -> VillageCode {
    VillageCode::parse(code).unwrap()
}

fn id(n: u8) -> ReportId {
    ReportId::from_random([n; 16])
}

fn row(n: u8, village_code: &str, status: &str) -> ReportRow {
    ReportRow {
        id: id(n),
        kind: ReportKind::Incident,
        village: village(village_code),
        status: Some(status.into()),
        title: Some(format!("report {n}")),
        created_at: "2026-11-28T08:00:00Z".into(),
        updated_at: 0,
        last_seq: 0,
        json: format!("{{\"n\":{n}}}"),
    }
}

fn write(
    n: u8,
    village_code: &str,
    status: &str,
    change: u8,
    snapshot: Option<Vec<u8>>,
) -> ReportWrite {
    ReportWrite {
        row: row(n, village_code, status),
        changes: vec![StoredChange {
            hash: [change; 32],
            bytes: vec![change; 10],
            uploader: uploader(),
        }],
        snapshot,
        receipts: vec![Receipt {
            seq: 0,
            received_at: 0,
            heads: vec![[change; 32]],
        }],
    }
}

fn uploader() -> Uploader {
    Uploader {
        device: DeviceId::from_bytes([4; 16]),
        user: "siti".into(),
    }
}

fn commit(seq: u64, at: i64, writes: Vec<ReportWrite>) -> Commit {
    Commit {
        seq,
        received_at: at,
        writes,
        ..Commit::default()
    }
}

fn held_row(n: u8, device: u8, since: i64) -> HeldRow {
    HeldRow {
        hash: [n; 32],
        bytes: vec![n; usize::from(n)],
        device: DeviceId::from_bytes([device; 16]),
        since,
    }
}

#[test]
fn an_empty_store_has_nothing() {
    each_store(|s| {
        assert_eq!(s.last_seq().unwrap(), 0);
        assert!(s.load(&id(1)).unwrap().is_none());
        assert!(s.row(&id(1)).unwrap().is_none());
        assert!(s
            .feed(village("6302010001"), &Position::default(), 10)
            .unwrap()
            .is_empty());
        assert!(s.village_counts().unwrap().is_empty());
    });
}

#[test]
fn a_commit_is_visible_everywhere_at_once() {
    each_store(|s| {
        s.commit(&commit(
            1,
            1000,
            vec![
                write(1, "6302010001", "new", 1, Some(b"snap".to_vec())),
                write(2, "6302010002", "new", 2, Some(b"snap2".to_vec())),
            ],
        ))
        .unwrap();
        assert_eq!(s.last_seq().unwrap(), 1);
        let doc = s.load(&id(1)).unwrap().unwrap();
        assert_eq!(doc.snapshot, b"snap");
        assert_eq!(
            doc.tail,
            Vec::<Vec<u8>>::new(),
            "a snapshot absorbs the changes of its commit"
        );
        assert_eq!(doc.last_seq, 1);
        let r = s.row(&id(1)).unwrap().unwrap();
        assert_eq!(
            (r.last_seq, r.updated_at, r.json.as_str()),
            (1, 1000, "{\"n\":1}")
        );
        let receipts = s.change_receipts(&id(1)).unwrap();
        assert_eq!(receipts.len(), 1);
        assert_eq!(
            (receipts[0].hash, receipts[0].seq, receipts[0].received_at),
            ([1; 32], 1, 1000)
        );
        assert_eq!(
            s.feed(village("6302010001"), &Position::default(), 10)
                .unwrap()
                .len(),
            1
        );
    });
}

#[test]
fn a_commit_out_of_sequence_is_refused_and_changes_nothing() {
    each_store(|s| {
        s.commit(&commit(
            1,
            1,
            vec![write(1, "6302010001", "new", 1, Some(vec![1]))],
        ))
        .unwrap();
        for bad in [1, 3, 0] {
            let err = s
                .commit(&commit(
                    bad,
                    2,
                    vec![write(2, "6302010001", "new", 2, Some(vec![2]))],
                ))
                .unwrap_err();
            assert!(matches!(err, StoreError::Sequence { last: 1, .. }), "{err}");
        }
        assert!(s.row(&id(2)).unwrap().is_none());
        assert!(s.load(&id(2)).unwrap().is_none());
        assert_eq!(s.last_seq().unwrap(), 1);
    });
}

#[test]
fn later_changes_form_a_tail_until_a_snapshot_absorbs_them() {
    each_store(|s| {
        s.commit(&commit(
            1,
            1,
            vec![write(1, "6302010001", "new", 1, Some(b"s1".to_vec()))],
        ))
        .unwrap();
        s.commit(&commit(
            2,
            2,
            vec![write(1, "6302010001", "verified", 2, None)],
        ))
        .unwrap();
        s.commit(&commit(
            3,
            3,
            vec![write(1, "6302010001", "verified", 3, None)],
        ))
        .unwrap();
        let doc = s.load(&id(1)).unwrap().unwrap();
        assert_eq!(doc.snapshot, b"s1");
        assert_eq!(
            doc.tail,
            vec![vec![2u8; 10], vec![3u8; 10]],
            "in commit order"
        );
        assert_eq!(doc.full_bytes().len(), 2 + 20);
        s.commit(&commit(
            4,
            4,
            vec![write(1, "6302010001", "closed", 4, Some(b"s4".to_vec()))],
        ))
        .unwrap();
        let doc = s.load(&id(1)).unwrap().unwrap();
        assert_eq!((doc.snapshot.as_slice(), doc.tail.len()), (&b"s4"[..], 0));
        let seqs: Vec<u64> = s
            .change_receipts(&id(1))
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4], "history survives compaction");
        assert_eq!(
            s.row(&id(1)).unwrap().unwrap().status.as_deref(),
            Some("closed")
        );
    });
}

#[test]
fn replaying_a_change_stores_it_once() {
    each_store(|s| {
        s.commit(&commit(
            1,
            1,
            vec![write(1, "6302010001", "new", 1, Some(vec![0]))],
        ))
        .unwrap();
        s.commit(&commit(2, 2, vec![write(1, "6302010001", "new", 1, None)]))
            .unwrap();
        assert_eq!(s.change_receipts(&id(1)).unwrap().len(), 1);
        assert!(s.load(&id(1)).unwrap().unwrap().tail.is_empty());
    });
}

#[test]
fn held_changes_are_kept_even_without_a_report() {
    each_store(|s| {
        let held = Commit {
            seq: 99,
            received_at: 5,
            held: vec![(id(7), vec![held_row(7, 1, 5), held_row(8, 2, 5)])],
            ..Commit::default()
        };
        s.commit(&held).unwrap();
        assert_eq!(s.last_seq().unwrap(), 0, "held changes do not take a seq");
        let doc = s.load(&id(7)).unwrap().unwrap();
        assert_eq!(doc.held, vec![held_row(7, 1, 5), held_row(8, 2, 5)]);
        assert!(s.row(&id(7)).unwrap().is_none());
        let clear = Commit {
            seq: 1,
            received_at: 6,
            writes: vec![write(7, "6302010001", "new", 7, Some(vec![1]))],
            held: vec![(id(7), vec![])],
            ..Commit::default()
        };
        s.commit(&clear).unwrap();
        let doc = s.load(&id(7)).unwrap().unwrap();
        assert!(doc.held.is_empty());
        assert_eq!(doc.last_seq, 1);
    });
}

#[test]
fn feeds_are_ordered_by_seq_then_id_and_paged_by_mark() {
    each_store(|s| {
        s.commit(&commit(
            1,
            1,
            vec![
                write(3, "6302010001", "new", 3, Some(vec![3])),
                write(1, "6302010001", "new", 1, Some(vec![1])),
            ],
        ))
        .unwrap();
        s.commit(&commit(
            2,
            2,
            vec![
                write(2, "6302010001", "new", 2, Some(vec![2])),
                write(9, "6302010002", "new", 9, Some(vec![9])),
            ],
        ))
        .unwrap();
        let v = village("6302010001");
        let all: Vec<(u64, ReportId)> = s
            .feed(v, &Position::default(), 10)
            .unwrap()
            .iter()
            .map(|r| (r.last_seq, r.id))
            .collect();
        assert_eq!(all, vec![(1, id(1)), (1, id(3)), (2, id(2))]);
        let page = s
            .feed(
                v,
                &Position {
                    since: 0,
                    after: Some(PageMark {
                        seq: 1,
                        report: id(1),
                    }),
                },
                1,
            )
            .unwrap();
        assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id(3)]);
        let since = s
            .feed(
                v,
                &Position {
                    since: 1,
                    after: None,
                },
                10,
            )
            .unwrap();
        assert_eq!(since.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id(2)]);
        // An update moves a report to the end of the order.
        s.commit(&commit(3, 3, vec![write(1, "6302010001", "new", 4, None)]))
            .unwrap();
        let all: Vec<ReportId> = s
            .feed(v, &Position::default(), 10)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(all, vec![id(3), id(2), id(1)]);
    });
}

#[test]
fn coordinator_queries_filter_and_page() {
    each_store(|s| {
        s.commit(&commit(
            1,
            1000,
            vec![
                write(1, "6302010001", "new", 1, Some(vec![1])),
                write(2, "6302010001", "verified", 2, Some(vec![2])),
                write(3, "6302010002", "new", 3, Some(vec![3])),
                write(4, "6310010002", "new", 4, Some(vec![4])),
            ],
        ))
        .unwrap();
        s.commit(&commit(
            2,
            2000,
            vec![write(5, "6302010001", "new", 5, Some(vec![5]))],
        ))
        .unwrap();
        let q = |f: &dyn Fn(&mut ReportQuery)| {
            let mut query = ReportQuery {
                limit: 100,
                ..ReportQuery::default()
            };
            f(&mut query);
            s.query(&query)
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        };
        assert_eq!(q(&|_| {}), vec![id(1), id(2), id(3), id(4), id(5)]);
        assert_eq!(
            q(&|q| q.village = Some(village("6302010001"))),
            vec![id(1), id(2), id(5)]
        );
        assert_eq!(
            q(&|q| {
                q.village = Some(village("6302010001"));
                q.status = Some("new".into())
            }),
            vec![id(1), id(5)]
        );
        assert_eq!(
            q(&|q| q.district = Some(sync_core::DistrictCode::parse("6302010").unwrap())),
            vec![id(1), id(2), id(3), id(5)]
        );
        assert_eq!(q(&|q| q.updated_since = Some(1500)), vec![id(5)]);
        assert_eq!(
            q(&|q| q.kind = Some(ReportKind::Outreach)),
            Vec::<ReportId>::new()
        );
        assert_eq!(
            q(&|q| {
                q.after = Some((1, id(2)));
                q.limit = 2
            }),
            vec![id(3), id(4)]
        );
        let counts = s.village_counts().unwrap();
        assert_eq!(
            counts
                .iter()
                .find(|c| c.village == village("6302010001"))
                .unwrap()
                .count,
            3
        );
    });
}

#[test]
fn damaged_stored_data_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    // Plaintext, to damage rows from outside with a plain connection.
    let store = SqliteStore::open(&path, Encryption::Plaintext).unwrap();
    store
        .commit(&commit(
            1,
            1,
            vec![write(1, "6302010001", "new", 1, Some(vec![1]))],
        ))
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE reports SET receipts = x'ffffffffffffffffff', kind = 'bogus'",
        [],
    )
    .unwrap();
    assert!(matches!(
        store.load(&id(1)),
        Err(StoreError::Corrupt { .. })
    ));
    assert!(matches!(store.row(&id(1)), Err(StoreError::Corrupt { .. })));
}

#[test]
fn the_sqlite_store_keeps_everything_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite3");
    {
        let store = SqliteStore::open(&path, KEY).unwrap();
        store
            .commit(&commit(
                1,
                1,
                vec![write(1, "6302010001", "new", 1, Some(vec![1]))],
            ))
            .unwrap();
        store
            .commit(&commit(2, 2, vec![write(1, "6302010001", "new", 2, None)]))
            .unwrap();
    }
    let store = SqliteStore::open(&path, KEY).unwrap();
    assert_eq!(store.last_seq().unwrap(), 2);
    assert_eq!(store.load(&id(1)).unwrap().unwrap().tail.len(), 1);
}

#[test]
fn peer_sync_states_are_kept_per_storage() {
    each_store(|s| {
        assert!(s.peer_sync_states("phone-1").unwrap().is_empty());
        s.save_peer_sync_states("phone-1", &[(id(1), vec![1]), (id(2), vec![2])])
            .unwrap();
        s.save_peer_sync_states("phone-1", &[(id(1), vec![9])])
            .unwrap();
        s.save_peer_sync_states("phone-2", &[(id(1), vec![5])])
            .unwrap();
        let mut got = s.peer_sync_states("phone-1").unwrap();
        got.sort();
        assert_eq!(got, vec![(id(1), vec![9]), (id(2), vec![2])]);
        assert_eq!(
            s.peer_sync_states("phone-2").unwrap(),
            vec![(id(1), vec![5])]
        );
    });
}

fn event(n: usize) -> AuditEvent {
    AuditEvent::now(
        Who {
            user: format!("user{n}"),
            role: "coordinator".into(),
            device: None,
        },
        Action::Read {
            via: "test".into(),
            reports: vec![id(n as u8).to_string()],
            redacted: false,
        },
    )
}

#[test]
fn users_and_devices_are_kept_and_every_change_moves_the_version_and_is_audited() {
    each_store(|s| {
        let v0 = s.directory_version().unwrap();
        let siti = UserRecord {
            name: "siti".into(),
            role: Role::Volunteer,
            villages: vec![village("6302010001"), village("6302010002")],
            created_at: 1,
            removed_at: None,
        };
        s.add_user(&siti, &event(1)).unwrap();
        assert!(matches!(
            s.add_user(&siti, &event(2)),
            Err(StoreError::Conflict(_))
        ));
        let device = DeviceRecord {
            id: DeviceId::from_bytes([4; 16]),
            user: "siti".into(),
            verifier: Verifier([9; 32]),
            created_at: 2,
            revoked_at: None,
        };
        let orphan = DeviceRecord {
            user: "nobody".into(),
            id: DeviceId::from_bytes([5; 16]),
            ..device.clone()
        };
        assert!(matches!(
            s.add_device(&orphan, &event(3)),
            Err(StoreError::Conflict(_))
        ));
        s.add_device(&device, &event(4)).unwrap();
        assert_eq!(s.users().unwrap(), vec![siti]);
        assert_eq!(s.devices().unwrap(), vec![device.clone()]);
        let v1 = s.directory_version().unwrap();
        assert!(v1 > v0);
        assert!(s.revoke_device(device.id, 7, &event(5)).unwrap());
        assert!(
            !s.revoke_device(device.id, 8, &event(6)).unwrap(),
            "already revoked"
        );
        assert_eq!(s.devices().unwrap()[0].revoked_at, Some(7));
        assert!(s.directory_version().unwrap() > v1);
        // Audited: the user, the device, the revocation — not the refused attempts.
        let entries = s.audit_entries(0, 100).unwrap();
        assert_eq!(entries.len(), 3, "{entries:?}");
        assert_eq!(
            audit::verify(&AuditKey::new(MEMORY_AUDIT_KEY), entries, None),
            Ok(3)
        );
    });
}

#[test]
fn the_audit_trail_is_one_chain_across_commits_and_appends() {
    each_store(|s| {
        s.append_audit(&[event(1), event(2)]).unwrap();
        let mut with_audit = commit(1, 10, vec![write(1, "6302010001", "new", 1, Some(vec![1]))]);
        with_audit.audit = vec![event(3)];
        s.commit(&with_audit).unwrap();
        // A commit that fails writes no audit entry either.
        let mut stale = commit(1, 11, vec![write(2, "6302010001", "new", 2, Some(vec![1]))]);
        stale.audit = vec![event(4)];
        assert!(s.commit(&stale).is_err());
        s.append_audit(&[event(5)]).unwrap();
        let entries = s.audit_entries(0, 100).unwrap();
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(entries[2].record.contains("user3") && entries[3].record.contains("user5"));
        assert_eq!(s.audit_entries(2, 1).unwrap()[0].seq, 3, "paged");
        assert_eq!(
            audit::verify(&AuditKey::new(MEMORY_AUDIT_KEY), entries, None),
            Ok(4)
        );
    });
}

#[test]
fn held_changes_are_counted_per_device_and_found_by_age() {
    each_store(|s| {
        let held = Commit {
            held: vec![
                (id(1), vec![held_row(3, 1, 100), held_row(5, 2, 900)]),
                (id(2), vec![held_row(7, 1, 950)]),
            ],
            ..Commit::default()
        };
        s.commit(&held).unwrap();
        let (one, two, three) = (
            DeviceId::from_bytes([1; 16]),
            DeviceId::from_bytes([2; 16]),
            DeviceId::from_bytes([3; 16]),
        );
        let usage = s.held_usage(&[one, two, three]).unwrap();
        assert_eq!(usage[&one], (2, 3 + 7));
        assert_eq!(usage[&two], (1, 5));
        assert_eq!(usage.get(&three).copied().unwrap_or_default(), (0, 0));
        assert_eq!(s.reports_with_held_before(200, 10).unwrap(), vec![id(1)]);
        let mut both = s.reports_with_held_before(1000, 10).unwrap();
        both.sort();
        assert_eq!(both, vec![id(1), id(2)]);
        assert_eq!(
            s.reports_with_held_before(1000, 1).unwrap().len(),
            1,
            "bounded"
        );
    });
}

#[test]
fn who_uploaded_each_change_is_kept_and_an_actor_is_bound_once() {
    each_store(|s| {
        s.commit(&commit(
            1,
            10,
            vec![write(1, "6302010001", "new", 1, Some(vec![1]))],
        ))
        .unwrap();
        let receipts = s.change_receipts(&id(1)).unwrap();
        assert_eq!(receipts[0].uploader, Some(uploader()));

        let bind = |actor: u8, user: &str| ActorBinding {
            actor: vec![actor; 16],
            user: user.into(),
            device: DeviceId::from_bytes([actor; 16]),
            at: 1,
        };
        let first = Commit {
            bindings: vec![bind(9, "ani")],
            ..Commit::default()
        };
        s.commit(&first).unwrap();
        let again = Commit {
            bindings: vec![bind(9, "budi"), bind(8, "budi")],
            ..Commit::default()
        };
        s.commit(&again).unwrap();
        let owners = s
            .actor_owners(&[vec![9; 16], vec![8; 16], vec![7; 16]])
            .unwrap();
        assert_eq!(
            owners.get(&vec![9u8; 16]).map(String::as_str),
            Some("ani"),
            "the first binding stands"
        );
        assert_eq!(owners.get(&vec![8u8; 16]).map(String::as_str), Some("budi"));
        assert!(!owners.contains_key(&vec![7u8; 16]));
    });
}

#[test]
fn a_user_is_changed_and_removed_with_their_devices_and_audited() {
    each_store(|s| {
        let ani = UserRecord {
            name: "ani".into(),
            role: Role::Volunteer,
            villages: vec![village("6302010001")],
            created_at: 1,
            removed_at: None,
        };
        s.add_user(&ani, &event(1)).unwrap();
        let phone = DeviceRecord {
            id: DeviceId::from_bytes([4; 16]),
            user: "ani".into(),
            verifier: Verifier([9; 32]),
            created_at: 2,
            revoked_at: None,
        };
        s.add_device(&phone, &event(2)).unwrap();
        let v0 = s.directory_version().unwrap();
        assert!(s
            .update_user("ani", Role::Volunteer, &[village("6302010002")], &event(3))
            .unwrap());
        assert_eq!(s.users().unwrap()[0].villages, vec![village("6302010002")]);
        let v1 = s.directory_version().unwrap();
        assert!(v1 > v0);
        assert!(!s
            .update_user("nobody", Role::Coordinator, &[], &event(4))
            .unwrap());
        assert!(s.remove_user("ani", 9, &event(5)).unwrap());
        assert!(
            !s.remove_user("ani", 10, &event(6)).unwrap(),
            "already removed"
        );
        assert_eq!(s.users().unwrap()[0].removed_at, Some(9));
        assert_eq!(
            s.devices().unwrap()[0].revoked_at,
            Some(9),
            "their devices go too"
        );
        assert!(s.directory_version().unwrap() > v1);
        assert!(
            !s.update_user("ani", Role::Coordinator, &[], &event(7))
                .unwrap(),
            "a removed user stays removed"
        );
        assert!(
            matches!(s.add_user(&ani, &event(8)), Err(StoreError::Conflict(_))),
            "the name is not reused"
        );
        let another = DeviceRecord {
            id: DeviceId::from_bytes([5; 16]),
            ..phone
        };
        assert!(matches!(
            s.add_device(&another, &event(9)),
            Err(StoreError::Conflict(_))
        ));
        let entries = s.audit_entries(0, 100).unwrap();
        assert_eq!(entries.len(), 4, "add, device, update, remove");
    });
}
