//! Reports in SQLite: documents (snapshot and tail), rows, receipts, held changes, feeds and
//! queries — and the one write of an ingest, [`ReportStore::commit`].

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use sync_core::protocol::Position;
use sync_core::{DeviceId, ReportId, VillageCode};

use super::audit::append_audit_tx;
use super::{device_id, parse_row, poisoned, report_id, row_from, SqliteStore, ROW_COLUMNS};
use crate::store::Sql;
use crate::store::{
    decode_receipts, encode_receipts, seq_check, ChangeReceipt, Commit, FeedRow, HeldRow,
    ReportQuery, ReportRow, ReportStore, StoreError, StoredDoc, Uploader, VillageCount,
};

impl ReportStore for SqliteStore {
    fn load(&self, id: &ReportId) -> Result<Option<StoredDoc>, StoreError> {
        self.read(|conn| {
            let key = &id.as_bytes()[..];
            let head: Option<(Vec<u8>, Vec<u8>, i64)> = conn
                .query_row(
                    "SELECT snapshot, receipts, last_seq FROM reports WHERE id = ?1",
                    [key],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional().sql()?;
            let mut stmt = conn.prepare_cached(
                "SELECT hash, bytes, device, since FROM held WHERE report = ?1 ORDER BY since, hash",
            ).sql()?;
            let held = stmt
                .query_map([key], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                }).sql()?
                .collect::<Result<Vec<_>, _>>().sql()?
                .into_iter()
                .map(|(hash, bytes, device, since)| {
                    let what = || format!("held change of {id}");
                    Ok(HeldRow {
                        hash: hash.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                            what: what(),
                            detail: format!("hash of {} bytes", hash.len()),
                        })?,
                        bytes,
                        device: device_id(&device, what)?,
                        since,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let Some((snapshot, receipts, last_seq)) = head else {
                return Ok((!held.is_empty()).then(|| StoredDoc {
                    held,
                    ..StoredDoc::default()
                }));
            };
            let mut stmt = conn.prepare_cached(
                "SELECT bytes FROM changes WHERE report = ?1 AND bytes IS NOT NULL ORDER BY rowid",
            ).sql()?;
            let tail = stmt
                .query_map([key], |r| r.get::<_, Vec<u8>>(0)).sql()?
                .collect::<Result<Vec<_>, _>>().sql()?;
            Ok(Some(StoredDoc {
                snapshot,
                tail,
                receipts: decode_receipts(id, &receipts)?,
                held,
                last_seq: last_seq as u64,
            }))
        })
    }

    fn last_seq(&self) -> Result<u64, StoreError> {
        self.read(|conn| {
            let seq: Option<i64> = conn
                .query_row("SELECT max(last_seq) FROM reports", [], |r| r.get(0))
                .sql()?;
            Ok(seq.unwrap_or(0) as u64)
        })
    }

    fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().map_err(poisoned)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        let last: Option<i64> = tx
            .query_row("SELECT max(last_seq) FROM reports", [], |r| r.get(0))
            .sql()?;
        seq_check(last.unwrap_or(0) as u64, commit)?;
        for write in &commit.writes {
            let row = &write.row;
            let key = &row.id.as_bytes()[..];
            for change in &write.changes {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO changes (report, hash, seq, received_at, bytes, device, user)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                ).sql()?
                .execute(params![
                    key,
                    &change.hash[..],
                    commit.seq as i64,
                    commit.received_at,
                    change.bytes,
                    &change.uploader.device.as_bytes()[..],
                    change.uploader.user
                ]).sql()?;
            }
            let params_common = params![
                key,
                row.kind.as_str(),
                row.village.as_u64() as i64,
                i64::from(row.village.district().as_u32()),
                row.status,
                row.title,
                row.created_at,
                commit.received_at,
                commit.seq as i64,
                row.json,
                encode_receipts(&write.receipts)?,
            ];
            match &write.snapshot {
                Some(snapshot) => {
                    // The new snapshot contains every change so far: drop their bytes, keep
                    // their receipts.
                    tx.prepare_cached(
                        "UPDATE changes SET bytes = NULL WHERE report = ?1 AND bytes IS NOT NULL",
                    )
                    .sql()?
                    .execute([key])
                    .sql()?;
                    tx.prepare_cached(
                        "INSERT INTO reports (id, kind, village, district, status, title, created_at, updated_at, last_seq, json, receipts, snapshot)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                         ON CONFLICT (id) DO UPDATE SET status = excluded.status, title = excluded.title,
                           updated_at = excluded.updated_at, last_seq = excluded.last_seq, json = excluded.json,
                           receipts = excluded.receipts, snapshot = excluded.snapshot",
                    ).sql()?
                    .execute(rusqlite::params_from_iter(
                        params_common.iter().copied().chain(std::iter::once(snapshot as &dyn rusqlite::ToSql)),
                    )).sql()?;
                }
                None => {
                    // The snapshot stays as it is (not read, not rewritten); the row must exist,
                    // since a report's first write always carries a snapshot.
                    let updated = tx
                        .prepare_cached(
                            "UPDATE reports SET status = ?5, title = ?6, updated_at = ?8, last_seq = ?9,
                               json = ?10, receipts = ?11
                             WHERE id = ?1 AND kind = ?2 AND village = ?3 AND district = ?4 AND created_at = ?7",
                        ).sql()?
                        .execute(params_common).sql()?;
                    if updated != 1 {
                        return Err(StoreError::database_msg(format!(
                            "update of report {} without a snapshot, but no such report",
                            row.id
                        )));
                    }
                }
            }
        }
        for (id, held) in &commit.held {
            let key = &id.as_bytes()[..];
            tx.prepare_cached("DELETE FROM held WHERE report = ?1")
                .sql()?
                .execute([key])
                .sql()?;
            for row in held {
                tx.prepare_cached(
                    "INSERT OR IGNORE INTO held (report, hash, device, since, bytes) VALUES (?1, ?2, ?3, ?4, ?5)",
                ).sql()?
                .execute(params![key, &row.hash[..], &row.device.as_bytes()[..], row.since, row.bytes]).sql()?;
            }
        }
        for b in &commit.bindings {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO actors (actor, user, device, bound_at) VALUES (?1, ?2, ?3, ?4)",
            ).sql()?
            .execute(params![b.actor, b.user, &b.device.as_bytes()[..], b.at]).sql()?;
        }
        append_audit_tx(&tx, self.audit.as_ref(), &commit.audit)?;
        tx.commit().sql()?;
        Ok(())
    }

    fn feed(
        &self,
        village: VillageCode,
        position: &Position,
        limit: usize,
    ) -> Result<Vec<FeedRow>, StoreError> {
        self.read(|conn| {
            let village = village.as_u64() as i64;
            let since = position.since as i64;
            let mut rows = Vec::new();
            let mut push = |r: &rusqlite::Row<'_>| -> rusqlite::Result<()> {
                rows.push((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?));
                Ok(())
            };
            match position.after {
                None => {
                    let mut stmt = conn
                        .prepare_cached(
                            "SELECT id, last_seq FROM reports WHERE village = ?1 AND last_seq > ?2
                         ORDER BY last_seq, id LIMIT ?3",
                        )
                        .sql()?;
                    let mut q = stmt.query(params![village, since, limit as i64]).sql()?;
                    while let Some(r) = q.next().sql()? {
                        push(r).sql()?;
                    }
                }
                Some(mark) => {
                    let mut stmt = conn
                        .prepare_cached(
                            "SELECT id, last_seq FROM reports WHERE village = ?1 AND last_seq > ?2
                         AND (last_seq, id) > (?3, ?4) ORDER BY last_seq, id LIMIT ?5",
                        )
                        .sql()?;
                    let mut q = stmt
                        .query(params![
                            village,
                            since,
                            mark.seq as i64,
                            &mark.report.as_bytes()[..],
                            limit as i64
                        ])
                        .sql()?;
                    while let Some(r) = q.next().sql()? {
                        push(r).sql()?;
                    }
                }
            }
            rows.into_iter()
                .map(|(id, seq)| {
                    Ok(FeedRow {
                        id: report_id(id)?,
                        last_seq: seq as u64,
                    })
                })
                .collect()
        })
    }

    fn row(&self, id: &ReportId) -> Result<Option<ReportRow>, StoreError> {
        self.read(|conn| {
            let raw = conn
                .query_row(
                    &format!("SELECT {ROW_COLUMNS} FROM reports WHERE id = ?1"),
                    [&id.as_bytes()[..]],
                    row_from,
                )
                .optional()
                .sql()?;
            raw.map(parse_row).transpose()
        })
    }

    fn query(&self, query: &ReportQuery) -> Result<Vec<ReportRow>, StoreError> {
        let mut sql = format!("SELECT {ROW_COLUMNS} FROM reports WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, v: rusqlite::types::Value| {
            args.push(v);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(v) = query.village {
            arg(&mut sql, " AND village = ?", (v.as_u64() as i64).into());
        }
        if let Some(d) = query.district {
            arg(&mut sql, " AND district = ?", i64::from(d.as_u32()).into());
        }
        if let Some(k) = query.kind {
            arg(&mut sql, " AND kind = ?", k.as_str().to_owned().into());
        }
        if let Some(s) = &query.status {
            arg(&mut sql, " AND status = ?", s.clone().into());
        }
        if let Some(t) = query.updated_since {
            arg(&mut sql, " AND updated_at > ?", t.into());
        }
        if let Some((seq, id)) = query.after {
            arg(&mut sql, " AND (last_seq > ?", (seq as i64).into());
            arg(&mut sql, " OR (last_seq = ?", (seq as i64).into());
            arg(&mut sql, " AND id > ?))", id.as_bytes().to_vec().into());
        }
        arg(
            &mut sql,
            " ORDER BY last_seq, id LIMIT ?",
            (query.limit as i64).into(),
        );
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql).sql()?;
            let raws = stmt
                .query_map(rusqlite::params_from_iter(args.iter()), row_from)
                .sql()?
                .collect::<Result<Vec<_>, _>>()
                .sql()?;
            raws.into_iter().map(parse_row).collect()
        })
    }

    fn change_receipts(&self, id: &ReportId) -> Result<Vec<ChangeReceipt>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT hash, seq, received_at, device, user FROM changes WHERE report = ?1 ORDER BY seq, rowid",
            ).sql()?;
            let raws = stmt
                .query_map([&id.as_bytes()[..]], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<Vec<u8>>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                }).sql()?
                .collect::<Result<Vec<_>, _>>().sql()?;
            raws.into_iter()
                .map(|(hash, seq, received_at, device, user)| {
                    let uploader = match (device, user) {
                        (Some(device), Some(user)) => Some(Uploader {
                            device: device_id(&device, || format!("uploader of a change of {id}"))?,
                            user,
                        }),
                        _ => None,
                    };
                    let hash: [u8; 32] =
                        hash.as_slice()
                            .try_into()
                            .map_err(|_| StoreError::Corrupt {
                                what: format!("change hash of {id}"),
                                detail: format!("{} bytes", hash.len()),
                            })?;
                    Ok(ChangeReceipt {
                        hash,
                        seq: seq as u64,
                        received_at,
                        uploader,
                    })
                })
                .collect()
        })
    }

    fn village_counts(&self) -> Result<Vec<VillageCount>, StoreError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT village, kind, count(*) FROM reports GROUP BY village, kind ORDER BY village, kind").sql()?;
            let raws = stmt
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))).sql()?
                .collect::<Result<Vec<_>, _>>().sql()?;
            raws.into_iter()
                .map(|(village, kind, count)| {
                    let corrupt = |detail: String| StoreError::Corrupt {
                        what: "village counts".into(),
                        detail,
                    };
                    Ok(VillageCount {
                        village: VillageCode::from_u64(village as u64).map_err(|e| corrupt(e.to_string()))?,
                        kind: kind.parse().map_err(|e: sync_core::kind::UnknownKind| corrupt(e.to_string()))?,
                        count: count as u64,
                    })
                })
                .collect()
        })
    }

    fn peer_sync_states(&self, storage_id: &str) -> Result<Vec<(ReportId, Vec<u8>)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT report, state FROM peer_sync WHERE storage_id = ?1")
                .sql()?;
            let raws = stmt
                .query_map([storage_id], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .sql()?
                .collect::<Result<Vec<_>, _>>()
                .sql()?;
            raws.into_iter()
                .map(|(id, state)| Ok((report_id(id)?, state)))
                .collect()
        })
    }

    fn save_peer_sync_states(
        &self,
        storage_id: &str,
        states: &[(ReportId, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.lock().map_err(poisoned)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .sql()?;
        for (id, state) in states {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO peer_sync (storage_id, report, state) VALUES (?1, ?2, ?3)",
            )
            .sql()?
            .execute(params![storage_id, &id.as_bytes()[..], state])
            .sql()?;
        }
        tx.commit().sql()?;
        Ok(())
    }

    fn held_usage(
        &self,
        devices: &[DeviceId],
    ) -> Result<HashMap<DeviceId, (usize, usize)>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT count(*), coalesce(sum(length(bytes)), 0) FROM held WHERE device = ?1",
                )
                .sql()?;
            let mut out = HashMap::new();
            for device in devices {
                let (n, bytes): (i64, i64) = stmt
                    .query_row([&device.as_bytes()[..]], |r| Ok((r.get(0)?, r.get(1)?)))
                    .sql()?;
                out.insert(*device, (n as usize, bytes as usize));
            }
            Ok(out)
        })
    }

    fn reports_with_held_before(
        &self,
        before: i64,
        limit: usize,
    ) -> Result<Vec<ReportId>, StoreError> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare_cached("SELECT DISTINCT report FROM held WHERE since < ?1 LIMIT ?2")
                .sql()?;
            let raws = stmt
                .query_map(params![before, limit as i64], |r| r.get::<_, Vec<u8>>(0))
                .sql()?
                .collect::<Result<Vec<_>, _>>()
                .sql()?;
            raws.into_iter().map(report_id).collect()
        })
    }
}
