//! The steps of the HTTP exchange, as [`super::exchange`] takes them in order:
//!
//! 1. [`plan`] checks a decoded [`SyncRequest`] and groups its changes per report.
//! 2. Each report of [`Plan::reports`] is admitted and committed by [`super::writer`], with a new
//!    [`Receipt`] and the report's new seq — one transaction for the whole request.
//! 3. [`Plan::verdicts`] lists the verdicts in request order; reports with a refusal get a
//!    [`Rebuild`] of the server's state ([`rebuild_for`]).
//! 4. For each position, the reports of the scope updated after it, ordered by (seq, id), go
//!    through a [`FeedBuilder`].

use std::collections::{HashMap, HashSet};

use automerge::{Automerge, Change, ChangeHash};

use crate::protocol::wire::{
    Bytes, Delta, FeedItem, PageMark, Position, Rebuild, Scope, ScopeFeed, SyncRequest, WireVerdict,
};
use crate::rules::{Access, Refusal, Verdict};
use crate::{ReportId, VillageCode, VillageError};

/// Why a whole request is refused (as opposed to single changes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A position names a village outside the working area.
    #[error(transparent)]
    UnknownVillage(#[from] VillageError),
    /// The same scope twice.
    #[error("scope {0:?} appears twice")]
    DuplicateScope(Scope),
    /// The same report uploaded in two groups.
    #[error("report {0} appears in two uploads")]
    DuplicateReport(ReportId),
}

enum Slot {
    Change(ReportId, ChangeHash),
    Undecodable(String),
}

/// A checked request, its changes grouped per report.
pub struct Plan {
    slots: Vec<Slot>,
    reports: Vec<(ReportId, Vec<Change>)>,
    positions: Vec<(Scope, VillageCode, Position)>,
}

/// Check a request and group its changes. Changes that do not decode get a refusal of their own;
/// the rest of the request goes on.
pub fn plan(request: &SyncRequest) -> Result<Plan, PlanError> {
    let mut positions = Vec::with_capacity(request.positions.len());
    for p in &request.positions {
        let village = p.scope.check()?;
        if positions.iter().any(|(s, _, _)| *s == p.scope) {
            return Err(PlanError::DuplicateScope(p.scope));
        }
        positions.push((p.scope, village, p.position));
    }
    let mut slots = Vec::with_capacity(request.change_count());
    let mut reports: Vec<(ReportId, Vec<Change>)> = Vec::with_capacity(request.uploads.len());
    let mut seen = HashSet::new();
    for upload in &request.uploads {
        if !seen.insert(upload.report) {
            return Err(PlanError::DuplicateReport(upload.report));
        }
        let mut changes = Vec::with_capacity(upload.changes.len());
        for bytes in &upload.changes {
            match crate::guard::parse_change(bytes.0.clone()) {
                Ok(change) => {
                    slots.push(Slot::Change(upload.report, change.hash()));
                    changes.push(change);
                }
                Err(e) => slots.push(Slot::Undecodable(e.to_string())),
            }
        }
        if !changes.is_empty() {
            reports.push((upload.report, changes));
        }
    }
    Ok(Plan {
        slots,
        reports,
        positions,
    })
}

impl Plan {
    /// The decodable changes, per report: what to admit.
    pub fn reports(&self) -> &[(ReportId, Vec<Change>)] {
        &self.reports
    }

    /// The checked positions, one per scope.
    pub fn positions(&self) -> &[(Scope, VillageCode, Position)] {
        &self.positions
    }

    /// The uploaded change hashes per report (the device has these: they are left out of its
    /// feed).
    pub fn uploaded(&self) -> HashMap<ReportId, HashSet<ChangeHash>> {
        let mut map: HashMap<ReportId, HashSet<ChangeHash>> = HashMap::new();
        for slot in &self.slots {
            if let Slot::Change(report, hash) = slot {
                map.entry(*report).or_default().insert(*hash);
            }
        }
        map
    }

