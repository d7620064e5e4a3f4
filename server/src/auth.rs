//! Who is calling: device tokens, the directory of users and devices, and the [`Caller`] extractor
//! every protected handler takes.
//!
//! A request carries `Authorization: Bearer <token>` (a WebSocket upgrade may instead put the token
//! in the URL, `/ws?token=…`, because a browser's WebSocket cannot set headers). The token names
//! its device; the device row holds the SHA-256 of the token's secret, its user and whether it is
//! revoked. The directory is held in memory and reloaded when its version in the database changes
//! — [`watch`] polls it four times a second, so a device revoked from the command line (another
//! process) is refused within a second, and open WebSockets of that device are closed.
//!
//! A failed authentication answers 401 with nothing served and is audited (never with the token).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::{web, FromRequest, HttpRequest};
use sync_core::rules::Access;
use sync_core::{DeviceId, DeviceToken, Role, Verifier, SERVER_DEVICE};

use crate::audit::{Action, AuditEvent, Who};
use crate::error::ApiError;

/// The per-device request limiter.
pub type Limiter = crate::limit::RateLimiter<DeviceId>;
use crate::store::{Store, StoreError};

/// An authenticated caller: a device of a user, with that user's access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's name.
    pub user: String,
    /// The device the request came through.
    pub device: DeviceId,
    /// What the user may touch.
    pub access: Access,
}

impl Principal {
    /// The server itself (village profiles).
    pub fn server() -> Self {
        Principal {
            user: "server".into(),
            device: SERVER_DEVICE,
            access: Access::everywhere(Role::Server),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.access.role()
    }

    /// How the audit trail names this caller.
    pub fn who(&self) -> Who {
        Who {
            user: self.user.clone(),
            role: self.role().to_string(),
            device: Some(self.device.to_string()),
        }
    }
}

/// Why a request is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No token at all.
    #[error("missing token")]
    Missing,
    /// Something that is not a desa token.
    #[error("malformed token")]
    Malformed,
    /// A token naming a device the server does not know.
    #[error("unknown device")]
    UnknownDevice(DeviceId),
    /// A known device, but the secret does not match.
    #[error("wrong secret")]
    WrongSecret(DeviceId),
    /// A revoked device.
    #[error("revoked device")]
    Revoked(DeviceId),
}

impl AuthFailure {
    fn device(&self) -> Option<DeviceId> {
        match self {
            AuthFailure::Missing | AuthFailure::Malformed => None,
            AuthFailure::UnknownDevice(d)
            | AuthFailure::WrongSecret(d)
            | AuthFailure::Revoked(d) => Some(*d),
        }
    }
}

struct DeviceEntry {
    verifier: Verifier,
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
                    revoked: d.revoked_at.is_some(),
                    principal: Arc::new(Principal {
                        user: user.name.clone(),
                        device: d.id,
                        access,
                    }),
                },
            );
        }
        let mut loaded = self
            .loaded
            .write()
            .map_err(|_| StoreError::Database("directory lock poisoned".into()))?;
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
        self.loaded
            .read()
            .map(|l| l.devices.get(&device).is_some_and(|e| !e.revoked))
            .unwrap_or(false)
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

/// The token of a request: the bearer header, or for the WebSocket upgrade only, `?token=`.
fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(value) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        let text = value.to_str().ok()?;
        let (scheme, token) = text.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    if req.path() == "/ws" {
        return web::Query::<HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("token").cloned());
    }
    None
}

/// The authenticated caller of a request. Extracting it answers 401 (and audits the failure) when
/// the token is missing, malformed, unknown, wrong or revoked.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

impl std::ops::Deref for Caller {
    type Target = Principal;

    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let directory = req.app_data::<web::Data<Directory>>().cloned();
        let limiter = req.app_data::<web::Data<Limiter>>().cloned();
        let token = token_of(req);
        let peer = req
            .peer_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let path = req.path().to_owned();
        Box::pin(async move {
            let directory =
                directory.ok_or_else(|| ApiError::Internal("no directory configured".into()))?;
            let outcome = match &token {
                None => Err(AuthFailure::Missing),
                Some(t) => directory.authenticate(t),
            };
            match outcome {
                Ok(principal) => {
                    // Counted per device, after authentication: a stranger cannot use up a
                    // volunteer's allowance.
                    if let Some(limiter) = limiter {
                        limiter.check(principal.device)?;
                    }
                    Ok(Caller(principal))
                }
                Err(failure) => {
                    let event = AuditEvent::now(
                        Who {
                            user: "-".into(),
                            role: "-".into(),
                            device: None,
                        },
                        Action::AuthFailed {
                            reason: failure.to_string(),
                            device: failure.device().map(|d| d.to_string()),
                            peer,
                            path,
                        },
                    );
                    let store = directory.store().clone();
                    match web::block(move || store.append_audit(&[event])).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "auditing a failed authentication")
                        }
                        Err(e) => tracing::error!(error = %e, "auditing a failed authentication"),
                    }
                    Err(ApiError::Unauthorized(failure))
                }
            }
        })
    }
}
