//! `DirectoryStore`: users, devices, bound actors; every change audited.

use super::*;

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
            verify(&AuditKey::new(MEMORY_AUDIT_KEY), entries, None),
            Ok(3)
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