    /// The verdicts in request order, from the admissions of each report. A change the shell did not
    /// judge (which it should not do) is reported held, so the device keeps and resends it.
    pub fn verdicts(
        &self,
        judged: &HashMap<ReportId, HashMap<ChangeHash, Verdict>>,
    ) -> Vec<WireVerdict> {
        self.slots
            .iter()
            .map(|slot| match slot {
                Slot::Undecodable(e) => WireVerdict::Refused(Refusal::undecodable(e.clone())),
                Slot::Change(report, hash) => match judged.get(report).and_then(|v| v.get(hash)) {
                    Some(verdict) => to_wire(verdict),
                    None => WireVerdict::Held(Vec::new()),
                },
            })
            .collect()
    }
}

/// What a device learns of a report in which some of its changes were refused, so that it can
/// rebuild its copy: the server's document when the report exists in the caller's villages; an
/// empty one when the report does not exist because its creation was refused (the device then
/// drops it). Nothing for a report the caller may not see — one outside their villages, or one
/// the server does not have that they did not create ([`Refusal::not_permitted`]): the answer
/// must not tell whether it exists elsewhere.
pub fn rebuild_for(
    report: ReportId,
    doc: Option<&Automerge>,
    access: &Access,
    verdicts: &HashMap<ChangeHash, Verdict>,
) -> Option<Rebuild> {
    let refused = |v: &Verdict| matches!(v, Verdict::Refused(_));
    if !verdicts.values().any(refused) {
        return None;
    }
    let snapshot = match doc {
        Some(doc) => {
            let village = crate::rules::report_village(doc)?;
            access.covers(village).then(|| doc.save())?
        }
        None => {
            let hidden = Verdict::Refused(Refusal::not_permitted());
            if verdicts.values().any(|v| *v == hidden) {
                return None;
            }
            Vec::new()
        }
    };
    Some(Rebuild {
        report,
        snapshot: Bytes(snapshot),
    })
}

/// The wire form of a verdict.
pub fn to_wire(verdict: &Verdict) -> WireVerdict {
    match verdict {
        Verdict::Accepted => WireVerdict::Accepted,
        Verdict::Refused(r) => WireVerdict::Refused(r.clone()),
        Verdict::Held { missing } => WireVerdict::Held(missing.iter().map(|h| h.0).collect()),
    }
}

/// When the server received a state of a report: the seq it gave that update, its clock, and the
/// heads after it. A device at position `since` has everything in the heads of the latest receipt
/// with `seq <= since`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// The update's seq.
    pub seq: u64,
    /// Server clock, unix milliseconds.
    pub received_at: i64,
    /// The document's heads after the update.
    pub heads: Vec<[u8; 32]>,
}

/// Receipts kept per report. Older ones are dropped: a device older than the oldest kept receipt
/// gets the whole compacted document instead of changes, so compaction never stops a device that
/// was offline for months from catching up — it only costs that device a few more bytes.
pub const MAX_RECEIPTS: usize = 32;

/// Add a receipt, dropping the oldest beyond [`MAX_RECEIPTS`].
pub fn record_receipt(receipts: &mut Vec<Receipt>, receipt: Receipt) {
    receipts.push(receipt);
    if receipts.len() > MAX_RECEIPTS {
        let excess = receipts.len() - MAX_RECEIPTS;
        receipts.drain(..excess);
    }
}

/// What a device at `since` is missing of a report, leaving out `exclude`: the changes of this
/// report it uploaded in the same request. `None` when it is missing nothing.
pub fn delta_since(
    doc: &Automerge,
    receipts: &[Receipt],
    since: u64,
    exclude: &HashSet<ChangeHash>,
) -> Option<Delta> {
    let base = receipts.iter().rev().find(|r| r.seq <= since);
    let heads: Vec<ChangeHash> = match base {
        Some(base) => base.heads.iter().map(|h| ChangeHash(*h)).collect(),
        // The device had none of the report before this request — unless it just uploaded some
        // of it (typically: it created the report), in which case it lacks only the rest.
        None if exclude.is_empty() => {
            return Some(Delta::Snapshot(Bytes(doc.save())));
        }
        None => Vec::new(),
    };
    let changes: Vec<Change> = doc
        .get_changes(&heads)
        .into_iter()
        .filter(|c| !exclude.contains(&c.hash()))
        .collect();
    if changes.is_empty() {
        return None;
    }
    let raw: usize = changes.iter().map(|c| c.raw_bytes().len()).sum();
    // Many changes compress better as one document; only try when it could pay off.
    if changes.len() > 4 && raw > 1024 {
        let snapshot = doc.save();
        if snapshot.len() < raw {
            return Some(Delta::Snapshot(Bytes(snapshot)));
        }
    }
    Some(Delta::Changes(
        changes
            .into_iter()
            .map(|c| Bytes(c.raw_bytes().to_vec()))
            .collect(),
    ))
}

