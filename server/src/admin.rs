//! The operator's commands: `desa-server user …`, `device …`, `audit verify`. They work on the
//! database directly (the server may be running: SQLite lets both write, one at a time), and every
//! change is audited like an API write.

use std::fmt::Write as _;

use sync_core::{DeviceId, DeviceToken, Role, VillageCode};

use crate::audit::{self, Action, AuditKey, Who};
use crate::clock::now_ms;
use crate::store::{DeviceRecord, Store, StoreError, UserRecord};

/// Why an operator command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The request makes no sense (unknown role, villages for a coordinator…).
    #[error("{0}")]
    Invalid(String),
    /// The database refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit trail was tampered with.
    #[error("audit trail damaged: {0}")]
    Tampered(#[from] audit::Tamper),
    /// Reading the anchor failed.
    #[error("audit anchor: {0}")]
    Anchor(std::io::Error),
}

/// The operator, as the audit trail names them: `operator` and the login name, if known.
pub fn operator() -> Who {
    let login = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default();
    Who {
        user: if login.is_empty() {
            "operator".into()
        } else {
            format!("operator:{login}")
        },
        role: "admin".into(),
        device: None,
    }
}

/// `user add NAME --role ROLE [--village CODE …]`.
pub fn add_user(
    store: &dyn Store,
    name: &str,
    role: Role,
    villages: &[VillageCode],
) -> Result<String, AdminError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c.is_control() || c == ',') {
        return Err(AdminError::Invalid(
            "a user name is 1 to 64 characters, without commas or control characters".into(),
        ));
    }
    let villages = checked_access(role, villages)?;
    let user = UserRecord {
        name: name.to_owned(),
        role,
        villages: villages.clone(),
        created_at: now_ms(),
        removed_at: None,
    };
    let event = audit::now(
        operator(),
        Action::UserAdd {
            name: name.to_owned(),
            role: role.to_string(),
            villages: villages.iter().map(ToString::to_string).collect(),
        },
    );
    store.add_user(&user, &event)?;
    Ok(format!("added {role} {name}"))
}

/// A role and villages that go together (volunteers have villages, other roles cover all), the
/// villages sorted and without repeats.
fn checked_access(role: Role, villages: &[VillageCode]) -> Result<Vec<VillageCode>, AdminError> {
    match (role, villages.is_empty()) {
        (Role::Server, _) => return Err(AdminError::Invalid(
            "the server role is the server's own; give volunteer, coordinator, analyst or admin"
                .into(),
        )),
        (Role::Volunteer, true) => {
            return Err(AdminError::Invalid(
                "a volunteer needs at least one --village CODE (the villages they report from)"
                    .into(),
            ))
        }
        (Role::Volunteer, false) | (_, true) => {}
        (other, false) => {
            return Err(AdminError::Invalid(format!(
                "--village is for volunteers; a {other} covers every village"
            )))
        }
    }
    let mut villages = villages.to_vec();
    villages.sort();
    villages.dedup();
    Ok(villages)
}

/// `user set NAME [--role ROLE] [--village CODE …]`: change a user's role and villages. Without
/// `--role` the role stays; without `--village` a volunteer keeps their villages (another role
/// has none). A running server applies it to open connections and sessions within a second.
pub fn set_user(
    store: &dyn Store,
    name: &str,
    role: Option<Role>,
    villages: &[VillageCode],
) -> Result<String, AdminError> {
    let current = store
        .users()?
        .into_iter()
        .find(|u| u.name == name && u.removed_at.is_none())
        .ok_or_else(|| AdminError::Invalid(format!("no user {name:?} (see `user list`)")))?;
    let role = role.unwrap_or(current.role);
    let villages = match (role, villages.is_empty()) {
        (Role::Volunteer, true) => current.villages.clone(),
        _ => villages.to_vec(),
    };
    let villages = checked_access(role, &villages)?;
    if role == current.role && villages == current.villages {
        return Ok(format!(
            "{name} is already a {role}{}",
            village_text(&villages)
        ));
    }
    let event = audit::now(
        operator(),
        Action::UserUpdate {
            name: name.to_owned(),
            role: role.to_string(),
            villages: villages.iter().map(ToString::to_string).collect(),
        },
    );
    if !store.update_user(name, role, &villages, &event)? {
        return Err(AdminError::Invalid(format!("no user {name:?}")));
    }
    Ok(format!(
        "{name} is now a {role}{}; a running server applies it within a second",
        village_text(&villages)
    ))
}

fn village_text(villages: &[VillageCode]) -> String {
    if villages.is_empty() {
        String::new()
    } else {
        let codes: Vec<String> = villages.iter().map(ToString::to_string).collect();
        format!(" of {}", codes.join(", "))
    }
}

