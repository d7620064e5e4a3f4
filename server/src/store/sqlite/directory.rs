//! People, devices and bound actors in SQLite. Every change bumps the directory's version (servers
//! poll it) and is audited in the same transaction.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};
use sync_core::{DeviceId, Role, Verifier, VillageCode};

use super::audit::append_audit_tx;
use super::{bump_directory, SqliteStore};
use crate::audit::AuditEvent;
use crate::store::Sql;
use crate::store::{DeviceRecord, DirectoryStore, StoreError, UserRecord};

impl DirectoryStore for SqliteStore {
    fn add_user(&self, user: &UserRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.write(|tx| {
            let villages: Vec<String> = user.villages.iter().map(ToString::to_string).collect();
            let added = tx.execute(
                "INSERT OR IGNORE INTO users (name, role, villages, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![user.name, user.role.as_str(), villages.join(","), user.created_at],
            ).sql()?;
            if added == 0 {
                let removed: Option<i64> = tx
                    .query_row("SELECT removed_at FROM users WHERE name = ?1", [&user.name], |r| r.get(0))
                    .optional().sql()?
                    .flatten();
                return Err(StoreError::Conflict(match removed {
                    Some(_) => format!(
                        "user {:?} was removed; a name is never given to someone else, so that \
                         history keeps naming one person: choose another name",
                        user.name
                    ),
                    None => format!("user {:?} already exists", user.name),
                }));
            }
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))
        })
    }

    fn add_device(&self, device: &DeviceRecord, audit: &AuditEvent) -> Result<(), StoreError> {
        self.write(|tx| {
            let user: Option<String> = tx
                .query_row(
                    "SELECT name FROM users WHERE name = ?1 AND removed_at IS NULL",
                    [&device.user],
                    |r| r.get(0),
                )
                .optional().sql()?;
            if user.is_none() {
                return Err(StoreError::Conflict(format!(
                    "no user {:?} (unknown, or removed)",
                    device.user
                )));
            }
            let added = tx.execute(
                "INSERT OR IGNORE INTO devices (id, user, verifier, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    &device.id.as_bytes()[..],
                    device.user,
                    &device.verifier.0[..],
                    device.created_at,
                    device.revoked_at
                ],
            ).sql()?;
            if added == 0 {
                return Err(StoreError::Conflict(format!("device {} already exists", device.id)));
            }
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))
        })
    }

    fn revoke_device(&self, id: DeviceId, at: i64, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.write(|tx| {
            let revoked = tx
                .execute(
                    "UPDATE devices SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![&id.as_bytes()[..], at],
                )
                .sql()?;
            if revoked == 0 {
                return Ok(false);
            }
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))?;
            Ok(true)
        })
    }

    fn update_user(
        &self,
        name: &str,
        role: Role,
        villages: &[VillageCode],
        audit: &AuditEvent,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            let villages: Vec<String> = villages.iter().map(ToString::to_string).collect();
            let updated = tx.execute(
                "UPDATE users SET role = ?2, villages = ?3 WHERE name = ?1 AND removed_at IS NULL",
                params![name, role.as_str(), villages.join(",")],
            ).sql()?;
            if updated == 0 {
                return Ok(false);
            }
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))?;
            Ok(true)
        })
    }

    fn remove_user(&self, name: &str, at: i64, audit: &AuditEvent) -> Result<bool, StoreError> {
        self.write(|tx| {
            let removed = tx
                .execute(
                    "UPDATE users SET removed_at = ?2 WHERE name = ?1 AND removed_at IS NULL",
                    params![name, at],
                )
                .sql()?;
            if removed == 0 {
                return Ok(false);
            }
            tx.execute(
                "UPDATE devices SET revoked_at = ?2 WHERE user = ?1 AND revoked_at IS NULL",
                params![name, at],
            )
            .sql()?;
            bump_directory(tx)?;
            append_audit_tx(tx, self.audit.as_ref(), std::slice::from_ref(audit))?;
            Ok(true)
        })
    }

    fn actor_owners(&self, actors: &[Vec<u8>]) -> Result<HashMap<Vec<u8>, String>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT user FROM actors WHERE actor = ?1")
                .sql()?;
            let mut out = HashMap::new();
            for actor in actors {
                if let Some(user) = stmt
                    .query_row([actor], |r| r.get::<_, String>(0))
                    .optional()
                    .sql()?
                {
                    out.insert(actor.clone(), user);
                }
            }
            Ok(out)
        })
    }

    fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT name, role, villages, created_at, removed_at FROM users ORDER BY name",
                )
                .sql()?;
            let raws = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .sql()?
                .collect::<Result<Vec<_>, _>>()
                .sql()?;
            raws.into_iter()
                .map(|(name, role, villages, created_at, removed_at)| {
                    let corrupt = |detail: String| StoreError::Corrupt {
                        what: format!("user {name:?}"),
                        detail,
                    };
                    let role = role.parse().map_err(corrupt)?;
                    let villages = villages
                        .split(',')
                        .filter(|v| !v.is_empty())
                        .map(|v| VillageCode::parse(v).map_err(|e| corrupt(e.to_string())))
                        .collect::<Result<_, _>>()?;
                    Ok(UserRecord {
                        name,
                        role,
                        villages,
                        created_at,
                        removed_at,
                    })
                })
                .collect()
        })
    }

    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, user, verifier, created_at, revoked_at FROM devices ORDER BY created_at, id",
            ).sql()?;
            let raws = stmt
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                }).sql()?
                .collect::<Result<Vec<_>, _>>().sql()?;
            raws.into_iter()
                .map(|(id, user, verifier, created_at, revoked_at)| {
                    let corrupt = |detail: &str| StoreError::Corrupt {
                        what: format!("a device of {user:?}"),
                        detail: detail.into(),
                    };
                    let id: [u8; 16] = id.as_slice().try_into().map_err(|_| corrupt("id"))?;
                    let verifier: [u8; 32] =
                        verifier.as_slice().try_into().map_err(|_| corrupt("verifier"))?;
                    Ok(DeviceRecord {
                        id: DeviceId::from_bytes(id),
                        user,
                        verifier: Verifier(verifier),
                        created_at,
                        revoked_at,
                    })
                })
                .collect()
        })
    }

    fn directory_version(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let v: i64 = conn
                .prepare_cached("SELECT version FROM directory WHERE id = 0")
                .sql()?
                .query_row([], |r| r.get(0))
                .sql()?;
            Ok(v as u64)
        })
    }
}