/// The raw bytes of a report's latest accepted changes, each with the seq that brought it.
///
/// automerge does not keep the bytes of the changes it applied: `get_changes` re-encodes them from
/// the document, which is most of the cost of a feed. A server shell keeps this small window in
/// memory beside each cached document, so a device that syncs regularly is sent the bytes as they
/// arrived; a device further behind falls back to `get_changes`.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    changes: std::collections::VecDeque<(u64, ChangeHash, Vec<u8>)>,
    /// Every change applied with a seq above this one is in `changes`.
    complete_after: u64,
    bytes: usize,
}

/// Bytes of recent changes kept per report.
pub const RECENT_BYTES: usize = 32 << 10;

impl Recent {
    /// An empty window for a report whose changes up to `seq` are not held here.
    pub fn new(seq: u64) -> Self {
        Recent {
            complete_after: seq,
            ..Recent::default()
        }
    }

    /// Record changes applied at `seq`, dropping the oldest beyond [`RECENT_BYTES`].
    pub fn record(&mut self, seq: u64, changes: &[Change]) {
        for c in changes {
            let raw = c.raw_bytes().to_vec();
            self.bytes += raw.len();
            self.changes.push_back((seq, c.hash(), raw));
        }
        while self.bytes > RECENT_BYTES {
            let Some((dropped, _, raw)) = self.changes.pop_front() else {
                break;
            };
            self.bytes -= raw.len();
            self.complete_after = self.complete_after.max(dropped);
        }
    }

    /// The changes a device at `since` lacks, if this window holds all of them.
    pub fn since(&self, since: u64, exclude: &HashSet<ChangeHash>) -> Option<Vec<Bytes>> {
        (since >= self.complete_after).then(|| {
            self.changes
                .iter()
                .filter(|(seq, hash, _)| *seq > since && !exclude.contains(hash))
                .map(|(_, _, raw)| Bytes(raw.clone()))
                .collect()
        })
    }
}

/// At most this many reports per page of a feed.
pub const PAGE_REPORTS: usize = 500;
/// A page stops growing past this many bytes of deltas: at 2G speeds (40–100 kbit/s) a page takes
/// about a minute, so a long catch-up shows progress and a dropped link loses little.
pub const PAGE_BYTES: usize = 512 << 10;

/// Builds one scope's feed from the reports the shell fetched, in (seq, id) order.
pub struct FeedBuilder {
    scope: Scope,
    position: Position,
    items: Vec<FeedItem>,
    last: Option<PageMark>,
    bytes: usize,
    limit: usize,
    byte_budget: usize,
}

impl FeedBuilder {
    /// Start a feed for a device at `position`.
    pub fn new(scope: Scope, position: Position) -> Self {
        Self::with_limits(scope, position, PAGE_REPORTS, PAGE_BYTES)
    }

    /// With explicit page limits.
    pub fn with_limits(scope: Scope, position: Position, limit: usize, byte_budget: usize) -> Self {
        FeedBuilder {
            scope,
            position,
            items: Vec::new(),
            last: None,
            bytes: 0,
            limit: limit.max(1),
            byte_budget,
        }
    }

    /// Whether the page has room for another report.
    pub fn has_room(&self) -> bool {
        self.items.len() < self.limit && self.bytes < self.byte_budget
    }

    /// Add the next report (ordered by `(seq, id)` after the position's mark). `seq` is the seq of
    /// its latest update.
    pub fn push(
        &mut self,
        report: ReportId,
        seq: u64,
        doc: &Automerge,
        receipts: &[Receipt],
        exclude: &HashSet<ChangeHash>,
    ) {
        self.push_with_recent(report, seq, doc, receipts, None, exclude);
    }

