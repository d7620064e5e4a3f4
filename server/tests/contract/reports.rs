//! `ReportStore`: documents, rows, receipts, held changes, feeds, queries, and the commit.

use super::*;

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