/// `user remove NAME`: the user can no longer sign in or sync; every device of theirs is revoked.
/// Their name stays in history and is not given to anyone else.
pub fn remove_user(store: &dyn Store, name: &str) -> Result<String, AdminError> {
    let devices = store
        .devices()?
        .into_iter()
        .filter(|d| d.user == name && d.revoked_at.is_none())
        .count();
    let event = audit::now(
        operator(),
        Action::UserRemove {
            name: name.to_owned(),
        },
    );
    if store.remove_user(name, now_ms(), &event)? {
        Ok(format!(
            "removed {name} and revoked {devices} device{}; a running server refuses them within a second",
            if devices == 1 { "" } else { "s" }
        ))
    } else {
        Err(AdminError::Invalid(format!(
            "no user {name:?} (unknown, or already removed)"
        )))
    }
}

/// `device list [USER]`: every device (of one user), with its state.
pub fn list_devices(store: &dyn Store, user: Option<&str>) -> Result<String, AdminError> {
    let users = store.users()?;
    if let Some(name) = user {
        if !users.iter().any(|u| u.name == name) {
            return Err(AdminError::Invalid(format!(
                "no user {name:?} (see `user list`)"
            )));
        }
    }
    let mut out = String::from("device	user	role	added	state\n");
    for d in store
        .devices()?
        .iter()
        .filter(|d| user.is_none_or(|u| d.user == u))
    {
        let role = users
            .iter()
            .find(|u| u.name == d.user)
            .map_or("-".to_owned(), |u| u.role.to_string());
        let state = match d.revoked_at {
            Some(at) => format!("revoked {}", sync_core::audit::rfc3339_ms(at)),
            None => "active".into(),
        };
        let _ = writeln!(
            out,
            "{}\t{}\t{role}\t{}\t{state}",
            d.id,
            d.user,
            sync_core::audit::rfc3339_ms(d.created_at)
        );
    }
    Ok(out)
}

/// `device add USER`: a new device and its token. The token is shown once, on the last line.
pub fn add_device(store: &dyn Store, user: &str, secret: [u8; 32]) -> Result<String, AdminError> {
    let id = DeviceId::new_random();
    let token = DeviceToken::new(id, secret);
    let device = DeviceRecord {
        id,
        user: user.to_owned(),
        verifier: token.verifier(),
        created_at: now_ms(),
        revoked_at: None,
    };
    let event = audit::now(
        operator(),
        Action::DeviceAdd {
            user: user.to_owned(),
            device: id.to_string(),
        },
    );
    store.add_device(&device, &event)?;
    Ok(format!(
        "added device {id} for {user}\n\
         Give this token to the device once (desa init --token-file FILE, or DESA_TOKEN); it is not \
         stored and cannot be shown again:\n{}",
        token.reveal()
    ))
}

/// `device revoke DEVICE`.
pub fn revoke_device(store: &dyn Store, device: &str) -> Result<String, AdminError> {
    let id: DeviceId = device
        .parse()
        .map_err(|_| AdminError::Invalid(format!("{device:?} is not a device id (a UUID)")))?;
    let event = audit::now(
        operator(),
        Action::DeviceRevoke {
            device: id.to_string(),
        },
    );
    if store.revoke_device(id, now_ms(), &event)? {
        Ok(format!(
            "revoked device {id}; a running server refuses it within a second"
        ))
    } else {
        Err(AdminError::Invalid(format!(
            "no active device {id} (unknown, or already revoked)"
        )))
    }
}

/// `user list`: users, their villages and devices.
pub fn list_users(store: &dyn Store) -> Result<String, AdminError> {
    let users = store.users()?;
    let devices = store.devices()?;
    let mut out = String::new();
    for user in &users {
        let villages: Vec<String> = user.villages.iter().map(ToString::to_string).collect();
        let removed = user
            .removed_at
            .map(|at| format!("\tremoved {}", sync_core::audit::rfc3339_ms(at)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}\t{}\t{}{removed}",
            user.name,
            user.role,
            if villages.is_empty() {
                "all villages".to_owned()
            } else {
                villages.join(",")
            }
        );
        for d in devices.iter().filter(|d| d.user == user.name) {
            let state = match d.revoked_at {
                Some(at) => format!("revoked {}", sync_core::audit::rfc3339_ms(at)),
                None => "active".into(),
            };
            let _ = writeln!(out, "  device {}\t{state}", d.id);
        }
    }
    if users.is_empty() {
        out.push_str("no users yet: start with  desa-server user add NAME --role admin\n");
    }
    Ok(out)
}

/// `audit verify`: walk the whole chain and compare it with the anchor.
pub fn verify_audit(
    store: &dyn Store,
    key: &AuditKey,
    anchor: Option<&std::path::Path>,
) -> Result<String, AdminError> {
    let head = match anchor {
        Some(path) => audit::anchor::load(path).map_err(AdminError::Anchor)?,
        None => None,
    };
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_entries(after, 10_000)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        entries.extend(page);
    }
    let n = audit::verify(key, entries, head)?;
    Ok(match head {
        Some(h) => format!("audit trail intact: {n} entries, sealed up to the anchored entry {}", h.seq),
        None => format!(
            "audit trail intact: {n} entries (no anchor file: removal of the newest entries could not be detected)"
        ),
    })
}