    /// [`FeedBuilder::push`], served from `recent` when it holds everything the device lacks.
    pub fn push_with_recent(
        &mut self,
        report: ReportId,
        seq: u64,
        doc: &Automerge,
        receipts: &[Receipt],
        recent: Option<&Recent>,
        exclude: &HashSet<ChangeHash>,
    ) {
        let knows_some =
            !exclude.is_empty() || receipts.iter().any(|r| r.seq <= self.position.since);
        let from_recent = recent
            .filter(|_| knows_some)
            .and_then(|r| r.since(self.position.since, exclude))
            .map(|changes| (!changes.is_empty()).then_some(Delta::Changes(changes)));
        let delta = match from_recent {
            Some(delta) => delta,
            None => delta_since(doc, receipts, self.position.since, exclude),
        };
        if let Some(delta) = delta {
            self.bytes += match &delta {
                Delta::Changes(cs) => cs.iter().map(|c| c.0.len()).sum(),
                Delta::Snapshot(s) => s.0.len(),
            };
            self.items.push(FeedItem { report, delta });
        }
        self.last = Some(PageMark { seq, report });
    }

    /// Add the next report as a whole document the shell already holds as bytes (a compacted
    /// snapshot, possibly followed by change chunks — what automerge `load` reads). For a device that
    /// has none of the report: the server need not load the document at all.
    pub fn push_snapshot(&mut self, report: ReportId, seq: u64, bytes: Vec<u8>) {
        self.bytes += bytes.len();
        self.items.push(FeedItem {
            report,
            delta: Delta::Snapshot(Bytes(bytes)),
        });
        self.last = Some(PageMark { seq, report });
    }

    /// The feed. `more` says whether the shell has reports beyond those pushed.
    pub fn finish(self, more: bool) -> ScopeFeed {
        let position = match (more, self.last) {
            (true, Some(mark)) => Position {
                since: self.position.since,
                after: Some(mark),
            },
            (_, Some(mark)) => Position {
                since: mark.seq.max(self.position.since),
                after: None,
            },
            (_, None) => Position {
                since: self
                    .position
                    .after
                    .map_or(self.position.since, |m| m.seq.max(self.position.since)),
                after: None,
            },
        };
        ScopeFeed {
            scope: self.scope,
            items: self.items,
            position,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeviceId, Edit, FieldPath};

    fn changes(n: usize) -> Vec<Change> {
        let device = DeviceId::from_bytes([1; 16]);
        let writer = crate::sim::volunteer(device);
        let (mut report, first) =
            crate::sim::sample_incident(ReportId::from_bytes([2; 16]), device, "t")
                .expect("create");
        let mut out = vec![first];
        for i in 0..n {
            let edit = Edit::Append {
                list: FieldPath::root("notes"),
                item: serde_json::json!({"id": format!("n{i}"), "author": "a", "at": "2026-11-28T08:00:00Z", "text": "x".repeat(1000)}),
            };
            out.push(
                report
                    .edit(&[edit], &writer)
                    .expect("edit")
                    .expect("a change"),
            );
        }
        out
    }

    #[test]
    fn the_recent_window_answers_only_what_it_fully_holds() {
        let all = changes(40);
        let mut recent = Recent::new(0);
        for (seq, c) in all.iter().enumerate() {
            recent.record(seq as u64 + 1, std::slice::from_ref(c));
        }
        let none = HashSet::new();
        // ~41 KB recorded, 32 KiB kept: the oldest seqs were dropped.
        assert!(
            recent.since(1, &none).is_none(),
            "a device at seq 1 lacks dropped changes"
        );
        let tail = recent.since(40, &none).expect("held");
        assert_eq!(tail.len(), 1);
        assert_eq!(tail[0].0, all[40].raw_bytes());
        assert_eq!(recent.since(41, &none), Some(vec![]));
        let mine: HashSet<ChangeHash> = [all[40].hash()].into();
        assert_eq!(
            recent.since(39, &mine).expect("held").len(),
            1,
            "uploaded changes are left out"
        );
    }
}
