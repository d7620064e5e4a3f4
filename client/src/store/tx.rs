//! Writes: one immediate SQLite transaction per command or sync round.
//!
//! Crash safety comes from doing each logical step in one transaction: a new edit stores its
//! document *and* queues its change together (a change is never queued for a document that does
//! not contain it, nor the other way round), and a sync round absorbs the server's answer *and*
//! moves the positions together (sync-core requires the effects to be durable before the
//! positions; committing both at once satisfies that, and a crash before the commit leaves the old
//! state, from which the round is simply repeated). `synchronous=FULL` makes the commit durable.

use rusqlite::{params, Transaction};
use sync_core::automerge::{Automerge, Change, ChangeHash};
use sync_core::protocol::absorb::{DeviceStore, RecordedRefusal};
use sync_core::protocol::device::DeviceSync;
use sync_core::{DeviceId, Report, ReportId, Role, Writer};

use super::{rows, StoreError};
use crate::clock::Now;

/// An open write transaction on the store. Dropped without [`StoreTx::commit`], it changes
/// nothing.
#[derive(Debug)]
pub struct StoreTx<'c> {
    tx: Transaction<'c>,
    device: DeviceId,
    now: Now,
}

impl<'c> StoreTx<'c> {
    pub(super) fn new(tx: Transaction<'c>, now: Now) -> Result<Self, StoreError> {
        let device = rows::required_text(&tx, "device_id")?
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("device id: {e}")))?;
        Ok(StoreTx { tx, device, now })
    }

    /// The device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// A report on this device.
    pub fn report(&self, id: ReportId) -> Result<Option<Report>, StoreError> {
        rows::load_doc(&self.tx, id)?
            .map(|doc| {
                Report::from_doc(id, doc)
                    .map_err(|e| StoreError::Corrupt(format!("report {id}: {e}")))
            })
            .transpose()
    }

    /// The writer for a local edit of `id`: the report's current actor generation (0 for a new
    /// report; higher after a rebuild, so that no new change reuses a refused change's sequence
    /// number), the volunteer role, and the device clock.
    pub fn writer(&self, id: ReportId) -> Result<Writer, StoreError> {
        Ok(Writer {
            actor: self.device.actor(rows::generation(&self.tx, id)?),
            role: Role::Volunteer,
            time: self.now.unix,
        })
    }

    /// Store a report after a local change, and queue the change to be sent.
    pub fn save_local_change(&self, report: &Report, change: &Change) -> Result<(), StoreError> {
        rows::put_doc(&self.tx, report.id(), report.doc())?;
        rows::push_outbox(&self.tx, report.id(), change)
    }

    /// The sync positions as stored.
    pub fn sync_state(&self) -> Result<DeviceSync, StoreError> {
        rows::sync_state(&self.tx)
    }

    /// Record the end of a sync round: the new positions and the time of this successful sync.
    pub fn finish_sync_round(&self, sync: &DeviceSync) -> Result<(), StoreError> {
        rows::put_sync_state(&self.tx, sync)?;
        rows::put_meta(&self.tx, "last_sync", self.now.rfc3339.as_bytes())
    }

    /// Make everything durable.
    pub fn commit(self) -> Result<(), StoreError> {
        self.tx.commit()?;
        Ok(())
    }
}

impl DeviceStore for StoreTx<'_> {
    type Error = StoreError;

    fn load(&mut self, id: ReportId) -> Result<Option<Automerge>, Self::Error> {
        rows::load_doc(&self.tx, id)
    }

    fn store(&mut self, id: ReportId, doc: &Automerge) -> Result<(), Self::Error> {
        rows::put_doc(&self.tx, id, doc)
    }

    fn forget(&mut self, id: ReportId) -> Result<(), Self::Error> {
        self.tx.execute(
            "DELETE FROM reports WHERE id = ?1",
            [id.as_bytes().as_slice()],
        )?;
        Ok(())
    }

    fn unacknowledged(&mut self, id: ReportId) -> Result<Vec<Change>, Self::Error> {
        rows::outbox_of(&self.tx, id)
    }

    fn acknowledge(&mut self, changes: &[(ReportId, ChangeHash)]) -> Result<(), Self::Error> {
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM outbox WHERE report = ?1 AND hash = ?2")?;
        for (id, hash) in changes {
            stmt.execute(params![id.as_bytes().as_slice(), hash.0.as_slice()])?;
        }
        Ok(())
    }

    fn requeue(&mut self, id: ReportId, change: Change) -> Result<(), Self::Error> {
        rows::push_front_outbox(&self.tx, id, &change)
    }

    fn replace_outbox(&mut self, id: ReportId, changes: Vec<Change>) -> Result<(), Self::Error> {
        self.tx.execute(
            "DELETE FROM outbox WHERE report = ?1",
            [id.as_bytes().as_slice()],
        )?;
        for change in &changes {
            rows::push_outbox(&self.tx, id, change)?;
        }
        Ok(())
    }

    fn next_writer(&mut self, id: ReportId) -> Result<Writer, Self::Error> {
        let next = rows::generation(&self.tx, id)?
            .checked_add(1)
            .ok_or_else(|| StoreError::Corrupt(format!("report {id}: no generation left")))?;
        rows::put_generation(&self.tx, id, next)?;
        self.writer(id)
    }

    fn record_refusal(&mut self, refusal: RecordedRefusal) -> Result<(), Self::Error> {
        self.tx.execute(
            "INSERT INTO refusals (report, change_hash, code, detail, recorded_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                refusal.report.as_bytes().as_slice(),
                refusal.change.0.as_slice(),
                refusal.refusal.code.as_str().to_owned(),
                refusal.refusal.detail,
                self.now.rfc3339,
            ],
        )?;
        Ok(())
    }
}
