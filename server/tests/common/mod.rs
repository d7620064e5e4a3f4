//! What the engine tests share: a small office in the directory.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use desa_server::audit::{Action, AuditEvent, Who};
use desa_server::auth::Principal;
use desa_server::store::{DeviceRecord, Store, UserRecord};
use sync_core::{Access, DeviceId, Role, VillageCode};

/// The test village.
pub fn village() -> VillageCode {
    VillageCode::parse("6302010001").unwrap()
}

fn audit() -> AuditEvent {
    AuditEvent::at(
        0,
        Who {
            user: "test".into(),
            role: "admin".into(),
            device: None,
        },
        Action::AuditRead { count: 0 },
    )
}

/// Add a user (if new) with devices `devices` (device `n` has id `[n; 16]`).
pub fn enrol(store: &dyn Store, name: &str, role: Role, villages: &[VillageCode], devices: &[u8]) {
    if !store.users().unwrap().iter().any(|u| u.name == name) {
        let user = UserRecord {
            name: name.into(),
            role,
            villages: villages.to_vec(),
            created_at: 0,
            removed_at: None,
        };
        store.add_user(&user, &audit()).unwrap();
    }
    let known = store.devices().unwrap();
    for n in devices {
        if known.iter().any(|d| d.id == DeviceId::from_bytes([*n; 16])) {
            continue;
        }
        let device = DeviceRecord {
            id: DeviceId::from_bytes([*n; 16]),
            user: name.into(),
            verifier: sync_core::Verifier([0; 32]),
            created_at: 0,
            revoked_at: None,
        };
        store.add_device(&device, &audit()).unwrap();
    }
}

/// Siti — a volunteer of the test village with devices 1 to 3 and 0x51 — and the office, a
/// coordinator with device 0xC0.
pub fn office(store: &dyn Store) {
    if store.users().unwrap().is_empty() {
        enrol(
            store,
            "siti",
            Role::Volunteer,
            &[village()],
            &[1, 2, 3, 0x51],
        );
        enrol(store, "office", Role::Coordinator, &[], &[0xC0]);
    }
}

/// Siti's principal on device `n`.
pub fn siti_on(n: u8) -> Arc<Principal> {
    Arc::new(Principal {
        user: "siti".into(),
        device: DeviceId::from_bytes([n; 16]),
        access: Access::in_villages(Role::Volunteer, [village()]),
    })
}

/// The office's principal (device 0xC0).
pub fn coordinator() -> Arc<Principal> {
    Arc::new(Principal {
        user: "office".into(),
        device: DeviceId::from_bytes([0xC0; 16]),
        access: Access::everywhere(Role::Coordinator),
    })
}
pub mod faulty;
