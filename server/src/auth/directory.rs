//! Users and devices, in memory: who a token's device is, what its person may do, and who owns a
//! device (for the authorship rules). Reloaded when the database says they changed — [`watch`]
//! polls four times a second, so an operator's change (another process) takes effect within a
//! second, on open connections too (they [`Directory::subscribe`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sync_core::rules::Access;
use sync_core::{DeviceId, DeviceToken, Principal, Role, Verifier};

use super::AuthFailure;
use crate::store::{Store, StoreError};

struct DeviceEntry {
    verifier: Verifier,
    /// Revoked, or its user removed.
    revoked: bool,
    principal: Arc<Principal>,
}

#[derive(Default)]
struct Loaded {
    version: u64,
    devices: HashMap<DeviceId, DeviceEntry>,
}

/// Users and devices, in memory, reloaded when the database says they changed.
pub struct Directory {
    store: Arc<dyn Store>,
    loaded: RwLock<Loaded>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Directory {
    /// Load the directory from the store.
    pub fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let directory = Directory {
            store,
            loaded: RwLock::new(Loaded::default()),
            changed: tokio::sync::watch::channel(0).0,
        };
        directory.reload()?;
        Ok(directory)
    }

    /// Whether no device exists at all (a fresh installation).
    pub fn is_empty(&self) -> bool {
        self.loaded
            .read()
            .map(|l| l.devices.is_empty())
            .unwrap_or(true)
    }

    /// The store behind it.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn reload(&self) -> Result<u64, StoreError> {
        // Version first: a change landing between the two reads is picked up next time.
        let version = self.store.directory_version()?;
        let users: HashMap<String, crate::store::UserRecord> = self
            .store
            .users()?
            .into_iter()
            .map(|u| (u.name.clone(), u))
            .collect();
        let mut devices = HashMap::new();
        for d in self.store.devices()? {
            let Some(user) = users.get(&d.user) else {
                continue;
            };
            let access = match user.role {
                Role::Volunteer => {
                    Access::in_villages(Role::Volunteer, user.villages.iter().copied())
                }
                role => Access::everywhere(role),
            };
            devices.insert(
                d.id,
                DeviceEntry {
                    verifier: d.verifier,
                    revoked: d.revoked_at.is_some() || user.removed_at.is_some(),
                    principal: Arc::new(Principal {
                        user: user.name.clone(),
                        device: d.id,
                        access,
                    }),
                },
            );
        }
        let mut loaded = self.loaded.write().map_err(|_| StoreError::Poisoned)?;
        *loaded = Loaded { version, devices };
        Ok(version)
    }

    /// Reload if the stored version moved. Returns whether it did.
    pub fn refresh(&self) -> Result<bool, StoreError> {
        let stored = self.store.directory_version()?;
        let current = self.loaded.read().map(|l| l.version).unwrap_or(u64::MAX);
        if stored == current {
            return Ok(false);
        }
        let version = self.reload()?;
        self.changed.send_replace(version);
        Ok(true)
    }

    /// Changes of the directory (revocations): open connections re-check their device.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Check a token's text. A device this server has not loaded yet (added a moment ago from the
    /// command line) is looked up again once before it is refused.
    pub fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthFailure> {
        let token: DeviceToken = token.parse().map_err(|_| AuthFailure::Malformed)?;
        match self.check(&token) {
            Err(AuthFailure::UnknownDevice(_)) if self.refresh().unwrap_or(false) => {
                self.check(&token)
            }
            outcome => outcome,
        }
    }

    fn check(&self, token: &DeviceToken) -> Result<Arc<Principal>, AuthFailure> {
        let device = token.device();
        let loaded = self
            .loaded
            .read()
            .map_err(|_| AuthFailure::UnknownDevice(device))?;
        let entry = loaded
            .devices
            .get(&device)
            .ok_or(AuthFailure::UnknownDevice(device))?;
        if !entry.verifier.matches(&token.verifier()) {
            return Err(AuthFailure::WrongSecret(device));
        }
        if entry.revoked {
            return Err(AuthFailure::Revoked(device));
        }
        Ok(entry.principal.clone())
    }

    /// Whether `device` may still be used (not revoked, still known).
    pub fn is_active(&self, device: DeviceId) -> bool {
        self.principal_of(device).is_some()
    }

    /// The principal of an active device, with its user's access as it stands now (`None`:
    /// unknown, revoked, or its user removed). A change held for its dependencies is judged with
    /// this when they arrive.
    pub fn principal_of(&self, device: DeviceId) -> Option<Arc<Principal>> {
        let loaded = self.loaded.read().ok()?;
        let entry = loaded.devices.get(&device).filter(|e| !e.revoked)?;
        Some(entry.principal.clone())
    }

    /// The user a device belongs to, revoked devices included (their changes stay theirs).
    pub fn device_owner(&self, device: DeviceId) -> Option<String> {
        let loaded = self.loaded.read().ok()?;
        loaded
            .devices
            .get(&device)
            .map(|e| e.principal.user.clone())
    }
}

/// Poll the directory's version until the process ends (a revocation made by `desa-server device
/// revoke`, another process, takes effect within `every`).
pub fn watch(directory: Arc<Directory>, every: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("desa-directory".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            if let Err(e) = directory.refresh() {
                tracing::error!(error = %e, "reloading users and devices");
            }
        })
        .map(|_| ())
}
