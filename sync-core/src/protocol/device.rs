//! The device's half of the exchange.
//!
//! [`DeviceSync`] is the state a device keeps between syncs (its position in each scope). The
//! device shell keeps an outbox of the changes the server has not acknowledged; a sync is:
//!
//! 1. `let request = sync.request(&outbox)` — every unacknowledged change plus the positions;
//! 2. send it, receive the response;
//! 3. `let outcome = sync.handle(&outbox, response)?` — what was acknowledged, refused, held; the
//!    reports to rebuild; the deltas to apply (with [`apply_delta`]);
//! 4. persist everything, and only then the new positions ([`DeviceSync::positions`]); repeat while
//!    [`Outcome::more`].
//!
//! Every step is safe to repeat: a lost response means the same changes are sent again, and the
//! server acknowledges changes it already has.

use std::collections::BTreeMap;

use automerge::{Automerge, Change, ChangeHash};

use super::wire::{
    Bytes, Delta, FeedItem, Position, Scope, ScopePosition, SyncRequest, SyncResponse, Upload,
    WireVerdict,
};
use crate::rules::Refusal;
use crate::{DeviceId, ReportId};

/// Change bytes a device puts in one request: well under the server's default body limit
/// (16 MiB), and a request a 2G link carries in a few minutes.
pub const UPLOAD_BYTES: usize = 1 << 20;

/// A response that does not fit the request it answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Not one verdict per uploaded change.
    #[error("server sent {got} verdicts for {sent} changes")]
    VerdictCount {
        /// Changes sent.
        sent: usize,
        /// Verdicts received.
        got: usize,
    },
    /// A feed for a scope the device did not ask about.
    #[error("server sent a feed for {0:?}, which this device does not follow")]
    UnexpectedScope(Scope),
}

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("report {report}: {message}")]
pub struct ApplyError {
    /// The report.
    pub report: ReportId,
    /// What went wrong.
    pub message: String,
}

/// The sync state of one device store (serializable in any serde format, JSON included).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceSync {
    device: DeviceId,
    #[serde(with = "positions_as_list")]
    positions: BTreeMap<Scope, Position>,
}

/// Positions are stored as a list of `{scope, position}`: JSON map keys must be strings.
mod positions_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::protocol::wire::{Position, Scope, ScopePosition};

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<Scope, Position>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<ScopePosition> = map
            .iter()
            .map(|(scope, position)| ScopePosition {
                scope: *scope,
                position: *position,
            })
            .collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<Scope, Position>, D::Error> {
        let list = Vec::<ScopePosition>::deserialize(d)?;
        Ok(list.into_iter().map(|p| (p.scope, p.position)).collect())
    }
}

/// What the device learned from one response.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Stored by the server: remove from the outbox.
    pub acknowledged: Vec<(ReportId, ChangeHash)>,
    /// Refused: the reason, for the volunteer (the report is rebuilt, see `rebuilds`).
    pub refused: Vec<(ReportId, ChangeHash, Refusal)>,
    /// Held by the server until these dependencies arrive: keep in the outbox and add the missing
    /// changes, if this device has them.
    pub held: Vec<(ReportId, ChangeHash, Vec<ChangeHash>)>,
    /// The server's state of reports with a refusal (empty bytes: the server has none).
    pub rebuilds: Vec<(ReportId, Vec<u8>)>,
    /// What is new, to apply with [`apply_delta`].
    pub incoming: Vec<FeedItem>,
    /// More pages follow: sync again.
    pub more: bool,
}

impl DeviceSync {
    /// A device that follows `scopes` and has received nothing yet.
    pub fn new(device: DeviceId, scopes: &[Scope]) -> Self {
        DeviceSync {
            device,
            positions: scopes.iter().map(|s| (*s, Position::default())).collect(),
        }
    }

    /// The device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// Where the device stands in each scope.
    pub fn positions(&self) -> &BTreeMap<Scope, Position> {
        &self.positions
    }

