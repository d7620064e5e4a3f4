//! `AuditStore`: one sealed chain across commits and appends.

use super::*;

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
            verify(&AuditKey::new(MEMORY_AUDIT_KEY), entries, None),
            Ok(4)
        );
    });
}