    /// The request carrying `outbox` (changes not yet acknowledged, per report).
    pub fn request(&self, outbox: &[(ReportId, Vec<Change>)]) -> SyncRequest {
        SyncRequest {
            device: self.device,
            positions: self
                .positions
                .iter()
                .map(|(scope, position)| ScopePosition {
                    scope: *scope,
                    position: *position,
                })
                .collect(),
            uploads: outbox
                .iter()
                .filter(|(_, changes)| !changes.is_empty())
                .map(|(report, changes)| Upload {
                    report: *report,
                    changes: changes
                        .iter()
                        .map(|c| Bytes(c.raw_bytes().to_vec()))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The part of `outbox` to send in one request: whole changes, in order, per report a prefix
    /// (so causal order holds), until `max_bytes` of change bytes — always at least one change, so
    /// a sync always moves. A device with a large backlog sends it over several round trips
    /// instead of one request the server would refuse as too large.
    pub fn select_upload(
        outbox: &[(ReportId, Vec<Change>)],
        max_bytes: usize,
    ) -> Vec<(ReportId, Vec<Change>)> {
        let mut budget = max_bytes;
        let mut selected = Vec::new();
        for (report, changes) in outbox {
            let mut take = Vec::new();
            for change in changes {
                let size = change.raw_bytes().len();
                if size > budget && !(selected.is_empty() && take.is_empty()) {
                    break;
                }
                budget = budget.saturating_sub(size);
                take.push(change.clone());
            }
            let partial = take.len() < changes.len();
            if !take.is_empty() {
                selected.push((*report, take));
            }
            if partial || budget == 0 {
                break;
            }
        }
        selected
    }

    /// Take in the response to the request built from `outbox`. Positions advance here: persist
    /// the outcome's effects before persisting the new positions.
    pub fn handle(
        &mut self,
        outbox: &[(ReportId, Vec<Change>)],
        response: SyncResponse,
    ) -> Result<Outcome, ProtocolError> {
        let sent: Vec<(ReportId, ChangeHash)> = outbox
            .iter()
            .flat_map(|(r, cs)| cs.iter().map(move |c| (*r, c.hash())))
            .collect();
        if sent.len() != response.verdicts.len() {
            return Err(ProtocolError::VerdictCount {
                sent: sent.len(),
                got: response.verdicts.len(),
            });
        }
        for feed in &response.feeds {
            if !self.positions.contains_key(&feed.scope) {
                return Err(ProtocolError::UnexpectedScope(feed.scope));
            }
        }
        let mut outcome = Outcome {
            more: response.has_more(),
            ..Outcome::default()
        };
        for ((report, hash), verdict) in sent.into_iter().zip(response.verdicts) {
            match verdict {
                WireVerdict::Accepted => outcome.acknowledged.push((report, hash)),
                WireVerdict::Refused(r) => outcome.refused.push((report, hash, r)),
                WireVerdict::Held(missing) => {
                    outcome
                        .held
                        .push((report, hash, missing.into_iter().map(ChangeHash).collect()))
                }
            }
        }
        outcome.rebuilds = response
            .rebuilds
            .into_iter()
            .map(|r| (r.report, r.snapshot.0))
            .collect();
        for feed in response.feeds {
            self.positions.insert(feed.scope, feed.position);
            outcome.incoming.extend(feed.items);
        }
        Ok(outcome)
    }
}

/// Apply what the server sent of one report to the device's copy (`None`: the device has none).
/// Bytes are checked before anything is applied: a bad delta changes nothing.
pub fn apply_delta(doc: Option<Automerge>, item: &FeedItem) -> Result<Automerge, ApplyError> {
    let err = |message: String| ApplyError {
        report: item.report,
        message,
    };
    let mut doc = doc.unwrap_or_default();
    match &item.delta {
        Delta::Changes(raw) => {
            let changes = raw
                .iter()
                .map(|b| crate::guard::parse_change(b.0.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err(e.to_string()))?;
            // A panic inside automerge leaves `doc` half-updated; it is dropped with the error
            // and the device store keeps its committed copy.
            crate::guard::apply(&mut doc, changes).map_err(|e| err(e.to_string()))?;
        }
        Delta::Snapshot(bytes) => {
            let mut other = crate::guard::load(&bytes.0).map_err(|e| err(e.to_string()))?;
            crate::guard::merge(&mut doc, &mut other).map_err(|e| err(e.to_string()))?;
        }
    }
    Ok(doc)
}
